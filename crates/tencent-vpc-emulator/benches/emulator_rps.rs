//! Benchmark (not a test): requests per second the emulator serves to signed clients.
//! 32 concurrent tencent-cloud clients call DescribeRouteTables (every request signed and
//! verified) for a fixed number of requests; then the same for CreateRoutes+DeleteRoutes.
//!
//! Run: `cargo bench -p tencent-vpc-emulator --bench emulator_rps` (REQUESTS=n to change).

use secrecy::SecretString;
use std::sync::Arc;
use std::time::Instant;
use tencent_cloud::credentials::{Credentials, StaticProvider};
use tencent_cloud::vpc::NewRoute;
use tencent_cloud::{Client, ClientConfig};
use tencent_vpc_emulator::scenario::Scenario;
use tencent_vpc_emulator::{Emulator, EmulatorConfig};

const CONCURRENCY: usize = 32;

fn main() {
    let requests: usize = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut scenario = Scenario::from_json(include_str!("../scenarios/lab.json")).unwrap();
        scenario.rate_limit_per_second = 1e12;
        scenario.route_quota = 100_000;
        let emu = Emulator::start(EmulatorConfig::on_loopback(scenario))
        .await
        .unwrap();
        let mut cfg = ClientConfig::new("ap-guangzhou");
        cfg.endpoint = format!("http://{}", emu.api).parse().unwrap();
        cfg.rate_per_second = 1e12;
        cfg.burst = 1_000_000;
        cfg.max_attempts = 1;
        let creds = Arc::new(StaticProvider::new(
            Credentials::new("AKIDlab0000000000000000000000000000", SecretString::from("lab-secret-key-0000000000000000".to_string()), None),
            "bench",
        ));
        let client = Arc::new(Client::new(cfg, creds).unwrap());

        let per_task = requests / CONCURRENCY;
        let start = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        c.describe_route_tables(&[]).await.expect("describe");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let n = per_task * CONCURRENCY;
        println!("emulator_rps: DescribeRouteTables {n} signed requests, {CONCURRENCY} concurrent: {:.0} req/s ({:.2} s)", n as f64 / secs, secs);

        let pairs = per_task / 4;
        let start = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|t| {
                let c = client.clone();
                tokio::spawn(async move {
                    for i in 0..pairs {
                        let dest = format!("10.{}.{}.0/24", 100 + t, i % 256);
                        let r = c
                            .create_routes("rtb-b", &[NewRoute { destination_cidr_block: dest, gateway_type: "NORMAL_CVM".into(), gateway_id: "172.16.2.7".into(), route_description: None }])
                            .await
                            .expect("create");
                        let id = r.route_table_set.unwrap()[0].routes()[0].route_id.unwrap();
                        c.delete_routes("rtb-b", &[id]).await.expect("delete");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let n = pairs * CONCURRENCY * 2;
        println!("emulator_rps: CreateRoutes+DeleteRoutes {n} signed requests, {CONCURRENCY} concurrent: {:.0} req/s ({:.2} s)", n as f64 / secs, secs);
    });
}
