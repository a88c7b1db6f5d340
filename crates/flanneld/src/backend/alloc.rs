//! Upstream's `alloc` backend: a lease and subnet.env, no routes. Useful when something else
//! (a cloud controller, BGP) routes pod subnets, and as the smallest real backend.

use super::{base_attrs, Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::BackendKind;
use flannel_core::lease::{Lease, LeaseAttrs};

pub struct AllocBackend {
    ext: ExternalInterface,
}

impl AllocBackend {
    pub fn new(ext: ExternalInterface) -> Self {
        AllocBackend { ext }
    }
}

#[async_trait]
impl Backend for AllocBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Alloc
    }
    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        base_attrs(BackendKind::Alloc, &self.ext)
    }
    async fn reconcile(
        &self,
        _own: &Lease,
        _peers: &PeerView<'_>,
        _trigger: Trigger<'_>,
    ) -> Result<Status, BackendError> {
        Ok(Status::done())
    }
    fn mtu(&self) -> u32 {
        self.ext.mtu
    }
}
