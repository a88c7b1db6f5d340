//! The Backend section of the network config, typed per backend. Backend types are matched
//! lower-cased, as upstream's `GetBackend(strings.ToLower(type))`; `tx-vpc` is an alias of
//! `tencent-vpc`. Field names match case-insensitively and unknown fields are ignored.

use crate::gojson::{self, FieldError};
use secrecy::SecretString;
use serde_json::{Map, Value};
use std::fmt;

/// Backends upstream flannel ships that flannel-rs does not implement: refused by name (a
/// truly unknown type keeps upstream's "unknown backend type").
pub const UPSTREAM_UNSUPPORTED: [&str; 2] = ["ipip", "ipsec"];

mod wireguard;
pub use wireguard::{
    decode_wireguard_key, WireguardConfig, WireguardMode, WIREGUARD_DEFAULT_PORT,
    WIREGUARD_DEFAULT_PORT_V6,
};

/// What flannel-rs implements, for messages.
pub const SUPPORTED: &str =
    "tencent-vpc (alias tx-vpc), host-gw, vxlan, wireguard, udp, extension, alloc";

/// The backends flannel-rs implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    TencentVpc,
    HostGw,
    Vxlan,
    /// Upstream's `alloc`: a lease and subnet.env, no data plane (routes come from elsewhere).
    Alloc,
    /// Upstream's `extension`: the data plane is the user's commands.
    Extension,
    /// Upstream's `udp`: IP packets in UDP through a TUN device (upstream: for debugging).
    Udp,
    /// Upstream's `wireguard`: an encrypted tunnel per peer (kernel or userspace).
    Wireguard,
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
            "extension" => Ok(BackendKind::Extension),
            "udp" => Ok(BackendKind::Udp),
            "wireguard" => Ok(BackendKind::Wireguard),
            other if UPSTREAM_UNSUPPORTED.contains(&other) => {
                Err(BackendConfigError::Unsupported(other.to_string()))
            }
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
            BackendKind::Extension => "extension",
            BackendKind::Udp => "udp",
            BackendKind::Wireguard => "wireguard",
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
    #[error("backend type {0}: an upstream flannel backend that flannel-rs does not support; supported: {SUPPORTED}")]
    Unsupported(String),
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

impl Default for VxlanConfig {
    /// Upstream's defaults: VNI 1, the kernel's port, the interface MTU − 50, no GBP, no
    /// learning, no direct routing.
    fn default() -> Self {
        VxlanConfig {
            vni: 1,
            port: 0,
            mtu: 0,
            gbp: false,
            learning: false,
            direct_routing: false,
        }
    }
}

/// Who writes the VPC routes (`Backend.Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TencentVpcMode {
    /// Each agent writes its own route; the elected leader also collects garbage.
    #[default]
    PerNode,
    /// One elected `flanneld --controller` routes every lease; agents need no credentials.
    Controller,
}

/// The kernel's vxlan port, used when `Port` is 0 (upstream relies on it).
pub const VXLAN_KERNEL_PORT: u16 = 8472;

/// The shortest `Backend.ResyncInterval`: DescribeRouteTables counts against an
/// account-wide 100 requests/s.
pub const MIN_RESYNC_SECS: u64 = 10;
/// The longest `Backend.ResyncInterval` (an hour): repair and garbage collection wait this
/// long at the most.
pub const MAX_RESYNC_SECS: u64 = 3600;
/// The default `Backend.ResyncInterval`.
pub const DEFAULT_RESYNC_SECS: u64 = 60;

