//! WireGuard in user space, for kernels without the `wireguard` link type: a TUN device
//! carries the pods' packets, boringtun's Noise sessions (one per peer) seal and open them,
//! and UDP sockets on the listen port carry them between nodes. Cryptokey routing as the
//! kernel's: a packet goes to the peer whose allowed IPs hold its destination (longest
//! prefix), and a decrypted packet is written to the device only when its source is in the
//! sending peer's allowed IPs. A peer's endpoint follows where its authenticated packets
//! come from (roaming), until the next configuration.

use super::keys::{Key, PresharedKey, PrivateKey};
use super::plan::PeerConfig;
use crate::backend::tun::TunSlot;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

/// boringtun's timers want a tick about this often.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Pause after a failed read, so a broken device or socket never spins.
const READ_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Room for any packet plus the 32-byte data header and tag (and a 148-byte handshake).
const BUFFER: usize = 65_536 + 64;

struct Peer {
    key: Key,
    index: u32,
    tunn: Arc<Mutex<Tunn>>,
    endpoint: Mutex<SocketAddr>,
    allowed_ips: Vec<IpNet>,
}

impl Peer {
    fn endpoint(&self) -> SocketAddr {
        *self.endpoint.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn allows(&self, src: IpAddr) -> bool {
        self.allowed_ips.iter().any(|n| n.contains(&src))
    }
}

/// The peers, as the forwarding tasks look them up.
#[derive(Default)]
struct PeerSet {
    by_key: HashMap<Key, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    /// (allowed prefix, peer), longest prefixes first.
    routes: Vec<(IpNet, Arc<Peer>)>,
}

impl PeerSet {
    fn route(&self, dst: IpAddr) -> Option<&Arc<Peer>> {
        self.routes
            .iter()
            .find(|(net, _)| net.contains(&dst))
            .map(|(_, p)| p)
    }
}

struct Engine {
    name: &'static str,
    secret: StaticSecret,
    public: PublicKey,
    psk: Option<PresharedKey>,
    keepalive: Option<u16>,
    peers: RwLock<Arc<PeerSet>>,
    tun: TunSlot,
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
    next_index: AtomicU32,
}

impl Engine {
    fn peers(&self) -> Arc<PeerSet> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn socket_for(&self, to: &SocketAddr) -> Option<&Arc<UdpSocket>> {
        match to {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }
    async fn send(&self, data: &[u8], to: SocketAddr) {
        if let Some(s) = self.socket_for(&to) {
            if let Err(e) = s.send_to(data, to).await {
                debug!(device = self.name, %to, error = %e, "send failed");
            }
        }
    }
}

/// What a data path needs to know about one device.
pub struct UserspaceDevice {
    engine: Arc<Engine>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for UserspaceDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> crate::kernel::KernelError {
    crate::kernel::KernelError::new(format!("bind WireGuard UDP {addr}"), e)
}

/// An IPv6-only UDP socket: the IPv4 socket holds the same port for IPv4.
fn bind_v6_only(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn6};
    let SocketAddr::V6(v6) = addr else {
        return Err(std::io::Error::other("not an IPv6 address"));
    };
    let sock = socket::socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&sock, sockopt::Ipv6V6Only, &true)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &SockaddrIn6::from(v6),
    )?;
    Ok(std::net::UdpSocket::from(sock))
}

