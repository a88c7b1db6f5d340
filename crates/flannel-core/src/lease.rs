//! Leases: the subnet key codec (`10.5.52.0-24`, `10.12.13.0-24&fd00:12:13::-56`), the
//! `LeaseAttrs` JSON stored as the key's value (byte-compatible with upstream's
//! `pkg/lease.LeaseAttrs`), and the lease and event types every subnet manager produces.

use crate::gojson::{self, FieldError, JsonSyntaxError};
use ipnet::{Ipv4Net, Ipv6Net};
use serde_json::Value;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::SystemTime;

/// The identity of a lease: its IPv4 subnet and, in dual stack, its IPv6 subnet.
/// In IPv6-only mode the IPv4 part is `0.0.0.0/0`, as upstream writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    pub ipv4: Ipv4Net,
    pub ipv6: Option<Ipv6Net>,
}

/// A key that is not `a.b.c.d-len` optionally followed by `&v6addr-len`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid subnet key {0:?}: expected a.b.c.d-len or a.b.c.d-len&ipv6-len")]
pub struct SubnetKeyError(pub String);

impl SubnetKey {
    pub fn v4(net: Ipv4Net) -> Self {
        SubnetKey {
            ipv4: net,
            ipv6: None,
        }
    }

    /// The IPv4 subnet, unless this is an IPv6-only lease.
    pub fn ipv4_subnet(&self) -> Option<Ipv4Net> {
        (self.ipv4.prefix_len() != 0 || !self.ipv4.network().is_unspecified()).then_some(self.ipv4)
    }
}

impl fmt::Display for SubnetKey {
    /// The key as stored. An address with host bits (never written by flannel, but accepted
    /// like upstream's parser does) is kept as written, so the key names the same etcd key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ipv4.addr(), self.ipv4.prefix_len())?;
        if let Some(v6) = self.ipv6 {
            write!(f, "&{}-{}", v6.addr(), v6.prefix_len())?;
        }
        Ok(())
    }
}

/// Parse a prefix length the way upstream does (`ParseUint(s, 10, bits)`): ASCII digits only,
/// and the value must fit in `bits` bits, so an IPv4 `/32` key is not a subnet key upstream
/// and is not one here either (a mixed cluster must agree on which keys are leases).
fn parse_len(s: &str, bits: u32) -> Option<u8> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u32 = s.parse().ok()?;
    (v < (1 << bits)).then_some(v as u8)
}

impl FromStr for SubnetKey {
    type Err = SubnetKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SubnetKeyError(s.to_string());
        let (v4part, v6part) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let (ip4, len4) = v4part.rsplit_once('-').ok_or_else(bad)?;
        if !ip4.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(bad());
        }
        let ip4: Ipv4Addr = ip4.parse().map_err(|_| bad())?;
        let len4 = parse_len(len4, 5).ok_or_else(bad)?;
        let ipv4 = Ipv4Net::new(ip4, len4).map_err(|_| bad())?;
        let ipv6 = match v6part {
            None => None,
            Some(p) => {
                let (ip6, len6) = p.rsplit_once('-').ok_or_else(bad)?;
                if ip6.is_empty()
                    || !ip6
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase() || b == b':')
                {
                    return Err(bad());
                }
                let ip6: Ipv6Addr = ip6.parse().map_err(|_| bad())?;
                let len6 = parse_len(len6, 7).ok_or_else(bad)?;
                Some(Ipv6Net::new(ip6, len6).map_err(|_| bad())?)
            }
        };
        Ok(SubnetKey { ipv4, ipv6 })
    }
}

/// What a node publishes about itself, stored as the lease value (etcd) or as node
/// annotations (Kubernetes).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend_type: String,
    pub backend_data: Option<Value>,
    pub backend_v6_data: Option<Value>,
}

/// A lease value that is not valid LeaseAttrs JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseAttrsError {
    #[error("lease value: {0}")]
    Syntax(JsonSyntaxError),
    #[error("lease value must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    #[error("lease value field {0}")]
    Field(FieldError),
}

impl From<FieldError> for LeaseAttrsError {
    fn from(e: FieldError) -> Self {
        LeaseAttrsError::Field(e)
    }
}

