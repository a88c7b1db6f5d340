//! How soon a removed piece of the kernel data plane is back, with the resync 300 s away (the
//! repair comes from kernel notifications): host-gw, a peer route deleted; vxlan, the peer's
//! neighbour entry deleted. Each is removed BENCH_TRIES times (default 20); the median and
//! the max are reported against the 1 s target. Root only.
//!
//! `cargo bench -p flanneld --bench kernel_repair`

#[path = "../tests/common/cluster.rs"]
mod cluster;

use cluster::Cluster;
use flanneld_testing::netns::wait_for;
use std::time::{Duration, Instant};

fn tries() -> usize {
    std::env::var("BENCH_TRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Remove with `remove`, then time until `present` holds again (polled every 5 ms).
fn measure(
    what: &str,
    c: &Cluster,
    remove: &[&str],
    present: impl Fn(&str) -> bool,
    list: &[&str],
) {
    let n1 = c.node(1);
    let listing = || String::from_utf8_lossy(&n1.ns.run(list, None).stdout).into_owned();
    let mut times = Vec::new();
    for _ in 0..tries() {
        wait_for("in place before removing", Duration::from_secs(30), || {
            let l = listing();
            present(&l).then_some(()).ok_or(l)
        });
        n1.ns.ok(remove);
        let start = Instant::now();
        loop {
            if present(&listing()) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: not back in 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(start.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    let max = *times.last().unwrap();
    println!(
        "{what}: {} tries, median {:.0} ms, max {:.0} ms (target 1000 ms: {})",
        times.len(),
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        if max <= Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
}

fn main() {
    let c = Cluster::start(
        "brh",
        r#"{"Network":"10.246.0.0/16","Backend":{"Type":"host-gw"}}"#,
        2,
        &["--resync-period=300"],
    );
    let p2 = c.node(2).subnet();
    let want = format!("{p2} via 172.16.0.2 dev eth0 proto 87");
    measure(
        "host-gw, a deleted route",
        &c,
        &["ip", "route", "del", &p2],
        |l| l.contains(&want),
        &["ip", "route", "show"],
    );
    drop(c);

    let c = Cluster::start(
        "brv",
        r#"{"Network":"10.247.0.0/16","Backend":{"Type":"vxlan"}}"#,
        2,
        &["--resync-period=300"],
    );
    let gw2 = c.node(2).subnet().split('/').next().unwrap().to_string();
    let want = format!("{gw2} lladdr");
    measure(
        "vxlan, a deleted neighbour entry",
        &c,
        &["ip", "neigh", "del", &gw2, "dev", "flannel.1"],
        |l| l.contains(&want),
        &["ip", "neigh", "show", "dev", "flannel.1"],
    );
}
