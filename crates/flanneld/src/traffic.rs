//! The node's traffic rules and blackhole route, kept in place: applied before subnet.env is
//! written (as upstream), then checked every `--iptables-resync` seconds and re-applied when
//! anything is missing. Every backend gets them, tencent-vpc included.

use crate::kernel::packet_filter::{FilterError, PacketFilter, RuleSet};
use crate::kernel::{KernelError, Route, Routes};
use flannel_core::lease::Lease;
use flannel_core::ValidatedNetConfig;
use ipnet::IpNet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tracing::{info, warn};

/// What the command line asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficOptions {
    /// `--ip-masq`.
    pub masquerade: bool,
    /// `--iptables-forward-rules`.
    pub forward: bool,
    /// `--ip-blackhole-route`.
    pub blackhole: bool,
    /// `--random-fully` is available and not disabled.
    pub random_fully: bool,
}

impl TrafficOptions {
    pub fn any(&self) -> bool {
        self.masquerade || self.forward || self.blackhole
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("applying the {family} {what} rules")]
    Filter {
        family: &'static str,
        what: &'static str,
        #[source]
        source: FilterError,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// The rule sets and blackhole routes for one lease.
pub struct Traffic {
    filter: Arc<dyn PacketFilter>,
    routes: Arc<dyn Routes>,
    sets: Vec<RuleSet>,
    blackholes: Vec<Route>,
    applied: AtomicBool,
}

impl Traffic {
    pub fn new(
        options: &TrafficOptions,
        config: &ValidatedNetConfig,
        own: &Lease,
        filter: Arc<dyn PacketFilter>,
        routes: Arc<dyn Routes>,
    ) -> Traffic {
        let pairs: Vec<(IpNet, IpNet)> = config
            .network()
            .zip(own.subnet())
            .map(|(n, s)| (IpNet::V4(n), IpNet::V4(s)))
            .into_iter()
            .chain(
                config
                    .ipv6_network()
                    .zip(own.ipv6_subnet())
                    .map(|(n, s)| (IpNet::V6(n), IpNet::V6(s))),
            )
            .collect();
        let sets = pairs
            .iter()
            .filter(|_| options.masquerade || options.forward)
            .map(|(network, subnet)| RuleSet {
                network: *network,
                subnet: subnet.trunc(),
                masquerade: options.masquerade,
                forward: options.forward,
                random_fully: options.random_fully,
            })
            .collect();
        let blackholes = pairs
            .iter()
            .filter(|_| options.blackhole)
            .map(|(_, s)| Route::blackhole(*s))
            .collect();
        Traffic {
            filter,
            routes,
            sets,
            blackholes,
            applied: AtomicBool::new(false),
        }
    }

    /// Put everything in place that is missing. The first call applies unconditionally.
    pub async fn ensure(&self) -> Result<(), TrafficError> {
        let first = !self.applied.load(Ordering::Relaxed);
        for set in &self.sets {
            let family = if set.network.addr().is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            };
            let what = match (set.masquerade, set.forward) {
                (true, true) => "masquerade and forward",
                (true, false) => "masquerade",
                _ => "forward",
            };
            let wrap = |source| TrafficError::Filter {
                family,
                what,
                source,
            };
            if first || !self.filter.in_place(set).await.map_err(wrap)? {
                if !first {
                    warn!(network = %set.network, "traffic rules missing or changed; re-applying");
                }
                self.filter.apply(set).await.map_err(wrap)?;
                info!(network = %set.network, subnet = %set.subnet, masquerade = set.masquerade, forward = set.forward, "traffic rules in place");
            }
        }
        for hole in &self.blackholes {
            let present = self
                .routes
                .routes(crate::kernel::family_of(&hole.dst))
                .await?
                .iter()
                .any(|r| r.route == *hole);
            if !present {
                self.routes.replace_route(hole).await?;
                info!(route = %hole, "blackhole route added");
            }
        }
        self.applied.store(true, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;
    use async_trait::async_trait;
    use flannel_core::lease::{Expiry, LeaseAttrs, SubnetKey};
    use std::sync::Mutex;

    /// A packet filter holding the applied sets.
    #[derive(Default)]
    struct FakeFilter {
        applied: Mutex<Vec<RuleSet>>,
        applies: Mutex<usize>,
    }

    #[async_trait]
    impl PacketFilter for FakeFilter {
        async fn apply(&self, set: &RuleSet) -> Result<(), FilterError> {
            *self.applies.lock().unwrap() += 1;
            let mut a = self.applied.lock().unwrap();
            a.retain(|s| s.network != set.network);
            a.push(set.clone());
            Ok(())
        }
        async fn in_place(&self, set: &RuleSet) -> Result<bool, FilterError> {
            Ok(self.applied.lock().unwrap().contains(set))
        }
    }

    #[tokio::test]
    async fn rules_and_blackhole_applied_then_only_restored_when_missing() {
        let config = flannel_core::config::parse_and_check(
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        let own = Lease {
            key: SubnetKey::v4("10.5.7.0/24".parse().unwrap()),
            attrs: LeaseAttrs::new("172.16.0.7".parse().unwrap()),
            expiry: Expiry::Never,
        };
        let filter = Arc::new(FakeFilter::default());
        let kernel = Arc::new(FakeKernel::default());
        let options = TrafficOptions {
            masquerade: true,
            forward: true,
            blackhole: true,
            random_fully: true,
        };
        let t = Traffic::new(&options, &config, &own, filter.clone(), kernel.clone());
        t.ensure().await.unwrap();
        assert_eq!(*filter.applies.lock().unwrap(), 1);
        assert_eq!(
            filter.applied.lock().unwrap()[0].rules().len(),
            10,
            "7 masquerade + 3 forward rules"
        );
        assert_eq!(
            kernel.routes(),
            vec![Route::blackhole("10.5.7.0/24".parse().unwrap())]
        );
        t.ensure().await.unwrap();
        assert_eq!(
            *filter.applies.lock().unwrap(),
            1,
            "in place: not re-applied"
        );
        filter.applied.lock().unwrap().clear();
        kernel.s().routes.clear();
        t.ensure().await.unwrap();
        assert_eq!(*filter.applies.lock().unwrap(), 2, "missing: re-applied");
        assert_eq!(kernel.routes().len(), 1, "blackhole restored");

        let none = Traffic::new(
            &TrafficOptions::default(),
            &config,
            &own,
            filter.clone(),
            kernel.clone(),
        );
        none.ensure().await.unwrap();
        assert_eq!(
            *filter.applies.lock().unwrap(),
            2,
            "nothing asked, nothing done"
        );
    }
}
