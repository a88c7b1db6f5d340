//! The tencent-vpc backend against the emulator (no root needed): nodes are backends built in
//! this process, each with its own lease; the emulator's call counts and state are the truth.

mod common;

use common::{daemon_config, wait_until_async, FakeHost};
use flannel_core::admission::PeerView;
use flannel_core::lease::{Expiry, Lease, SubnetKey};
use flanneld::backend::tencent_vpc::plan::Ownership;
use flanneld::backend::tencent_vpc::{Agent, NodeFacts, Settings};
use flanneld::backend::{Backend, BackendError, Status, Trigger};
use flanneld::health::Health;
use flanneld::iface::ExternalInterface;
use flanneld::metrics::Metrics;
use flanneld::subnet::election::{InProcessElections, LeaderSeat};
use flanneld::subnet::memory::MemoryManager;
use flanneld::subnet::SubnetManager;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tencent_cloud::credentials::{Credentials, StaticProvider};
use tencent_cloud::{Client, ClientConfig};
use tencent_vpc_emulator::scenario::Scenario;
use tencent_vpc_emulator::{Emulator, EmulatorConfig};

const ID: &str = "AKIDlab0000000000000000000000000000";
const KEY: &str = "lab-secret-key-0000000000000000";
const WRITES: &[&str] = &[
    "CreateRoutes",
    "DeleteRoutes",
    "ReplaceRoutes",
    "EnableRoutes",
    "DisableRoutes",
];

struct Cloud {
    emu: Emulator,
    http: reqwest::Client,
    elections: Arc<InProcessElections>,
}

fn scenario(quota: usize) -> Scenario {
    let mut s = Scenario::from_json(include_str!(
        "../../tencent-vpc-emulator/scenarios/lab.json"
    ))
    .unwrap();
    s.route_quota = quota;
    s.rate_limit_per_second = 1000.0;
    // More CVMs: 172.16.1.10-49 in subnet-a, 172.16.2.10-49 in subnet-b.
    for (net, subnet) in [(1, "subnet-a"), (2, "subnet-b")] {
        for host in 10..50 {
            s.instances
                .push(tencent_vpc_emulator::scenario::InstanceSpec {
                    instance_id: format!("ins-{net}-{host}"),
                    private_ip: format!("172.16.{net}.{host}").parse().unwrap(),
                    subnet_id: subnet.into(),
                    mac: format!("52:54:00:00:{net:02x}:{host:02x}"),
                    name: String::new(),
                    role: None,
                });
        }
    }
    s
}

impl Cloud {
    async fn start(s: Scenario) -> Cloud {
        let emu = Emulator::start(EmulatorConfig {
            admin_listen: Some("127.0.0.1:0".parse().unwrap()),
            metadata_listen: Some("127.0.0.1:0".parse().unwrap()),
            metadata_default_instance: Some("ins-a1".into()),
            ..EmulatorConfig::on_loopback(s)
        })
        .await
        .unwrap();
        Cloud {
            emu,
            http: reqwest::Client::new(),
            elections: Arc::default(),
        }
    }

