//! The Rust client of the tencent-cloud crate against the running emulator.

use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use tencent_cloud::credentials::{
    CredentialProvider, Credentials, CvmRoleProvider, StaticProvider,
};
use tencent_cloud::vpc::{Filter, NewRoute, ReplacementRoute};
use tencent_cloud::{Client, ClientConfig, ErrorClass, MetadataClient};
use tencent_vpc_emulator::scenario::Scenario;
use tencent_vpc_emulator::{Emulator, EmulatorConfig};

const ID: &str = "AKIDlab0000000000000000000000000000";
const KEY: &str = "lab-secret-key-0000000000000000";

fn scenario() -> Scenario {
    Scenario::from_json(include_str!("../scenarios/lab.json")).unwrap()
}

async fn start_with(s: Scenario, state_file: Option<std::path::PathBuf>) -> Emulator {
    Emulator::start(EmulatorConfig {
        metadata_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        state_file,
        metadata_default_instance: Some("ins-a1".into()),
        ..EmulatorConfig::on_loopback(s)
    })
    .await
    .unwrap()
}

async fn start() -> Emulator {
    start_with(scenario(), None).await
}

fn creds(id: &str, key: &str, token: Option<&str>) -> Arc<dyn CredentialProvider> {
    Arc::new(StaticProvider::new(
        Credentials::new(
            id,
            SecretString::from(key.to_string()),
            token.map(|t| SecretString::from(t.to_string())),
        ),
        "test",
    ))
}

fn client(emu: &Emulator, c: Arc<dyn CredentialProvider>) -> Client {
    let mut cfg = ClientConfig::new("ap-guangzhou");
    cfg.endpoint = format!("http://{}", emu.api).parse().unwrap();
    cfg.backoff_base = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(20);
    cfg.max_attempts = 8;
    cfg.rate_per_second = 1000.0;
    cfg.burst = 100;
    Client::new(cfg, c).unwrap()
}

fn cvm_route(dest: &str, gw: &str) -> NewRoute {
    NewRoute {
        destination_cidr_block: dest.into(),
        gateway_type: "NORMAL_CVM".into(),
        gateway_id: gw.into(),
        route_description: Some("flannel-rs".into()),
    }
}

