//! Golden bytes, written out field by field from `include/uapi/linux/wireguard.h` and
//! `genetlink.h` (x86_64: native order is little-endian).
#![cfg(target_endian = "little")]

use super::*;
use crate::backend::wireguard::keys::{Key, PresharedKey};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn get_family_golden() {
    let expected = hex("24000000 1000 0500 01000000 00000000 \
         03 01 0000 \
         0e00 0200 776972656775617264 00 0000");
    assert_eq!(get_family(1), expected);
}

fn one_peer_config() -> DeviceConfig {
    DeviceConfig {
        ifname: "flannel-wg".into(),
        private_key: PrivateKey::from_bytes([0x11; 32]),
        listen_port: 51820,
        psk: None,
        keepalive_secs: 25,
        peers: vec![PeerConfig {
            key: Key([0x22; 32]),
            endpoint: "192.168.0.2:51820".parse().unwrap(),
            allowed_ips: vec!["10.244.1.0/24".parse().unwrap()],
        }],
    }
}

#[test]
fn set_device_golden() {
    let k11 = "11".repeat(32);
    let k22 = "22".repeat(32);
    let zero = "00".repeat(32);
    let expected = hex(&format!(
        // nlmsghdr: length 236, family 0x1c, REQUEST|ACK, seq 7, port 0; genlmsghdr: SET_DEVICE v1
        "ec000000 1c00 0500 07000000 00000000  01 01 0000 \
         0f00 0200 666c616e6e656c2d776700 00 \
         2400 0300 {k11} \
         0600 0600 6cca 0000 \
         0800 0500 01000000 \
         9400 0880 \
           9000 0080 \
             2400 0100 {k22} \
             2400 0200 {zero} \
             0800 0300 02000000 \
             1400 0400 0200 ca6c c0a80002 0000000000000000 \
             0600 0500 1900 0000 \
             2000 0980 \
               1c00 0080 \
                 0600 0100 0200 0000 \
                 0800 0200 0af40100 \
                 0500 0300 18 000000"
    ));
    let messages = set_device(0x1c, 7, &one_peer_config());
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0], expected);
}

#[test]
fn ipv6_endpoint_and_psk_golden() {
    let mut c = one_peer_config();
    c.psk = Some(PresharedKey([0x33; 32]));
    c.peers[0].endpoint = "[2001:db8::2]:51821".parse().unwrap();
    c.peers[0].allowed_ips = vec!["fd00:1::/64".parse().unwrap()];
    let m = &set_device(0x1c, 1, &c)[0];
    let psk = format!("2400 0200 {}", "33".repeat(32));
    assert!(windows(m, &hex(&psk)), "PSK attribute");
    // sockaddr_in6: family 10, port 51821 big-endian, flowinfo 0, address, scope 0.
    let endpoint = "2000 0400 0a00 ca6d 00000000 20010db8000000000000000000000002 00000000";
    assert!(windows(m, &hex(endpoint)), "IPv6 endpoint");
    let allowed =
        "0600 0100 0a00 0000  1400 0200 fd000001000000000000000000000000  0500 0300 40 000000";
    assert!(windows(m, &hex(allowed)), "IPv6 allowed IP");
}

fn windows(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn many_peers_split_and_only_the_first_replaces() {
    let mut c = one_peer_config();
    c.peers = (0..200u8)
        .map(|i| PeerConfig {
            key: Key([i; 32]),
            endpoint: format!("192.168.1.{i}:51820").parse().unwrap(),
            allowed_ips: vec![format!("10.244.{i}.0/24").parse().unwrap()],
        })
        .collect();
    let messages = set_device(0x1c, 1, &c);
    assert!(messages.len() > 1);
    let replace = hex("0800 0500 01000000");
    let private = hex(&format!("2400 0300 {}", "11".repeat(32)));
    assert!(windows(&messages[0], &replace) && windows(&messages[0], &private));
    for (i, m) in messages.iter().enumerate() {
        assert!(m.len() <= MAX_MESSAGE, "message {i} is {} bytes", m.len());
        assert_eq!(
            u32::from_ne_bytes(m[8..12].try_into().unwrap()),
            1 + i as u32
        );
        if i > 0 {
            assert!(!windows(m, &replace) && !windows(m, &private));
        }
    }
    // Every peer is in exactly one message.
    let total: usize = (0..200u8)
        .map(|i| {
            let key = [&hex("2400 0100")[..], &[i; 32]].concat();
            messages.iter().filter(|m| windows(m, &key)).count()
        })
        .sum();
    assert_eq!(total, 200);
}

#[test]
fn replies_parse_ack_error_and_family() {
    // NLMSG_ERROR with errno -95 for seq 3.
    let err = hex("24000000 0200 0000 03000000 00000000 a1ffffff \
         14000000 1c00 0500 03000000 00000000");
    assert_eq!(parse_replies(&err), vec![Reply::Ack { seq: 3, errno: -95 }]);
    // A CTRL_CMD_NEWFAMILY reply carrying FAMILY_NAME then FAMILY_ID 0x1c.
    let family = hex("2c000000 1000 0000 01000000 00000000 01 02 0000 \
         0e00 0200 776972656775617264 00 0000 \
         0600 0100 1c00 0000");
    assert_eq!(parse_replies(&family), vec![Reply::Family(0x1c)]);
}
