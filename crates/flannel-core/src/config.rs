//! The flannel network configuration: `net-conf.json` in Kubernetes mode, the value of
//! `<prefix>/config` in etcd mode.
//!
//! Parsing follows Go's `encoding/json` into upstream's `subnet.Config` (case-insensitive
//! keys, unknown keys ignored, `EnableIPv4` defaulting to true) gives a [`RawNetConfig`].
//! [`RawNetConfig::check`] mirrors upstream's `CheckNetworkConfig`: it fills
//! SubnetLen/SubnetMin/SubnetMax (and the IPv6 equivalents), returns upstream's exact error
//! strings, and yields a [`ValidatedNetConfig`] whose address pools are complete.
//!
//! Deliberate differences from upstream, each refusing a config upstream would silently
//! misread: a CIDR with host bits set is an error naming the field (upstream masks it), and
//! SubnetMin above SubnetMax is an error (upstream then fails later with "out of subnets"),
//! and a config with both address families disabled is an error (upstream publishes a lease
//! `0.0.0.0-0`).

use crate::gojson::{self, FieldError, JsonSyntaxError};
use crate::ip;
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::{Map, Value};
use std::net::{Ipv4Addr, Ipv6Addr};

/// A network config as parsed, before validation: fields may be missing and SubnetLen may be
/// 0. Only [`RawNetConfig::check`] turns it into a [`ValidatedNetConfig`], the one type that
/// allocation, the daemon and the backends accept. `Debug` redacts secret-looking Backend
/// fields (the raw section may hold AccessKeySecret).
#[derive(Clone, PartialEq)]
pub struct RawNetConfig {
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_nftables: bool,
    pub network: Option<Ipv4Net>,
    pub ipv6_network: Option<Ipv6Net>,
    pub subnet_min: Option<Ipv4Addr>,
    pub subnet_max: Option<Ipv4Addr>,
    /// 0 when absent (the default is filled by `check`).
    pub subnet_len: u64,
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    pub ipv6_subnet_len: u64,
    /// `Backend.Type` as written; `"udp"` when Backend is absent (as upstream).
    pub backend_type: String,
    /// The Backend section, kept raw and typed per backend later.
    pub backend: Option<Value>,
}

impl std::fmt::Debug for RawNetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawNetConfig")
            .field("enable_ipv4", &self.enable_ipv4)
            .field("enable_ipv6", &self.enable_ipv6)
            .field("enable_nftables", &self.enable_nftables)
            .field("network", &self.network)
            .field("ipv6_network", &self.ipv6_network)
            .field("subnet_min", &self.subnet_min)
            .field("subnet_max", &self.subnet_max)
            .field("subnet_len", &self.subnet_len)
            .field("ipv6_subnet_min", &self.ipv6_subnet_min)
            .field("ipv6_subnet_max", &self.ipv6_subnet_max)
            .field("ipv6_subnet_len", &self.ipv6_subnet_len)
            .field("backend_type", &self.backend_type)
            .field("backend", &self.backend.as_ref().map(redact_secrets))
            .finish()
    }
}

