//! Stored keys and values to leases: `<prefix>/subnets/10.5.52.0-24[&v6-len]` with upstream's
//! LeaseAttrs JSON. Pure; anything unparseable is logged and skipped, never an error that
//! could make every peer look removed.

use flannel_core::lease::{Expiry, Lease, LeaseAttrs, SubnetKey};
use tracing::warn;

/// A stored lease: the subnet key under `subnets_prefix`, the value, and the etcd lease id
/// (0 for a reservation, which never expires).
pub(super) fn decode_lease(
    subnets_prefix: &str,
    key: &[u8],
    value: &[u8],
    lease_id: i64,
) -> Option<(Lease, i64)> {
    let key = String::from_utf8_lossy(key);
    let Some(name) = key.strip_prefix(subnets_prefix) else {
        warn!(key = %key, "ignoring key outside the subnets prefix");
        return None;
    };
    let subnet: SubnetKey = match name.parse() {
        Ok(k) => k,
        Err(e) => {
            warn!(key = %key, error = %e, "ignoring unparseable subnet key");
            return None;
        }
    };
    let attrs = match LeaseAttrs::from_json(&String::from_utf8_lossy(value)) {
        Ok(a) => a,
        Err(e) => {
            warn!(key = %key, error = %e, "ignoring lease with an unparseable value");
            return None;
        }
    };
    let expiry = if lease_id == 0 {
        Expiry::Never
    } else {
        Expiry::Unknown
    };
    Some((
        Lease {
            key: subnet,
            attrs,
            expiry,
        },
        lease_id,
    ))
}

/// The subnet key of a deleted key (its value is gone), or None when unparseable.
pub(super) fn decode_deleted_key(subnets_prefix: &str, key: &[u8]) -> Option<SubnetKey> {
    String::from_utf8_lossy(key)
        .strip_prefix(subnets_prefix)
        .and_then(|k| k.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/coreos.com/network/subnets/";

    #[test]
    fn upstream_key_and_value() {
        let (l, id) = decode_lease(
            P,
            b"/coreos.com/network/subnets/10.5.52.0-24",
            br#"{"PublicIP":"172.16.0.7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#,
            7,
        )
        .unwrap();
        assert_eq!(l.key.to_string(), "10.5.52.0-24");
        assert_eq!(l.attrs.public_ip.to_string(), "172.16.0.7");
        assert_eq!(l.attrs.backend_type, "vxlan");
        assert_eq!((id, l.expiry), (7, Expiry::Unknown));
    }

    #[test]
    fn reservation_never_expires_and_dual_stack_keys_parse() {
        let (l, _) = decode_lease(
            P,
            b"/coreos.com/network/subnets/10.5.1.0-24&fc00:0:0:1::-64",
            br#"{"PublicIP":"172.16.0.8","PublicIPv6":"fc00::8"}"#,
            0,
        )
        .unwrap();
        assert_eq!(l.expiry, Expiry::Never);
        assert_eq!(l.key.ipv6.unwrap().to_string(), "fc00:0:0:1::/64");
    }

    #[test]
    fn garbage_is_skipped_not_an_error() {
        assert!(decode_lease(P, b"/coreos.com/network/subnets/nonsense", b"{}", 1).is_none());
        assert!(decode_lease(P, b"/elsewhere/10.5.1.0-24", b"{}", 1).is_none());
        assert!(decode_lease(
            P,
            b"/coreos.com/network/subnets/10.5.1.0-24",
            b"not json",
            1
        )
        .is_none());
        assert_eq!(
            decode_deleted_key(P, b"/coreos.com/network/subnets/10.5.9.0-24")
                .map(|k| k.to_string()),
            Some("10.5.9.0-24".into())
        );
        assert_eq!(
            decode_deleted_key(P, b"/coreos.com/network/subnets/x"),
            None
        );
    }
}
