//! Benchmark (not a test): N simulated nodes join a cluster whose pod routes live in a
//! Tencent VPC, against the emulator at its documented rate limit (100 requests per second
//! per action, answered with RequestLimitExceeded beyond it) with the route quota raised to
//! fit. Both modes:
//! - per-node: every node's agent (the real backend, production client settings: 20 req/s
//!   client-side, 5 attempts) puts its own route in both route tables, retrying like the
//!   daemon (1 s doubling to the resync period, jittered) until ready;
//! - controller: every node publishes its lease at once; one `flanneld --controller` routes
//!   them and reports them routed.
//!
//! Per-node mode runs twice: every node at the same instant (a herd), and nodes joining at 40
//! per second (within the budget: each join needs one CreateRoutes per table). Each agent
//! first waits for its turn in the join queue of a shared lease store (as flanneld's build
//! does: `pacing::wait_for_turn`): in a real etcd server by default, `QUEUE_STORE=memory`
//! for the in-process store; `NO_QUEUE=1` skips it (the herd as it was before).
//!
//! Reported: API calls per join (all actions, failed ones included), the time until every
//! route is present, and failed node starts (a node never ready within 10 minutes).
//!
//! Run: `cargo bench -p flanneld --bench vpc_join` (NODES=50,200,1000 by default).

#[path = "common/vpc_nodes.rs"]
mod vpc_nodes;

use flannel_core::admission::PeerView;
use flannel_core::lease::{Expiry, Lease, LeaseAttrs, SubnetKey};
use flanneld::backend::tencent_vpc::plan::Ownership;
use flanneld::backend::tencent_vpc::{pacing, Agent, NodeFacts, Settings};
use flanneld::backend::{Backend, Trigger};
use flanneld::health::Health;
use flanneld::iface::ExternalInterface;
use flanneld::metrics::Metrics;
use flanneld::subnet::etcd::{EtcdManager, EtcdOptions};
use flanneld::subnet::memory::MemoryManager;
use flanneld::subnet::SubnetManager;
use flanneld_testing::EtcdServer;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tencent_cloud::credentials::{Credentials, StaticProvider};
use tencent_cloud::{Client, ClientConfig};
use tencent_vpc_emulator::scenario::Scenario;
use tencent_vpc_emulator::{Emulator, EmulatorConfig};
use vpc_nodes::Layout;

const ID: &str = "AKIDlab0000000000000000000000000000";
const KEY: &str = "lab-secret-key-0000000000000000";
const GIVE_UP: Duration = Duration::from_secs(600);

/// Where this bench's nodes live.
const LAYOUT: Layout = Layout {
    subnet_a: "172.16.8.0/21",
    subnet_b: "172.16.16.0/21",
    a_from: 8,
    b_from: 16,
};

fn node(i: usize) -> (Ipv4Addr, &'static str, ipnet::Ipv4Net) {
    vpc_nodes::node(&LAYOUT, i)
}

fn scenario(total: usize) -> Scenario {
    vpc_nodes::scenario(&LAYOUT, total)
}

fn client(emu: &Emulator) -> Arc<Client> {
    let mut cfg = ClientConfig::new("ap-guangzhou");
    cfg.endpoint = format!("http://{}", emu.api).parse().unwrap();
    let creds = StaticProvider::new(
        Credentials::new(ID, secrecy::SecretString::from(KEY), None),
        "bench",
    );
    Arc::new(Client::new(cfg, Arc::new(creds)).unwrap())
}

fn lease(i: usize) -> Lease {
    let (ip, subnet, pod) = node(i);
    let mut attrs = LeaseAttrs::new(ip);
    attrs.backend_type = "tencent-vpc".into();
    attrs.backend_data = Some(json!({"PrivateIP": ip.to_string(), "SubnetId": subnet}));
    Lease {
        key: SubnetKey::v4(pod),
        attrs,
        expiry: Expiry::Never,
    }
}