/// Everything that can be wrong with a network config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("net config: {0}")]
    Syntax(JsonSyntaxError),
    #[error("net config must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("net config field {0}")]
    Field(FieldError),
    #[error("error decoding Backend property of config: {0}")]
    Backend(String),
    #[error("please define a correct Network parameter in the flannel config")]
    NoNetwork,
    #[error(
        "EnableIPv4 and EnableIPv6 are both false: at least one address family must be enabled"
    )]
    NoAddressFamily,
    #[error("SubnetLen must be less than /31")]
    SubnetLenTooLong,
    #[error("network must be able to accommodate at least four subnets")]
    FewerThanFourSubnets,
    #[error("network is too small. Minimum useful network prefix is /28")]
    NetworkTooSmall,
    #[error("SubnetMin is not in the range of the Network")]
    SubnetMinOutOfRange,
    #[error("SubnetMax is not in the range of the Network")]
    SubnetMaxOutOfRange,
    #[error("SubnetMin is not on a SubnetLen boundary: {0}")]
    SubnetMinUnaligned(Ipv4Addr),
    #[error("SubnetMax is not on a SubnetLen boundary: {0}")]
    SubnetMaxUnaligned(Ipv4Addr),
    #[error("SubnetMin ({min}) is greater than SubnetMax ({max}): no subnet can be allocated")]
    SubnetMinAboveMax { min: Ipv4Addr, max: Ipv4Addr },
    #[error("please define a correct IPv6Network parameter in the flannel config")]
    NoIpv6Network,
    #[error("SubnetLen must be less than /127")]
    Ipv6SubnetLenTooLong,
    #[error("IPv6Network is too small. Minimum useful network prefix is /124")]
    Ipv6NetworkTooSmall,
    #[error("IPv6SubnetMin is not in the range of the IPv6Network")]
    Ipv6SubnetMinOutOfRange,
    #[error("IPv6SubnetMax is not in the range of the IPv6Network")]
    Ipv6SubnetMaxOutOfRange,
    #[error("IPv6SubnetMin is not on a SubnetLen boundary: {0}")]
    Ipv6SubnetMinUnaligned(Ipv6Addr),
    #[error("IPv6SubnetMax is not on a SubnetLen boundary: {0}")]
    Ipv6SubnetMaxUnaligned(Ipv6Addr),
    #[error(
        "IPv6SubnetMin ({min}) is greater than IPv6SubnetMax ({max}): no subnet can be allocated"
    )]
    Ipv6SubnetMinAboveMax { min: Ipv6Addr, max: Ipv6Addr },
}

impl From<FieldError> for ConfigError {
    fn from(e: FieldError) -> Self {
        ConfigError::Field(e)
    }
}

const FIELDS: &[&str] = &[
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "SubnetMin",
    "SubnetMax",
    "SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "IPv6SubnetLen",
    "Backend",
];

fn cidr_err(field: &str, e: ip::CidrError) -> FieldError {
    FieldError::new(field, e.to_string())
}

fn parse_v4(field: &str, v: &Value) -> Result<Ipv4Addr, FieldError> {
    let s = gojson::as_str(field, v)?;
    s.parse()
        .map_err(|_| FieldError::new(field, format!("{s:?} is not an IPv4 address")))
}

fn parse_v6(field: &str, v: &Value) -> Result<Ipv6Addr, FieldError> {
    let s = gojson::as_str(field, v)?;
    s.parse()
        .map_err(|_| FieldError::new(field, format!("{s:?} is not an IPv6 address")))
}

/// The IPv4 pool of a validated config: every field present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Pool {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
}

/// The IPv6 pool of a validated config: every field present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Pool {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

/// A checked network config with every default filled. At least one of `ipv4` and `ipv6` is
/// present (a family is enabled exactly when its pool is). `Debug` redacts secret-looking
/// Backend fields.
#[derive(Clone, PartialEq)]
pub struct ValidatedNetConfig {
    pub ipv4: Option<Ipv4Pool>,
    pub ipv6: Option<Ipv6Pool>,
    pub enable_nftables: bool,
    /// `Backend.Type` as written; `"udp"` when Backend is absent (as upstream).
    pub backend_type: String,
    /// The Backend section, kept raw and typed per backend later.
    pub backend: Option<Value>,
}

impl std::fmt::Debug for ValidatedNetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatedNetConfig")
            .field("ipv4", &self.ipv4)
            .field("ipv6", &self.ipv6)
            .field("enable_nftables", &self.enable_nftables)
            .field("backend_type", &self.backend_type)
            .field("backend", &self.backend.as_ref().map(redact_secrets))
            .finish()
    }
}

impl ValidatedNetConfig {
    pub fn enable_ipv4(&self) -> bool {
        self.ipv4.is_some()
    }

    pub fn enable_ipv6(&self) -> bool {
        self.ipv6.is_some()
    }

    pub fn network(&self) -> Option<Ipv4Net> {
        self.ipv4.map(|p| p.network)
    }

    pub fn ipv6_network(&self) -> Option<Ipv6Net> {
        self.ipv6.map(|p| p.network)
    }

