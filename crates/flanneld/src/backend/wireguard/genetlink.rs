//! The kernel's WireGuard is configured over generic netlink (`include/uapi/linux/
//! wireguard.h`): resolve the `wireguard` family, then `WG_CMD_SET_DEVICE` with the private
//! key, the listen port and the peers. The encoders are pure (golden-tested byte for byte);
//! [`GenlSocket`] only sends them and reads the acknowledgements.

use super::keys::{PresharedKey, PrivateKey};
use super::plan::PeerConfig;
use ipnet::IpNet;
use std::net::SocketAddr;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLA_F_NESTED: u16 = 0x8000;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

pub const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;
const WG_CMD_SET_DEVICE: u8 = 1;

const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_FLAGS: u16 = 5;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
const WGDEVICE_F_REPLACE_PEERS: u32 = 1;

const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;

const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Messages stay under what `wg` sends at once; the rest of the peers follow in more
/// messages without REPLACE_PEERS, as `wg setconf` does.
const MAX_MESSAGE: usize = 8192;

/// A netlink message being built: attributes nest by start offsets.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(family: u16, flags: u16, seq: u32, cmd: u8, version: u8) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish
        buf.extend_from_slice(&family.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        buf.extend_from_slice(&[cmd, version, 0, 0]);
        Msg { buf }
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = u16::try_from(4 + payload.len()).expect("attribute fits");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn nest_start(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn nest_end(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).expect("nest fits");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("message fits");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `CTRL_CMD_GETFAMILY` for `wireguard`.
pub fn get_family(seq: u32) -> Vec<u8> {
    let mut m = Msg::new(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
    );
    m.attr(CTRL_ATTR_FAMILY_NAME, b"wireguard\0");
    m.finish()
}

/// The device's whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    pub ifname: String,
    pub private_key: PrivateKey,
    pub listen_port: u16,
    pub psk: Option<PresharedKey>,
    pub keepalive_secs: u16,
    pub peers: Vec<PeerConfig>,
}

fn endpoint_bytes(e: &SocketAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    match e {
        SocketAddr::V4(a) => {
            b.extend_from_slice(&AF_INET.to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&a.ip().octets());
            b.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(a) => {
            b.extend_from_slice(&AF_INET6.to_ne_bytes());
            b.extend_from_slice(&a.port().to_be_bytes());
            b.extend_from_slice(&a.flowinfo().to_be_bytes());
            b.extend_from_slice(&a.ip().octets());
            b.extend_from_slice(&a.scope_id().to_ne_bytes());
        }
    }
    b
}

fn peer(m: &mut Msg, p: &PeerConfig, psk: Option<&PresharedKey>, keepalive: u16) {
    let at = m.nest_start(0);
    m.attr(WGPEER_A_PUBLIC_KEY, &p.key.0);
    m.attr(WGPEER_A_PRESHARED_KEY, psk.map_or(&[0; 32], |k| &k.0));
    m.attr(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes());
    m.attr(WGPEER_A_ENDPOINT, &endpoint_bytes(&p.endpoint));
    m.attr(
        WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
        &keepalive.to_ne_bytes(),
    );
    let ips = m.nest_start(WGPEER_A_ALLOWEDIPS);
    for net in &p.allowed_ips {
        let one = m.nest_start(0);
        let (family, addr) = match net {
            IpNet::V4(n) => (AF_INET, n.network().octets().to_vec()),
            IpNet::V6(n) => (AF_INET6, n.network().octets().to_vec()),
        };
        m.attr(WGALLOWEDIP_A_FAMILY, &family.to_ne_bytes());
        m.attr(WGALLOWEDIP_A_IPADDR, &addr);
        m.attr(WGALLOWEDIP_A_CIDR_MASK, &[net.prefix_len()]);
        m.nest_end(one);
    }
    m.nest_end(ips);
    m.nest_end(at);
}

/// `WG_CMD_SET_DEVICE` messages that make the device exactly `config`: the first replaces
/// the peers (with the key and port), the rest add the peers that did not fit.
pub fn set_device(family: u16, first_seq: u32, config: &DeviceConfig) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut peers = config.peers.iter().peekable();
    let mut seq = first_seq;
    loop {
        let mut m = Msg::new(
            family,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            WG_CMD_SET_DEVICE,
            WG_GENL_VERSION,
        );
        let mut name = config.ifname.as_bytes().to_vec();
        name.push(0);
        m.attr(WGDEVICE_A_IFNAME, &name);
        if out.is_empty() {
            m.attr(WGDEVICE_A_PRIVATE_KEY, config.private_key.bytes());
            m.attr(WGDEVICE_A_LISTEN_PORT, &config.listen_port.to_ne_bytes());
            m.attr(WGDEVICE_A_FLAGS, &WGDEVICE_F_REPLACE_PEERS.to_ne_bytes());
        }
        let list = m.nest_start(WGDEVICE_A_PEERS);
        let mut added = 0;
        while let Some(p) = peers.peek() {
            let before = m.len();
            peer(&mut m, p, config.psk.as_ref(), config.keepalive_secs);
            if m.len() > MAX_MESSAGE && added > 0 {
                m.buf.truncate(before);
                break;
            }
            peers.next();
            added += 1;
        }
        m.nest_end(list);
        out.push(m.finish());
        seq = seq.wrapping_add(1);
        if peers.peek().is_none() {
            return out;
        }
    }
}

/// Walk the attributes of `b`: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((kind, payload))
    })
}

