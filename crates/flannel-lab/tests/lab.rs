//! End-to-end tests on the lab (root; CI runs as root): the real flanneld, CNI plugin,
//! bridge/host-local plugins, etcd and the emulator with its data plane, in namespaces that
//! each test's lab owns (its own prefix) and removes.
//!
//! The binaries come from this build's target directory; `cargo test --workspace` builds them.

mod common;

use common::{assert_user_route, bins, full, routes, up, up_spec, writes};
use flannel_lab::lab::{self, Bins, ConsoleAction, Lab};
use flannel_lab::netns::{self, wait_until};
use flannel_lab::topology::{Backend, LabSpec, Mode};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const RESYNC: Duration = Duration::from_secs(30);

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn tencent_vpc_lab_survives_faults() {
    let mut t = up("lt1", Backend::TencentVpc, Mode::PerNode, 3);
    let lab = &mut t.lab;
    assert!(full(&lab.ping_matrix()));
    let nodes = lab.nodes();
    let leases: Vec<String> = nodes.iter().map(|n| lab.lease_of(n).unwrap()).collect();
    // Every lease is routed in both tables, to its node.
    for table in ["rtb-a", "rtb-b"] {
        for (n, lease) in nodes.iter().zip(&leases) {
            assert_eq!(routes(lab)[table][lease], n.ip.to_string(), "{table}");
        }
    }

    // A route deleted in the console comes back within one resync.
    let victim = leases[1].clone();
    let touched = lab
        .console(ConsoleAction::DeleteRoute, &victim, Some("rtb-a"))
        .unwrap();
    assert_eq!(touched.len(), 1);
    assert!(!routes(lab)["rtb-a"].contains_key(&victim));
    wait_until(RESYNC, || {
        routes(lab)["rtb-a"]
            .contains_key(&victim)
            .then_some(())
            .ok_or_else(|| format!("{:?}", routes(lab)["rtb-a"]))
    })
    .unwrap();

    // A 4th node joins under 50 % throttling and is reachable from every pod.
    lab.throttle(50).unwrap();
    let n4 = lab.add_node().unwrap();
    assert!(full(&lab.ping_matrix()));
    lab.throttle(0).unwrap();
    let lease4 = lab.lease_of(&n4).unwrap();
    for table in ["rtb-a", "rtb-b"] {
        assert_eq!(routes(lab)[table][&lease4], n4.ip.to_string());
    }

    // etcd restarted: nobody's lease changes.
    lab.restart_etcd().unwrap();
    for n in lab.nodes() {
        let before = lab.lease_of(&n);
        wait_until(RESYNC, || {
            lab.agent_ready(&n)
                .then_some(())
                .ok_or_else(|| format!("{} not ready", n.name))
        })
        .unwrap();
        assert_eq!(lab.lease_of(&n), before, "{}", n.name);
    }
    assert!(full(&lab.ping_matrix()));

    // flanneld restarted on a node: same subnet, and no route written.
    let n1 = lab.find("node-1").unwrap();
    let lease1 = lab.lease_of(&n1).unwrap();
    let writes_before = writes(lab);
    lab.restart_node("node-1").unwrap();
    wait_until(RESYNC, || {
        lab.agent_ready(&n1)
            .then_some(())
            .ok_or_else(|| "node-1 not ready".into())
    })
    .unwrap();
    assert_eq!(lab.lease_of(&n1).unwrap(), lease1);
    assert_eq!(
        writes(lab),
        writes_before,
        "a restarted agent writes no route"
    );

    // A killed node: its lease expires (the lab's leases live 30 s), and the leader
    // garbage-collects its routes from both tables.
    let n3 = lab.find("node-3").unwrap();
    let lease3 = lab.lease_of(&n3).unwrap();
    lab.kill_node("node-3").unwrap();
    let key3 = format!("/coreos.com/network/subnets/{}", lease3.replace('/', "-"));
    wait_until(Duration::from_secs(120), || {
        let r = routes(lab);
        let expired = lab.etcdctl(&["get", &key3]).unwrap().trim().is_empty();
        (expired && !r["rtb-a"].contains_key(&lease3) && !r["rtb-b"].contains_key(&lease3))
            .then_some(())
            .ok_or_else(|| format!("lease expired: {expired}; {r:?}"))
    })
    .unwrap();
    assert_user_route(lab);
    // The stopped node is shown as such and left out: a new node joins without waiting for
    // it, and every live pair reaches each other.
    let n5 = lab.add_node().unwrap();
    let m = lab.ping_matrix();
    assert!(full(&m), "{m:?}");
    let at = |name: &str| lab.nodes().iter().position(|n| n.name == name).unwrap();
    assert!(m[at("node-3")].iter().all(Option::is_none));
    assert_eq!(m[at(&n5.name)][at("node-1")], Some(true));
    let status = flannel_lab::status(lab).unwrap();
    assert_eq!(status.failed_pairs(), 0);
    assert_eq!(status.nodes[at("node-3")].agent, "stopped");

    // down leaves nothing.
    let prefix = lab.spec().prefix.clone();
    let removed = lab::down(&prefix).unwrap();
    assert!(removed.processes >= 5, "{removed:?}");
    assert!(netns::list().iter().all(|n| !n.starts_with("lt1-")));
    assert!(!lab::state_dir(&prefix).exists());
    assert!(!Path::new("/run/netns/lt1-vpc").exists());
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn controller_mode_routes_every_node() {
    let t = up("lt2", Backend::TencentVpc, Mode::Controller, 3);
    assert!(full(&t.lab.ping_matrix()));
    let r = routes(&t.lab);
    for n in t.lab.nodes() {
        let lease = t.lab.lease_of(&n).unwrap();
        assert_eq!(r["rtb-b"][&lease], n.ip.to_string());
    }
    assert_user_route(&t.lab);
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn host_gw_vxlan_udp_and_wireguard_labs_converge_without_cloud_routes() {
    for (prefix, backend) in [
        ("lt3", Backend::HostGw),
        ("lt4", Backend::Vxlan),
        ("lt9", Backend::Udp),
        ("lta", Backend::Wireguard),
    ] {
        let t = up(prefix, backend, Mode::PerNode, 3);
        assert!(full(&t.lab.ping_matrix()), "{backend:?}");
        let r = routes(&t.lab);
        assert!(
            r.values()
                .flat_map(|t| t.keys())
                .all(|d| !d.starts_with("10.244.")),
            "{backend:?} writes no VPC route: {r:?}"
        );
    }
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn a_second_up_is_refused_and_down_after_a_failed_up_cleans_up() {
    let t = up("lt5", Backend::HostGw, Mode::PerNode, 1);
    let again = Lab::up(t.lab.spec().clone(), 1, bins(), &mut |_| {});
    assert_eq!(
        again.err().unwrap().to_string(),
        "a lab named \"lt5\" is already up (run `flannel-lab down` first)"
    );
    drop(t);
    // A failed up (no such binaries) makes nothing, and says what is missing.
    let spec = LabSpec {
        prefix: "lt6".into(),
        backend: Backend::Vxlan,
        mode: Mode::PerNode,
        route_quota: flannel_lab::topology::DEFAULT_QUOTA,
        fallback: false,
        kube: false,
    };
    let err = Lab::up(
        spec,
        2,
        Bins::from_dir(Some("/nonexistent".into())),
        &mut |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with("missing prerequisites:\n  - /nonexistent/flanneld: cargo build --release"),
        "{err}"
    );
    assert!(netns::list()
        .iter()
        .all(|n| !n.starts_with("lt5-") && !n.starts_with("lt6-")));
}

/// Our routes per table: destination → next hop (the user's route left out).
fn ours(lab: &Lab, table: &str) -> BTreeMap<String, String> {
    routes(lab)[table]
        .iter()
        .filter(|(d, _)| d.starts_with("10.244."))
        .map(|(d, h)| (d.clone(), h.clone()))
        .collect()
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn fallback_reaches_over_vxlan_what_the_route_tables_cannot_hold() {
    // Quota 6 with the user's VPN route in rtb-a: room for 5 of our routes per table.
    let mut t = up_spec(
        LabSpec {
            prefix: "lt7".into(),
            backend: Backend::TencentVpc,
            mode: Mode::PerNode,
            route_quota: 6,
            fallback: true,
            kube: false,
        },
        8,
    );
    let lab = &mut t.lab;
    assert!(
        full(&lab.ping_matrix()),
        "every pod reaches every other pod"
    );
    let leases: Vec<String> = lab
        .nodes()
        .iter()
        .map(|n| lab.lease_of(n).unwrap())
        .collect();
    for table in ["rtb-a", "rtb-b"] {
        assert_eq!(ours(lab, table).len(), 5, "{table}: {:?}", ours(lab, table));
    }
    assert_eq!(
        ours(lab, "rtb-a"),
        ours(lab, "rtb-b"),
        "the same split in every table"
    );
    let fallback: Vec<String> = leases
        .iter()
        .filter(|l| !ours(lab, "rtb-a").contains_key(*l))
        .cloned()
        .collect();
    assert_eq!(fallback.len(), 3);
    // Every node reaches the fallback subnets over flannel.1 (MTU 1450 everywhere).
    let n1 = lab.find("node-1").unwrap();
    let kernel_routes = netns::Netns::named(&n1.ns).ok(&["ip", "route"]).unwrap();
    for f in fallback
        .iter()
        .filter(|f| Some(*f) != lab.lease_of(&n1).as_ref())
    {
        assert!(
            kernel_routes.contains(&format!(
                "{f} via {} dev flannel.1",
                f.trim_end_matches("/24")
            )),
            "{f} over vxlan on node-1: {kernel_routes}"
        );
    }
    let env = std::fs::read_to_string(lab.dir.join("node-1/subnet.env")).unwrap();
    assert!(env.contains("FLANNEL_MTU=1450"), "{env}");
    // flannelctl routes plan shows the split (run on node-1, as an operator would).
    let flannelctl = Path::new(env!("CARGO_BIN_EXE_flannel-lab")).with_file_name("flannelctl");
    let out = netns::Netns::named(&n1.ns)
        .command(flannelctl.to_str().unwrap())
        .args([
            "routes",
            "plan",
            "--etcd-endpoints",
            &lab.spec().etcd_endpoint(),
        ])
        .env("TENCENTCLOUD_SECRET_ID", flannel_lab::topology::SECRET_ID)
        .env("TENCENTCLOUD_SECRET_KEY", flannel_lab::topology::SECRET_KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fallback vxlan: 5 leases routed (room for 5), 3 over vxlan: ")
            && text.contains("nothing to do"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A routed node leaves (killed, its lease gone): its routes are collected and a
    // fallback lease takes the freed place.
    let leaver = lab
        .nodes()
        .into_iter()
        .find(|n| n.name != "node-1" && ours(lab, "rtb-a").contains_key(&lab.lease_of(n).unwrap()))
        .unwrap();
    let gone = lab.lease_of(&leaver).unwrap();
    lab.kill_node(&leaver.name).unwrap();
    wait_until(Duration::from_secs(120), || {
        let a = ours(lab, "rtb-a");
        let promoted = fallback.iter().filter(|f| a.contains_key(*f)).count();
        (!a.contains_key(&gone) && a.len() == 5 && promoted == 1)
            .then_some(())
            .ok_or_else(|| format!("{a:?}"))
    })
    .unwrap();

    // The quota is raised: the fallback leases move to VPC routes with no lost ping between
    // a routed pod and a fallback pod.
    let still: Vec<String> = fallback
        .iter()
        .filter(|f| !ours(lab, "rtb-a").contains_key(*f))
        .cloned()
        .collect();
    let target_node = lab
        .nodes()
        .into_iter()
        .find(|n| lab.lease_of(n).as_ref() == still.first())
        .unwrap();
    let target_ip = lab
        .state
        .nodes
        .iter()
        .find(|s| s.index == target_node.index)
        .unwrap()
        .pod_ip
        .clone()
        .unwrap();
    let from = netns::Netns::named(&lab.find("node-1").unwrap().pod_ns);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (lost, gap) = std::thread::scope(|scope| {
        let pinger = scope.spawn(|| {
            let (mut lost, mut gap, mut last_ok) = (0, Duration::ZERO, std::time::Instant::now());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = std::time::Instant::now();
                // A lost packet gets no reply at all; 1 s only absorbs a loaded CI machine's
                // scheduling stalls (a 0.2 s timeout once counted one as a loss).
                if from.succeeds(&["ping", "-c1", "-W1", &target_ip]) {
                    gap = gap.max(now - last_ok);
                    last_ok = now;
                } else {
                    lost += 1;
                }
            }
            (lost, gap)
        });
        lab.set_quota(50).unwrap();
        let moved = wait_until(Duration::from_secs(60), || {
            let (a, b) = (ours(lab, "rtb-a"), ours(lab, "rtb-b"));
            let kernel = netns::Netns::named(&lab.find("node-1").unwrap().ns)
                .ok(&["ip", "route"])
                .unwrap_or_default();
            (a.len() == 7 && b.len() == 7 && !kernel.contains("dev flannel.1"))
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "rtb-a {} routes, rtb-b {}; node-1: {kernel}",
                        a.len(),
                        b.len()
                    )
                })
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        moved.unwrap();
        pinger.join().unwrap()
    });
    println!("fallback → VPC route: {lost} pings lost, longest gap between replies {gap:?}");
    assert_eq!(
        lost, 0,
        "no lost ping while moving to VPC routes (longest gap {gap:?})"
    );
    // Every pod but the departed node's reaches every other (the departed one's pairs are
    // not tried: its flanneld is stopped).
    let gone_at = lab
        .state
        .nodes
        .iter()
        .position(|s| s.index == leaver.index)
        .unwrap();
    let m = lab.ping_matrix();
    assert!(full(&m), "{m:?}");
    assert!(m[gone_at].iter().all(Option::is_none));
    assert_user_route(lab);
}

fn node_routes(lab: &Lab, name: &str) -> String {
    netns::Netns::named(&lab.find(name).unwrap().ns)
        .ok(&["ip", "route"])
        .unwrap()
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn controller_mode_fallback_splits_and_promotes_when_the_quota_is_raised() {
    // Quota 4 with the user's VPN route in rtb-a: room for 3 of our routes per table.
    let mut t = up_spec(
        LabSpec {
            prefix: "lt8".into(),
            backend: Backend::TencentVpc,
            mode: Mode::Controller,
            route_quota: 4,
            fallback: true,
            kube: false,
        },
        5,
    );
    let lab = &mut t.lab;
    let m = lab.ping_matrix();
    assert!(full(&m), "every pod reaches every other pod: {m:?}");
    // (Pods reach each other over vxlan first: the controller's batch comes a moment later.)
    let (a, b) = wait_until(Duration::from_secs(30), || {
        let (a, b) = (ours(lab, "rtb-a"), ours(lab, "rtb-b"));
        (a.len() == 3 && a == b)
            .then(|| (a.clone(), b.clone()))
            .ok_or_else(|| format!("rtb-a {a:?}, rtb-b {b:?}"))
    })
    .expect("the same 3 leases routed in both tables");
    assert_eq!(a, b);
    // Each node reaches the 2 fallback subnets (other than its own) over flannel.1, and
    // the routed ones through the VPC only. (A newcomer is reached over vxlan until the
    // controller's status places it; the agents read it again within seconds.)
    let leases: Vec<String> = lab
        .nodes()
        .iter()
        .map(|n| lab.lease_of(n).unwrap())
        .collect();
    wait_until(Duration::from_secs(30), || {
        let wrong: Vec<String> = lab
            .nodes()
            .iter()
            .flat_map(|n| {
                let kernel = node_routes(lab, &n.name);
                let own = lab.lease_of(n).unwrap();
                leases
                    .iter()
                    .filter(|l| **l != own)
                    .filter(|l| {
                        let over_vxlan = kernel.contains(&format!(
                            "{l} via {} dev flannel.1",
                            l.trim_end_matches("/24")
                        ));
                        over_vxlan == a.contains_key(*l)
                    })
                    .map(|l| format!("{}: {l}", n.name))
                    .collect::<Vec<_>>()
            })
            .collect();
        wrong
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("routed {a:?}; wrong path on {wrong:?}"))
    })
    .unwrap();
    let m = lab.ping_matrix();
    assert!(full(&m), "every pod reaches every other pod: {m:?}");
    assert_user_route(lab);

    // The quota is raised: the controller routes the other 2, and the agents drop their
    // vxlan entries once the routes are in place.
    lab.set_quota(50).unwrap();
    wait_until(Duration::from_secs(60), || {
        let (a, b) = (ours(lab, "rtb-a"), ours(lab, "rtb-b"));
        let vxlan: Vec<String> = lab
            .nodes()
            .iter()
            .filter(|n| node_routes(lab, &n.name).contains("dev flannel.1"))
            .map(|n| n.name.clone())
            .collect();
        (a.len() == 5 && b.len() == 5 && vxlan.is_empty())
            .then_some(())
            .ok_or_else(|| format!("rtb-a {a:?}, rtb-b {b:?}, vxlan routes on {vxlan:?}"))
    })
    .unwrap();
    assert!(
        full(&lab.ping_matrix()),
        "every pod still reaches every other"
    );
}

/// Wait for a node's /readyz, returning when it turned ready.
fn ready_at(
    lab: &Lab,
    n: &flannel_lab::topology::NodeSpec,
    within: Duration,
) -> std::time::Instant {
    wait_until(within, || {
        lab.agent_ready(n)
            .then(std::time::Instant::now)
            .ok_or_else(|| format!("{} not ready; log:\n{}", n.name, lab.agent_log(n)))
    })
    .unwrap()
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn a_node_is_ready_only_once_the_vpc_forwards_its_route() {
    let mut t = up("lt10", Backend::TencentVpc, Mode::PerNode, 2);
    let lab = &mut t.lab;
    let listed_everywhere = |lab: &Lab, lease: &str| {
        let r = routes(lab);
        ["rtb-a", "rtb-b"].iter().all(|t| r[*t].contains_key(lease))
    };

    // Forwarding 6 s behind the API: the route is listed at once, the node stays not ready
    // while its probe goes unanswered, and turns ready when the VPC forwards.
    lab.lag_forwarding(Some(Duration::from_secs(6))).unwrap();
    let (n3, started) = lab.start_node().unwrap();
    let lease3 = wait_until(Duration::from_secs(30), || {
        lab.lease_of(&n3)
            .filter(|l| listed_everywhere(lab, l))
            .ok_or_else(|| "node-3's route not listed yet".to_string())
    })
    .unwrap();
    let listed = std::time::Instant::now();
    assert!(
        !lab.agent_ready(&n3),
        "ready on a listed route the VPC does not forward yet"
    );
    let ready = ready_at(lab, &n3, Duration::from_secs(30));
    let log = lab.agent_log(&n3);
    assert!(log.contains("probing the data path before ready"), "{log}");
    assert!(log.contains("data path verified"), "{log}");
    let waited = ready - listed;
    assert!(
        ready - started >= Duration::from_secs(5),
        "ready {:?} after start, before the VPC forwarded (listed after {:?})",
        ready - started,
        listed - started
    );
    eprintln!(
        "lagging forwarding (6 s): route listed {:.2} s after start, ready {:.2} s after that",
        (listed - started).as_secs_f64(),
        waited.as_secs_f64()
    );

    // Never forwarded: not ready, DataPathUnverified after 30 s; forwarded: ready.
    lab.lag_forwarding(None).unwrap();
    let (n4, _) = lab.start_node().unwrap();
    wait_until(Duration::from_secs(60), || {
        let log = lab.agent_log(&n4);
        log.contains("DataPathUnverified")
            .then_some(())
            .ok_or_else(|| "no DataPathUnverified yet".to_string())
    })
    .unwrap();
    assert!(!lab.agent_ready(&n4));
    let lease4 = lab.lease_of(&n4).unwrap();
    assert!(listed_everywhere(lab, &lease4), "listed all along");
    lab.forward_now().unwrap();
    ready_at(lab, &n4, Duration::from_secs(10));

    // Both joined nodes' pods reach every pod.
    lab.finish_join(&[n3, n4], std::time::Instant::now())
        .unwrap();
    assert!(full(&lab.ping_matrix()));
    assert_ne!(lease3, lease4);
}