    /// The effective config as JSON with upstream's field names, every default filled.
    /// Secret-looking Backend fields (secret, password, token) are replaced by `"<redacted>"`.
    pub fn effective_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("EnableIPv4".into(), self.enable_ipv4().into());
        m.insert("EnableIPv6".into(), self.enable_ipv6().into());
        m.insert("EnableNFTables".into(), self.enable_nftables.into());
        if let Some(p) = self.ipv4 {
            m.insert("Network".into(), p.network.to_string().into());
            m.insert("SubnetLen".into(), p.subnet_len.into());
            m.insert("SubnetMin".into(), p.subnet_min.to_string().into());
            m.insert("SubnetMax".into(), p.subnet_max.to_string().into());
        }
        if let Some(p) = self.ipv6 {
            m.insert("IPv6Network".into(), p.network.to_string().into());
            m.insert("IPv6SubnetLen".into(), p.subnet_len.into());
            m.insert("IPv6SubnetMin".into(), p.subnet_min.to_string().into());
            m.insert("IPv6SubnetMax".into(), p.subnet_max.to_string().into());
        }
        m.insert("BackendType".into(), self.backend_type.clone().into());
        m.insert(
            "Backend".into(),
            self.backend.as_ref().map_or(Value::Null, redact_secrets),
        );
        Value::Object(m)
    }
}

