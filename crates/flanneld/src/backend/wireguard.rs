//! Upstream's `wireguard` backend: pods' packets cross the underlay inside WireGuard, one
//! peer per node. Devices `flannel-wg` (and `flannel-wg-v6` in Separate mode with IPv6) hold
//! this node's subnet address and a route for the whole Network; each peer lease is a
//! WireGuard peer whose allowed IPs are its subnet(s) and whose endpoint is its public
//! address and `Port`. The node's key lives in a root-only file so restarts keep it; the
//! lease carries the public key. Two data paths behind one backend: the kernel's WireGuard
//! (configured over generic netlink) where the `wireguard` link type exists, else a
//! userspace WireGuard (boringtun over TUN). MTU = (`MTU` or the interface's) − 80.

pub mod genetlink;
pub mod keys;
pub mod plan;
pub mod userspace;

use super::{base_attrs, kernel_sync, Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use crate::kernel::{family_of, Family, Kernel, KernelError, Link, Route};
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::{BackendKind, WireguardConfig, WireguardMode};
use flannel_core::lease::{Lease, LeaseAttrs};
use flannel_core::ValidatedNetConfig;
use ipnet::IpNet;
use keys::{Key, PresharedKey, PrivateKey};
use plan::{Layout, PeerConfig, DEVICE, DEVICE_V6};
use secrecy::ExposeSecret;
use std::sync::{Arc, Mutex};
use tracing::{info, warn};
use userspace::UserspaceDevice;

/// IPv6 header (the larger) + UDP + WireGuard's data header and tag, as upstream.
pub const OVERHEAD: u32 = 80;
const EOPNOTSUPP: i32 = 95;

/// Which WireGuard moves the packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPathKind {
    Kernel,
    Userspace,
}

impl DataPathKind {
    pub fn describe(self) -> &'static str {
        match self {
            DataPathKind::Kernel => "kernel (wireguard link, generic netlink)",
            DataPathKind::Userspace => "userspace (boringtun over TUN)",
        }
    }
}

enum DataPath {
    Kernel(Mutex<Option<genetlink::GenlSocket>>),
    Userspace(UserspaceDevice),
}

/// A device before it exists: its name, port, the Networks routed through it, and the
/// underlay families (IPv4, IPv6) it reaches peers over.
struct Shape {
    name: &'static str,
    port: u16,
    networks: Vec<IpNet>,
    underlay: (bool, bool),
}

impl Shape {
    fn new(name: &'static str, port: u16, networks: Vec<IpNet>, underlay: (bool, bool)) -> Shape {
        Shape {
            name,
            port,
            networks,
            underlay,
        }
    }
}

/// One WireGuard device and what was last applied to it.
struct Device {
    name: &'static str,
    port: u16,
    /// The Networks routed through it.
    networks: Vec<IpNet>,
    path: DataPath,
    /// (device index, peers) as last configured: unchanged peers are not re-sent (a
    /// kernel REPLACE_PEERS would drop live sessions).
    applied: Mutex<Option<(u32, Vec<PeerConfig>)>>,
}

pub struct WireguardBackend {
    ext: ExternalInterface,
    config: WireguardConfig,
    key: PrivateKey,
    psk: Option<PresharedKey>,
    layout: Layout,
    networks: Vec<IpNet>,
    /// (`MTU` or the interface's) − 80: the devices' and FLANNEL_MTU.
    mtu: u32,
    kernel: Arc<dyn Kernel>,
    devices: Vec<Device>,
    kind: DataPathKind,
}

