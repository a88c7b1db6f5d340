//! Upstream's `udp` backend (upstream documents it as for debugging only: every packet crosses
//! user space twice): a TUN device `flannel0` with this node's subnet address as a /32, MTU =
//! the interface's − 28, and a route for the whole Network through it; each IP packet read
//! from it goes, unchanged but for its TTL, as the payload of one UDP datagram to port 8285
//! (`Port`) of the peer whose subnet holds the destination, and datagrams from peers are
//! written back to the device. As upstream, its leases carry no BackendType and every peer
//! lease is programmed; IPv4 only. Beyond upstream: a datagram is taken only from a peer's
//! address and only for this node's subnet (no open relay), and a deleted device is recreated
//! at the next reconcile.

pub mod packet;

use super::tun::TunSlot;
use super::{base_attrs, kernel_sync, Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use crate::kernel::{Kernel, KernelError, Route};
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::{BackendKind, UdpConfig};
use flannel_core::lease::{Lease, LeaseAttrs};
use ipnet::{IpNet, Ipv4Net};
use packet::PeerTable;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;
use tracing::{info, warn};

/// The TUN device's name (upstream's first `flannel%d`).
pub const DEVICE: &str = "flannel0";
/// IPv4 header + UDP header.
pub const ENCAP_OVERHEAD: u32 = 28;
/// Pause after a failed read, so a broken device or socket never spins.
const READ_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What the forwarding tasks share with reconcile.
struct Shared {
    peers: RwLock<Arc<PeerTable>>,
    own: RwLock<Option<Ipv4Net>>,
    tun: TunSlot,
}

impl Shared {
    fn peers(&self) -> Arc<PeerTable> {
        self.peers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn own(&self) -> Option<Ipv4Net> {
        *self.own.read().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct UdpBackend {
    ext: ExternalInterface,
    port: u16,
    network: Ipv4Net,
    networks: Vec<IpNet>,
    kernel: Arc<dyn Kernel>,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl UdpBackend {
    /// Bind the UDP port on the interface's address.
    pub async fn new(
        ext: ExternalInterface,
        config: &UdpConfig,
        network: Ipv4Net,
        kernel: Arc<dyn Kernel>,
    ) -> Result<UdpBackend, BackendError> {
        let addr = ext
            .iface_addr
            .ok_or_else(|| BackendError::NoPublicIp(ext.name.clone()))?;
        let bind = SocketAddrV4::new(addr, config.port);
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|e| BackendError::Kernel(KernelError::new(format!("bind UDP {bind}"), e)))?;
        info!(
            port = config.port,
            device = DEVICE,
            "udp backend (upstream: for debugging only)"
        );
        Ok(UdpBackend {
            ext,
            port: config.port,
            networks: vec![IpNet::V4(network)],
            network,
            kernel,
            socket: Arc::new(socket),
            shared: Arc::new(Shared {
                peers: RwLock::default(),
                own: RwLock::default(),
                tun: TunSlot::new(DEVICE),
            }),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The device (a new one when it is missing), its /32, MTU and state; its index.
    async fn ensure_device(&self, own: Ipv4Net) -> Result<u32, BackendError> {
        let mtu = self.mtu();
        let link = match self.kernel.link_by_name(DEVICE).await? {
            Some(link) if self.shared.tun.get().is_some() => link,
            _ => {
                self.shared.tun.create(mtu)?;
                info!(device = DEVICE, mtu, "TUN device created");
                self.kernel
                    .link_by_name(DEVICE)
                    .await?
                    .ok_or_else(|| BackendError::Unsupported(format!("{DEVICE} vanished")))?
            }
        };
        let addr = IpNet::V4(Ipv4Net::new(own.network(), 32).expect("a /32"));
        kernel_sync::set_addresses(self.kernel.as_ref(), &link, &[addr], |_| false).await?;
        if !link.up || link.mtu != mtu {
            self.kernel.set_up(&link, mtu).await?;
        }
        Ok(link.index)
    }

    fn start_tasks(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if !tasks.is_empty() {
            return;
        }
        let (shared, socket, port) = (self.shared.clone(), self.socket.clone(), self.port);
        tasks.push(tokio::spawn(device_to_peers(shared, socket, port)));
        let (shared, socket) = (self.shared.clone(), self.socket.clone());
        tasks.push(tokio::spawn(peers_to_device(shared, socket)));
    }
}

/// Packets read from the device go to the peer holding their destination (or back as ICMP
/// net unreachable).
async fn device_to_peers(shared: Arc<Shared>, socket: Arc<UdpSocket>, port: u16) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (tun, n) = shared.tun.recv(&mut buf).await;
        let packet = &mut buf[..n];
        let Some(dst) = packet::destination(packet) else {
            continue;
        };
        match shared.peers().lookup(dst) {
            Some(peer) => {
                if packet::decrement_ttl(packet) {
                    let _ = socket.send_to(packet, SocketAddrV4::new(peer, port)).await;
                }
            }
            None => {
                let from = shared.own().map_or(Ipv4Addr::UNSPECIFIED, |o| o.network());
                if let Some(icmp) = packet::net_unreachable(packet, from) {
                    let _ = tun.send(&icmp).await;
                }
            }
        }
    }
}

/// Datagrams from peers for this node's subnet are written to the device.
async fn peers_to_device(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "UDP read failed");
                tokio::time::sleep(READ_ERROR_PAUSE).await;
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        let (Some(own), Some(tun)) = (shared.own(), shared.tun.get()) else {
            continue;
        };
        if packet::accept(&buf[..n], *from.ip(), &own, &shared.peers()) {
            let _ = tun.send(&buf[..n]).await;
        }
    }
}

#[async_trait]
impl Backend for UdpBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Udp
    }

    /// As upstream: the public address only, no BackendType.
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        let mut attrs = base_attrs(BackendKind::Udp, &self.ext)?;
        attrs.backend_type = String::new();
        Ok(attrs)
    }

    async fn reconcile(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        _trigger: Trigger<'_>,
    ) -> Result<Status, BackendError> {
        let own_subnet = own
            .subnet()
            .ok_or_else(|| BackendError::Unsupported("udp needs an IPv4 lease".into()))?;
        *self.shared.own.write().unwrap_or_else(|e| e.into_inner()) = Some(own_subnet);
        let table = PeerTable::new(
            peers
                .iter()
                .filter_map(|l| Some((l.subnet()?, l.attrs.public_ip)))
                .collect(),
        );
        *self.shared.peers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        let dev = self.ensure_device(own_subnet).await?;
        self.start_tasks();
        let desired = kernel_sync::Desired {
            routes: vec![Route::through(IpNet::V4(self.network), dev)],
            ..Default::default()
        };
        kernel_sync::reconcile_for(self.kernel.as_ref(), &self.networks, own, &desired).await?;
        Ok(Status::done())
    }

    fn mtu(&self) -> u32 {
        self.ext.mtu.saturating_sub(ENCAP_OVERHEAD)
    }

    fn repairs_on_kernel_changes(&self) -> bool {
        true
    }
}
