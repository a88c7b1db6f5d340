//! The flannel CNI plugin's pure core: its network config (as kube-flannel.yml ships it),
//! flanneld's subnet.env, the delegate config it hands to the `bridge` plugin with
//! `host-local` IPAM, and CNI error results with the spec's codes. `plugin` is the shell
//! (environment, stdin, running the delegate, the saved delegate config); the `flannel`
//! binary is built with flanneld's.

pub mod plugin;

use flannel_core::subnet_env;
use ipnet::IpNet;
use serde_json::{json, Map, Value};
use std::fmt;
use std::path::PathBuf;

/// The CNI versions this plugin speaks (it passes results through from the delegate).
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The newest one, used when a request names none.
pub const CURRENT_VERSION: &str = "1.0.0";
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// The error codes of the CNI spec (section "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Plugin-specific: the delegate could not be run.
    pub const DELEGATE: u32 = 100;
}

/// A CNI error result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, d: impl Into<String>) -> CniError {
        self.details = d.into();
        self
    }

    /// The error JSON the runtime reads from stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut m = Map::new();
        m.insert("cniVersion".into(), cni_version.into());
        m.insert("code".into(), self.code.into());
        m.insert("msg".into(), self.msg.clone().into());
        if !self.details.is_empty() {
            m.insert("details".into(), self.details.clone().into());
        }
        Value::Object(m).to_string()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// The plugin's network config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub delegate: Map<String, Value>,
    pub ipam: Option<Map<String, Value>>,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub runtime_config: Option<Value>,
    pub prev_result: Option<Value>,
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("network config field {key}: expected a string, found {other}"),
        )),
    }
}

fn object_field(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<Map<String, Value>>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(other) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("network config field {key}: expected an object, found {other}"),
        )),
    }
}

/// The cniVersion a request names ("" when it names none).
pub fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn check_version(version: &str) -> Result<(), CniError> {
    if version.is_empty() || SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI versions: config is {version:?}, plugin supports {SUPPORTED_VERSIONS:?}"
            ),
        ))
    }
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "failed to decode the network config")
                .details(e.to_string())
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                code::DECODE,
                "failed to decode the network config: expected a JSON object",
            ));
        };
        let cni_version = string_field(&obj, "cniVersion")?.unwrap_or_default();
        check_version(&cni_version)?;
        let delegate = object_field(&obj, "delegate")?.unwrap_or_default();
        let ipam = object_field(&obj, "ipam")?;
        for (field, section) in [("delegate", Some(&delegate)), ("ipam", ipam.as_ref())] {
            if let Some(t) = section.and_then(|m| m.get("type")) {
                let name = t.as_str().ok_or_else(|| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("network config field {field}.type: expected a string"),
                    )
                })?;
                check_plugin_name(&format!("{field}.type"), name)?;
            }
        }
        // An empty dataDir is the default, as upstream; a relative one would land in the
        // runtime's working directory.
        let data_dir: PathBuf = string_field(&obj, "dataDir")?
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into())
            .into();
        if !data_dir.is_absolute() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network config field dataDir: {:?} is not an absolute path",
                    data_dir.display().to_string()
                ),
            ));
        }
        Ok(NetConf {
            name: string_field(&obj, "name")?.unwrap_or_default(),
            delegate,
            ipam,
            subnet_file: string_field(&obj, "subnetFile")?
                .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into())
                .into(),
            data_dir,
            runtime_config: obj.get("runtimeConfig").cloned(),
            prev_result: obj.get("prevResult").cloned(),
            cni_version,
        })
    }
}

