//! `flannelctl routes list` against a local stand-in for the VPC API.

use axum::http::HeaderMap;
use axum::Router;
use std::process::Command;

const FLANNELCTL: &str = env!("CARGO_BIN_EXE_flannelctl");

async fn serve(body: &'static str) -> String {
    let app = Router::new().fallback(move |headers: HeaderMap| async move {
        assert_eq!(headers.get("x-tc-action").unwrap(), "DescribeRouteTables");
        assert!(headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("TC3-HMAC-SHA256 Credential=AKIDctl/"));
        body
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn run(url: String, extra: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
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
    let url = serve(TABLES).await;
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
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_errors_exit_2_with_the_code_and_no_secret() {
    let url = serve(r#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"bad signature"},"RequestId":"r2"}}"#).await;
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