impl UserspaceDevice {
    /// Bind the listen port for the underlay families this device reaches peers over.
    pub async fn new(
        name: &'static str,
        key: &PrivateKey,
        psk: Option<PresharedKey>,
        keepalive_secs: u16,
        port: u16,
        families: (bool, bool),
    ) -> Result<UserspaceDevice, crate::kernel::KernelError> {
        let bind = |addr: SocketAddr| async move {
            UdpSocket::bind(addr)
                .await
                .map(Arc::new)
                .map_err(|e| bind_error(addr, e))
        };
        let v4 = match families.0 {
            true => Some(bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?),
            false => None,
        };
        let v6 = match families.1 {
            true => {
                let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
                let s = bind_v6_only(addr).map_err(|e| bind_error(addr, e))?;
                s.set_nonblocking(true).map_err(|e| bind_error(addr, e))?;
                Some(Arc::new(
                    UdpSocket::from_std(s).map_err(|e| bind_error(addr, e))?,
                ))
            }
            false => None,
        };
        let secret = key.secret();
        let engine = Engine {
            name,
            public: PublicKey::from(&secret),
            secret,
            psk,
            keepalive: (keepalive_secs > 0).then_some(keepalive_secs),
            peers: RwLock::default(),
            tun: TunSlot::new(name),
            v4,
            v6,
            next_index: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
        };
        Ok(UserspaceDevice {
            engine: Arc::new(engine),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// Whether the TUN device is held (it is gone from the kernel only if someone deleted it).
    pub fn has_device(&self) -> bool {
        self.engine.tun.get().is_some()
    }

    /// Make a new TUN device `name` (the old one, if any, is released).
    pub fn create_device(&self, mtu: u32) -> Result<(), crate::kernel::KernelError> {
        let name = self.engine.name;
        self.engine.tun.create(mtu)?;
        info!(device = name, mtu, "WireGuard TUN device created");
        self.start();
        Ok(())
    }

    /// The peers are exactly `peers`. A peer whose key stays keeps its session.
    pub fn set_peers(&self, peers: &[PeerConfig]) {
        let e = &self.engine;
        let old = e.peers();
        let mut set = PeerSet::default();
        for p in peers {
            let (tunn, index) = match old.by_key.get(&p.key) {
                Some(prev) => (prev.tunn.clone(), prev.index),
                None => {
                    let index = e.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
                    let tunn = Tunn::new(
                        e.secret.clone(),
                        PublicKey::from(p.key.0),
                        e.psk.map(|k| k.0),
                        e.keepalive,
                        index,
                        None,
                    );
                    (Arc::new(Mutex::new(tunn)), index)
                }
            };
            let peer = Arc::new(Peer {
                key: p.key,
                index,
                tunn,
                endpoint: Mutex::new(p.endpoint),
                allowed_ips: p.allowed_ips.clone(),
            });
            set.by_key.insert(p.key, peer.clone());
            set.by_index.insert(index, peer.clone());
            for net in &p.allowed_ips {
                set.routes.push((*net, peer.clone()));
            }
        }
        set.routes
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        *e.peers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }

    fn start(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if !tasks.is_empty() {
            return;
        }
        tasks.push(tokio::spawn(device_to_network(self.engine.clone())));
        for socket in [&self.engine.v4, &self.engine.v6].into_iter().flatten() {
            tasks.push(tokio::spawn(network_to_device(
                self.engine.clone(),
                socket.clone(),
            )));
        }
        tasks.push(tokio::spawn(timers(self.engine.clone())));
    }

    /// Stop forwarding and release the TUN device (the kernel removes it with the last
    /// descriptor).
    pub fn stop(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        self.engine.tun.release();
    }
}

/// Packets from the pods, sealed for the peer that holds their destination.
async fn device_to_network(e: Arc<Engine>) {
    let mut buf = vec![0u8; BUFFER];
    let mut out = vec![0u8; BUFFER];
    loop {
        let (_, n) = e.tun.recv(&mut buf).await;
        let packet = &buf[..n];
        let Some(dst) = Tunn::dst_address(packet) else {
            continue;
        };
        let peers = e.peers();
        let Some(peer) = peers.route(dst) else {
            continue;
        };
        let len = match peer
            .tunn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .encapsulate(packet, &mut out)
        {
            TunnResult::WriteToNetwork(b) => b.len(),
            TunnResult::Err(err) => {
                debug!(device = e.name, peer = %peer.key, error = ?err, "encapsulate failed");
                continue;
            }
            _ => continue,
        };
        e.send(&out[..len], peer.endpoint()).await;
    }
}

/// Which peer a datagram is from: a handshake initiation names its sender's key (once
/// decrypted with ours); every other message names the session index we gave the peer.
fn peer_of(e: &Engine, peers: &PeerSet, datagram: &[u8]) -> Option<Arc<Peer>> {
    match Tunn::parse_incoming_packet(datagram).ok()? {
        Packet::HandshakeInit(init) => {
            let half = parse_handshake_anon(&e.secret, &e.public, &init).ok()?;
            peers.by_key.get(&Key(half.peer_static_public)).cloned()
        }
        Packet::HandshakeResponse(r) => peers.by_index.get(&(r.receiver_idx >> 8)).cloned(),
        Packet::PacketCookieReply(r) => peers.by_index.get(&(r.receiver_idx >> 8)).cloned(),
        Packet::PacketData(d) => peers.by_index.get(&(d.receiver_idx >> 8)).cloned(),
    }
}

/// Datagrams from peers: handshakes answered, data opened and written to the device.
async fn network_to_device(e: Arc<Engine>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; BUFFER];
    let mut out = vec![0u8; BUFFER];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(err) => {
                warn!(device = e.name, error = %err, "UDP read failed");
                tokio::time::sleep(READ_ERROR_PAUSE).await;
                continue;
            }
        };
        let from = canonical(from);
        let peers = e.peers();
        let Some(peer) = peer_of(&e, &peers, &buf[..n]) else {
            continue;
        };
        let mut datagram: &[u8] = &buf[..n];
        loop {
            // What to do once the session lock is released.
            enum Then {
                Send(usize),
                Deliver(usize, IpAddr),
                Stop,
            }
            let then = match peer
                .tunn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .decapsulate(Some(from.ip()), datagram, &mut out)
            {
                TunnResult::WriteToNetwork(b) => Then::Send(b.len()),
                TunnResult::WriteToTunnelV4(b, src) => Then::Deliver(b.len(), IpAddr::V4(src)),
                TunnResult::WriteToTunnelV6(b, src) => Then::Deliver(b.len(), IpAddr::V6(src)),
                TunnResult::Done => {
                    // An authenticated keepalive: the peer is reachable there.
                    if !datagram.is_empty() {
                        roam(&peer, from);
                    }
                    Then::Stop
                }
                TunnResult::Err(err) => {
                    log_decapsulate_error(&e, &peer, &err);
                    Then::Stop
                }
            };
            match then {
                Then::Send(len) => {
                    e.send(&out[..len], from).await;
                    // Packets queued while the handshake ran go out now.
                    datagram = &[];
                }
                Then::Deliver(len, src) => {
                    roam(&peer, from);
                    if peer.allows(src) {
                        if let Some(tun) = e.tun.get() {
                            let _ = tun.send(&out[..len]).await;
                        }
                    } else {
                        debug!(device = e.name, peer = %peer.key, %src, "source outside the peer's allowed IPs: dropped");
                    }
                    break;
                }
                Then::Stop => break,
            }
        }
    }
}

fn log_decapsulate_error(e: &Engine, peer: &Peer, err: &WireGuardError) {
    debug!(device = e.name, peer = %peer.key, error = ?err, "datagram refused");
}

/// An IPv4-mapped source is the IPv4 address it maps.
fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

fn roam(peer: &Peer, from: SocketAddr) {
    let mut endpoint = peer.endpoint.lock().unwrap_or_else(|e| e.into_inner());
    if *endpoint != from {
        debug!(peer = %peer.key, old = %*endpoint, new = %from, "peer endpoint moved");
        *endpoint = from;
    }
}

/// Handshake retries, rekeys and keepalives.
async fn timers(e: Arc<Engine>) {
    let mut out = vec![0u8; BUFFER];
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peers = e.peers();
        for peer in peers.by_key.values() {
            let len = match peer
                .tunn
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update_timers(&mut out)
            {
                TunnResult::WriteToNetwork(b) => b.len(),
                _ => continue,
            };
            e.send(&out[..len], peer.endpoint()).await;
        }
    }
}
