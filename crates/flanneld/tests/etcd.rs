//! The etcd subnet manager against a real etcd (Debian's etcd-server), started per test on
//! free loopback ports.

mod common;

use common::{daemon_config, wait_until_async, FakeHost};
use flannel_core::admission::{Allocation, LeaseGate, Rules};
use flannel_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use flannel_core::watch::WatchUpdate;
use flanneld::daemon::{self, DaemonError};
use flanneld::health::Health;
use flanneld::subnet::election::LeaderElection;
use flanneld::subnet::etcd::{Election, EtcdManager, EtcdOptions};
use flanneld::subnet::{AcquireRequest, LeaseStream, SubnetError, SubnetManager};
use flanneld_testing::EtcdServer;
use futures::StreamExt;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

const PREFIX: &str = "/coreos.com/network";

async fn manager(etcd: &EtcdServer) -> EtcdManager {
    EtcdManager::connect(&EtcdOptions::new(&etcd.endpoint(), PREFIX))
        .await
        .unwrap()
}

fn put_config(etcd: &EtcdServer, config: &str) {
    etcd.etcdctl(&["put", "/coreos.com/network/config", config]);
}

fn req(ip: &str) -> AcquireRequest {
    let mut attrs = LeaseAttrs::new(ip.parse().unwrap());
    attrs.backend_type = "host-gw".into();
    AcquireRequest {
        attrs,
        previous: None,
        previous_ipv6: None,
    }
}

