//! Backends turn leases into a data plane. The daemon owns the loop and calls a backend with
//! batches of peer events and periodic full resyncs, so a backend is tested by feeding it
//! events against fakes, without root.

pub mod alloc;

use crate::iface::ExternalInterface;
use async_trait::async_trait;
use flannel_core::backend_config::{BackendConfig, BackendConfigError, BackendKind};
use flannel_core::lease::{Lease, LeaseAttrs, LeaseEvent};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Config(#[from] BackendConfigError),
    #[error(
        "backend type {0} is recognised but not supported yet by flannel-rs (supported now: alloc)"
    )]
    NotSupportedYet(BackendKind),
    #[error("interface {0} has no IPv4 address to publish")]
    NoPublicIp(String),
}

#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// The attributes this node publishes in its lease (BackendType, BackendData).
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError>;
    /// Set up what depends on the node's own lease (device address, own cloud route).
    async fn activate(&self, own: &Lease) -> Result<(), BackendError>;
    /// Apply one batch of peer events. Must be idempotent.
    async fn handle(&self, own: &Lease, events: &[LeaseEvent]) -> Result<(), BackendError>;
    /// Bring the data plane in line with the full set of peers (repair drift).
    async fn resync(&self, own: &Lease, peers: &[Lease]) -> Result<(), BackendError>;
    /// The MTU pods should use (FLANNEL_MTU).
    fn mtu(&self) -> u32;
}

/// The common part of every lease: public addresses of the external interface.
pub fn base_attrs(kind: BackendKind, ext: &ExternalInterface) -> Result<LeaseAttrs, BackendError> {
    let public_ip = match (ext.ext_addr, ext.ext_v6_addr) {
        (Some(a), _) => a,
        (None, Some(_)) => std::net::Ipv4Addr::UNSPECIFIED,
        (None, None) => return Err(BackendError::NoPublicIp(ext.name.clone())),
    };
    let mut attrs = LeaseAttrs::new(public_ip);
    attrs.public_ipv6 = ext.ext_v6_addr;
    attrs.backend_type = kind.name().to_string();
    Ok(attrs)
}

/// Build the backend named by the config.
pub fn build(
    config: &BackendConfig,
    ext: &ExternalInterface,
) -> Result<Box<dyn Backend>, BackendError> {
    match config {
        BackendConfig::Alloc => Ok(Box::new(alloc::AllocBackend::new(ext.clone()))),
        other => Err(BackendError::NotSupportedYet(other.kind())),
    }
}