/// What flanneld wrote in subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelEnv {
    pub networks: Vec<IpNet>,
    /// The node's pod subnets, host bits dropped (host-local hands out `.1` as gateway).
    pub subnets: Vec<IpNet>,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl FlannelEnv {
    pub fn parse(text: &str, path: &str) -> Result<FlannelEnv, CniError> {
        let bad = |what: String| CniError::new(code::INVALID_CONFIG, format!("{path}: {what}"));
        let vars = subnet_env::parse_dotenv(text);
        let mut networks = Vec::new();
        let mut subnets = Vec::new();
        for (net_key, subnet_key) in [
            ("FLANNEL_NETWORK", "FLANNEL_SUBNET"),
            ("FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"),
        ] {
            if !vars.contains_key(subnet_key) {
                continue;
            }
            subnets.push(
                subnet_env::read_cidr(text, subnet_key)
                    .ok_or_else(|| bad(format!("{subnet_key} is not a CIDR")))?,
            );
            networks.extend(subnet_env::read_cidrs(text, net_key));
        }
        if subnets.is_empty() {
            return Err(bad(
                "neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set".into()
            ));
        }
        let mtu = vars
            .get("FLANNEL_MTU")
            .ok_or_else(|| bad("FLANNEL_MTU is not set".into()))?
            .parse()
            .map_err(|_| bad("FLANNEL_MTU is not a number".into()))?;
        let ip_masq = match vars.get("FLANNEL_IPMASQ").map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            Some(other) => return Err(bad(format!("FLANNEL_IPMASQ={other:?} is not a boolean"))),
            None => return Err(bad("FLANNEL_IPMASQ is not set".into())),
        };
        Ok(FlannelEnv {
            networks,
            subnets,
            mtu,
            ip_masq,
        })
    }
}

/// The config handed to the delegate, filled as upstream's plugin fills it: the delegate's
/// own keys win; otherwise type `bridge`, `ipMasq` when flanneld does not masquerade, the
/// flannel MTU, `isGateway` for a bridge, and host-local IPAM over this node's subnets with
/// a route to the whole network.
pub fn delegate_conf(n: &NetConf, env: &FlannelEnv) -> Map<String, Value> {
    let mut d = n.delegate.clone();
    d.insert("name".into(), n.name.clone().into());
    d.entry("type").or_insert_with(|| "bridge".into());
    d.entry("ipMasq").or_insert_with(|| (!env.ip_masq).into());
    d.entry("mtu").or_insert_with(|| env.mtu.into());
    if d.get("type").and_then(Value::as_str) == Some("bridge") {
        d.entry("isGateway").or_insert(true.into());
    }
    if !n.cni_version.is_empty() {
        d.insert("cniVersion".into(), n.cni_version.clone().into());
    }
    let mut ipam = n.ipam.clone().unwrap_or_default();
    ipam.entry("type").or_insert_with(|| "host-local".into());
    let ranges: Vec<Value> = env
        .subnets
        .iter()
        .map(|s| json!([{ "subnet": s.to_string() }]))
        .collect();
    ipam.insert("ranges".into(), ranges.into());
    let mut routes = match ipam.shift_remove("routes") {
        Some(Value::Array(r)) => r,
        _ => Vec::new(),
    };
    for net in &env.networks {
        routes.push(json!({ "dst": net.to_string() }));
    }
    ipam.insert("routes".into(), routes.into());
    d.insert("ipam".into(), ipam.into());
    if let Some(rc) = &n.runtime_config {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    d
}

/// A container ID usable as a file name in the data dir.
/// A plugin is found by name in CNI_PATH: a name with a path separator (or `.`, `..`) would
/// run something else (libcni refuses them too).
pub fn check_plugin_name(field: &str, name: &str) -> Result<(), CniError> {
    if name.is_empty() || name.contains(['/', '\\', '\0']) || name == "." || name == ".." {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("network config field {field}: {name:?} is not a plugin name"),
        ));
    }
    Ok(())
}