/// Next update from a lease stream, with a deadline.
async fn next(stream: &mut LeaseStream) -> WatchUpdate {
    tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("a watch update within 15 s")
        .expect("the stream does not end")
        .expect("no watch error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn config_missing_then_present_then_invalid() {
    let etcd = EtcdServer::start();
    let m = manager(&etcd).await;
    let e = m.network_config().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
    );
    put_config(
        &etcd,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#,
    );
    let c = m.network_config().await.unwrap();
    assert_eq!(
        (c.ipv4.unwrap().subnet_len, c.backend_type.as_str()),
        (24, "host-gw")
    );
    put_config(&etcd, r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#);
    assert_eq!(
        flanneld::report(&m.network_config().await.unwrap_err()),
        "/coreos.com/network/config: SubnetLen must be less than /31"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn fifty_agents_get_fifty_distinct_subnets_with_24h_ttl() {
    let etcd = EtcdServer::start();
    put_config(
        &etcd,
        r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.200.0"}"#,
    );
    let mut tasks = Vec::new();
    for i in 0..50 {
        let endpoint = etcd.endpoint();
        tasks.push(tokio::spawn(async move {
            // Each agent has its own client, as separate nodes would.
            let m = EtcdManager::connect(&EtcdOptions::new(&endpoint, PREFIX))
                .await
                .unwrap();
            m.network_config().await.unwrap();
            m.acquire_lease(&req(&format!("172.16.1.{i}")))
                .await
                .unwrap()
        }));
    }
    let leases: Vec<Lease> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let subnets: HashSet<_> = leases.iter().map(|l| l.key).collect();
    assert_eq!(subnets.len(), 50, "no duplicates");
    for l in &leases {
        let sn = l.subnet().unwrap();
        assert!(
            sn.network() >= "10.5.10.0".parse::<Ipv4Addr>().unwrap()
                && sn.network() <= "10.5.200.0".parse::<Ipv4Addr>().unwrap(),
            "{sn}"
        );
        assert_eq!(sn.prefix_len(), 24);
    }
    // Every stored key has an etcd lease of ~24 h.
    let m = manager(&etcd).await;
    let stored = m.list_with_ttl().await.unwrap();
    assert_eq!(stored.len(), 50);
    for l in stored {
        let Expiry::At(t) = l.expiry else {
            panic!("{} has no TTL", l.key)
        };
        let left = t.duration_since(std::time::SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(86_000) && left <= Duration::from_secs(86_400),
            "{left:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn interop_with_upstream_keys_and_values() {
    let etcd = EtcdServer::start();
    put_config(
        &etcd,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
    );
    // An upstream node's lease, exactly as upstream writes it.
    let upstream = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    let lease_id = etcd.etcdctl(&["lease", "grant", "86400"]);
    let lease_id = lease_id.split_whitespace().nth(1).unwrap().to_string();
    etcd.etcdctl(&[
        "put",
        "--lease",
        &lease_id,
        "/coreos.com/network/subnets/10.5.52.0-24",
        upstream,
    ]);

    let m = manager(&etcd).await;
    m.network_config().await.unwrap();
    let mut w = m.watch_leases().await.unwrap();
    let WatchUpdate::Snapshot(snap) = next(&mut w).await else {
        panic!("snapshot first")
    };
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].key.to_string(), "10.5.52.0-24");
    assert_eq!(
        snap[0].attrs.public_ip,
        "192.168.64.3".parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(snap[0].attrs.backend_type, "vxlan");
    assert_eq!(
        snap[0].attrs.backend_data,
        Some(serde_json::json!({"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}))
    );
    assert_eq!(
        snap[0].attrs.to_json(),
        upstream,
        "our encoder reproduces upstream's bytes"
    );

    // Ours, read back by etcdctl: upstream's key pattern and value format.
    let mut r = req("172.16.0.7");
    r.attrs.backend_type = "vxlan".into();
    r.attrs.backend_data = Some(serde_json::json!({"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}));
    let ours = m.acquire_lease(&r).await.unwrap();
    let got = etcd.etcdctl(&[
        "get",
        "--prefix",
        "/coreos.com/network/subnets/",
        "--print-value-only=false",
    ]);
    let key = format!("/coreos.com/network/subnets/{}", ours.key);
    assert!(
        regex::Regex::new(r"^/coreos.com/network/subnets/(\d+\.\d+\.\d+\.\d+)-(\d+)$")
            .unwrap()
            .is_match(&key)
    );
    assert!(got.contains(&format!("{key}\n{{\"PublicIP\":\"172.16.0.7\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{{\"VNI\":1,\"VtepMAC\":\"aa:bb:cc:dd:ee:ff\"}}}}\n")), "{got}");
    // And the watch reports it.
    let WatchUpdate::Events(ev) = next(&mut w).await else {
        panic!("events")
    };
    assert!(matches!(&ev[0], LeaseEvent::Added(l) if l.key == ours.key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn restarted_agent_keeps_its_subnet_by_public_ip_and_by_subnet_env() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let a = manager(&etcd)
        .await
        .acquire_lease(&req("172.16.0.7"))
        .await
        .unwrap();
    let again = manager(&etcd)
        .await
        .acquire_lease(&req("172.16.0.7"))
        .await
        .unwrap();
    assert_eq!(a.key, again.key);
    let all = manager(&etcd).await.list().await.unwrap().0;
    assert_eq!(all.len(), 1, "no second lease for the same node");
    // A node whose lease is gone (deleted) but whose subnet.env remembers 10.5.77.0/24.
    etcd.etcdctl(&["del", "--prefix", "/coreos.com/network/subnets/"]);
    let mut r = req("172.16.0.8");
    r.previous = Some("10.5.77.0/24".parse().unwrap());
    let b = manager(&etcd).await.acquire_lease(&r).await.unwrap();
    assert_eq!(b.key.to_string(), "10.5.77.0-24");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn reservations_are_honoured_and_never_leased() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.5.42.0-24",
        r#"{"PublicIP":"172.16.0.7","PublicIPv6":null}"#,
    ]);
    let m = manager(&etcd).await;
    let l = m.acquire_lease(&req("172.16.0.7")).await.unwrap();
    assert_eq!(
        (l.key.to_string().as_str(), l.expiry),
        ("10.5.42.0-24", Expiry::Never)
    );
    let renewed = m.renew_lease(&l).await.unwrap();
    assert_eq!(renewed.expiry, Expiry::Never);
    // Still no etcd lease on the key, and our attributes were written.
    let out = etcd.etcdctl(&[
        "get",
        "/coreos.com/network/subnets/10.5.42.0-24",
        "-w",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["kvs"][0].get("lease").is_none_or(|l| l == 0), "{out}");
    let stored = m.list().await.unwrap().0;
    assert_eq!(stored[0].attrs.backend_type, "host-gw");
    // Another node never takes a reserved subnet.
    let other = m.acquire_lease(&req("172.16.0.8")).await.unwrap();
    assert_ne!(other.key, l.key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn expiry_is_a_removed_event_and_garbage_is_ignored() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let m = manager(&etcd).await;
    let own = m.acquire_lease(&req("172.16.0.7")).await.unwrap();
    let mut stream = m.watch_leases().await.unwrap();
    let config = flannel_core::config::parse_and_check(r#"{"Network":"10.5.0.0/16"}"#).unwrap();
    let mut w = LeaseGate::new(Rules::new(&config, Allocation::Pool), Some(&own));
    let first = w.apply(next(&mut stream).await).events;
    assert!(first.is_empty(), "only our own lease so far");
    // A peer with a 2 s lease that nobody renews, on a subnet that is not ours (ours is random).
    let peer = if own.key.to_string() == "10.5.99.0-24" {
        "10.5.97.0-24"
    } else {
        "10.5.99.0-24"
    };
    let id = etcd.etcdctl(&["lease", "grant", "2"]);
    let id = id.split_whitespace().nth(1).unwrap().to_string();
    etcd.etcdctl(&[
        "put",
        "--lease",
        &id,
        &format!("/coreos.com/network/subnets/{peer}"),
        r#"{"PublicIP":"172.16.0.99","PublicIPv6":null}"#,
    ]);
    // Garbage under subnets/: must not disturb anything (upstream flushed every route).
    etcd.etcdctl(&["put", "/coreos.com/network/subnets/not-a-subnet", "{}"]);
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.5.98.0-24",
        "not json",
    ]);
    let added = w.apply(next(&mut stream).await).events;
    assert!(
        matches!(added.as_slice(), [LeaseEvent::Added(l)] if l.key.to_string() == peer),
        "{added:?}"
    );
    // The next update is the expiry (the garbage produced none).
    let removed = w.apply(next(&mut stream).await).events;
    assert!(
        matches!(removed.as_slice(), [LeaseEvent::Removed(l)] if l.key.to_string() == peer && l.attrs.public_ip == "172.16.0.99".parse::<Ipv4Addr>().unwrap()),
        "{removed:?}"
    );
    assert_eq!(w.peer_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn etcd_restart_keeps_leases_and_the_watch_resumes() {
    let mut etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let m = manager(&etcd).await;
    let own = m.acquire_lease(&req("172.16.0.7")).await.unwrap();
    let before = etcd.etcdctl(&[
        "get",
        "--prefix",
        "/coreos.com/network/subnets/",
        "-w",
        "json",
    ]);
    let mut stream = m.watch_leases().await.unwrap();
    assert!(matches!(next(&mut stream).await, WatchUpdate::Snapshot(s) if s.len() == 1));

    etcd.restart();
    let after = etcd.etcdctl(&[
        "get",
        "--prefix",
        "/coreos.com/network/subnets/",
        "-w",
        "json",
    ]);
    let kvs = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["kvs"].clone();
    assert_eq!(
        kvs(&before),
        kvs(&after),
        "no lease changed across the restart"
    );

    // Events written after the restart reach the same stream, none missed (three subnets
    // that are not ours: another node writing our key would take our lease).
    let own_third = own.key.ipv4.network().octets()[2];
    let others = (60..64).filter(|o| *o != own_third).take(3);
    for third in others {
        etcd.etcdctl(&[
            "put",
            &format!("/coreos.com/network/subnets/10.5.{third}.0-24"),
            r#"{"PublicIP":"172.16.0.60","PublicIPv6":null}"#,
        ]);
    }
    let mut seen = HashSet::new();
    while seen.len() < 3 {
        match next(&mut stream).await {
            WatchUpdate::Events(ev) => ev.iter().for_each(|e| {
                seen.insert(e.lease().key);
            }),
            WatchUpdate::Snapshot(s) => panic!("resumed by revision, not re-listed: {s:?}"),
        }
    }
    // Renewal works against the restarted server.
    assert!(matches!(
        m.renew_lease(&own).await.unwrap().expiry,
        Expiry::At(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn compaction_turns_into_a_fresh_snapshot() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let m = manager(&etcd).await;
    let (_, _, rev) = m.list().await.unwrap();
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.5.3.0-24",
        r#"{"PublicIP":"172.16.0.3","PublicIPv6":null}"#,
    ]);
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/subnets/10.5.4.0-24",
        r#"{"PublicIP":"172.16.0.4","PublicIPv6":null}"#,
    ]);
    let latest = m.list().await.unwrap().2;
    etcd.etcdctl(&["compact", &latest.to_string()]);
    // A watcher that was down since `rev` must re-list, not miss the two leases.
    let mut stream = m.watch_from(vec![], rev + 1);
    assert_eq!(next(&mut stream).await, WatchUpdate::Snapshot(vec![]));
    let WatchUpdate::Snapshot(s) = next(&mut stream).await else {
        panic!("a re-list after compaction")
    };
    assert_eq!(s.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn out_of_subnets() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.0.0.0/28"}"#);
    let m = manager(&etcd).await;
    for i in 0..3 {
        m.acquire_lease(&req(&format!("172.16.0.{i}")))
            .await
            .unwrap();
    }
    let e = m.acquire_lease(&req("172.16.0.9")).await.unwrap_err();
    assert!(matches!(e, SubnetError::Alloc(_)));
    assert_eq!(e.to_string(), "out of subnets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn daemon_shuts_down_cleanly_when_its_lease_is_deleted() {
    let etcd = EtcdServer::start();
    put_config(
        &etcd,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (health, run) = spawn_daemon(&etcd, "172.16.0.7", dir.path()).await;
    let keys = etcd.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        "/coreos.com/network/subnets/",
    ]);
    let key = keys.lines().find(|l| !l.is_empty()).unwrap().to_string();
    etcd.etcdctl(&["del", &key]);
    let r = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(DaemonError::LeaseRevoked)), "{r:?}");
    assert!(!health.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn leader_election_one_of_five_then_handover_on_death() {
    let etcd = EtcdServer::start();
    let ttl = 3;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let mut handles = Vec::new();
    for i in 0..5 {
        let endpoint = etcd.endpoint();
        let tx = tx.clone();
        handles.push(tokio::spawn(async move {
            let m = EtcdManager::connect(&EtcdOptions::new(&endpoint, PREFIX))
                .await
                .unwrap();
            let e = Election::new(&m, "gc", &format!("node-{i}"), ttl);
            let leadership = e.campaign().await.unwrap();
            tx.send((i, std::time::Instant::now())).await.unwrap();
            // Hold leadership until this task is aborted (= the process dies).
            std::future::pending::<()>().await;
            drop(leadership);
        }));
    }
    let (first, _) = tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .unwrap()
        .unwrap();
    // Exactly one leader: nobody else wins while it lives (well past the TTL: keep-alives work).
    assert!(
        tokio::time::timeout(Duration::from_secs(ttl as u64 + 2), rx.recv())
            .await
            .is_err(),
        "a second leader appeared"
    );
    let m = manager(&etcd).await;
    assert_eq!(
        Election::new(&m, "gc", "observer", ttl)
            .leader()
            .await
            .unwrap(),
        Some(format!("node-{first}"))
    );
    // The leader dies without resigning: another takes over once its lease expires.
    handles[first].abort();
    let died = std::time::Instant::now();
    let (second, at) = tokio::time::timeout(Duration::from_secs(ttl as u64 + 5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second, first);
    let handover = at.duration_since(died);
    assert!(
        handover <= Duration::from_secs(ttl as u64 + 2),
        "handover took {handover:?}, lease TTL is {ttl}s"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .is_err(),
        "still exactly one leader"
    );
    for h in handles {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn flannelctl_leases_list() {
    let etcd = EtcdServer::start();
    etcd.etcdctl(&["put", "/x/config", r#"{"Network":"10.5.0.0/16"}"#]);
    etcd.etcdctl(&[
        "put",
        "/x/subnets/10.5.42.0-24",
        r#"{"PublicIP":"172.16.0.42","PublicIPv6":null,"BackendType":"vxlan"}"#,
    ]);
    let m = EtcdManager::connect(&EtcdOptions::new(&etcd.endpoint(), "/x"))
        .await
        .unwrap();
    m.acquire_lease(&req("172.16.0.7")).await.unwrap();
    etcd.etcdctl(&["put", "/x/subnets/garbage", "{}"]);
    etcd.etcdctl(&["put", "/x/subnets/10.5.43.0-24", "not json"]);
    // A hostile lease: listed, with the rule it breaks.
    etcd.etcdctl(&[
        "put",
        "/x/subnets/0.0.0.0-1",
        r#"{"PublicIP":"172.16.0.66","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    let endpoint = etcd.endpoint();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flannelctl"))
            .args(["leases", "list", "-etcd-prefix=/x"])
            .arg(format!("--etcd-endpoints={endpoint}"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("SUBNET") && lines[0].ends_with("STATUS"));
    let reserved = lines
        .iter()
        .find(|l| l.starts_with("10.5.42.0/24 "))
        .unwrap();
    assert!(
        reserved.contains("172.16.0.42")
            && reserved.contains("vxlan")
            && reserved.contains("never")
            && reserved.contains(" yes ")
            && reserved.ends_with("refused: vxlan lease has no VtepMAC for its IPv4 subnet"),
        "{reserved}"
    );
    let leased = lines.iter().find(|l| l.contains("172.16.0.7")).unwrap();
    assert!(
        leased.contains("host-gw")
            && leased.contains(" 23h59m")
            && leased.contains(" no ")
            && leased.ends_with(" used"),
        "{leased}"
    );
    let hostile = lines.iter().find(|l| l.starts_with("0.0.0.0/1 ")).unwrap();
    assert!(
        hostile.ends_with("refused: IPv4 subnet 0.0.0.0/1 covers the Network 10.5.0.0/16: a lease must be a subnet inside it"),
        "{hostile}"
    );
    // What could not be parsed is not listed, but said on stderr, naming the key.
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().collect();
    assert_eq!(warnings.len(), 2, "{err}");
    let said = |what: &str, key: &str| {
        warnings
            .iter()
            .any(|w| w.contains(" WARN ") && w.contains(what) && w.contains(key))
    };
    assert!(
        said("ignoring unparseable subnet key", "key=/x/subnets/garbage"),
        "{err}"
    );
    assert!(
        said(
            "ignoring lease with an unparseable value",
            "key=/x/subnets/10.5.43.0-24"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn username_and_password_auth_and_no_password_in_errors() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    etcd.etcdctl(&["user", "add", "root:root-pw-123"]);
    etcd.etcdctl(&["user", "add", "flannel:flannel-pw-456"]);
    etcd.etcdctl(&["role", "add", "flannel"]);
    etcd.etcdctl(&[
        "role",
        "grant-permission",
        "flannel",
        "--prefix=true",
        "readwrite",
        "/coreos.com/network/",
    ]);
    etcd.etcdctl(&["user", "grant-role", "flannel", "flannel"]);
    etcd.etcdctl(&["auth", "enable"]);

    let mut opts = EtcdOptions::new(&etcd.endpoint(), PREFIX);
    opts.username = Some("flannel".into());
    opts.password = Some(secrecy::SecretString::from("flannel-pw-456".to_string()));
    assert!(!format!("{opts:?}").contains("flannel-pw-456"));
    let m = EtcdManager::connect(&opts).await.unwrap();
    m.network_config().await.unwrap();
    m.acquire_lease(&req("172.16.0.7")).await.unwrap();

    opts.password = Some(secrecy::SecretString::from("wrong-pw-789".to_string()));
    let e = match EtcdManager::connect(&opts).await {
        Err(e) => e,
        Ok(m) => m.network_config().await.unwrap_err(),
    };
    let text = format!("{e} {e:?}");
    assert!(text.contains("authentication failed"), "{text}");
    assert!(!text.contains("wrong-pw-789"), "{text}");
    // Without credentials nothing is readable.
    let anon = EtcdManager::connect(&EtcdOptions::new(&etcd.endpoint(), PREFIX))
        .await
        .unwrap();
    assert!(anon.network_config().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn tls_with_client_certificates() {
    let etcd = EtcdServer::start_tls();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let t = etcd.tls().unwrap().clone();
    let mut opts = EtcdOptions::new(&etcd.endpoint(), PREFIX);
    opts.cafile = Some(t.ca.clone());
    opts.certfile = Some(t.client_cert.clone());
    opts.keyfile = Some(t.client_key.clone());
    let m = EtcdManager::connect(&opts).await.unwrap();
    assert_eq!(
        m.network_config().await.unwrap().ipv4.unwrap().subnet_len,
        24
    );
    let l = m.acquire_lease(&req("172.16.0.7")).await.unwrap();
    assert!(etcd
        .etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/"
        ])
        .contains(&l.key.to_string()));
    // Without a client certificate the server refuses us.
    let mut no_cert = EtcdOptions::new(&etcd.endpoint(), PREFIX);
    no_cert.cafile = Some(t.ca);
    let refused = match EtcdManager::connect(&no_cert).await {
        Err(_) => true,
        Ok(m) => m.network_config().await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn a_dead_endpoint_in_the_list_is_failed_over() {
    // Upstream's default endpoint list starts with 127.0.0.1:4001, which is usually dead.
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoints = format!("http://127.0.0.1:{dead},{}", etcd.endpoint());
    let m = EtcdManager::connect(&EtcdOptions::new(&endpoints, PREFIX))
        .await
        .unwrap();
    for i in 0..20 {
        m.network_config()
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
    }
    m.acquire_lease(&req("172.16.0.7")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn an_invalid_config_in_etcd_is_fatal_before_any_lease() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path());
    let sm: Arc<dyn SubnetManager> = Arc::new(manager(&etcd).await);
    let run = daemon::run(
        cfg.clone(),
        sm,
        &flanneld::backend::Builtin,
        &FakeHost("172.16.0.7"),
        Arc::new(Health::default()),
        std::future::pending(),
    );
    let err = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("a bad config ends the daemon instead of being retried")
        .unwrap_err();
    assert_eq!(
        flanneld::report(&err),
        "/coreos.com/network/config: SubnetLen must be less than /31"
    );
    assert!(!cfg.subnet_file.exists());
    assert!(etcd
        .etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/"
        ])
        .trim()
        .is_empty());
}

/// The leader is cut off from etcd (its keep-alives fail) while a second candidate reaches
/// etcd directly: at no instant do both claim leadership, and the second takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn a_partitioned_leader_steps_down_before_anyone_else_leads() {
    let etcd = EtcdServer::start();
    let ttl = 2;
    let target: std::net::SocketAddr = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = flanneld_testing::TcpProxy::start(target).await;
    let via_proxy =
        EtcdManager::connect(&EtcdOptions::new(&format!("http://{}", proxy.addr), PREFIX))
            .await
            .unwrap();
    let direct = manager(&etcd).await;

    let a = Election::new(&via_proxy, "gc", "a", ttl)
        .campaign()
        .await
        .unwrap();
    assert!(a.is_leader());
    let b_election = Election::new(&direct, "gc", "b", ttl);
    let b_task = tokio::spawn(async move { b_election.campaign().await.unwrap() });

    proxy.cut();
    // Watch both claims every millisecond until b leads, and for a while after.
    let started = std::time::Instant::now();
    let mut a_stepped_down = None;
    let b = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "b never took over"
        );
        if a_stepped_down.is_none() && !a.is_leader() {
            a_stepped_down = Some(std::time::Instant::now());
        }
        if b_task.is_finished() {
            let b = b_task.await.unwrap();
            assert!(
                !(a.is_leader() && b.is_leader()),
                "two leaders at the moment b won"
            );
            break b;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let a_down = a_stepped_down.expect("a stepped down before b won");
    assert!(b.is_leader());
    for _ in 0..200 {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!a.is_leader(), "a never claims leadership again");
    assert!(
        a_down.duration_since(started) <= Duration::from_secs(ttl as u64),
        "a stepped down within the TTL of its last renewal"
    );
}

/// Upstream's client ignores credentials when etcd has authentication disabled; so do we.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn credentials_against_an_etcd_without_auth_are_ignored() {
    let etcd = EtcdServer::start();
    let mut opts = EtcdOptions::new(&etcd.endpoint(), PREFIX);
    opts.username = Some("flannel".into());
    opts.password = Some(secrecy::SecretString::from("unused-pw"));
    let m = EtcdManager::connect(&opts)
        .await
        .expect("connects without auth");
    put_config(
        &etcd,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#,
    );
    assert_eq!(
        m.network_config()
            .await
            .unwrap()
            .network()
            .unwrap()
            .to_string(),
        "10.5.0.0/16"
    );
}

/// One in-process flanneld on `ip` with its subnet.env in `dir`, against `etcd`.
async fn spawn_daemon(
    etcd: &EtcdServer,
    ip: &'static str,
    dir: &std::path::Path,
) -> (
    Arc<Health>,
    tokio::task::JoinHandle<Result<daemon::Exit, DaemonError>>,
) {
    let cfg = daemon_config(dir);
    let sm: Arc<dyn SubnetManager> = Arc::new(manager(etcd).await);
    let health = Arc::new(Health::default());
    let h = health.clone();
    let run = tokio::spawn(async move {
        daemon::run(
            cfg,
            sm,
            &flanneld::backend::Builtin,
            &FakeHost(ip),
            h,
            std::future::pending(),
        )
        .await
    });
    wait_until_async(&format!("{ip} ready"), Duration::from_secs(15), || {
        health.is_ready()
    })
    .await;
    (health, run)
}

fn subnet_of(dir: &std::path::Path) -> String {
    let env = std::fs::read_to_string(dir.join("subnet.env")).unwrap();
    env.lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .map(|s| s.to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn a_wiped_store_is_a_lost_lease_and_never_a_subnet_assigned_twice() {
    let mut etcd = EtcdServer::start();
    put_config(
        &etcd,
        r#"{"Network":"10.50.0.0/16","Backend":{"Type":"alloc"}}"#,
    );
    // Some history, so the wiped store starts well below the revision A has seen.
    for i in 0..5 {
        etcd.etcdctl(&["put", "/unrelated", &i.to_string()]);
    }
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (health_a, run_a) = spawn_daemon(&etcd, "172.16.0.7", dir_a.path()).await;
    let taken = subnet_of(dir_a.path()); // e.g. 10.50.79.1/24
    let net: ipnet::Ipv4Net = taken.parse().unwrap();
    let next = ipnet::Ipv4Net::new(Ipv4Addr::from(u32::from(net.network()) + 256), 24).unwrap();

    etcd.wipe_and_restart();
    put_config(
        &etcd,
        &format!(
            r#"{{"Network":"10.50.0.0/16","SubnetMin":"{}","SubnetMax":"{}","Backend":{{"Type":"alloc"}}}}"#,
            net.network(),
            next.network()
        ),
    );

    // A notices the store went backwards: not ready, and it ends with an error.
    let r = tokio::time::timeout(Duration::from_secs(20), run_a)
        .await
        .expect("A stops within 20 s")
        .unwrap();
    let message = flanneld::report(&r.unwrap_err());
    let (head, tail) = message
        .split_once(" went back from ")
        .unwrap_or_else(|| panic!("a rewind, not: {message}"));
    assert_eq!(
        head,
        "the etcd store went backwards (wiped or restored from a backup?): the etcd revision"
    );
    let (was, now) = tail.split_once(" to ").unwrap();
    assert!(was.parse::<i64>().unwrap() > 5, "{message}");
    assert!(now.parse::<i64>().unwrap() <= 2, "{message}");
    assert!(!health_a.is_ready());

    // B, told by its subnet.env that A's subnet was its own, takes it.
    std::fs::write(
        dir_b.path().join("subnet.env"),
        format!("FLANNEL_NETWORK=10.50.0.0/16\nFLANNEL_SUBNET={taken}\n"),
    )
    .unwrap();
    let (_hb, _run_b) = spawn_daemon(&etcd, "172.16.0.9", dir_b.path()).await;
    assert_eq!(subnet_of(dir_b.path()), taken);

    // A restarts: its previous subnet is B's now, so it gets the other one.
    let (_ha, _run_a) = spawn_daemon(&etcd, "172.16.0.7", dir_a.path()).await;
    assert_eq!(
        subnet_of(dir_a.path()),
        format!("{}/24", Ipv4Addr::from(u32::from(next.network()) + 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn another_node_writing_our_key_is_noticed_at_once() {
    let etcd = EtcdServer::start();
    put_config(
        &etcd,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let (health, run) = spawn_daemon(&etcd, "172.16.0.7", dir.path()).await;
    let key = etcd
        .etcdctl(&[
            "get",
            "--prefix",
            "--keys-only",
            "/coreos.com/network/subnets/",
        ])
        .lines()
        .find(|l| !l.is_empty())
        .unwrap()
        .to_string();
    etcd.etcdctl(&[
        "put",
        &key,
        r#"{"PublicIP":"172.16.0.99","PublicIPv6":null,"BackendType":"alloc"}"#,
    ]);
    // Renewal is an hour away (renew margin): only the watch can notice this.
    let e = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("noticed within 10 s")
        .unwrap()
        .unwrap_err();
    let subnet = key.rsplit('/').next().unwrap().replace('-', "/");
    assert_eq!(
        flanneld::report(&e),
        format!("lease {subnet} is now held by 172.16.0.99")
    );
    assert!(!health.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn records_live_beside_the_leases_where_upstream_never_looks() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let m = manager(&etcd).await;
    assert_eq!(m.get_record("tencent-vpc-routes-x").await.unwrap(), None);
    m.put_record("tencent-vpc-routes-x", r#"{"Routes":{}}"#)
        .await
        .unwrap();
    assert_eq!(
        etcd.etcdctl(&[
            "get",
            "/coreos.com/network/flannel-rs/tencent-vpc-routes-x",
            "--print-value-only"
        ]),
        "{\"Routes\":{}}\n"
    );
    assert_eq!(
        m.get_record("tencent-vpc-routes-x")
            .await
            .unwrap()
            .as_deref(),
        Some(r#"{"Routes":{}}"#)
    );
    // Not a lease: the subnets listing does not include it.
    assert!(m.list().await.unwrap().0.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn a_configured_lease_ttl_is_what_etcd_grants_and_renews() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let mut opts = EtcdOptions::new(&etcd.endpoint(), PREFIX);
    opts.lease_ttl = Duration::from_secs(30);
    let m = EtcdManager::connect(&opts).await.unwrap();
    let l = m.acquire_lease(&req("172.16.0.7")).await.unwrap();
    let left = |l: &Lease| match l.expiry {
        Expiry::At(t) => t.duration_since(std::time::SystemTime::now()).unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(left(&l) <= Duration::from_secs(30) && left(&l) > Duration::from_secs(20));
    // etcd's own view of the key's lease.
    let key = format!("{PREFIX}/subnets/{}", l.key);
    let out = etcd.etcdctl(&["get", &key, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["kvs"][0]["lease"].as_i64().unwrap();
    let ttl = etcd.etcdctl(&["lease", "timetolive", &format!("{id:x}")]);
    assert!(ttl.contains("granted with TTL(30s)"), "{ttl}");
    let renewed = m.renew_lease(&l).await.unwrap();
    assert!(left(&renewed) > Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs etcd (Debian etcd-server): run with --include-ignored"]
async fn a_join_queue_orders_its_entries_and_forgets_them_with_their_ttl() {
    let etcd = EtcdServer::start();
    put_config(&etcd, r#"{"Network":"10.5.0.0/16"}"#);
    let m = std::sync::Arc::new(manager(&etcd).await);
    // Forty agents joining at once: each sees the entries ahead of it and itself, so the
    // positions are 1..=40, each once.
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move {
                m.join_queue("tencent-vpc-joins-x", Duration::from_secs(2))
                    .await
                    .unwrap()
                    .unwrap()
            })
        })
        .collect();
    let mut positions = Vec::new();
    for t in tasks {
        let times = t.await.unwrap();
        let now = std::time::SystemTime::now();
        assert!(times
            .iter()
            .all(|t| now.duration_since(*t).unwrap() < Duration::from_secs(10)));
        positions.push(times.len());
    }
    positions.sort();
    assert_eq!(positions, (1..=40).collect::<Vec<_>>());
    // Where the entries live, and that they carry a time; garbage among them is skipped.
    let listed = etcd.etcdctl(&[
        "get",
        "--prefix",
        "/coreos.com/network/flannel-rs/queues/tencent-vpc-joins-x/",
        "--keys-only",
    ]);
    assert_eq!(listed.lines().filter(|l| !l.is_empty()).count(), 40);
    etcd.etcdctl(&[
        "put",
        "/coreos.com/network/flannel-rs/queues/tencent-vpc-joins-x/garbage",
        "not a time",
    ]);
    let times = m
        .join_queue("tencent-vpc-joins-x", Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(times.len(), 41, "40 entries, ours, not the garbage");
    // Not leases: the subnets listing does not include them.
    assert!(m.list().await.unwrap().0.is_empty());
    // Their etcd leases expire with the TTL: only the garbage (no lease) stays.
    flanneld_testing::netns::wait_for(
        "the queue entries to expire",
        Duration::from_secs(15),
        || {
            let keys = etcd.etcdctl(&[
                "get",
                "--prefix",
                "/coreos.com/network/flannel-rs/queues/tencent-vpc-joins-x/",
                "--keys-only",
            ]);
            let left: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
            (left == ["/coreos.com/network/flannel-rs/queues/tencent-vpc-joins-x/garbage"])
                .then_some(())
                .ok_or(format!("{left:?}"))
        },
    );
}
