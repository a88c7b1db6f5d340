//! Controller mode, on the node: no credentials. The agent publishes its lease and is ready
//! once the controller (`flanneld --controller`) reports its route in place in the route
//! status record of the lease store; reading it costs no cloud call.

use super::fallback::Fallback;
use super::probe::DataPathProbe;
use super::split::Split;
use super::TencentVpcError;
use super::{own_route, NodeFacts, Readiness, RouteStatus};
use crate::backend::{Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use crate::subnet::SubnetManager;
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::BackendKind;
use flannel_core::lease::{Lease, LeaseAttrs};
use std::sync::Arc;
use std::time::Duration;

pub struct Controlled {
    ext: ExternalInterface,
    node: NodeFacts,
    store: Arc<dyn SubnetManager>,
    record: String,
    resync: Duration,
    ready: Readiness,
    fallback: Option<Fallback>,
    probe: Option<DataPathProbe>,
}

impl Controlled {
    /// An agent of the controller of `cluster`, reading its status from `store` every
    /// `resync`.
    pub fn new(
        ext: ExternalInterface,
        node: NodeFacts,
        cluster: &str,
        resync: Duration,
        store: Arc<dyn SubnetManager>,
    ) -> Controlled {
        Controlled {
            ext,
            node,
            store,
            record: RouteStatus::record_name(cluster),
            resync,
            ready: Readiness::default(),
            fallback: None,
            probe: None,
        }
    }

    /// Hold the probe address and, unless `ReadinessProbe` is off, be ready only once a
    /// probe from it is answered (without Fallback).
    pub fn with_probe(mut self, probe: DataPathProbe) -> Controlled {
        self.probe = Some(probe);
        self
    }

    pub fn with_fallback(mut self, fallback: Fallback) -> Controlled {
        self.fallback = Some(fallback);
        self
    }

    /// The controller's status record: empty before the controller's first write, an error
    /// when it cannot be read or parsed (reported, never read as "nothing routed").
    async fn status(&self) -> Result<RouteStatus, BackendError> {
        let Some(text) = self
            .store
            .get_record(&self.record)
            .await
            .map_err(TencentVpcError::RouteStatus)?
        else {
            return Ok(RouteStatus::default());
        };
        let status =
            serde_json::from_str(&text).map_err(|e| TencentVpcError::CorruptRouteStatus {
                record: self.record.clone(),
                source: e,
            })?;
        Ok(status)
    }

    /// Whether Fallback still has peers the controller has not placed (re-read soon).
    fn unplaced(&self, peers: &PeerView<'_>) -> bool {
        self.fallback.as_ref().is_some_and(|f| !f.places(peers))
    }
}

#[async_trait]
impl Backend for Controlled {
    fn kind(&self) -> BackendKind {
        BackendKind::TencentVpc
    }

    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        super::lease_attrs(&self.ext, &self.node, self.fallback.as_ref())
    }

    async fn reconcile(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        trigger: Trigger<'_>,
    ) -> Result<Status, BackendError> {
        let Some(mine) = own_route(own, &self.node) else {
            return Ok(Status::done());
        };
        if let Trigger::Leases { .. } = trigger {
            // A newcomer is reached over vxlan at once, until the controller routes it.
            if let Some(f) = &self.fallback {
                f.sync(own, peers).await?;
            }
            let ready = self.ready.get();
            return Ok(Status {
                ready,
                pending: !ready || self.unplaced(peers),
                problem: None,
            });
        }
        let mut status = self.status().await?;
        let why = status.unrouted.remove(&mine.dest);
        let routed = status.routes.get(&mine.dest) == Some(&mine.next_hop);
        let own_fallback = status.fallback.contains(&mine.dest);
        if let Some(f) = &self.fallback {
            let split = Split {
                routed: status.routes.keys().copied().collect(),
                fallback: status.fallback,
                capacity: 0,
            };
            let everywhere = status.routes.into_keys().collect();
            f.update(split, everywhere, mine.dest);
            f.sync(own, peers).await?;
        }
        let ready = routed || (self.fallback.is_some() && own_fallback);
        self.ready
            .set(ready, !routed && own_fallback, mine.dest, &[]);
        Ok(Status {
            ready,
            pending: !ready || self.unplaced(peers),
            problem: (!ready).then(|| match why {
                Some(why) => format!(
                    "the tencent-vpc controller cannot route {}: {why}",
                    mine.dest
                ),
                None => format!(
                    "waiting for the tencent-vpc controller to route {} via {}",
                    mine.dest, mine.next_hop
                ),
            }),
        })
    }

    fn mtu(&self) -> u32 {
        match &self.fallback {
            Some(f) => f.mtu(),
            None => self.ext.mtu,
        }
    }

    fn resync_period(&self) -> Option<Duration> {
        Some(self.resync)
    }

    fn probe_plan(&self, own: &Lease, peers: &PeerView<'_>) -> Option<crate::probe::ProbePlan> {
        self.probe.as_ref()?.plan(own, peers)
    }
}