pub fn check_container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_CONTAINERID is not set",
        ));
    }
    if id.contains('/') || id == "." || id == ".." || id.contains('\0') {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_CONTAINERID {id:?} is not a valid container ID"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-flannel.yml's cni-conf.json, the flannel entry of the `cbr0` conflist as the
    /// runtime hands it to the plugin (name and cniVersion copied in).
    const KUBE_FLANNEL: &str = r#"{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}"#;
    const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn kube_flannel_config_gives_upstreams_delegate() {
        let n = NetConf::parse(KUBE_FLANNEL.as_bytes()).unwrap();
        assert_eq!(n.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(n.data_dir, PathBuf::from("/var/lib/cni/flannel"));
        let env = FlannelEnv::parse(SUBNET_ENV, "subnet.env").unwrap();
        let d = delegate_conf(&n, &env);
        assert_eq!(
            Value::Object(d).to_string(),
            r#"{"hairpinMode":true,"isDefaultGateway":true,"name":"cbr0","type":"bridge","ipMasq":false,"mtu":1450,"isGateway":true,"cniVersion":"0.3.1","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}]}}"#
        );
    }

    #[test]
    fn delegate_keys_and_ipam_from_the_config_win() {
        let n = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{"type":"ptp","mtu":1400,"ipMasq":true},"ipam":{"dataDir":"/tmp/x","routes":[{"dst":"192.168.0.0/16"}]}}"#,
        )
        .unwrap();
        let env = FlannelEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            "subnet.env",
        )
        .unwrap();
        let d = Value::Object(delegate_conf(&n, &env));
        assert_eq!(d["type"], "ptp");
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["ipMasq"], true);
        assert!(d.get("isGateway").is_none(), "only a bridge gets isGateway");
        assert_eq!(
            d["ipam"].to_string(),
            r#"{"dataDir":"/tmp/x","type":"host-local","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:0:0:1::/64"}]],"routes":[{"dst":"192.168.0.0/16"},{"dst":"10.244.0.0/16"},{"dst":"fd00::/48"}]}"#
        );
    }

    #[test]
    fn bad_input_is_a_cni_error_with_the_right_code() {
        let e = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = NetConf::parse(br#"{"cniVersion":"9.9.9","name":"x"}"#).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","delegate":[]}"#).unwrap_err();
        assert_eq!(
            e.to_json("1.0.0"),
            r#"{"cniVersion":"1.0.0","code":7,"msg":"network config field delegate: expected an object, found []"}"#
        );
        let e = FlannelEnv::parse("FLANNEL_MTU=1450\n", "/run/flannel/subnet.env").unwrap_err();
        assert_eq!(
            e.msg,
            "/run/flannel/subnet.env: neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set"
        );
        let e = FlannelEnv::parse(
            "FLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_MTU=x\nFLANNEL_IPMASQ=true\n",
            "s",
        )
        .unwrap_err();
        assert_eq!(e.msg, "s: FLANNEL_MTU is not a number");
        assert_eq!(
            check_container_id("../etc").unwrap_err().code,
            code::INVALID_ENV
        );
        assert!(check_container_id("abc123").is_ok());
    }

    #[test]
    fn plugin_names_and_the_data_dir_cannot_escape() {
        for conf in [
            r#"{"cniVersion":"1.0.0","delegate":{"type":"../../../bin/sh"}}"#,
            r#"{"cniVersion":"1.0.0","delegate":{"type":"/bin/sh"}}"#,
            r#"{"cniVersion":"1.0.0","delegate":{"type":".."}}"#,
            r#"{"cniVersion":"1.0.0","ipam":{"type":"x/host-local"}}"#,
            r#"{"cniVersion":"1.0.0","delegate":{"type":7}}"#,
            r#"{"cniVersion":"1.0.0","dataDir":"relative/dir"}"#,
        ] {
            let e = NetConf::parse(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{conf}: {}", e.msg);
        }
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","delegate":{"type":"../../../bin/sh"}}"#)
            .unwrap_err();
        assert_eq!(
            e.msg,
            r#"network config field delegate.type: "../../../bin/sh" is not a plugin name"#
        );
        let n = NetConf::parse(br#"{"cniVersion":"1.0.0","dataDir":""}"#).unwrap();
        assert_eq!(
            n.data_dir,
            PathBuf::from(DEFAULT_DATA_DIR),
            "empty is the default"
        );
    }
}