impl WireguardBackend {
    /// Load (or make) the key, pick the data path and bind what it needs.
    pub async fn new(
        ext: ExternalInterface,
        network: &ValidatedNetConfig,
        config: &WireguardConfig,
        kernel: Arc<dyn Kernel>,
        key_file: &std::path::Path,
    ) -> Result<WireguardBackend, BackendError> {
        let key = PrivateKey::load_or_create(key_file)
            .map_err(|e| BackendError::Unsupported(crate::report(&e)))?;
        let psk = config
            .psk
            .as_ref()
            .and_then(|p| flannel_core::backend_config::decode_wireguard_key(p.expose_secret()))
            .map(PresharedKey);
        let (v4_net, v6_net) = (network.network(), network.ipv6_network());
        let networks = super::host_gw::networks(network);
        let separate = config.mode == WireguardMode::Separate;
        let mut shapes = Vec::new();
        if separate {
            if let Some(n) = v4_net {
                shapes.push(Shape::new(
                    DEVICE,
                    config.listen_port,
                    vec![IpNet::V4(n)],
                    (true, false),
                ));
            }
            if let Some(n) = v6_net {
                shapes.push(Shape::new(
                    DEVICE_V6,
                    config.listen_port_v6,
                    vec![IpNet::V6(n)],
                    (false, true),
                ));
            }
        } else {
            let families = match config.mode {
                WireguardMode::Ipv4 => (true, false),
                WireguardMode::Ipv6 => (false, true),
                _ => (true, ext.ext_v6_addr.is_some()),
            };
            shapes.push(Shape::new(
                DEVICE,
                config.listen_port,
                networks.clone(),
                families,
            ));
        }
        let mtu = config.mtu.unwrap_or(ext.mtu).saturating_sub(OVERHEAD);
        let kind = choose_data_path(kernel.as_ref(), mtu).await?;
        let mut devices = Vec::new();
        for shape in shapes {
            let path = match kind {
                DataPathKind::Kernel => DataPath::Kernel(Mutex::new(None)),
                DataPathKind::Userspace => DataPath::Userspace(
                    UserspaceDevice::new(
                        shape.name,
                        &key,
                        psk,
                        config.keepalive_secs,
                        shape.port,
                        shape.underlay,
                    )
                    .await?,
                ),
            };
            devices.push(Device {
                name: shape.name,
                port: shape.port,
                networks: shape.networks,
                path,
                applied: Mutex::new(None),
            });
        }
        let layout = Layout {
            mode: config.mode,
            v4_port: devices.iter().find(|d| d.name == DEVICE).map(|d| d.port),
            v6_port: devices.iter().find(|d| d.name == DEVICE_V6).map(|d| d.port),
            ext_v4: ext.ext_addr,
            ext_v6: ext.ext_v6_addr,
        };
        info!(
            data_path = kind.describe(),
            public_key = %key.public(),
            key_file = %key_file.display(),
            mode = config.mode.name(),
            mtu,
            "wireguard backend"
        );
        Ok(WireguardBackend {
            networks,
            mtu,
            ext,
            config: config.clone(),
            key,
            psk,
            layout,
            kernel,
            devices,
            kind,
        })
    }

    pub fn data_path(&self) -> DataPathKind {
        self.kind
    }

    pub fn public_key(&self) -> Key {
        self.key.public()
    }

    /// The device in the kernel (made anew when missing), its address(es), MTU and state.
    async fn ensure_link(&self, dev: &Device, own: &Lease) -> Result<Link, BackendError> {
        let mtu = self.mtu();
        let existing = self.kernel.link_by_name(dev.name).await?;
        let link = match (&dev.path, existing) {
            (DataPath::Userspace(u), Some(link)) if u.has_device() => link,
            (DataPath::Kernel(_), Some(link)) => link,
            (path, _) => {
                match path {
                    DataPath::Userspace(u) => u.create_device(mtu)?,
                    DataPath::Kernel(_) => {
                        self.kernel.create_wireguard(dev.name, mtu).await?;
                    }
                }
                *dev.applied.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.kernel.link_by_name(dev.name).await?.ok_or_else(|| {
                    BackendError::Unsupported(format!("{} vanished after creation", dev.name))
                })?
            }
        };
        let want: Vec<IpNet> = dev
            .networks
            .iter()
            .filter_map(|n| kernel_sync::device_address(own, family_of(n)))
            .collect();
        // The kernel's IPv6 link-local address is its own.
        kernel_sync::set_addresses(self.kernel.as_ref(), &link, &want, is_link_local).await?;
        if !link.up || link.mtu != mtu {
            self.kernel.set_up(&link, mtu).await?;
        }
        Ok(link)
    }

