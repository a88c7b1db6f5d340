//! The Backend section of the network config, typed per backend. Backend types are matched
//! lower-cased, as upstream's `GetBackend(strings.ToLower(type))`; `tx-vpc` is an alias of
//! `tencent-vpc`. Field names match case-insensitively and unknown fields are ignored.

use crate::gojson::{self, FieldError};
use secrecy::SecretString;
use serde_json::{Map, Value};
use std::fmt;

/// The backends flannel-rs implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    TencentVpc,
    HostGw,
    Vxlan,
    /// Upstream's `alloc`: a lease and subnet.env, no data plane (routes come from elsewhere).
    Alloc,
}

impl BackendKind {
    /// Resolve a Backend.Type the way upstream does; anything else is
    /// `unknown backend type: X`.
    pub fn from_type(t: &str) -> Result<BackendKind, BackendConfigError> {
        match t.to_ascii_lowercase().as_str() {
            "tencent-vpc" | "tx-vpc" => Ok(BackendKind::TencentVpc),
            "host-gw" => Ok(BackendKind::HostGw),
            "vxlan" => Ok(BackendKind::Vxlan),
            "alloc" => Ok(BackendKind::Alloc),
            _ => Err(BackendConfigError::UnknownType(t.to_string())),
        }
    }

    /// The canonical name, written as the lease's BackendType.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::TencentVpc => "tencent-vpc",
            BackendKind::HostGw => "host-gw",
            BackendKind::Vxlan => "vxlan",
            BackendKind::Alloc => "alloc",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendConfigError {
    #[error("unknown backend type: {0}")]
    UnknownType(String),
    #[error("Backend.{0}")]
    Field(FieldError),
    #[error("Backend.{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl From<FieldError> for BackendConfigError {
    fn from(e: FieldError) -> Self {
        BackendConfigError::Field(e)
    }
}

/// vxlan options (upstream `vxlan.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    pub vni: u32,
    /// 0 = kernel default (8472).
    pub port: u16,
    /// 0 = the interface MTU minus 50.
    pub mtu: u32,
    pub gbp: bool,
    pub learning: bool,
    pub direct_routing: bool,
}

/// tencent-vpc options. `AccessKeyID`/`AccessKeySecret` are upstream's names; the rest are
/// flannel-rs additions, all optional. The secret never prints (`SecretString`).
#[derive(Debug, Clone, Default)]
pub struct TencentVpcConfig {
    pub access_key_id: Option<String>,
    pub access_key_secret: Option<SecretString>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub vpc_id: Option<String>,
}

#[derive(Debug, Clone)]
pub enum BackendConfig {
    TencentVpc(TencentVpcConfig),
    HostGw,
    Vxlan(VxlanConfig),
    Alloc,
}

impl BackendConfig {
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::TencentVpc(_) => BackendKind::TencentVpc,
            BackendConfig::HostGw => BackendKind::HostGw,
            BackendConfig::Vxlan(_) => BackendKind::Vxlan,
            BackendConfig::Alloc => BackendKind::Alloc,
        }
    }

    /// Type the raw Backend section for `backend_type`.
    pub fn parse(
        backend_type: &str,
        raw: Option<&Value>,
    ) -> Result<BackendConfig, BackendConfigError> {
        let kind = BackendKind::from_type(backend_type)?;
        let empty = Map::new();
        let obj = raw.and_then(Value::as_object).unwrap_or(&empty);
        Ok(match kind {
            BackendKind::HostGw => BackendConfig::HostGw,
            BackendKind::Alloc => BackendConfig::Alloc,
            BackendKind::Vxlan => BackendConfig::Vxlan(parse_vxlan(obj)?),
            BackendKind::TencentVpc => BackendConfig::TencentVpc(parse_tencent(obj)?),
        })
    }
}