async fn admin(
    emu: &Emulator,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> reqwest::Response {
    let mut req =
        reqwest::Client::new().request(method, format!("http://{}{path}", emu.admin.unwrap()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.unwrap()
}

async fn calls(emu: &Emulator) -> serde_json::Value {
    admin(emu, reqwest::Method::GET, "/calls", None)
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn full_route_lifecycle_signed_and_verified() {
    let emu = start().await;
    let c = client(&emu, creds(ID, KEY, None));
    let tables = c
        .describe_route_tables(&[Filter::new("vpc-id", &["vpc-lab"])])
        .await
        .unwrap();
    assert_eq!(tables.len(), 2);
    let subnets = c
        .describe_subnets(&[Filter::new("vpc-id", &["vpc-lab"])])
        .await
        .unwrap();
    assert_eq!(
        subnets
            .iter()
            .filter_map(|s| s.route_table_id.clone())
            .collect::<Vec<_>>(),
        ["rtb-main", "rtb-b"]
    );
    let created = c
        .create_routes(
            "rtb-main",
            &[
                cvm_route("10.244.1.0/24", "172.16.1.7"),
                cvm_route("10.244.2.0/24", "172.16.1.8"),
            ],
        )
        .await
        .unwrap();
    let ids: Vec<u64> = created.route_table_set.unwrap()[0]
        .routes()
        .iter()
        .filter_map(|r| r.route_id)
        .collect();
    assert_eq!(ids.len(), 2);
    let replaced = c
        .replace_routes(
            "rtb-main",
            &[ReplacementRoute {
                route_id: ids[0],
                destination_cidr_block: "10.244.1.0/24".into(),
                gateway_type: "NORMAL_CVM".into(),
                gateway_id: "172.16.2.7".into(),
                route_description: Some("flannel-rs".into()),
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        replaced.new_route_set.unwrap()[0].gateway_id.as_deref(),
        Some("172.16.2.7")
    );
    c.disable_routes("rtb-main", &[ids[1]]).await.unwrap();
    c.enable_routes("rtb-main", &[ids[1]]).await.unwrap();
    c.delete_routes("rtb-main", &ids).await.unwrap();
    let e = c.delete_routes("rtb-main", &ids).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::NotFound);
    let inst = c
        .describe_instances_by_private_ip(&["172.16.2.7"])
        .await
        .unwrap();
    assert_eq!(inst[0].instance_id.as_deref(), Some("ins-b1"));
    let calls = calls(&emu).await;
    assert_eq!(calls["CreateRoutes"]["Success"], 1);
    assert_eq!(calls["DeleteRoutes"]["ResourceNotFound"], 1);
}

#[tokio::test]
async fn authentication_failures() {
    let emu = start().await;
    let e = client(&emu, creds(ID, "wrong-key", None))
        .describe_subnets(&[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("AuthFailure.SignatureFailure"));
    let e = client(&emu, creds("AKIDnobody", KEY, None))
        .describe_subnets(&[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("AuthFailure.SecretIdNotFound"));
    let e = client(
        &emu,
        creds(
            "AKIDtmpExpired000000000000000000000",
            "expired-key",
            Some("expired-token"),
        ),
    )
    .describe_subnets(&[])
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some("AuthFailure.TokenFailure"));
}

#[tokio::test]
async fn role_credentials_from_the_metadata_service() {
    let emu = start().await;
    let md = MetadataClient::new(&format!(
        "http://{}/latest/meta-data/",
        emu.metadata.unwrap()
    ))
    .unwrap();
    assert_eq!(md.region().await.unwrap(), "ap-guangzhou");
    assert_eq!(md.instance_id().await.unwrap(), "ins-a1");
    let mac = md.mac().await.unwrap();
    assert_eq!(md.vpc_id(&mac).await.unwrap(), "vpc-lab");
    assert_eq!(md.subnet_id(&mac).await.unwrap(), "subnet-a");
    assert_eq!(
        md.role_name().await.unwrap().as_deref(),
        Some("flannel-role")
    );
    let role: Arc<dyn CredentialProvider> = Arc::new(CvmRoleProvider::new(md, "flannel-role"));
    let c = role.credentials().await.unwrap();
    assert!(c.is_temporary());
    // Temporary credentials minted by metadata authenticate against the API, token checked.
    client(&emu, role).describe_route_tables(&[]).await.unwrap();
    let e = client(
        &emu,
        creds(&c.secret_id, c.secret_key().expose_secret(), Some("forged")),
    )
    .describe_route_tables(&[])
    .await
    .unwrap_err();
    assert_eq!(e.code(), Some("AuthFailure.TokenFailure"));
}

#[tokio::test]
async fn client_retries_through_injected_throttling() {
    let emu = start().await;
    let r = admin(&emu, reqwest::Method::POST, "/faults", Some(serde_json::json!({"action": "DescribeRouteTables", "error_rate": 0.5, "error_code": "RequestLimitExceeded", "seed": 42}))).await;
    assert_eq!(r.status(), 204);
    // A seeded fault: the same throttling sequence every run, so the assertions below are
    // deterministic.
    let mut cfg = ClientConfig::new("ap-guangzhou");
    cfg.endpoint = format!("http://{}", emu.api).parse().unwrap();
    cfg.backoff_base = Duration::from_millis(1);
    cfg.backoff_max = Duration::from_millis(5);
    cfg.max_attempts = 30;
    cfg.rate_per_second = 1000.0;
    cfg.burst = 100;
    let c = Client::new(cfg, creds(ID, KEY, None)).unwrap();
    for _ in 0..10 {
        assert_eq!(c.describe_route_tables(&[]).await.unwrap().len(), 2);
    }
    let calls = calls(&emu).await;
    let throttled = calls["DescribeRouteTables"]["RequestLimitExceeded"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(calls["DescribeRouteTables"]["Success"], 10);
    assert!(throttled > 0, "the fault fired: {calls}");
    // Non-idempotent creates are resent only after throttling (never processed).
    admin(
        &emu,
        reqwest::Method::POST,
        "/faults",
        Some(serde_json::json!({"action": "CreateRoutes", "error_rate": 0.5, "seed": 7})),
    )
    .await;
    for i in 0..5 {
        c.create_routes(
            "rtb-main",
            &[cvm_route(&format!("10.244.{i}.0/24"), "172.16.1.7")],
        )
        .await
        .unwrap();
    }
    let state: serde_json::Value = admin(&emu, reqwest::Method::GET, "/state", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        state["route_tables"][0]["routes"].as_array().unwrap().len(),
        6,
        "each create happened exactly once"
    );
    assert!(
        !state.to_string().contains(KEY),
        "the admin API never shows secret keys"
    );
    assert_eq!(
        admin(&emu, reqwest::Method::DELETE, "/faults", None)
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn rate_limit_answers_request_limit_exceeded() {
    let mut s = scenario();
    s.rate_limit_per_second = 3.0;
    let emu = start_with(s, None).await;
    let mut cfg = ClientConfig::new("ap-guangzhou");
    cfg.endpoint = format!("http://{}", emu.api).parse().unwrap();
    cfg.max_attempts = 1;
    cfg.rate_per_second = 1000.0;
    cfg.burst = 100;
    let c = Client::new(cfg, creds(ID, KEY, None)).unwrap();
    let (mut served, calls) = (0, 30);
    let first_window = tencent_cloud::unix_now();
    for _ in 0..calls {
        match c.describe_subnets(&[]).await {
            Ok(_) => served += 1,
            Err(e) => assert_eq!(e.code(), Some("RequestLimitExceeded")),
        }
    }
    // The limit is per one-second window: at most 3 per window the calls touched.
    let windows = tencent_cloud::unix_now() - first_window + 1;
    assert!(
        served <= 3 * windows,
        "{served} served in {windows} window(s)"
    );
    assert!(served >= 1 && served < calls, "{served} of {calls} served");
}

#[tokio::test]
async fn dropped_connections_are_transport_errors() {
    let emu = start().await;
    admin(
        &emu,
        reqwest::Method::POST,
        "/faults",
        Some(serde_json::json!({"action": "*", "drop_rate": 1.0})),
    )
    .await;
    let mut cfg = ClientConfig::new("ap-guangzhou");
    cfg.endpoint = format!("http://{}", emu.api).parse().unwrap();
    cfg.max_attempts = 2;
    cfg.backoff_base = Duration::from_millis(1);
    let e = Client::new(cfg, creds(ID, KEY, None))
        .unwrap()
        .describe_subnets(&[])
        .await
        .unwrap_err();
    assert!(matches!(e, tencent_cloud::Error::Transport { .. }), "{e}");
    assert_eq!(calls(&emu).await["DescribeSubnets"]["Dropped"], 2);
}

#[tokio::test]
async fn bad_requests_get_the_error_envelope() {
    let emu = start().await;
    let http = reqwest::Client::new();
    for (headers, body) in [
        (vec![("X-TC-Action", "DescribeSubnets")], "not json"),
        (vec![], "{}"),
    ] {
        let mut req = http.post(format!("http://{}/", emu.api)).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            v["Response"]["Error"]["Code"],
            "AuthFailure.InvalidAuthorization"
        );
        assert!(v["Response"]["RequestId"].as_str().unwrap().len() > 10);
    }
    // Another path, another method, a body beyond the limit: HTTP 200 and the envelope.
    let too_large = vec![b' '; tencent_vpc_emulator::server::api::MAX_BODY_BYTES + 1];
    for (req, code) in [
        (
            http.get(format!("http://{}/whatever", emu.api)),
            "InvalidAction",
        ),
        (http.get(format!("http://{}/", emu.api)), "InvalidAction"),
        (http.put(format!("http://{}/", emu.api)), "InvalidAction"),
        (
            http.post(format!("http://{}/", emu.api)).body(too_large),
            "RequestSizeLimitExceeded",
        ),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{code}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["Response"]["Error"]["Code"], code, "{v}");
        assert!(v["Response"]["RequestId"].is_string(), "{v}");
    }
    // Signed but malformed types: the documented envelope, never a crash.
    let c = client(&emu, creds(ID, KEY, None));
    #[derive(serde::Serialize)]
    struct Bad {
        #[serde(rename = "Offset")]
        offset: u32,
    }
    let e = c
        .call::<_, serde_json::Value>(
            tencent_cloud::client::VPC,
            "DescribeRouteTables",
            &Bad { offset: 0 },
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidParameter"));
    let e = c
        .call::<_, serde_json::Value>(
            tencent_cloud::client::VPC,
            "NoSuchAction",
            &serde_json::json!({}),
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidAction"));
}

#[tokio::test]
async fn console_edits_and_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let emu = start_with(scenario(), Some(state_file.clone())).await;
    let c = client(&emu, creds(ID, KEY, None));
    let created = c
        .create_routes("rtb-b", &[cvm_route("10.244.7.0/24", "172.16.2.7")])
        .await
        .unwrap();
    let id = created.route_table_set.unwrap()[0].routes()[0]
        .route_id
        .unwrap();
    // Someone disables the route in the console behind our back.
    let r = admin(
        &emu,
        reqwest::Method::POST,
        &format!("/route-tables/rtb-b/routes/{id}/disable"),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    drop(emu);
    let emu = start_with(scenario(), Some(state_file)).await;
    let c = client(&emu, creds(ID, KEY, None));
    let t = c
        .describe_route_tables(&[Filter::new("route-table-id", &["rtb-b"])])
        .await
        .unwrap();
    assert_eq!(t[0].routes()[0].route_id, Some(id));
    assert_eq!(t[0].routes()[0].enabled, Some(false));
    // Console delete; reset brings the scenario back.
    assert_eq!(
        admin(
            &emu,
            reqwest::Method::DELETE,
            &format!("/route-tables/rtb-b/routes/{id}"),
            None
        )
        .await
        .status(),
        200
    );
    assert!(c
        .describe_route_tables(&[Filter::new("route-table-id", &["rtb-b"])])
        .await
        .unwrap()[0]
        .routes()
        .is_empty());
    assert_eq!(
        admin(&emu, reqwest::Method::POST, "/reset", None)
            .await
            .status(),
        204
    );
}

#[tokio::test]
async fn metadata_answers_for_the_callers_source_address() {
    // A VPC on loopback so two "instances" can call from two source addresses.
    let s = Scenario::from_json(
        r#"{"region":"ap-guangzhou","vpcs":[{"vpc_id":"vpc-lo","cidr_block":"127.0.0.0/16"}],
            "route_tables":[{"route_table_id":"rtb-lo","vpc_id":"vpc-lo","main":true}],
            "subnets":[{"subnet_id":"subnet-lo","vpc_id":"vpc-lo","cidr_block":"127.0.0.0/24","zone":"ap-guangzhou-1"}],
            "instances":[{"instance_id":"ins-one","private_ip":"127.0.0.1","subnet_id":"subnet-lo","mac":"52:54:00:00:00:01"},
                         {"instance_id":"ins-two","private_ip":"127.0.0.2","subnet_id":"subnet-lo","mac":"52:54:00:00:00:02"}]}"#,
    )
    .unwrap();
    let emu = Emulator::start(EmulatorConfig {
        metadata_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..EmulatorConfig::on_loopback(s)
    })
    .await
    .unwrap();
    let get = |source: &str| {
        let http = reqwest::Client::builder()
            .local_address(source.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let url = format!(
            "http://{}/latest/meta-data/instance-id",
            emu.metadata.unwrap()
        );
        async move { http.get(url).send().await.unwrap() }
    };
    assert_eq!(get("127.0.0.1").await.text().await.unwrap(), "ins-one");
    assert_eq!(get("127.0.0.2").await.text().await.unwrap(), "ins-two");
    assert_eq!(
        get("127.0.0.3").await.status(),
        404,
        "no instance, no fallback: 404"
    );
    // Asked by instance id (simulated nodes sharing one address): that instance's answers.
    let by_id = |path: &str| {
        let url = format!("http://{}{path}", emu.metadata.unwrap());
        async move { reqwest::get(url).await.unwrap() }
    };
    let r = by_id("/instances/ins-two/latest/meta-data/local-ipv4").await;
    assert_eq!(r.text().await.unwrap(), "127.0.0.2");
    let r = by_id("/instances/ins-nope/latest/meta-data/local-ipv4").await;
    assert_eq!(r.status(), 404);
}

/// A raw POST signed with the lab key at `ts` (for what the typed client never sends).
async fn signed_post(host: &str, action: &str, body: &[u8], ts: i64) -> serde_json::Value {
    let sig = tencent_cloud::signing::sign(&tencent_cloud::signing::SigningInput {
        secret_id: ID,
        secret_key: KEY,
        service: "vpc",
        host,
        method: "POST",
        content_type: "application/json",
        extra_headers: &[],
        canonical_query: "",
        payload: body,
        timestamp: ts,
    });
    post_raw(host, action, body, ts, &sig.authorization).await
}

async fn post_raw(
    host: &str,
    action: &str,
    body: &[u8],
    ts: i64,
    authorization: &str,
) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("http://{host}/"))
        .header("Content-Type", "application/json")
        .header("X-TC-Action", action)
        .header("X-TC-Version", "2017-03-12")
        .header("X-TC-Region", "ap-guangzhou")
        .header("X-TC-Timestamp", ts.to_string())
        .header("Authorization", authorization)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn any_signed_header_list_with_content_type_and_host_is_verified() {
    let emu = start().await;
    let host = emu.api.to_string();
    let ts = tencent_cloud::unix_now();
    let body = b"{}";
    let sign_with = |extra: &[(&str, &str)]| {
        tencent_cloud::signing::sign(&tencent_cloud::signing::SigningInput {
            secret_id: ID,
            secret_key: KEY,
            service: "vpc",
            host: &host,
            method: "POST",
            content_type: "application/json",
            extra_headers: extra,
            canonical_query: "",
            payload: body,
            timestamp: ts,
        })
        .authorization
    };
    // As several official examples sign it: content-type;host;x-tc-action.
    let auth = sign_with(&[("x-tc-action", "DescribeRouteTables")]);
    assert!(
        auth.contains("SignedHeaders=content-type;host;x-tc-action,"),
        "{auth}"
    );
    let v = post_raw(&host, "DescribeRouteTables", body, ts, &auth).await;
    assert!(v["Response"]["Error"].is_null(), "{v}");
    // The signed header is verified: another action than the one signed is refused.
    let v = post_raw(&host, "DescribeSubnets", body, ts, &auth).await;
    assert_eq!(
        v["Response"]["Error"]["Code"], "AuthFailure.SignatureFailure",
        "{v}"
    );
    // A list without host is refused whatever the signature.
    let no_host = auth.replace(
        "SignedHeaders=content-type;host;x-tc-action",
        "SignedHeaders=content-type;x-tc-action",
    );
    let v = post_raw(&host, "DescribeRouteTables", body, ts, &no_host).await;
    assert_eq!(
        v["Response"]["Error"]["Code"], "AuthFailure.SignatureFailure",
        "{v}"
    );
    assert_eq!(
        v["Response"]["Error"]["Message"],
        "SignedHeaders \"content-type;x-tc-action\" must list content-type and host, in lowercase, sorted."
    );
}

#[tokio::test]
async fn signed_but_malformed_body_gets_invalid_parameter() {
    let emu = start().await;
    for body in [&b"not json"[..], b"[1,2]"] {
        let v = signed_post(
            &emu.api.to_string(),
            "DescribeRouteTables",
            body,
            tencent_cloud::unix_now(),
        )
        .await;
        assert_eq!(v["Response"]["Error"]["Code"], "InvalidParameter", "{v}");
    }
}

#[tokio::test]
async fn timestamps_older_than_five_minutes_are_refused() {
    let emu = start().await;
    let now = tencent_cloud::unix_now();
    for (ts, expected) in [
        (now - 600, Some("AuthFailure.SignatureExpire")),
        (now + 600, Some("AuthFailure.SignatureExpire")),
        (now - 60, None),
    ] {
        let v = signed_post(&emu.api.to_string(), "DescribeSubnets", b"{}", ts).await;
        assert_eq!(
            v["Response"]["Error"]["Code"].as_str(),
            expected,
            "timestamp {ts} (now {now}): {v}"
        );
    }
}

/// Concurrent changes are applied in order: once they all return, the state file holds the
/// final state, never an older snapshot written late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_the_state_file_with_the_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let emu = Arc::new(start_with(scenario(), Some(path.clone())).await);
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let emu = emu.clone();
        tasks.push(tokio::spawn(async move {
            let req = serde_json::json!({
                "RouteTableId": if i % 2 == 0 { "rtb-main" } else { "rtb-b" },
                "Routes": [{"DestinationCidrBlock": format!("10.250.{i}.0/24"), "GatewayType": "NORMAL_CVM", "GatewayId": "172.16.1.7"}],
            });
            emu.shared
                .mutate(|s| {
                    tencent_vpc_emulator::ops::create_routes(s, req.as_object().unwrap(), 0)
                })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let on_disk = Scenario::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let live = emu.shared.snapshot();
    assert_eq!(
        on_disk.route_tables, live.route_tables,
        "the file holds the final state"
    );
    let ours = live
        .route_tables
        .iter()
        .flat_map(|t| &t.routes)
        .filter(|r| r.destination_cidr_block.to_string().starts_with("10.250."))
        .count();
    assert_eq!(ours, 40);
}

#[tokio::test]
async fn a_state_file_that_cannot_be_written_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("state.json");
    let e = Emulator::start(EmulatorConfig {
        state_file: Some(path.clone()),
        ..EmulatorConfig::on_loopback(scenario())
    })
    .await
    .err()
    .expect("refused");
    assert_eq!(
        e.to_string(),
        format!(
            "state file {}: directory {} does not exist",
            path.display(),
            path.parent().unwrap().display()
        )
    );
    // A writable path holds the initial state from the start.
    let path = dir.path().join("state.json");
    let _emu = start_with(scenario(), Some(path.clone())).await;
    let saved = Scenario::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved, scenario());
}