/// What one reply message says.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// An acknowledgement (errno 0) or an error (negative errno) for `seq`.
    Ack {
        seq: u32,
        errno: i32,
    },
    /// The family id of a `CTRL_CMD_GETFAMILY` reply.
    Family(u16),
    Other,
}

/// Split a datagram of netlink replies.
pub fn parse_replies(mut b: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let body = &b[16..len];
        out.push(if kind == NLMSG_ERROR && body.len() >= 20 {
            Reply::Ack {
                errno: i32::from_ne_bytes([body[0], body[1], body[2], body[3]]),
                seq: u32::from_ne_bytes([body[12], body[13], body[14], body[15]]),
            }
        } else if kind == GENL_ID_CTRL && body.len() >= 4 {
            attrs(&body[4..])
                .find(|(k, p)| *k == CTRL_ATTR_FAMILY_ID && p.len() >= 2)
                .map_or(Reply::Other, |(_, p)| {
                    Reply::Family(u16::from_ne_bytes([p[0], p[1]]))
                })
        } else {
            Reply::Other
        });
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    out
}

/// A generic netlink socket to the kernel, used one request at a time.
pub struct GenlSocket {
    socket: netlink_sys::Socket,
    family: u16,
    seq: u32,
}

impl GenlSocket {
    /// Open the socket and resolve the wireguard family.
    pub fn connect() -> std::io::Result<GenlSocket> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_GENERIC)?;
        socket.bind_auto()?;
        let mut s = GenlSocket {
            socket,
            family: 0,
            seq: 1,
        };
        let replies = s.request(&[get_family(1)])?;
        s.family = replies
            .iter()
            .find_map(|r| match r {
                Reply::Family(f) => Some(*f),
                _ => None,
            })
            .ok_or_else(|| std::io::Error::other("no wireguard generic netlink family"))?;
        Ok(s)
    }

    /// Send `messages` and wait for the acknowledgement of each.
    fn request(&mut self, messages: &[Vec<u8>]) -> std::io::Result<Vec<Reply>> {
        let mut all = Vec::new();
        for m in messages {
            self.socket.send(m, 0)?;
            loop {
                let (buf, _) = self.socket.recv_from_full()?;
                let replies = parse_replies(&buf);
                let acked = replies.iter().find_map(|r| match r {
                    Reply::Ack { errno, .. } => Some(*errno),
                    _ => None,
                });
                all.extend(replies);
                match acked {
                    Some(0) => break,
                    Some(e) => return Err(std::io::Error::from_raw_os_error(-e)),
                    None => continue,
                }
            }
        }
        Ok(all)
    }

    /// Make the device exactly `config`.
    pub fn set_device(&mut self, config: &DeviceConfig) -> std::io::Result<()> {
        let messages = set_device(self.family, self.seq, config);
        self.seq = self
            .seq
            .wrapping_add(u32::try_from(messages.len()).unwrap_or(1));
        self.request(&messages).map(|_| ())
    }
}

#[cfg(test)]
mod tests;