/// tencent-vpc options. `AccessKeyID`/`AccessKeySecret` are upstream's names; the rest are
/// flannel-rs additions, all optional. The secret never prints (`SecretString`).
#[derive(Debug, Clone, Default)]
pub struct TencentVpcConfig {
    pub access_key_id: Option<String>,
    pub access_key_secret: Option<SecretString>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub vpc_id: Option<String>,
    /// Route tables to program; empty means discovered from the node subnets.
    pub route_table_ids: Vec<String>,
    pub metadata_url: Option<String>,
    /// The ownership tag; `None` means derived from the Network (see [`cluster_name_for`]).
    pub cluster_name: Option<String>,
    pub adopt_untagged_routes: bool,
    /// Seconds; `None` means the daemon's `--resync-period` is not used either: 60.
    pub resync_interval_secs: Option<u64>,
    pub mode: TencentVpcMode,
    /// `"Fallback": "vxlan"`: peers the route tables cannot hold are reached over vxlan.
    pub fallback_vxlan: bool,
    /// `ReservedRoutes`: entries per table left free for the user's own routes (with Fallback).
    pub reserved_routes: usize,
    /// `"ReadinessProbe": false`: ready once the route is listed everywhere, without waiting
    /// for a probe from the pod subnet to be answered (the probe is on by default).
    pub no_readiness_probe: bool,
}

/// The default ClusterName for a Network: `10.244.0.0/16` gives `10-244-0-0-16`.
pub fn cluster_name_for(network: &ipnet::Ipv4Net) -> String {
    format!("{}-{}", network.network(), network.prefix_len()).replace('.', "-")
}

/// A ClusterName is `[a-z0-9-]{1,40}` (it goes into every route's description).
fn valid_cluster_name(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// extension options (upstream `extension.go`): commands split on whitespace, `$VAR` and
/// `${VAR}` expanded in each word, run without a shell. Empty means not run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionConfig {
    /// Run before the lease; its trimmed output becomes the lease's BackendData (a string).
    pub pre_startup: String,
    /// Run once the lease is held: NETWORK, SUBNET, IPV6SUBNET, PUBLIC_IP, PUBLIC_IPV6.
    pub post_startup: String,
    /// Run for each extension peer that appears or changes: SUBNET, PUBLIC_IP, and the
    /// peer's BackendData string plus a newline on stdin.
    pub subnet_add: String,
    /// Run for each extension peer that goes, the same way.
    pub subnet_remove: String,
}

/// udp options (upstream `udp.go`): the UDP port, 8285 by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpConfig {
    pub port: u16,
}

/// Upstream's udp port.
pub const UDP_DEFAULT_PORT: u16 = 8285;

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            port: UDP_DEFAULT_PORT,
        }
    }
}

#[derive(Debug, Clone)]
pub enum BackendConfig {
    TencentVpc(TencentVpcConfig),
    HostGw,
    Vxlan(VxlanConfig),
    Alloc,
    Extension(ExtensionConfig),
    Udp(UdpConfig),
    Wireguard(WireguardConfig),
}

impl BackendConfig {
    pub fn kind(&self) -> BackendKind {
        match self {
            BackendConfig::TencentVpc(_) => BackendKind::TencentVpc,
            BackendConfig::HostGw => BackendKind::HostGw,
            BackendConfig::Vxlan(_) => BackendKind::Vxlan,
            BackendConfig::Alloc => BackendKind::Alloc,
            BackendConfig::Extension(_) => BackendKind::Extension,
            BackendConfig::Udp(_) => BackendKind::Udp,
            BackendConfig::Wireguard(_) => BackendKind::Wireguard,
        }
    }