    fn client(&self) -> Arc<Client> {
        let mut cfg = ClientConfig::new("ap-guangzhou");
        cfg.endpoint = format!("http://{}", self.emu.api).parse().unwrap();
        cfg.backoff_base = Duration::from_millis(2);
        cfg.backoff_max = Duration::from_millis(10);
        cfg.max_attempts = 10;
        cfg.rate_per_second = 10_000.0;
        cfg.burst = 1000;
        let creds = StaticProvider::new(
            Credentials::new(ID, secrecy::SecretString::from(KEY), None),
            "test",
        );
        Arc::new(Client::new(cfg, Arc::new(creds)).unwrap())
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.emu.admin.unwrap())
    }

    async fn state(&self) -> Value {
        self.http
            .get(self.admin("/state"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The routes of `table`: (RouteId, destination, next hop, description, enabled).
    async fn routes(&self, table: &str) -> Vec<(u64, String, String, String, bool)> {
        let s = self.state().await;
        let t = s["route_tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["route_table_id"] == table)
            .unwrap()
            .clone();
        t["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["route_id"].as_u64().unwrap(),
                    r["destination_cidr_block"].as_str().unwrap().to_string(),
                    r["gateway_id"].as_str().unwrap().to_string(),
                    r["route_description"].as_str().unwrap().to_string(),
                    r["enabled"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    async fn route_to(
        &self,
        table: &str,
        dest: &str,
    ) -> Option<(u64, String, String, String, bool)> {
        self.routes(table).await.into_iter().find(|r| r.1 == dest)
    }

    async fn calls(&self) -> Value {
        self.http
            .get(self.admin("/calls"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// API calls so far: (all, writes).
    async fn counts(&self) -> (u64, u64) {
        let calls = self.calls().await;
        let mut all = 0;
        let mut writes = 0;
        for (action, outcomes) in calls.as_object().unwrap() {
            let n: u64 = outcomes
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum();
            all += n;
            if WRITES.contains(&action.as_str()) {
                writes += n;
            }
        }
        (all, writes)
    }

    async fn console(&self, method: reqwest::Method, path: &str, body: Option<Value>) {
        let mut req = self.http.request(method, self.admin(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(
            r.status().is_success(),
            "{path}: {}",
            r.text().await.unwrap()
        );
    }

    async fn fault(&self, fault: Value) {
        self.console(reqwest::Method::POST, "/faults", Some(fault))
            .await;
    }

    /// An in-memory lease store whose network config routes through this emulator with the
    /// lab's keys; `backend` gives the Backend section's other keys.
    fn store(&self, mut backend: Value) -> Arc<MemoryManager> {
        backend["AccessKeyID"] = json!(ID);
        backend["AccessKeySecret"] = json!(KEY);
        backend["Endpoint"] = json!(format!("http://{}", self.emu.api));
        backend["MetadataURL"] = json!(format!(
            "http://{}/latest/meta-data/",
            self.emu.metadata.unwrap()
        ));
        let config = json!({"Network": "10.244.0.0/16", "Backend": backend});
        Arc::new(MemoryManager::new(
            flannel_core::config::parse_and_check(&config.to_string()).unwrap(),
        ))
    }

    /// A node: its backend and its lease.
    async fn node(&self, ip: &str, subnet_id: &str, pod_subnet: &str) -> (Agent, Lease) {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let ext = ExternalInterface::ipv4("eth0", 2, 1500, ip);
        let seat = LeaderSeat::stand(Box::new(
            self.elections
                .election("tencent-vpc-gc-lab", &ip.to_string()),
        ));
        let backend = Agent::new(
            ext,
            NodeFacts {
                private_ip: ip,
                subnet_id: subnet_id.into(),
            },
            settings(false),
            self.client(),
            Metrics::default().vpc,
            Some(seat),
        );
        let lease = Lease {
            key: SubnetKey::v4(pod_subnet.parse().unwrap()),
            attrs: backend.lease_attrs().await.unwrap(),
            expiry: Expiry::Never,
        };
        (backend, lease)
    }
}

/// The first reconcile, as the daemon runs it with the watch's first snapshot.
async fn start(b: &Agent, own: &Lease, peers: &[Lease]) -> Status {
    b.reconcile(own, &PeerView::unchecked(peers), Trigger::Start)
        .await
        .unwrap()
}

/// A resync with a fresh view of `peers`.
async fn resync(b: &Agent, own: &Lease, peers: &[Lease]) -> Status {
    b.reconcile(
        own,
        &PeerView::unchecked(peers),
        Trigger::Resync { fresh: true },
    )
    .await
    .unwrap()
}

/// `added` arrived; the peers are `peers` now.
async fn added(b: &Agent, own: &Lease, peers: &[Lease], added: &[Lease]) -> Status {
    let trigger = Trigger::Leases {
        added,
        removed: &[],
    };
    b.reconcile(own, &PeerView::unchecked(peers), trigger)
        .await
        .unwrap()
}

fn settings(fallback: bool) -> Settings {
    Settings {
        vpc_id: "vpc-lab".into(),
        owner: Ownership {
            cluster: "lab".into(),
            network: "10.244.0.0/16".parse().unwrap(),
        },
        adopt_untagged: false,
        route_table_ids: vec![],
        resync: Duration::from_secs(60),
        fallback,
        reserved: 0,
        orphan_min_age: Duration::ZERO,
    }
}

/// The real daemon with the built-in backends as node `ip`, on `sm`.
fn spawn_agent(
    sm: &Arc<MemoryManager>,
    ip: &'static str,
) -> (
    Arc<Health>,
    tokio::task::JoinHandle<Result<flanneld::daemon::Exit, flanneld::daemon::DaemonError>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let health = Arc::new(Health::default());
    let (sm, h) = (sm.clone() as Arc<dyn SubnetManager>, health.clone());
    let cfg = daemon_config(dir.path());
    let run = tokio::spawn(async move {
        flanneld::daemon::run(
            cfg,
            sm,
            &flanneld::backend::Builtin,
            &FakeHost(ip),
            h,
            std::future::pending(),
        )
        .await
    });
    (health, run, dir)
}

fn tag(ip: &str) -> String {
    format!("flannel:lab:{ip}")
}

#[tokio::test]
async fn nodes_in_two_subnets_route_through_both_tables_and_a_restart_writes_nothing() {
    let cloud = Cloud::start(scenario(50)).await;
    let (a, lease_a) = cloud.node("172.16.1.7", "subnet-a", "10.244.1.0/24").await;
    assert_eq!(
        lease_a.attrs.to_json(),
        r#"{"PublicIP":"172.16.1.7","PublicIPv6":null,"BackendType":"tencent-vpc","BackendData":{"PrivateIP":"172.16.1.7","SubnetId":"subnet-a"}}"#
    );
    // The first node: one read, the quota, one create in its own subnet's table (rtb-main).
    start(&a, &lease_a, &[]).await;
    assert!(a.ready());
    assert_eq!(
        cloud.counts().await,
        (3, 1),
        "DescribeRouteTables, DescribeVpcLimits, CreateRoutes"
    );
    assert_eq!(
        cloud.route_to("rtb-main", "10.244.1.0/24").await.unwrap().2,
        "172.16.1.7"
    );

    // A node in subnet-b (table rtb-b) joins, knowing a's lease from the watch snapshot.
    let (b, lease_b) = cloud.node("172.16.2.7", "subnet-b", "10.244.2.0/24").await;
    resync(&b, &lease_b, std::slice::from_ref(&lease_a)).await;
    assert!(b.ready());
    // a hears of a node in a new subnet: its route goes into rtb-b too.
    let b_only = std::slice::from_ref(&lease_b);
    added(&a, &lease_a, b_only, b_only).await;
    for table in ["rtb-main", "rtb-b"] {
        let routes = cloud.routes(table).await;
        for (dest, via) in [
            ("10.244.1.0/24", "172.16.1.7"),
            ("10.244.2.0/24", "172.16.2.7"),
        ] {
            let r = routes
                .iter()
                .find(|r| r.1 == dest)
                .unwrap_or_else(|| panic!("{dest} in {table}: {routes:?}"));
            assert_eq!((r.2.as_str(), r.3.clone(), r.4), (via, tag(via), true));
        }
    }
    // A second node in a known subnet costs the others nothing.
    let before = cloud.counts().await;
    let (_, lease_a2) = cloud.node("172.16.1.8", "subnet-a", "10.244.3.0/24").await;
    let new = [lease_a2.clone()];
    added(&a, &lease_a, &[lease_b.clone(), lease_a2.clone()], &new).await;
    added(&b, &lease_b, &[lease_a.clone(), lease_a2.clone()], &new).await;
    assert_eq!(cloud.counts().await, before);

    // Restarted agents with everything in place: reads only, zero writes.
    let (_, writes) = cloud.counts().await;
    let (a, _) = cloud.node("172.16.1.7", "subnet-a", "10.244.1.0/24").await;
    let (b, _) = cloud.node("172.16.2.7", "subnet-b", "10.244.2.0/24").await;
    start(&a, &lease_a, &[]).await;
    start(&b, &lease_b, &[]).await;
    resync(&a, &lease_a, std::slice::from_ref(&lease_b)).await;
    resync(&b, &lease_b, std::slice::from_ref(&lease_a)).await;
    assert!(a.ready() && b.ready());
    assert_eq!(
        cloud.counts().await.1,
        writes,
        "no write call after a restart"
    );
}

#[tokio::test]
async fn only_the_leader_collects_a_departed_nodes_route_and_user_routes_stay() {
    let cloud = Cloud::start(scenario(50)).await;
    // A user's route inside the Network, to a NAT gateway: not ours, whatever happens.
    cloud
        .console(
            reqwest::Method::POST,
            "/route-tables/rtb-main/routes",
            Some(json!({"DestinationCidrBlock": "10.244.200.0/24", "GatewayType": "NAT", "GatewayId": "nat-1"})),
        )
        .await;
    // Ours, in a table no node subnet uses (every node here is in subnet-a, table rtb-main).
    cloud
        .console(
            reqwest::Method::POST,
            "/route-tables/rtb-b/routes",
            Some(
                json!({"DestinationCidrBlock": "10.244.77.0/24", "GatewayType": "NORMAL_CVM",
                        "GatewayId": "172.16.1.8", "RouteDescription": tag("172.16.1.8")}),
            ),
        )
        .await;
    let (n1, lease_1) = cloud.node("172.16.1.7", "subnet-a", "10.244.1.0/24").await;
    let (n2, lease_2) = cloud.node("172.16.1.8", "subnet-a", "10.244.2.0/24").await;
    start(&n1, &lease_1, &[]).await;
    start(&n2, &lease_2, &[]).await;
    assert!(cloud.route_to("rtb-main", "10.244.2.0/24").await.is_some());
    // Which of the two seats leads?
    let probe = cloud.elections.election("tencent-vpc-gc-lab", "probe");
    let mut leader_ip = None;
    for _ in 0..500 {
        leader_ip = flanneld::subnet::election::LeaderElection::leader(&probe)
            .await
            .unwrap();
        if leader_ip.is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Make node 1 the leader for the rest of the test: the other one departs.
    let ((leader, lease_1), (other, lease_2)) = match leader_ip.as_deref() {
        Some("172.16.1.7") => ((n1, lease_1), (n2, lease_2)),
        Some("172.16.1.8") => ((n2, lease_2), (n1, lease_1)),
        other => panic!("no leader: {other:?}"),
    };
    let gone = lease_2.key.ipv4.to_string();
    // The departed node's lease has expired; its route stays until the leader collects it.
    // Whoever is not the leader never deletes another node's route, however often it looks.
    // (Here the departed agent is still running, seeing only the leader's lease: as a
    // non-leader it must not delete anything but its own stale routes.)
    for _ in 0..3 {
        resync(&other, &lease_2, std::slice::from_ref(&lease_1)).await;
    }
    assert!(cloud.route_to("rtb-main", &gone).await.is_some());
    // The leader: first sighting keeps it, the second deletes it.
    let mut rounds = 0;
    while cloud.route_to("rtb-main", &gone).await.is_some() {
        resync(&leader, &lease_1, &[]).await;
        rounds += 1;
        assert!(rounds <= 3, "collected within two of the leader's resyncs");
    }
    assert!(rounds >= 2, "never at the first sighting");
    assert!(
        cloud.route_to("rtb-b", "10.244.77.0/24").await.is_none(),
        "an orphan in a table no node uses is collected too"
    );
    // A hundred more resyncs: the user's routes are untouched, ours is in place.
    for _ in 0..100 {
        resync(&leader, &lease_1, &[]).await;
    }
    let routes = cloud.routes("rtb-main").await;
    assert!(
        routes
            .iter()
            .any(|r| r.1 == "10.244.200.0/24" && r.2 == "nat-1"),
        "{routes:?}"
    );
    assert!(
        routes.iter().any(|r| r.1 == "192.168.100.0/24"),
        "the VPN route: {routes:?}"
    );
    assert!(routes.iter().any(|r| r.1 == lease_1.key.ipv4.to_string()));
}

#[tokio::test]
async fn drift_is_repaired_in_place_within_one_resync() {
    let cloud = Cloud::start(scenario(50)).await;
    // Our route with a wrong next hop (a node that held the subnet before).
    cloud
        .console(
            reqwest::Method::POST,
            "/route-tables/rtb-main/routes",
            Some(
                json!({"DestinationCidrBlock": "10.244.1.0/24", "GatewayType": "NORMAL_CVM",
                        "GatewayId": "172.16.1.8", "RouteDescription": tag("172.16.1.8")}),
            ),
        )
        .await;
    let wrong = cloud.route_to("rtb-main", "10.244.1.0/24").await.unwrap();
    let (a, lease) = cloud.node("172.16.1.7", "subnet-a", "10.244.1.0/24").await;
    start(&a, &lease, &[]).await;
    let fixed = cloud.route_to("rtb-main", "10.244.1.0/24").await.unwrap();
    assert_eq!(fixed.0, wrong.0, "replaced in place, same RouteId");
    assert_eq!(
        (fixed.2.as_str(), fixed.3.clone()),
        ("172.16.1.7", tag("172.16.1.7"))
    );
    assert_eq!(cloud.calls().await["ReplaceRoutes"]["Success"], 1);
    assert!(
        cloud.calls().await.get("CreateRoutes").is_none(),
        "never a second route"
    );

    // Disabled in the console: enabled again at the next resync.
    cloud
        .console(
            reqwest::Method::POST,
            &format!("/route-tables/rtb-main/routes/{}/disable", fixed.0),
            None,
        )
        .await;
    resync(&a, &lease, &[]).await;
    assert!(cloud.route_to("rtb-main", "10.244.1.0/24").await.unwrap().4);

    // Deleted in the console: back at the next resync.
    cloud
        .console(
            reqwest::Method::DELETE,
            &format!("/route-tables/rtb-main/routes/{}", fixed.0),
            None,
        )
        .await;
    assert!(cloud.route_to("rtb-main", "10.244.1.0/24").await.is_none());
    resync(&a, &lease, &[]).await;
    assert_eq!(
        cloud.route_to("rtb-main", "10.244.1.0/24").await.unwrap().2,
        "172.16.1.7"
    );
    assert!(a.ready());
}

#[tokio::test]
async fn a_full_table_is_reported_with_usage_and_limit_and_the_node_is_not_ready() {
    // rtb-main holds one VPN route and may hold one.
    let cloud = Cloud::start(scenario(1)).await;
    let (a, lease) = cloud.node("172.16.1.7", "subnet-a", "10.244.1.0/24").await;
    start(&a, &lease, &[]).await;
    assert!(!a.ready(), "not ready without its route");
    let status = resync(&a, &lease, &[]).await;
    assert!(!status.ready);
    assert!(!status.pending, "a full table waits for the resync");
    assert_eq!(
        status.problem.unwrap(),
        "create route 10.244.1.0/24 via 172.16.1.7 in rtb-main: route table full (1/1 routes)"
    );
    assert!(
        cloud.calls().await.get("CreateRoutes").is_none(),
        "nothing sent that must fail"
    );

    // With the quota unreadable the default (50) is assumed: the API's LimitExceeded then
    // names the table, and the limit learnt from it blocks the next attempt locally.
    let cloud = Cloud::start(scenario(1)).await;
    cloud
        .fault(json!({"action": "DescribeVpcLimits", "error_rate": 1.0, "error_code": "UnauthorizedOperation"}))
        .await;
    let (a, lease) = cloud.node("172.16.1.7", "subnet-a", "10.244.1.0/24").await;
    let e = resync(&a, &lease, &[]).await.problem.unwrap();
    assert!(
        e.starts_with(
            "create route 10.244.1.0/24 via 172.16.1.7 in rtb-main (1 routes in the table): CreateRoutes: LimitExceeded"
        ),
        "{e}"
    );
    let e = resync(&a, &lease, &[]).await.problem.unwrap();
    assert_eq!(
        e,
        "create route 10.244.1.0/24 via 172.16.1.7 in rtb-main: route table full (1/1 routes)"
    );
    assert_eq!(
        cloud.calls().await["CreateRoutes"]["LimitExceeded"],
        1,
        "asked once, then known"
    );
    assert!(!a.ready());
}

#[tokio::test]
async fn half_the_calls_throttled_every_node_converges() {
    let cloud = Cloud::start(scenario(50)).await;
    cloud
        .fault(json!({"error_rate": 0.5, "error_code": "RequestLimitExceeded", "seed": 7}))
        .await;
    let mut nodes = Vec::new();
    for i in 0..6u8 {
        let (subnet, ip) = if i.is_multiple_of(2) {
            ("subnet-a", format!("172.16.1.{}", 10 + i))
        } else {
            ("subnet-b", format!("172.16.2.{}", 10 + i))
        };
        nodes.push(
            cloud
                .node(&ip, subnet, &format!("10.244.{}.0/24", 10 + i))
                .await,
        );
    }
    let leases: Vec<Lease> = nodes.iter().map(|(_, l)| l.clone()).collect();
    for round in 0.. {
        assert!(round < 20, "converged within 20 resync rounds");
        for (b, own) in &nodes {
            let peers: Vec<Lease> = leases
                .iter()
                .filter(|l| l.key != own.key)
                .cloned()
                .collect();
            let _ = resync(b, own, &peers).await;
        }
        if nodes.iter().all(|(b, _)| b.ready()) {
            break;
        }
    }
    for table in ["rtb-main", "rtb-b"] {
        let routes = cloud.routes(table).await;
        for l in &leases {
            let dest = l.key.ipv4.to_string();
            assert_eq!(
                routes.iter().filter(|r| r.1 == dest).count(),
                1,
                "{dest} exactly once in {table}: {routes:?}"
            );
        }
    }
    assert!(
        cloud.calls().await["DescribeRouteTables"]["RequestLimitExceeded"]
            .as_u64()
            .unwrap()
            > 0,
        "the fault did bite"
    );
}

#[tokio::test]
async fn the_daemon_with_tencent_vpc_is_ready_once_routed() {
    let cloud = Cloud::start(scenario(50)).await;
    let sm = cloud.store(json!({"Type": "tx-vpc"}));
    let (health, run, _dir) = spawn_agent(&sm, "172.16.1.7");
    wait_until_async("ready", Duration::from_secs(20), || health.is_ready()).await;
    let lease = sm.leases().into_iter().next().unwrap();
    assert_eq!(lease.attrs.backend_type, "tencent-vpc");
    assert_eq!(
        lease.attrs.backend_data,
        Some(json!({"PrivateIP": "172.16.1.7", "SubnetId": "subnet-a"}))
    );
    let dest = lease.key.ipv4.to_string();
    let route = cloud.route_to("rtb-main", &dest).await.unwrap();
    assert_eq!(
        (route.2.as_str(), route.3.as_str()),
        ("172.16.1.7", "flannel:10-244-0-0-16:172.16.1.7"),
        "the default ClusterName comes from the Network"
    );
    let metrics = health.metrics.encode();
    assert!(
        metrics
            .contains(r#"flannel_vpc_api_calls_total{action="CreateRoutes",result="Success"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"flannel_vpc_route_table_limit{table="rtb-main"} 50"#),
        "{metrics}"
    );
    // The tables read before the lease serve the first reconcile: a join costs one read.
    let calls = cloud.calls().await;
    assert_eq!(calls["DescribeRouteTables"]["Success"], 1, "{calls}");
    assert_eq!(calls["DescribeVpcLimits"]["Success"], 1, "{calls}");
    run.abort();
}

#[tokio::test]
async fn an_unknown_vpc_or_route_table_fails_before_any_lease_is_taken() {
    let cloud = Cloud::start(scenario(50)).await;
    for (backend, message) in [
        (
            json!({"Type": "tencent-vpc", "VpcId": "vpc-nope"}),
            "VPC vpc-nope has no route tables (is the VpcId right, in this region?)",
        ),
        (
            json!({"Type": "tencent-vpc", "RouteTableIds": ["rtb-nope"]}),
            "route table rtb-nope (Backend.RouteTableIds) is not in VPC vpc-lab",
        ),
    ] {
        let sm = cloud.store(backend);
        let (health, run, _dir) = spawn_agent(&sm, "172.16.1.7");
        let err = tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(
            flanneld::report(&err).ends_with(message),
            "{}",
            flanneld::report(&err)
        );
        assert!(sm.leases().is_empty(), "no lease left behind");
        assert!(!health.is_ready());
    }
}

/// Run the flanneld binary with `backend` as the Backend section and RUST_LOG=trace until
/// /readyz says ready (or 30 s pass): (ready, everything it logged).
async fn run_flanneld(mut backend: Value, env: &[(&str, String)]) -> (bool, String) {
    // The binary runs in this test's network namespace, the host's: no probe address on its
    // lo (the probe is tested in the lab's namespaces).
    backend["ReadinessProbe"] = false.into();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net-conf.json");
    std::fs::write(
        &conf,
        json!({"Network": "10.244.0.0/16", "Backend": backend}).to_string(),
    )
    .unwrap();
    let port = common::free_port();
    let log_path = dir.path().join("flanneld.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flanneld"))
        .args([
            "--local-subnet-mgr",
            "--iface=lo",
            "--iptables-forward-rules=false",
        ])
        .arg(format!("--net-config-path={}", conf.display()))
        .arg(format!(
            "--subnet-file={}",
            dir.path().join("subnet.env").display()
        ))
        .arg(format!("--healthz-port={port}"))
        .env_clear()
        .env("HOME", dir.path())
        .env("RUST_LOG", "trace")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let ready = tokio::task::spawn_blocking(move || {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < end {
            if common::http_get(addr, "/readyz").is_ok_and(|(status, _)| status == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    (ready, std::fs::read_to_string(&log_path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flanneld_binary_routes_its_lease_and_never_logs_secrets_at_trace() {
    let cloud = Cloud::start(scenario(50)).await;
    let md = cloud.emu.metadata.unwrap();
    // Keys in net-conf.json.
    let (ready, text) = run_flanneld(
        json!({"Type": "tencent-vpc", "AccessKeyID": ID, "AccessKeySecret": KEY,
               "Endpoint": format!("http://{}", cloud.emu.api),
               "MetadataURL": format!("http://{md}/latest/meta-data/")}),
        &[],
    )
    .await;
    assert!(ready, "flanneld became ready: {text}");
    let routes = cloud.routes("rtb-main").await;
    assert!(
        routes
            .iter()
            .any(|r| r.2 == "172.16.1.7" && r.3 == "flannel:10-244-0-0-16:172.16.1.7"),
        "{routes:?}"
    );
    assert!(
        text.contains("CreateRoutes"),
        "trace logging was on: {text}"
    );
    assert!(!text.contains(KEY), "the SecretKey reached a log line");

    // No keys anywhere: the CVM role's temporary credentials (key and token) from metadata.
    let role_url = format!(
        "http://{md}/instances/ins-a1/latest/meta-data/cam/security-credentials/flannel-role"
    );
    let role: Value = reqwest::get(&role_url).await.unwrap().json().await.unwrap();
    let (tmp_key, token) = (
        role["TmpSecretKey"].as_str().unwrap(),
        role["Token"].as_str().unwrap(),
    );
    let (ready, text) = run_flanneld(
        json!({"Type": "tencent-vpc", "Endpoint": format!("http://{}", cloud.emu.api)}),
        &[(
            "FLANNEL_TENCENT_METADATA_URL",
            format!("http://{md}/instances/ins-a1/latest/meta-data/"),
        )],
    )
    .await;
    assert!(ready, "ready with role credentials: {text}");
    assert!(text.contains("CVM role"), "the role was used: {text}");
    assert!(
        !text.contains(tmp_key),
        "the temporary SecretKey reached a log line"
    );
    assert!(!text.contains(token), "the token reached a log line");
}

#[tokio::test]
async fn ipv6_networks_are_refused_clearly() {
    let ext = ExternalInterface::ipv4("eth0", 2, 1500, "172.16.1.7".parse().unwrap());
    let metrics = Metrics::default();
    for (conf, message) in [
        (
            r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00::/48","Backend":{"Type":"tencent-vpc"}}"#,
            "tencent-vpc routes IPv4 pod subnets only: IPv6 networks are not supported yet (set EnableIPv6 to false)",
        ),
    ] {
        let network = flannel_core::config::parse_and_check(conf).unwrap();
        // Refused by the check flanneld runs before building anything (config check too).
        let e = flanneld::backend::Builtin::check(&network).unwrap_err();
        assert!(matches!(e, BackendError::Unsupported(_)));
        assert_eq!(e.to_string(), message);
        // And by the backend itself, whatever its caller checked.
        let config = flannel_core::backend_config::BackendConfig::parse(
            &network.backend_type,
            network.backend.as_ref(),
        )
        .unwrap();
        let ctx = flanneld::backend::BackendContext {
            config: &config,
            network: &network,
            ext: &ext,
            metrics: &metrics,
            store: Arc::new(MemoryManager::new(network.clone())),
        };
        let e = match flanneld::backend::BackendFactory::build(&flanneld::backend::Builtin, &ctx).await {
            Err(e) => e,
            Ok(_) => panic!("{conf} accepted"),
        };
        assert!(matches!(e, BackendError::Unsupported(_)));
        assert_eq!(e.to_string(), message);
    }
}

/// A lease as an agent in subnet-a or subnet-b would publish it.
fn agent_lease(i: u8) -> Lease {
    let (net, subnet) = if i.is_multiple_of(2) {
        (1, "subnet-a")
    } else {
        (2, "subnet-b")
    };
    let ip = format!("172.16.{net}.{}", 10 + i);
    let mut attrs = flannel_core::LeaseAttrs::new(ip.parse().unwrap());
    attrs.backend_type = "tencent-vpc".into();
    attrs.backend_data = Some(json!({"PrivateIP": ip, "SubnetId": subnet}));
    Lease {
        key: SubnetKey::v4(format!("10.244.{}.0/24", 100 + i).parse().unwrap()),
        attrs,
        expiry: Expiry::Never,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_routes_every_lease_in_batches_and_agents_need_no_credentials() {
    let cloud = Cloud::start(scenario(100)).await;
    // The controller's credentials are in its config; the agents never build a client.
    let sm = cloud.store(json!({"Type": "tencent-vpc", "Mode": "controller"}));
    let controller_health = Arc::new(Health::default());
    let controller = {
        let (sm, health) = (
            sm.clone() as Arc<dyn SubnetManager>,
            controller_health.clone(),
        );
        tokio::spawn(flanneld::controller::run(
            flanneld::controller::ControllerOptions {
                identity: "controller-1".into(),
            },
            sm,
            health,
            std::future::pending(),
        ))
    };
    // A real agent (the daemon, Mode controller): ready once the controller routed it.
    let (health, agent, _dir) = spawn_agent(&sm, "172.16.1.7");
    wait_until_async("the agent ready", Duration::from_secs(30), || {
        health.is_ready()
    })
    .await;
    let own = sm.leases().into_iter().next().unwrap();
    let before = cloud.counts().await;

    // Thirty more nodes join at once.
    let leases: Vec<Lease> = (0..30).map(agent_lease).collect();
    for l in &leases {
        sm.put_lease(l.clone());
    }
    let status_name = "tencent-vpc-routes-10-244-0-0-16";
    let mut routed = 0;
    for _ in 0..300 {
        let status = sm
            .get_record(status_name)
            .await
            .unwrap()
            .unwrap_or_default();
        routed = serde_json::from_str::<Value>(&status)
            .ok()
            .and_then(|v| v["Routes"].as_object().map(|r| r.len()))
            .unwrap_or(0);
        if routed == 31 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(routed, 31, "every lease reported routed");
    for table in ["rtb-main", "rtb-b"] {
        let routes = cloud.routes(table).await;
        for l in leases.iter().chain(std::iter::once(&own)) {
            let dest = l.key.ipv4.to_string();
            assert_eq!(
                routes.iter().filter(|r| r.1 == dest).count(),
                1,
                "{dest} in {table}"
            );
        }
    }
    let after = cloud.counts().await;
    assert!(
        after.0 - before.0 <= 12,
        "30 joins batched into a few calls, not {}",
        after.0 - before.0
    );
    assert!(controller_health
        .metrics
        .encode()
        .contains(r#"flannel_vpc_routes{table="rtb-b",state="present"} 31"#));
    agent.abort();
    controller.abort();
}

#[tokio::test]
async fn with_fallback_the_quota_is_read_again_only_while_leases_are_over_vxlan() {
    use flanneld::backend::tencent_vpc::plan::{Scope, Wanted};
    use flanneld::backend::tencent_vpc::reconcile::{Reconciler, SplitRequest, Target};
    use std::collections::BTreeSet;

    let cloud = Cloud::start(scenario(50)).await;
    let reconciler = Reconciler::new(cloud.client(), settings(true), Metrics::default().vpc);
    // Leases of CVMs 172.16.1.10-49 and 172.16.2.10-49.
    let leases: Vec<Wanted> = (0..80u8)
        .map(|i| Wanted {
            dest: format!("10.244.{}.0/24", i + 1).parse().unwrap(),
            next_hop: format!("172.16.{}.{}", 1 + i / 40, 10 + i % 40)
                .parse()
                .unwrap(),
        })
        .collect();
    let subnets: BTreeSet<String> = ["subnet-a".into(), "subnet-b".into()].into();
    let keep = BTreeSet::new();
    let limits_read = || async {
        cloud.calls().await["DescribeVpcLimits"]
            .as_object()
            .map_or(0, |r| r.values().map(|v| v.as_u64().unwrap()).sum::<u64>())
    };
    let reconcile = |n: usize| {
        let wanted = &leases[..n];
        let leased: BTreeSet<_> = wanted.iter().map(|w| w.dest).collect();
        let (reconciler, subnets, keep) = (&reconciler, &subnets, &keep);
        async move {
            reconciler
                .reconcile(&Target {
                    wanted,
                    leased: &leased,
                    node_subnets: subnets,
                    scope: Scope::Cluster,
                    gc: None,
                    split: Some(SplitRequest {
                        leases: wanted,
                        reserved: 0,
                        evict: keep,
                    }),
                })
                .await
                .unwrap()
        }
    };
    // 10 leases: room for all. The quota is read at the first reconcile, not at the next.
    let first = reconcile(10).await;
    assert!(first.split.unwrap().fallback.is_empty());
    assert_eq!(limits_read().await, 1);
    reconcile(10).await;
    reconcile(10).await;
    assert_eq!(limits_read().await, 1, "nothing over vxlan: no re-read");
    // 80 leases: some cannot be routed; each reconcile reads the quota again (a raise would
    // move them to routes).
    let over = reconcile(80).await.split.unwrap();
    assert!(!over.fallback.is_empty(), "{over:?}");
    let before = limits_read().await;
    reconcile(80).await;
    reconcile(80).await;
    assert_eq!(limits_read().await, before + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_api_refuses_is_isolated_and_the_rest_are_routed_without_a_retry_storm() {
    let cloud = Cloud::start(scenario(100)).await;
    let sm =
        cloud.store(json!({"Type": "tencent-vpc", "Mode": "controller", "ResyncInterval": 10}));
    // Ten good leases and one whose PrivateIP is inside the VPC but no CVM's: CreateRoutes
    // refuses a batch holding it (RouteNextHopInvalid), all or nothing.
    let good: Vec<Lease> = (0..10).map(agent_lease).collect();
    let mut bad = agent_lease(20);
    bad.attrs.backend_data = Some(json!({"PrivateIP": "172.16.1.250", "SubnetId": "subnet-a"}));
    for l in good.iter().chain([&bad]) {
        sm.put_lease(l.clone());
    }
    let health = Arc::new(Health::default());
    let controller = {
        let (sm, health) = (sm.clone() as Arc<dyn SubnetManager>, health.clone());
        tokio::spawn(flanneld::controller::run(
            flanneld::controller::ControllerOptions {
                identity: "controller-1".into(),
            },
            sm,
            health,
            std::future::pending(),
        ))
    };
    let status_name = "tencent-vpc-routes-10-244-0-0-16";
    let bad_dest = bad.key.ipv4.to_string();
    let mut status = Value::Null;
    for _ in 0..200 {
        status = sm
            .get_record(status_name)
            .await
            .unwrap()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        if status["Routes"].as_object().is_some_and(|r| r.len() == 10)
            && status["Unrouted"].get(&bad_dest).is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status["Routes"].as_object().map(|r| r.len()),
        Some(10),
        "{status}"
    );
    let why = status["Unrouted"][&bad_dest].as_str().unwrap();
    assert!(
        why.contains("InvalidParameterValue.RouteNextHopInvalid"),
        "{why}"
    );
    for table in ["rtb-main", "rtb-b"] {
        let routes = cloud.routes(table).await;
        for l in &good {
            assert!(
                routes.iter().any(|r| r.1 == l.key.ipv4.to_string()),
                "{table}"
            );
        }
        assert!(!routes.iter().any(|r| r.1 == bad_dest));
    }
    // Settled: the refused lease is tried again at the resync (10 s), never in a loop.
    let failed = |calls: &Value| -> u64 {
        calls["CreateRoutes"].as_object().map_or(0, |r| {
            r.iter()
                .filter(|(k, _)| *k != "Success")
                .map(|(_, v)| v.as_u64().unwrap())
                .sum()
        })
    };
    let before = failed(&cloud.calls().await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        failed(&cloud.calls().await),
        before,
        "no retry before the resync"
    );
    assert!(health
        .metrics
        .encode()
        .contains(r#"flannel_vpc_routes{table="rtb-main",state="rejected"} 1"#));
    controller.abort();
}