impl LeaseAttrs {
    pub fn new(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// Upstream's exact bytes: fields in declaration order, `PublicIPv6` always present
    /// (`null` when unset), the backend fields omitted when empty, Go's HTML escaping.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(96);
        out.push_str("{\"PublicIP\":\"");
        out.push_str(&self.public_ip.to_string());
        out.push_str("\",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(v6) => {
                out.push('"');
                out.push_str(&v6.to_string());
                out.push('"');
            }
            None => out.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            out.push_str(",\"BackendType\":");
            out.push_str(&gojson::go_marshal(&Value::String(
                self.backend_type.clone(),
            )));
        }
        if let Some(d) = &self.backend_data {
            out.push_str(",\"BackendData\":");
            out.push_str(&gojson::go_marshal(d));
        }
        if let Some(d) = &self.backend_v6_data {
            out.push_str(",\"BackendV6Data\":");
            out.push_str(&gojson::go_marshal(d));
        }
        out.push('}');
        out
    }

    /// Decode a lease value as Go's `json.Unmarshal` into LeaseAttrs would.
    pub fn from_json(text: &str) -> Result<Self, LeaseAttrsError> {
        let v = gojson::parse(text).map_err(LeaseAttrsError::Syntax)?;
        let obj = v
            .as_object()
            .ok_or(LeaseAttrsError::NotAnObject(gojson::kind(&v)))?;
        let mut a = LeaseAttrs::new(Ipv4Addr::UNSPECIFIED);
        const FIELDS: &[&str] = &[
            "PublicIP",
            "PublicIPv6",
            "BackendType",
            "BackendData",
            "BackendV6Data",
        ];
        for (field, val) in gojson::matched(obj, FIELDS) {
            match field {
                "PublicIP" => {
                    let s = gojson::as_str(field, val)?;
                    a.public_ip = s.parse().map_err(|_| {
                        FieldError::new(field, format!("{s:?} is not an IPv4 address"))
                    })?;
                }
                "PublicIPv6" => {
                    let s = gojson::as_str(field, val)?;
                    a.public_ipv6 = Some(s.parse().map_err(|_| {
                        FieldError::new(field, format!("{s:?} is not an IPv6 address"))
                    })?);
                }
                "BackendType" => a.backend_type = gojson::as_str(field, val)?.to_string(),
                "BackendData" => a.backend_data = Some(val.clone()),
                "BackendV6Data" => a.backend_v6_data = Some(val.clone()),
                _ => unreachable!("field list and match arms agree"),
            }
        }
        Ok(a)
    }
}

/// When a lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A normal lease, renewed before this time.
    At(SystemTime),
    /// A reservation: a key with no TTL, written by an operator. Never turned into an
    /// expiring lease (fixes upstream issue 1329).
    Never,
    /// A Kubernetes podCIDR: the lease lives as long as its node object (not a reservation).
    Node,
    /// Bound to a store lease whose remaining TTL was not looked up (peers in a listing:
    /// one extra round trip per lease is not worth it where nobody needs the time).
    Unknown,
}

/// A subnet lease as every subnet manager reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub key: SubnetKey,
    pub attrs: LeaseAttrs,
    pub expiry: Expiry,
}

impl Lease {
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.key.ipv4_subnet()
    }

    pub fn ipv6_subnet(&self) -> Option<Ipv6Net> {
        self.key.ipv6
    }

    pub fn is_reservation(&self) -> bool {
        self.expiry == Expiry::Never
    }
}

/// A change in the set of peer leases.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    Added(Lease),
    Removed(Lease),
}

impl LeaseEvent {
    pub fn lease(&self) -> &Lease {
        match self {
            LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn golden_minimal_attrs_acceptance_9() {
        let a = LeaseAttrs::new("1.2.3.4".parse().unwrap());
        assert_eq!(a.to_json(), r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#);
    }

    #[test]
    fn golden_vxlan_attrs() {
        let mut a = LeaseAttrs::new("192.168.64.3".parse().unwrap());
        a.backend_type = "vxlan".into();
        a.backend_data = Some(json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}));
        let s = a.to_json();
        assert_eq!(
            s,
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        assert_eq!(LeaseAttrs::from_json(&s).unwrap(), a);
    }

    #[test]
    fn golden_dual_stack_attrs() {
        let mut a = LeaseAttrs::new("10.0.0.7".parse().unwrap());
        a.public_ipv6 = Some("fd00::7".parse().unwrap());
        a.backend_type = "host-gw".into();
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"10.0.0.7","PublicIPv6":"fd00::7","BackendType":"host-gw"}"#
        );
    }

    #[test]
    fn decode_is_case_insensitive_and_tolerant() {
        let a = LeaseAttrs::from_json(r#"{"publicip":"1.2.3.4","extra":true}"#).unwrap();
        assert_eq!(a.public_ip, "1.2.3.4".parse::<Ipv4Addr>().unwrap());
        assert!(LeaseAttrs::from_json(r#"{"PublicIP":"1.2.3"}"#)
            .unwrap_err()
            .to_string()
            .contains("PublicIP"));
        assert!(LeaseAttrs::from_json("nope").is_err());
    }

    #[test]
    fn golden_subnet_keys_acceptance_8() {
        let k: SubnetKey = "10.12.13.0-24&fd00:12:13::-56".parse().unwrap();
        assert_eq!(k.ipv4, "10.12.13.0/24".parse().unwrap());
        assert_eq!(k.ipv6, Some("fd00:12:13::/56".parse().unwrap()));
        assert_eq!(k.to_string(), "10.12.13.0-24&fd00:12:13::-56");
        let k: SubnetKey = "10.5.52.0-24".parse().unwrap();
        assert_eq!(k.to_string(), "10.5.52.0-24");
        for bad in [
            "10.12.13.0-24hi",
            "10.12.13.300-24",
            "&2001::-56",
            "10.12.13.0-24&2001::",
            "10.5.52.0-32",
            "10.5.52.0-",
            "10.5.52.0",
            "010.5.52.0-24",
            "10.5.52.0-24&2001:DB8::-64",
            "",
        ] {
            assert!(
                bad.parse::<SubnetKey>().is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn ipv6_only_key_form() {
        let k = SubnetKey {
            ipv4: "0.0.0.0/0".parse().unwrap(),
            ipv6: Some("fc00:0:0:5::/64".parse().unwrap()),
        };
        assert_eq!(k.to_string(), "0.0.0.0-0&fc00:0:0:5::-64");
        assert_eq!(k.ipv4_subnet(), None);
        assert_eq!(k.to_string().parse::<SubnetKey>().unwrap(), k);
    }
}