    /// The section as the backend will use it, every default filled (ClusterName derived
    /// from `network`, ResyncInterval 60, the kernel's vxlan port), secrets redacted and URLs
    /// without their userinfo: what `flannelctl config check` prints.
    pub fn effective_json(&self, network: Option<&ipnet::Ipv4Net>) -> Value {
        let url = |u: &Option<String>| {
            u.as_deref()
                .map(|u| Value::from(error_report::redact_urls(u).into_owned()))
                .unwrap_or(Value::Null)
        };
        let text = |t: &Option<String>| t.clone().map_or(Value::Null, Value::from);
        match self {
            BackendConfig::HostGw | BackendConfig::Alloc => {
                serde_json::json!({"Type": self.kind().name()})
            }
            BackendConfig::Udp(c) => serde_json::json!({"Type": "udp", "Port": c.port}),
            BackendConfig::Wireguard(c) => serde_json::json!({
                "Type": "wireguard",
                "ListenPort": c.listen_port,
                "ListenPortV6": c.listen_port_v6,
                "MTU": c.mtu.map_or(Value::from("interface"), Value::from),
                "PSK": c.psk.as_ref().map(|_| "<redacted>"),
                "PersistentKeepaliveInterval": c.keepalive_secs,
                "Mode": c.mode.name(),
            }),
            BackendConfig::Extension(c) => serde_json::json!({
                "Type": "extension",
                "PreStartupCommand": c.pre_startup,
                "PostStartupCommand": c.post_startup,
                "SubnetAddCommand": c.subnet_add,
                "SubnetRemoveCommand": c.subnet_remove,
            }),
            BackendConfig::Vxlan(c) => serde_json::json!({
                "Type": "vxlan",
                "VNI": c.vni,
                "Port": if c.port == 0 { VXLAN_KERNEL_PORT } else { c.port },
                "MTU": c.mtu,
                "GBP": c.gbp,
                "Learning": c.learning,
                "DirectRouting": c.direct_routing,
            }),
            BackendConfig::TencentVpc(c) => serde_json::json!({
                "Type": "tencent-vpc",
                "Mode": match c.mode {
                    TencentVpcMode::PerNode => "per-node",
                    TencentVpcMode::Controller => "controller",
                },
                "ClusterName": c.cluster_name.clone().or_else(|| network.map(cluster_name_for)),
                "Region": text(&c.region),
                "Endpoint": c.endpoint.as_deref().map_or(Value::from("public"), |_| url(&c.endpoint)),
                "VpcId": text(&c.vpc_id),
                "RouteTableIds": c.route_table_ids,
                "MetadataURL": url(&c.metadata_url),
                "AccessKeyID": text(&c.access_key_id),
                "AccessKeySecret": c.access_key_secret.as_ref().map(|_| "<redacted>"),
                "AdoptUntaggedRoutes": c.adopt_untagged_routes,
                "ResyncInterval": c.resync_interval_secs.unwrap_or(DEFAULT_RESYNC_SECS),
                "Fallback": if c.fallback_vxlan { "vxlan" } else { "none" },
                "ReservedRoutes": c.reserved_routes,
                "ReadinessProbe": !c.no_readiness_probe,
            }),
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
            BackendKind::Extension => BackendConfig::Extension(parse_extension(obj)?),
            BackendKind::Udp => BackendConfig::Udp(parse_udp(obj)?),
            BackendKind::Wireguard => BackendConfig::Wireguard(wireguard::parse(obj)?),
        })
    }
}

fn parse_udp(obj: &Map<String, Value>) -> Result<UdpConfig, BackendConfigError> {
    let mut c = UdpConfig::default();
    for (field, v) in gojson::matched(obj, &["Port"]) {
        let n = gojson::as_int(field, v)?;
        c.port = u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(BackendConfigError::Invalid {
                field: "Port",
                problem: format!("{n} is not a UDP port"),
            })?;
    }
    Ok(c)
}

fn parse_extension(obj: &Map<String, Value>) -> Result<ExtensionConfig, BackendConfigError> {
    let mut c = ExtensionConfig::default();
    const F: &[&str] = &[
        "PreStartupCommand",
        "PostStartupCommand",
        "SubnetAddCommand",
        "SubnetRemoveCommand",
    ];
    for (field, v) in gojson::matched(obj, F) {
        let text = gojson::as_str(field, v)?.to_string();
        match field {
            "PreStartupCommand" => c.pre_startup = text,
            "PostStartupCommand" => c.post_startup = text,
            "SubnetAddCommand" => c.subnet_add = text,
            "SubnetRemoveCommand" => c.subnet_remove = text,
            _ => unreachable!("field list and match arms agree"),
        }
    }
    Ok(c)
}

