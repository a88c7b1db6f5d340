//! MAC addresses as leases carry them (vxlan's `VtepMAC`) and the kernel reports them.

use std::fmt;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The locally administered unicast address made from `bytes` (what upstream gives a new
    /// VTEP when `bytes` are random): the multicast bit cleared, the local bit set.
    pub fn local_unicast(mut bytes: [u8; 6]) -> Mac {
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        Mac(bytes)
    }

    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }

    /// A unicast address other than all zeros: the only kind a neighbour or FDB entry of a
    /// peer may point at (a multicast or broadcast VtepMAC would flood, a zero one is void).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    /// Six colon-separated pairs of hex digits (either case), as Go's `net.ParseMAC` reads a
    /// 48-bit address written by upstream.
    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let bytes: Option<Vec<u8>> = parts
            .iter()
            .map(|p| {
                (p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| u8::from_str_radix(p, 16).ok())
                    .flatten()
            })
            .collect();
        bytes
            .and_then(|b| Mac::from_slice(&b))
            .ok_or_else(|| format!("invalid MAC address {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        let m: Mac = "02:42:0a:f4:01:00".parse().unwrap();
        assert_eq!(m.to_string(), "02:42:0a:f4:01:00");
        assert_eq!("02:42:0A:F4:01:00".parse::<Mac>().unwrap(), m);
        for bad in [
            "02:42:0a:f4:01",
            "02:42:0a:f4:01:0g",
            "02:42:0a:f4:01:+1",
            "",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unicast_excludes_zero_multicast_and_broadcast() {
        let m = |s: &str| s.parse::<Mac>().unwrap();
        assert!(m("02:42:0a:f4:01:00").is_unicast());
        assert!(!m("00:00:00:00:00:00").is_unicast());
        assert!(!m("ff:ff:ff:ff:ff:ff").is_unicast());
        assert!(!m("01:00:5e:00:00:01").is_unicast());
        for b in [[0u8; 6], [0xff; 6], [1, 2, 3, 4, 5, 6]] {
            let l = Mac::local_unicast(b);
            assert!(l.is_unicast() && l.0[0] & 0x02 == 0x02, "{l}");
        }
    }
}