impl RawNetConfig {
    /// Parse a config document (no validation, no defaults beyond upstream's parse step).
    pub fn parse(text: &str) -> Result<RawNetConfig, ConfigError> {
        let value = gojson::parse(text).map_err(ConfigError::Syntax)?;
        let obj = value
            .as_object()
            .ok_or(ConfigError::NotAnObject(gojson::kind(&value)))?;
        Self::from_object(obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<RawNetConfig, ConfigError> {
        let mut c = RawNetConfig {
            enable_ipv4: true,
            enable_ipv6: false,
            enable_nftables: false,
            network: None,
            ipv6_network: None,
            subnet_min: None,
            subnet_max: None,
            subnet_len: 0,
            ipv6_subnet_min: None,
            ipv6_subnet_max: None,
            ipv6_subnet_len: 0,
            backend_type: String::new(),
            backend: None,
        };
        let mut backend_seen = false;
        for (field, v) in gojson::matched(obj, FIELDS) {
            match field {
                "EnableIPv4" => c.enable_ipv4 = gojson::as_bool(field, v)?,
                "EnableIPv6" => c.enable_ipv6 = gojson::as_bool(field, v)?,
                "EnableNFTables" => c.enable_nftables = gojson::as_bool(field, v)?,
                "Network" => {
                    let s = gojson::as_str(field, v)?;
                    c.network = Some(ip::parse_ipv4_net(s).map_err(|e| cidr_err(field, e))?);
                }
                "IPv6Network" => {
                    let s = gojson::as_str(field, v)?;
                    c.ipv6_network = Some(ip::parse_ipv6_net(s).map_err(|e| cidr_err(field, e))?);
                }
                // Upstream treats 0.0.0.0 / :: as "not set".
                "SubnetMin" => {
                    c.subnet_min = Some(parse_v4(field, v)?).filter(|a| !a.is_unspecified())
                }
                "SubnetMax" => {
                    c.subnet_max = Some(parse_v4(field, v)?).filter(|a| !a.is_unspecified())
                }
                "SubnetLen" => c.subnet_len = gojson::as_uint(field, v)?,
                "IPv6SubnetMin" => {
                    c.ipv6_subnet_min = Some(parse_v6(field, v)?).filter(|a| !a.is_unspecified())
                }
                "IPv6SubnetMax" => {
                    c.ipv6_subnet_max = Some(parse_v6(field, v)?).filter(|a| !a.is_unspecified())
                }
                "IPv6SubnetLen" => c.ipv6_subnet_len = gojson::as_uint(field, v)?,
                "Backend" => {
                    backend_seen = true;
                    c.backend = Some(v.clone());
                }
                _ => unreachable!("field list and match arms agree"),
            }
        }
        // A literal `"Backend": null` reaches Go as the raw bytes `null`: a present but typeless
        // backend. Only a missing key means "udp".
        if !backend_seen && obj.iter().any(|(k, _)| k.eq_ignore_ascii_case("Backend")) {
            c.backend = Some(Value::Null);
        }
        c.backend_type = match &c.backend {
            None => "udp".to_string(),
            Some(Value::Null) => String::new(),
            Some(Value::Object(b)) => match gojson::get(b, "Type") {
                None => String::new(),
                Some(Value::String(t)) => t.clone(),
                Some(other) => {
                    return Err(ConfigError::Backend(format!(
                        "Type: expected a string, found {}",
                        gojson::show(other)
                    )))
                }
            },
            Some(other) => {
                return Err(ConfigError::Backend(format!(
                    "expected an object, found {}",
                    gojson::kind(other)
                )))
            }
        };
        Ok(c)
    }

    /// Validate and fill defaults, as upstream's `CheckNetworkConfig` (etcd and local
    /// modes; upstream skips it in Kubernetes mode).
    pub fn check(&self) -> Result<ValidatedNetConfig, ConfigError> {
        if !self.enable_ipv4 && !self.enable_ipv6 {
            return Err(ConfigError::NoAddressFamily);
        }
        Ok(ValidatedNetConfig {
            ipv4: self.enable_ipv4.then(|| self.check_ipv4()).transpose()?,
            ipv6: self.enable_ipv6.then(|| self.check_ipv6()).transpose()?,
            enable_nftables: self.enable_nftables,
            backend_type: self.backend_type.clone(),
            backend: self.backend.clone(),
        })
    }

    fn check_ipv4(&self) -> Result<Ipv4Pool, ConfigError> {
        let network = self.network.ok_or(ConfigError::NoNetwork)?;
        let family = Family {
            bits: 32,
            longest: 30,
            too_small: 28,
            default_len: 24,
        };
        let to = |v: u128| Ipv4Addr::from(v as u32);
        let pool = family
            .pool(
                u128::from(u32::from(network.network())),
                network.prefix_len(),
                self.subnet_len,
                self.subnet_min.map(|a| u128::from(u32::from(a))),
                self.subnet_max.map(|a| u128::from(u32::from(a))),
            )
            .map_err(|p| match p {
                PoolProblem::SubnetLenTooLong => ConfigError::SubnetLenTooLong,
                PoolProblem::FewerThanFour => ConfigError::FewerThanFourSubnets,
                PoolProblem::TooSmall => ConfigError::NetworkTooSmall,
                PoolProblem::MinOutOfRange => ConfigError::SubnetMinOutOfRange,
                PoolProblem::MaxOutOfRange => ConfigError::SubnetMaxOutOfRange,
                PoolProblem::MinUnaligned(m) => ConfigError::SubnetMinUnaligned(to(m)),
                PoolProblem::MaxUnaligned(m) => ConfigError::SubnetMaxUnaligned(to(m)),
                PoolProblem::MinAboveMax(min, max) => ConfigError::SubnetMinAboveMax {
                    min: to(min),
                    max: to(max),
                },
            })?;
        Ok(Ipv4Pool {
            network,
            subnet_len: pool.len,
            subnet_min: to(pool.min),
            subnet_max: to(pool.max),
        })
    }

    fn check_ipv6(&self) -> Result<Ipv6Pool, ConfigError> {
        let network = self.ipv6_network.ok_or(ConfigError::NoIpv6Network)?;
        let family = Family {
            bits: 128,
            longest: 126,
            too_small: 124,
            default_len: 64,
        };
        let pool = family
            .pool(
                u128::from(network.network()),
                network.prefix_len(),
                self.ipv6_subnet_len,
                self.ipv6_subnet_min.map(u128::from),
                self.ipv6_subnet_max.map(u128::from),
            )
            .map_err(|p| match p {
                PoolProblem::SubnetLenTooLong => ConfigError::Ipv6SubnetLenTooLong,
                PoolProblem::FewerThanFour => ConfigError::FewerThanFourSubnets,
                PoolProblem::TooSmall => ConfigError::Ipv6NetworkTooSmall,
                PoolProblem::MinOutOfRange => ConfigError::Ipv6SubnetMinOutOfRange,
                PoolProblem::MaxOutOfRange => ConfigError::Ipv6SubnetMaxOutOfRange,
                PoolProblem::MinUnaligned(m) => ConfigError::Ipv6SubnetMinUnaligned(m.into()),
                PoolProblem::MaxUnaligned(m) => ConfigError::Ipv6SubnetMaxUnaligned(m.into()),
                PoolProblem::MinAboveMax(min, max) => ConfigError::Ipv6SubnetMinAboveMax {
                    min: min.into(),
                    max: max.into(),
                },
            })?;
        Ok(Ipv6Pool {
            network,
            subnet_len: pool.len,
            subnet_min: Ipv6Addr::from(pool.min),
            subnet_max: Ipv6Addr::from(pool.max),
        })
    }
}

/// Upstream's pool rules for one address family, over addresses as numbers (an IPv4 address
/// as its 32-bit value), so both families share one implementation and keep their own
/// error messages.
struct Family {
    bits: u8,
    /// The longest SubnetLen (/30, /126).
    longest: u64,
    /// A Network with a longer prefix is too small for the default SubnetLen (/28, /124).
    too_small: u8,
    /// The default SubnetLen for a Network up to `default_len - 2` long (/24, /64).
    default_len: u64,
}

struct Pool {
    len: u8,
    min: u128,
    max: u128,
}

enum PoolProblem {
    SubnetLenTooLong,
    FewerThanFour,
    TooSmall,
    MinOutOfRange,
    MaxOutOfRange,
    MinUnaligned(u128),
    MaxUnaligned(u128),
    MinAboveMax(u128, u128),
}

impl Family {
    /// Upstream's `CheckNetworkConfig` for a Network at `start`/`prefix`: SubnetLen (0 =
    /// default), SubnetMin/SubnetMax (None = the second subnet and the last one).
    fn pool(
        &self,
        start: u128,
        prefix: u8,
        subnet_len: u64,
        min: Option<u128>,
        max: Option<u128>,
    ) -> Result<Pool, PoolProblem> {
        let prefix64 = u64::from(prefix);
        let len = if subnet_len > 0 {
            if subnet_len > self.longest {
                return Err(PoolProblem::SubnetLenTooLong);
            }
            if subnet_len < prefix64 + 2 {
                return Err(PoolProblem::FewerThanFour);
            }
            subnet_len
        } else if prefix > self.too_small {
            return Err(PoolProblem::TooSmall);
        } else if prefix64 <= self.default_len - 2 {
            self.default_len
        } else {
            prefix64 + 2
        } as u8;
        // 2^(bits - n), or 0 for 2^128 (the whole space: wrapping arithmetic is exact).
        let span = |n: u8| 1u128.checked_shl(u32::from(self.bits - n)).unwrap_or(0);
        let mask = |n: u8| !span(n).wrapping_sub(1) & span(0).wrapping_sub(1);
        let inside = |a: u128| a & mask(prefix) == start;
        let size = span(len);
        let min = match min {
            None => start.wrapping_add(size),
            Some(m) if !inside(m) => return Err(PoolProblem::MinOutOfRange),
            Some(m) => m,
        };
        let max = match max {
            None => start.wrapping_add(span(prefix)).wrapping_sub(size),
            Some(m) if !inside(m) => return Err(PoolProblem::MaxOutOfRange),
            Some(m) => m,
        };
        if min & mask(len) != min {
            return Err(PoolProblem::MinUnaligned(min));
        }
        if max & mask(len) != max {
            return Err(PoolProblem::MaxUnaligned(max));
        }
        if min > max {
            return Err(PoolProblem::MinAboveMax(min, max));
        }
        Ok(Pool { len, min, max })
    }
}

/// Parse then [`RawNetConfig::check`]: what etcd and local modes use.
pub fn parse_and_check(text: &str) -> Result<ValidatedNetConfig, ConfigError> {
    RawNetConfig::parse(text)?.check()
}

/// Replace the values of keys that look like secrets, recursively.
pub fn redact_secrets(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let lk = k.to_ascii_lowercase();
                    let secret = [
                        "secret",
                        "password",
                        "token",
                        "credential",
                        "psk",
                        "privatekey",
                    ]
                    .iter()
                    .any(|w| lk.contains(w));
                    (
                        k.clone(),
                        if secret {
                            Value::from("<redacted>")
                        } else {
                            redact_secrets(v)
                        },
                    )
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact_secrets).collect()),
        // A URL's user and password are a credential too (`"Endpoint": "http://u:p@h"`).
        Value::String(t) => Value::String(error_report::redact_urls(t).into_owned()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests;