fn parse_vxlan(obj: &Map<String, Value>) -> Result<VxlanConfig, BackendConfigError> {
    let mut c = VxlanConfig::default();
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
        "RouteTableIds",
        "MetadataURL",
        "ClusterName",
        "AdoptUntaggedRoutes",
        "ResyncInterval",
        "Mode",
        "Fallback",
        "ReservedRoutes",
        "ReadinessProbe",
    ];
    let invalid =
        |field: &'static str, problem: String| BackendConfigError::Invalid { field, problem };
    for (field, v) in gojson::matched(obj, F) {
        match field {
            "AdoptUntaggedRoutes" => {
                c.adopt_untagged_routes = gojson::as_bool(field, v)?;
                continue;
            }
            "ReadinessProbe" => {
                c.no_readiness_probe = !gojson::as_bool(field, v)?;
                continue;
            }
            "ReservedRoutes" => {
                let n = gojson::as_int(field, v)?;
                c.reserved_routes = usize::try_from(n)
                    .map_err(|_| invalid("ReservedRoutes", format!("{n} is negative")))?;
                continue;
            }
            "ResyncInterval" => {
                let n = gojson::as_int(field, v)?;
                let n = match u64::try_from(n) {
                    Ok(n) if n < MIN_RESYNC_SECS => Err(format!(
                        "{n} is below the minimum of {MIN_RESYNC_SECS} seconds"
                    )),
                    Ok(n) if n > MAX_RESYNC_SECS => Err(format!(
                        "{n} is above the maximum of {MAX_RESYNC_SECS} seconds"
                    )),
                    Ok(n) => Ok(n),
                    Err(_) => Err(format!(
                        "{n} is below the minimum of {MIN_RESYNC_SECS} seconds"
                    )),
                }
                .map_err(|problem| invalid("ResyncInterval", problem))?;
                c.resync_interval_secs = Some(n);
                continue;
            }
            "RouteTableIds" => {
                let items = v.as_array().ok_or_else(|| {
                    invalid(
                        "RouteTableIds",
                        format!("expected an array of strings, found {}", gojson::kind(v)),
                    )
                })?;
                for item in items {
                    let id = item
                        .as_str()
                        .map(str::trim)
                        .filter(|s| s.starts_with("rtb-"))
                        .ok_or_else(|| {
                            invalid(
                                "RouteTableIds",
                                format!("{} is not a route table id (rtb-...)", gojson::show(item)),
                            )
                        })?;
                    if !c.route_table_ids.iter().any(|t| t == id) {
                        c.route_table_ids.push(id.to_string());
                    }
                }
                continue;
            }
            _ => {}
        }
        // Never echo the value of the secret field in an error.
        let s = match (field, v) {
            ("AccessKeySecret", Value::String(s)) => s.as_str(),
            ("AccessKeySecret", other) => {
                return Err(invalid(
                    "AccessKeySecret",
                    format!("expected a string, found {}", gojson::kind(other)),
                ))
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
            "MetadataURL" => c.metadata_url = Some(s.to_string()),
            "Fallback" => {
                c.fallback_vxlan = match s.to_ascii_lowercase().as_str() {
                    "vxlan" => true,
                    "none" => false,
                    _ => return Err(invalid("Fallback", format!("{s:?} is not vxlan or none"))),
                }
            }
            "ClusterName" => {
                if !valid_cluster_name(s) {
                    return Err(invalid(
                        "ClusterName",
                        format!("{s:?} must be 1 to 40 of a-z, 0-9 and -"),
                    ));
                }
                c.cluster_name = Some(s.to_string());
            }
            "Mode" => {
                c.mode = match s {
                    "per-node" => TencentVpcMode::PerNode,
                    "controller" => TencentVpcMode::Controller,
                    other => {
                        return Err(invalid(
                            "Mode",
                            format!("{other:?} is not per-node or controller"),
                        ))
                    }
                }
            }
            _ => unreachable!("field list and match arms agree"),
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests;
