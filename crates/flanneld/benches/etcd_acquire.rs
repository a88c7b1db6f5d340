//! Benchmark (not a test): N simulated agents (default 1,000), each with its own etcd
//! connection, acquire leases concurrently against a real etcd. Reports the total time,
//! per-acquisition latency percentiles and etcd round trips per acquisition.
//!
//! Run: `cargo bench -p flanneld --bench etcd_acquire` (AGENTS=n to change the count).

use flannel_core::lease::LeaseAttrs;
use flanneld::subnet::etcd::{EtcdManager, EtcdOptions};
use flanneld::subnet::{AcquireRequest, SubnetManager};
use flanneld_testing::EtcdServer;
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn main() {
    let agents: usize = std::env::var("AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let etcd = EtcdServer::start();
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.0.0.0/8"}"#,
    ]);
    rt.block_on(async {
        // Connect every agent first: we measure acquisition, not connection set-up.
        let mut mgrs = Vec::with_capacity(agents);
        for _ in 0..agents {
            let m = EtcdManager::connect(&EtcdOptions::new(&etcd.endpoint(), "/coreos.com/network")).await.expect("connect");
            m.network_config().await.expect("config");
            mgrs.push(m);
        }
        let before: u64 = mgrs.iter().map(|m| m.round_trips()).sum();
        let start = Instant::now();
        let tasks: Vec<_> = mgrs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, m)| {
                tokio::spawn(async move {
                    let ip = format!("172.{}.{}.{}", 16 + i / 65536, (i / 256) % 256, i % 256);
                    let req = AcquireRequest { attrs: LeaseAttrs::new(ip.parse().unwrap()), previous: None, previous_ipv6: None };
                    let t = Instant::now();
                    let r = m.acquire_lease(&req).await;
                    (r, t.elapsed())
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(agents);
        let mut subnets = HashSet::new();
        let mut failures = 0;
        for t in tasks {
            let (r, d) = t.await.expect("task");
            match r {
                Ok(l) => {
                    subnets.insert(l.key);
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("acquire failed: {e}");
                }
            }
            latencies.push(d);
        }
        let total = start.elapsed();
        let trips: u64 = mgrs.iter().map(|m| m.round_trips()).sum::<u64>() - before;
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("etcd_acquire: {agents} agents, {} distinct subnets, {failures} failures", subnets.len());
        println!("  total {:.0} ms ({:.0} acquisitions/s)", ms(total), agents as f64 / total.as_secs_f64());
        println!("  latency p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms", ms(pct(0.5)), ms(pct(0.9)), ms(pct(0.99)), ms(pct(1.0)));
        println!("  etcd round trips: {trips} total, {:.2} per acquisition (minimum 3: list, grant, create)", trips as f64 / agents as f64);
        assert_eq!(subnets.len() + failures, agents);
    });
}