fn parse_vxlan(obj: &Map<String, Value>) -> Result<VxlanConfig, BackendConfigError> {
    let mut c = VxlanConfig {
        vni: 1,
        port: 0,
        mtu: 0,
        gbp: false,
        learning: false,
        direct_routing: false,
    };
    const F: &[&str] = &["VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting"];
    for (field, v) in gojson::matched(obj, F) {
        match field {
            "VNI" => {
                let n = gojson::as_int(field, v)?;
                c.vni = u32::try_from(n).ok().filter(|n| *n < (1 << 24)).ok_or(
                    BackendConfigError::Invalid {
                        field: "VNI",
                        problem: format!("{n} is not in 0..16777215"),
                    },
                )?;
            }
            "Port" => {
                let n = gojson::as_int(field, v)?;
                c.port = u16::try_from(n).map_err(|_| BackendConfigError::Invalid {
                    field: "Port",
                    problem: format!("{n} is not a UDP port"),
                })?;
            }
            "MTU" => {
                let n = gojson::as_int(field, v)?;
                c.mtu = u32::try_from(n).map_err(|_| BackendConfigError::Invalid {
                    field: "MTU",
                    problem: format!("{n} is negative"),
                })?;
            }
            "GBP" => c.gbp = gojson::as_bool(field, v)?,
            "Learning" => c.learning = gojson::as_bool(field, v)?,
            "DirectRouting" => c.direct_routing = gojson::as_bool(field, v)?,
            _ => unreachable!("field list and match arms agree"),
        }
    }
    Ok(c)
}

fn parse_tencent(obj: &Map<String, Value>) -> Result<TencentVpcConfig, BackendConfigError> {
    let mut c = TencentVpcConfig::default();
    const F: &[&str] = &[
        "AccessKeyID",
        "AccessKeySecret",
        "Region",
        "Endpoint",
        "VpcId",
    ];
    for (field, v) in gojson::matched(obj, F) {
        // Never echo the value of the secret field in an error.
        let s = match (field, v) {
            ("AccessKeySecret", Value::String(s)) => s.as_str(),
            ("AccessKeySecret", other) => {
                return Err(BackendConfigError::Invalid {
                    field: "AccessKeySecret",
                    problem: format!("expected a string, found {}", gojson::kind(other)),
                })
            }
            _ => gojson::as_str(field, v)?,
        };
        let s = s.trim();
        if s.is_empty() {
            continue;
        }
        match field {
            "AccessKeyID" => c.access_key_id = Some(s.to_string()),
            "AccessKeySecret" => c.access_key_secret = Some(SecretString::from(s.to_string())),
            "Region" => c.region = Some(s.to_string()),
            "Endpoint" => c.endpoint = Some(s.to_string()),
            "VpcId" => c.vpc_id = Some(s.to_string()),
            _ => unreachable!("field list and match arms agree"),
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    #[test]
    fn type_names_and_alias() {
        assert_eq!(
            BackendKind::from_type("tencent-vpc"),
            Ok(BackendKind::TencentVpc)
        );
        assert_eq!(
            BackendKind::from_type("tx-vpc"),
            Ok(BackendKind::TencentVpc)
        );
        assert_eq!(
            BackendKind::from_type("TX-VPC"),
            Ok(BackendKind::TencentVpc)
        );
        assert_eq!(BackendKind::from_type("host-gw"), Ok(BackendKind::HostGw));
        assert_eq!(BackendKind::from_type("vxlan"), Ok(BackendKind::Vxlan));
        assert_eq!(
            BackendKind::from_type("udp").unwrap_err().to_string(),
            "unknown backend type: udp"
        );
        assert_eq!(
            BackendKind::from_type("").unwrap_err().to_string(),
            "unknown backend type: "
        );
    }

    #[test]
    fn vxlan_defaults_and_fields() {
        let BackendConfig::Vxlan(c) =
            BackendConfig::parse("vxlan", Some(&json!({"Type":"vxlan"}))).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.vni, 1);
        let BackendConfig::Vxlan(c) = BackendConfig::parse(
            "vxlan",
            Some(&json!({"vni": 42, "Port": 4789, "DirectRouting": true})),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!((c.vni, c.port, c.direct_routing), (42, 4789, true));
        let e = BackendConfig::parse("vxlan", Some(&json!({"Port": 70000}))).unwrap_err();
        assert_eq!(e.to_string(), "Backend.Port: 70000 is not a UDP port");
    }

    #[test]
    fn tencent_secret_is_kept_but_never_printed() {
        let raw = json!({"Type":"tx-vpc","AccessKeyID":"AKIDx","AccessKeySecret":"topsecret"});
        let cfg = BackendConfig::parse("tx-vpc", Some(&raw)).unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
        let BackendConfig::TencentVpc(c) = cfg else {
            panic!()
        };
        assert_eq!(c.access_key_secret.unwrap().expose_secret(), "topsecret");
        let e =
            BackendConfig::parse("tx-vpc", Some(&json!({"AccessKeySecret": 12345}))).unwrap_err();
        assert!(!e.to_string().contains("12345"));
    }
}
