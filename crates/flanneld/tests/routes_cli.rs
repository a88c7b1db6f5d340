//! `flannelctl routes list` against a local stand-in for the VPC API.

use axum::http::HeaderMap;
use axum::Router;
use std::process::Command;
use std::sync::{Arc, Mutex};

const FLANNELCTL: &str = env!("CARGO_BIN_EXE_flannelctl");

/// The stand-in's URL and the headers of every request it received (asserted in the tests,
/// not in the handler, so a wrong request fails the test with a clear message).
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

async fn serve(body: &'static str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            record.lock().unwrap().push(headers);
            body
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// Every request was a signed DescribeRouteTables from AKIDctl.
fn assert_signed_describes(seen: &Seen, count: usize) {
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), count, "requests received");
    for h in seen.iter() {
        assert_eq!(h.get("x-tc-action").unwrap(), "DescribeRouteTables");
        let auth = h.get("authorization").unwrap().to_str().unwrap();
        assert!(
            auth.starts_with("TC3-HMAC-SHA256 Credential=AKIDctl/"),
            "{auth}"
        );
    }
}

async fn run(url: String, extra: &[&str]) -> std::process::Output {
    run_with_env(url, extra, &[]).await
}

/// `routes list` against `url` with the test credentials and `env` set.
async fn run_with_env(url: String, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        Command::new(FLANNELCTL)
            .args([
                "routes",
                "list",
                "--vpc-id",
                "vpc-1",
                "--region",
                "ap-guangzhou",
                "--endpoint",
                &url,
            ])
            .args(&extra)
            .env_clear()
            .env("HOME", home.path())
            .env("TENCENTCLOUD_SECRET_ID", "AKIDctl")
            .env("TENCENTCLOUD_SECRET_KEY", "ctl-secret-key")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

const TABLES: &str = r#"{"Response":{"TotalCount":2,"RouteTableSet":[
 {"RouteTableId":"rtb-main","RouteTableName":"default","Main":true,"AssociationSet":[{"SubnetId":"subnet-a","RouteTableId":"rtb-main"}],
  "RouteSet":[{"RouteId":11,"DestinationCidrBlock":"10.244.1.0/24","GatewayType":"NORMAL_CVM","GatewayId":"172.16.0.7","Enabled":true,"RouteType":"USER","RouteDescription":"flannel-rs"}]},
 {"RouteTableId":"rtb-b","Main":false,"AssociationSet":[{"SubnetId":"subnet-b"}],"RouteSet":[]}],"RequestId":"r1"}}"#;

#[tokio::test(flavor = "multi_thread")]
async fn lists_tables_as_table_and_json() {
    let (url, seen) = serve(TABLES).await;
    let out = run(url.clone(), &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rtb-main (main)  default  subnets: subnet-a  routes: 1"),
        "{text}"
    );
    assert!(
        text.contains("10.244.1.0/24") && text.contains("rtb-b  -  subnets: subnet-b  routes: 0"),
        "{text}"
    );
    let out = run(url, &["-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["RouteSet"][0]["RouteId"], 11);
    assert_signed_describes(&seen, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_errors_exit_2_with_the_code_and_no_secret() {
    let (url, seen) = serve(r#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"bad signature"},"RequestId":"r2"}}"#).await;
    let out = run(url, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "DescribeRouteTables: AuthFailure.SignatureFailure: bad signature (RequestId r2)"
        ),
        "{err}"
    );
    assert!(!err.contains("ctl-secret-key"));
    assert_signed_describes(&seen, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_endpoint_exits_2() {
    let out = run("ftp://nope".into(), &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "flannelctl: endpoint \"ftp://nope\" is not public, regional, internal, a host name or an http(s) URL\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unparseable_endpoint_url_exits_2_without_a_request() {
    let started = std::time::Instant::now();
    let out = run("http://[::1".into(), &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "flannelctl: endpoint \"http://[::1\" is not a valid URL: invalid IPv6 address\n"
    );
    // No retry loop behind a parameter error (the client's first pause alone is 100 ms+).
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_vpc_says_so_and_exits_2() {
    let (url, seen) =
        serve(r#"{"Response":{"TotalCount":0,"RouteTableSet":[],"RequestId":"r3"}}"#).await;
    let out = run(url, &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "flannelctl: VPC vpc-1 not found in region ap-guangzhou\n"
    );
    assert!(out.stdout.is_empty());
    assert_signed_describes(&seen, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn verbosity_and_rust_log_reach_our_crates_only() {
    let (url, _) = serve(TABLES).await;
    // Quiet by default: the table on stdout, nothing on stderr.
    let out = run(url.clone(), &[]).await;
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // -v=5 (as flanneld's klog-style flag): our client's trace lines, no dependency's.
    let out = run(url.clone(), &["-v=5"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tencent_cloud"), "{err}");
    for dep in ["hyper", "reqwest::", "h2::", "rustls"] {
        assert!(!err.contains(dep), "{dep} logged at -v=5: {err}");
    }
    assert!(!err.contains("ctl-secret-key"));
    // RUST_LOG wins over -v: here nothing at all.
    let out = run_with_env(url, &["-v=5"], &[("RUST_LOG", "off")]).await;
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
