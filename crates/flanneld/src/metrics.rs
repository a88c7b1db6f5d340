//! Prometheus metrics served at `/metrics`. Labels never carry secrets: only subnet,
//! backend and event kinds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Reconcile durations: 5 ms doubling to 41 s (14 buckets), written out rather than computed
/// with `powf`, the binary's only use of libm (so it is not loaded).
const RECONCILE_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCallLabels {
    pub action: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableRouteLabels {
    pub table: String,
    /// desired, present, conflicting, blocked.
    pub state: &'static str,
}

/// The tencent-vpc backend's metrics (and the controller's).
#[derive(Clone)]
pub struct VpcMetrics {
    pub api_calls: Family<ApiCallLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub routes: Family<TableRouteLabels, Gauge>,
    pub table_usage: Family<TableLabels, Gauge>,
    pub table_limit: Family<TableLabels, Gauge>,
    pub gc_deleted: Counter,
    /// With Fallback: leases by how they are reached (routed, fallback).
    pub split: Family<SideLabels, Gauge>,
    /// With Fallback: routes of ours the tables can hold.
    pub route_capacity: Gauge,
}

impl VpcMetrics {
    /// With Fallback: the split's two sides and the capacity it was computed for.
    pub fn record_split(&self, s: &crate::backend::tencent_vpc::split::Split) {
        for (side, n) in [("routed", s.routed.len()), ("fallback", s.fallback.len())] {
            self.split.get_or_create(&SideLabels { side }).set(n as i64);
        }
        self.route_capacity.set(s.capacity as i64);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabels {
    /// routed (VPC routes) or fallback (vxlan).
    pub side: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The admission rule a refused lease broke (`flannel_core::admission::Reason::label`).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    pub subnet: String,
    pub backend: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    pub registry: Registry,
    pub ready: Gauge,
    pub peers: Gauge,
    pub leases_refused: Family<ReasonLabels, Gauge>,
    pub lease: Family<LeaseLabels, Gauge>,
    pub lease_expiry: Gauge<f64, AtomicU64>,
    pub lease_events: Family<EventLabels, Counter>,
    pub backend_syncs: Family<ResultLabels, Counter>,
    pub vpc: VpcMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flannel");
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 once subnet.env is written and the backend is active",
            ready.clone(),
        );
        let peers = Gauge::default();
        registry.register("peers", "Peer leases admitted and in use", peers.clone());
        let leases_refused = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "leases_refused",
            "Leases in the store refused by admission (never installed), by the rule broken",
            leases_refused.clone(),
        );
        let lease = Family::<LeaseLabels, Gauge>::default();
        registry.register("lease", "This node's lease (value 1)", lease.clone());
        let lease_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "lease_expiry_timestamp_seconds",
            "When this node's lease expires (0 for a reservation)",
            lease_expiry.clone(),
        );
        let lease_events = Family::<EventLabels, Counter>::default();
        registry.register(
            "lease_events",
            "Peer lease events handled",
            lease_events.clone(),
        );
        let backend_syncs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "backend_syncs",
            "Backend event batches and resyncs, by result",
            backend_syncs.clone(),
        );
        let vpc = VpcMetrics {
            api_calls: Family::default(),
            reconcile_seconds: Histogram::new(RECONCILE_BUCKETS),
            routes: Family::default(),
            table_usage: Family::default(),
            table_limit: Family::default(),
            gc_deleted: Counter::default(),
            split: Family::default(),
            route_capacity: Gauge::default(),
        };
        registry.register(
            "vpc_leases",
            "With Fallback: leases reached over VPC routes (side=routed) or vxlan (side=fallback)",
            vpc.split.clone(),
        );
        registry.register(
            "vpc_route_capacity",
            "With Fallback: routes of this cluster the route tables can hold",
            vpc.route_capacity.clone(),
        );
        registry.register(
            "vpc_api_calls",
            "Tencent Cloud API requests, by action and result (Success or the error code)",
            vpc.api_calls.clone(),
        );
        registry.register(
            "vpc_reconcile_seconds",
            "Time to read, plan and apply the VPC route tables once",
            vpc.reconcile_seconds.clone(),
        );
        registry.register(
            "vpc_routes",
            "Routes per table and state: desired, present, conflicting, blocked (table full)",
            vpc.routes.clone(),
        );
        registry.register(
            "vpc_route_table_usage",
            "Routes in the table",
            vpc.table_usage.clone(),
        );
        registry.register(
            "vpc_route_table_limit",
            "Routes the table may hold",
            vpc.table_limit.clone(),
        );
        registry.register(
            "vpc_gc_deleted_routes",
            "Orphaned routes of this cluster deleted by the garbage collector",
            vpc.gc_deleted.clone(),
        );
        Metrics {
            registry,
            ready,
            peers,
            leases_refused,
            lease,
            lease_expiry,
            lease_events,
            backend_syncs,
            vpc,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::exponential_buckets;

    #[test]
    fn reconcile_buckets_are_the_doubling_series_from_5_ms() {
        let computed: Vec<f64> = exponential_buckets(0.005, 2.0, 14).collect();
        assert_eq!(RECONCILE_BUCKETS.to_vec(), computed);
    }
}