async fn total_calls(emu: &Emulator) -> (u64, u64) {
    let v: Value = reqwest::get(format!("http://{}/calls", emu.admin.unwrap()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if std::env::var("SHOW_CALLS").is_ok() {
        eprintln!("{v}");
    }
    let mut all = 0;
    let mut throttled = 0;
    for outcomes in v.as_object().unwrap().values() {
        for (outcome, n) in outcomes.as_object().unwrap() {
            all += n.as_u64().unwrap();
            if outcome == "RequestLimitExceeded" {
                throttled += n.as_u64().unwrap();
            }
        }
    }
    (all, throttled)
}

async fn start(n: usize) -> Emulator {
    Emulator::start(EmulatorConfig {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..EmulatorConfig::on_loopback(scenario(n))
    })
    .await
    .unwrap()
}

struct Result {
    calls: u64,
    throttled: u64,
    elapsed: Duration,
    failed: usize,
}

/// Per-node mode; `rate`: joins per second (None: all at the same instant).
async fn per_node(n: usize, rate: Option<f64>) -> Result {
    let emu = start(n).await;
    let queue = std::env::var("NO_QUEUE").is_err();
    let config = r#"{"Network":"10.0.0.0/8","Backend":{"Type":"tencent-vpc"}}"#;
    let (store, _etcd): (Arc<dyn SubnetManager>, _) = match std::env::var("QUEUE_STORE").as_deref()
    {
        Ok("memory") => (
            Arc::new(MemoryManager::new(
                flannel_core::config::parse_and_check(config).unwrap(),
            )),
            None,
        ),
        _ => {
            let etcd = EtcdServer::start();
            etcd.etcdctl(&["put", "/coreos.com/network/config", config]);
            let m =
                EtcdManager::connect(&EtcdOptions::new(&etcd.endpoint(), "/coreos.com/network"))
                    .await
                    .unwrap();
            (Arc::new(m), Some(etcd))
        }
    };
    let seeds = [lease(0), lease(1)]; // the watch snapshot shows nodes in both subnets
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (ip, subnet, _) = node(i);
        let ext = ExternalInterface::ipv4("eth0", 2, 1500, ip);
        let backend = Agent::new(
            ext,
            NodeFacts {
                private_ip: ip,
                subnet_id: subnet.into(),
            },
            Settings {
                vpc_id: "vpc-lab".into(),
                owner: Ownership {
                    cluster: "bench".into(),
                    network: "10.0.0.0/8".parse().unwrap(),
                },
                adopt_untagged: false,
                route_table_ids: vec![],
                resync: Duration::from_secs(60),
                fallback: false,
                reserved: 0,
                orphan_min_age: flanneld::backend::tencent_vpc::gc::MIN_ORPHAN_AGE,
            },
            client(&emu),
            Metrics::default().vpc,
            None,
        );
        let own = lease(i);
        let peers: Vec<Lease> = seeds.iter().filter(|l| l.key != own.key).cloned().collect();
        let start_at = rate.map(|r| Duration::from_secs_f64(i as f64 / r));
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            if let Some(at) = start_at {
                tokio::time::sleep(at).await;
            }
            if queue {
                pacing::wait_for_turn(store.as_ref(), "bench").await;
            }
            // As the daemon: start with the watch's first snapshot, then resync with backoff
            // until ready.
            let view = PeerView::unchecked(&peers);
            let _ = backend.reconcile(&own, &view, Trigger::Start).await;
            let mut pauses =
                backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).delays();
            let deadline = Instant::now() + GIVE_UP;
            while !backend.ready() && Instant::now() < deadline {
                tokio::time::sleep(pauses.next_delay()).await;
                let _ = backend
                    .reconcile(&own, &view, Trigger::Resync { fresh: true })
                    .await;
            }
            backend.ready()
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += usize::from(!t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let (calls, throttled) = total_calls(&emu).await;
    Result {
        calls,
        throttled,
        elapsed,
        failed,
    }
}

async fn controller(n: usize) -> Result {
    let emu = start(n).await;
    let config = json!({"Network": "10.0.0.0/8", "Backend": {"Type": "tencent-vpc", "Mode": "controller",
        "ClusterName": "bench", "VpcId": "vpc-lab", "Region": "ap-guangzhou",
        "AccessKeyID": ID, "AccessKeySecret": KEY, "Endpoint": format!("http://{}", emu.api)}});
    let sm = Arc::new(MemoryManager::new(
        flannel_core::config::parse_and_check(&config.to_string()).unwrap(),
    ));
    let task = {
        let sm = sm.clone() as Arc<dyn SubnetManager>;
        tokio::spawn(flanneld::controller::run(
            flanneld::controller::ControllerOptions {
                identity: "bench".into(),
            },
            sm,
            Arc::new(Health::default()),
            std::future::pending(),
        ))
    };
    let started = Instant::now();
    for i in 0..n {
        sm.put_lease(lease(i));
    }
    let deadline = Instant::now() + GIVE_UP;
    let mut routed = 0;
    while Instant::now() < deadline {
        let status = sm
            .get_record("tencent-vpc-routes-bench")
            .await
            .unwrap()
            .unwrap_or_default();
        routed = serde_json::from_str::<Value>(&status)
            .ok()
            .and_then(|v| v["Routes"].as_object().map(|r| r.len()))
            .unwrap_or(0);
        if routed == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    task.abort();
    let (calls, throttled) = total_calls(&emu).await;
    Result {
        calls,
        throttled,
        elapsed,
        failed: n - routed,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("NODES")
        .unwrap_or_else(|_| "50,200,1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| mode | nodes | API calls | calls per join | throttled | all routes present after | failed starts |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &sizes {
        for (mode, r) in [
            ("per-node, all at once", rt.block_on(per_node(n, None))),
            ("per-node, 40 joins/s", rt.block_on(per_node(n, Some(40.0)))),
            ("controller, all at once", rt.block_on(controller(n))),
        ] {
            println!(
                "| {mode} | {n} | {} | {:.3} | {} | {:.2} s | {} |",
                r.calls,
                r.calls as f64 / n as f64,
                r.throttled,
                r.elapsed.as_secs_f64(),
                r.failed
            );
        }
    }
}