    /// Give the device exactly `peers`, unless that is what it has.
    async fn configure(
        &self,
        dev: &Device,
        index: u32,
        peers: &[PeerConfig],
    ) -> Result<(), BackendError> {
        let before = {
            let applied = dev.applied.lock().unwrap_or_else(|e| e.into_inner());
            match &*applied {
                Some((i, p)) if *i == index && p.as_slice() == peers => return Ok(()),
                Some((_, p)) => p.len(),
                None => 0,
            }
        };
        match &dev.path {
            DataPath::Userspace(u) => u.set_peers(peers),
            DataPath::Kernel(socket) => {
                let config = genetlink::DeviceConfig {
                    ifname: dev.name.to_string(),
                    private_key: self.key.clone(),
                    listen_port: dev.port,
                    psk: self.psk,
                    keepalive_secs: self.config.keepalive_secs,
                    peers: peers.to_vec(),
                };
                let mut socket = socket.lock().unwrap_or_else(|e| e.into_inner());
                let open = match socket.as_mut() {
                    Some(s) => s,
                    None => socket.insert(genetlink::GenlSocket::connect().map_err(|e| {
                        KernelError::new("open the wireguard generic netlink family", e)
                    })?),
                };
                if let Err(e) = open.set_device(&config) {
                    // A socket that failed is opened afresh next time.
                    *socket = None;
                    let op = format!("configure {} ({} peers)", dev.name, peers.len());
                    return Err(KernelError::new(op, e).into());
                }
            }
        }
        info!(
            device = dev.name,
            peers = peers.len(),
            before,
            "wireguard peers configured"
        );
        *dev.applied.lock().unwrap_or_else(|e| e.into_inner()) = Some((index, peers.to_vec()));
        Ok(())
    }
}

fn is_link_local(a: &IpNet) -> bool {
    matches!(a, IpNet::V6(n) if (n.addr().segments()[0] & 0xffc0) == 0xfe80)
}

/// The kernel's WireGuard when the link type exists (a device of ours left from before is
/// made anew, as upstream), else the userspace one.
async fn choose_data_path(kernel: &dyn Kernel, mtu: u32) -> Result<DataPathKind, BackendError> {
    for name in [DEVICE, DEVICE_V6] {
        if let Some(old) = kernel.link_by_name(name).await? {
            warn!(device = name, "device exists already; making it anew");
            kernel.delete_link(&old).await?;
        }
    }
    match kernel.create_wireguard(DEVICE, mtu).await {
        Ok(link) => {
            // Made again at the first reconcile: nothing is left behind if flanneld stops
            // before it (no lease, a bad store).
            kernel.delete_link(&link).await?;
            Ok(DataPathKind::Kernel)
        }
        Err(e) if e.source.raw_os_error() == Some(EOPNOTSUPP) => Ok(DataPathKind::Userspace),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl Backend for WireguardBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wireguard
    }

    /// `{"PublicKey": …, "Port": …}` for each enabled family, as upstream. Outside Separate
    /// mode the one device listens on ListenPort, so that is the IPv6 Port published
    /// (upstream publishes ListenPortV6 there, where nothing listens).
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        let mut attrs = base_attrs(BackendKind::Wireguard, &self.ext)?;
        let public = self.key.public().to_string();
        let has = |f: Family| self.networks.iter().any(|n| family_of(n) == f);
        if has(Family::V4) {
            attrs.backend_data =
                Some(serde_json::json!({"PublicKey": public, "Port": self.config.listen_port}));
        }
        if has(Family::V6) {
            let port = match self.config.mode {
                WireguardMode::Separate => self.config.listen_port_v6,
                _ => self.config.listen_port,
            };
            attrs.backend_v6_data = Some(serde_json::json!({"PublicKey": public, "Port": port}));
        }
        Ok(attrs)
    }

    async fn reconcile(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        _trigger: Trigger<'_>,
    ) -> Result<Status, BackendError> {
        let plan = self.layout.plan(peers.iter());
        let mut routes = Vec::new();
        for dev in &self.devices {
            let link = self.ensure_link(dev, own).await?;
            let wanted = if dev.name == DEVICE_V6 {
                &plan.v6
            } else {
                &plan.v4
            };
            self.configure(dev, link.index, wanted).await?;
            routes.extend(dev.networks.iter().map(|n| Route::through(*n, link.index)));
        }
        let desired = kernel_sync::Desired {
            routes,
            ..Default::default()
        };
        kernel_sync::reconcile_for(self.kernel.as_ref(), &self.networks, own, &desired).await?;
        Ok(Status::done())
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn repairs_on_kernel_changes(&self) -> bool {
        true
    }

    /// The devices go with flanneld, as upstream's.
    async fn stop(&self) {
        for dev in &self.devices {
            match &dev.path {
                DataPath::Userspace(u) => u.stop(),
                DataPath::Kernel(_) => {
                    if let Ok(Some(link)) = self.kernel.link_by_name(dev.name).await {
                        if let Err(e) = self.kernel.delete_link(&link).await {
                            warn!(device = dev.name, error = %crate::report(&e), "could not remove the device");
                        }
                    }
                }
            }
            info!(device = dev.name, "wireguard device removed");
        }
    }
}

#[cfg(test)]
mod tests;
