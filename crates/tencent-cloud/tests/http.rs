//! The client against a local HTTP server: headers, signatures (verified server-side),
//! paging, every error class, role-credential refresh and timeouts.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tencent_cloud::credentials::{CredentialProvider, CvmRoleProvider};
use tencent_cloud::vpc::{Filter, NewRoute};
use tencent_cloud::{Client, ClientConfig, Error, ErrorClass, MetadataClient};

#[tokio::test]
async fn headers_signature_and_token_only_with_temporary_credentials() {
    let (url, seen) = start(
        |_, _| ok(r#""TotalCount":0,"SubnetSet":[],"#),
        Duration::ZERO,
    )
    .await;
    client(&url, static_creds(None))
        .describe_subnets(&[Filter::new("vpc-id", &["vpc-1"])])
        .await
        .unwrap();
    client(&url, static_creds(Some(TOKEN)))
        .describe_subnets(&[])
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.path, "/");
        let h = |k: &str| s.headers.get(k).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("x-tc-action"), "DescribeSubnets");
        assert_eq!(h("x-tc-version"), "2017-03-12");
        assert_eq!(h("x-tc-region"), "ap-guangzhou");
        assert_eq!(h("content-type"), "application/json");
        assert_eq!(h("x-tc-language"), "en-US");
        assert!(h("x-tc-requestclient").starts_with("flannel-rs_"));
        let now = tencent_cloud::unix_now();
        assert!((h("x-tc-timestamp").parse::<i64>().unwrap() - now).abs() < 60);
        verify_signature(s, SECRET_KEY);
    }
    assert!(seen[0].headers.get("x-tc-token").is_none());
    assert_eq!(seen[1].headers.get("x-tc-token").unwrap(), TOKEN);
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"Filters":[{"Name":"vpc-id","Values":["vpc-1"]}],"Offset":"0","Limit":"100"})
    );
}

#[tokio::test]
async fn paging_reads_every_table() {
    let (url, seen) = start(
        |s, _| {
            let req: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
            // Offset and Limit must be JSON strings in this API.
            let offset: usize = req["Offset"].as_str().expect("Offset is a string").parse().unwrap();
            let limit: usize = req["Limit"].as_str().expect("Limit is a string").parse().unwrap();
            let tables: Vec<String> = (offset..(offset + limit).min(250))
                .map(|i| format!(r#"{{"RouteTableId":"rtb-{i:04}","RouteSet":[{{"RouteId":{i},"DestinationCidrBlock":"10.9.{}.0/24"}}]}}"#, i % 250))
                .collect();
            ok(&format!(r#""TotalCount":250,"RouteTableSet":[{}],"#, tables.join(",")))
        },
        Duration::ZERO,
    )
    .await;
    let tables = client(&url, static_creds(None))
        .describe_route_tables(&[Filter::new("vpc-id", &["vpc-1"])])
        .await
        .unwrap();
    assert_eq!(tables.len(), 250);
    let ids: std::collections::HashSet<&str> = tables.iter().map(|t| t.id()).collect();
    assert_eq!(ids.len(), 250, "no table read twice");
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn throttling_is_retried_until_success() {
    let (url, seen) = start(
        |_, n| {
            if n < 2 {
                api_error("RequestLimitExceeded")
            } else {
                ok(r#""TotalCount":0,"#)
            }
        },
        Duration::ZERO,
    )
    .await;
    let tables = client(&url, static_creds(None))
        .describe_route_tables(&[])
        .await
        .unwrap();
    assert!(tables.is_empty());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    // Each attempt is signed afresh and still verifies.
    seen.iter().for_each(|s| verify_signature(s, SECRET_KEY));
}

#[tokio::test]
async fn retryable_errors_stop_at_max_attempts_with_the_last_error() {
    let (url, seen) = start(
        |_, _| api_error("InternalError.ModuleError"),
        Duration::ZERO,
    )
    .await;
    let e = client(&url, static_creds(None))
        .describe_route_tables(&[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InternalError.ModuleError"));
    assert_eq!(e.request_id(), Some("req-InternalError.ModuleError"));
    assert_eq!(seen.lock().unwrap().len(), 5);
}

#[tokio::test]
async fn http_status_other_than_200_is_a_retried_transport_error() {
    let (url, seen) = start(
        |_, n| {
            if n == 0 {
                (502, "bad gateway".into())
            } else {
                ok(r#""TotalCount":0,"#)
            }
        },
        Duration::ZERO,
    )
    .await;
    client(&url, static_creds(None))
        .describe_subnets(&[])
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn fatal_errors_are_not_retried() {
    for code in [
        "AuthFailure.SignatureFailure",
        "UnauthorizedOperation",
        "InvalidParameter",
        "LimitExceeded",
        "Made.Up.Code",
    ] {
        let (url, seen) = start(move |_, _| api_error(code), Duration::ZERO).await;
        let e = client(&url, static_creds(None))
            .describe_route_tables(&[])
            .await
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Fatal, "{code}");
        assert_eq!(e.code(), Some(code));
        assert!(
            e.to_string().contains(&format!(
                "DescribeRouteTables: {code}: scripted {code} (RequestId req-{code})"
            )),
            "{e}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1, "{code}");
    }
}

#[tokio::test]
async fn create_is_resent_only_when_certainly_not_processed() {
    let route = [NewRoute {
        destination_cidr_block: "10.244.1.0/24".into(),
        gateway_type: "NORMAL_CVM".into(),
        gateway_id: "172.16.0.7".into(),
        route_description: Some("flannel-rs".into()),
    }];
    // Ambiguous: the create may have happened. Returned to the caller to re-describe.
    let (url, seen) = start(|_, _| api_error("InternalError"), Duration::ZERO).await;
    let e = client(&url, static_creds(None))
        .create_routes("rtb-1", &route)
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable);
    assert_eq!(seen.lock().unwrap().len(), 1);
    // Throttled: the request was refused before processing; safe to resend.
    let (url, seen) = start(
        |_, n| {
            if n == 0 {
                api_error("RequestLimitExceeded")
            } else {
                ok(r#""TotalCount":1,"RouteTableSet":[],"#)
            }
        },
        Duration::ZERO,
    )
    .await;
    client(&url, static_creds(None))
        .create_routes("rtb-1", &route)
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
    // Duplicate is state, not failure: classified for the caller.
    let (url, _) = start(
        |_, _| api_error("InvalidParameterValue.Duplicate"),
        Duration::ZERO,
    )
    .await;
    let e = client(&url, static_creds(None))
        .create_routes("rtb-1", &route)
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Duplicate);
}

#[tokio::test]
async fn signature_expire_is_resigned_once() {
    let (url, seen) = start(
        |_, _| api_error("AuthFailure.SignatureExpire"),
        Duration::ZERO,
    )
    .await;
    let e = client(&url, static_creds(None))
        .describe_subnets(&[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("AuthFailure.SignatureExpire"));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn static_token_failure_is_not_retried() {
    let (url, seen) = start(|_, _| api_error("AuthFailure.TokenFailure"), Duration::ZERO).await;
    client(&url, static_creds(Some(TOKEN)))
        .describe_subnets(&[])
        .await
        .unwrap_err();
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn timeouts_are_typed_and_retried() {
    let (url, seen) = start(|_, _| ok(r#""TotalCount":0,"#), Duration::from_millis(500)).await;
    let mut cfg = ClientConfig::new("ap-guangzhou");
    cfg.endpoint = url.parse().unwrap();
    cfg.timeout = Duration::from_millis(100);
    cfg.max_attempts = 2;
    cfg.backoff_base = Duration::from_millis(1);
    let e = Client::new(cfg, static_creds(None))
        .unwrap()
        .describe_subnets(&[])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("DescribeSubnets: no response from 127.0.0.1:"),
        "{e}"
    );
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn malformed_responses_are_typed_errors() {
    for body in [
        "<html>not json</html>",
        r#"{"NoResponse":{}}"#,
        r#"{"Response":{"TotalCount":"many","RequestId":"r"}}"#,
    ] {
        let b = body.to_string();
        let (url, seen) = start(move |_, _| (200, b.clone()), Duration::ZERO).await;
        let e = client(&url, static_creds(None))
            .describe_subnets(&[])
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{body}: {e}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn connection_refused_is_a_transport_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = client(&format!("http://127.0.0.1:{port}"), static_creds(None))
        .describe_subnets(&[])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e}");
    assert_eq!(e.class(), ErrorClass::Retryable);
}

#[tokio::test]
async fn token_failure_with_role_credentials_refreshes_then_retries() {
    let (md, fetches) = metadata_server(3600).await;
    let role: Arc<dyn CredentialProvider> = Arc::new(CvmRoleProvider::new(md, "flannel-role"));
    let (url, seen) = start(
        |_, n| {
            if n == 0 {
                api_error("AuthFailure.TokenFailure")
            } else {
                ok(r#""TotalCount":0,"#)
            }
        },
        Duration::ZERO,
    )
    .await;
    client(&url, role).describe_subnets(&[]).await.unwrap();
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "credentials re-fetched once"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].headers.get("x-tc-token").unwrap().to_str().unwrap(),
        format!("{TOKEN}1")
    );
    assert_eq!(
        seen[1].headers.get("x-tc-token").unwrap().to_str().unwrap(),
        format!("{TOKEN}2")
    );
    // Id, key and token come from the same refresh.
    assert!(seen[1]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("Credential=AKIDtmp2/"));
    verify_signature(&seen[1], &format!("{SECRET_KEY}2"));
}

#[tokio::test]
async fn role_credentials_refresh_300s_before_expiry() {
    let (md, fetches) = metadata_server(3600).await;
    let p = CvmRoleProvider::new(md, "flannel-role");
    p.credentials().await.unwrap();
    p.credentials().await.unwrap();
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "cached while far from expiry"
    );
    let (md, fetches) = metadata_server(200).await;
    let p = CvmRoleProvider::new(md, "flannel-role");
    p.credentials().await.unwrap();
    p.credentials().await.unwrap();
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "inside the 300 s margin every call refreshes"
    );
}

#[tokio::test]
async fn metadata_errors_name_path_and_status() {
    let (md, _) = metadata_server(3600).await;
    assert_eq!(md.region().await.unwrap(), "ap-guangzhou");
    let e = md.zone().await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "metadata placement/zone: not found (HTTP 404)"
    );
    let (url, _) = start(|_, _| (500, "boom".into()), Duration::ZERO).await;
    let md = MetadataClient::new(&format!("{url}/latest/meta-data"))
        .unwrap()
        .with_retries(2, Duration::from_millis(1));
    assert_eq!(
        md.instance_id().await.unwrap_err().to_string(),
        "metadata instance-id: HTTP status 500"
    );
    let (url, _) = start(
        |_, _| {
            (
                200,
                r#"{"Code":"Failure","TmpSecretKey":"SK-in-body"}"#.into(),
            )
        },
        Duration::ZERO,
    )
    .await;
    let md = MetadataClient::new(&format!("{url}/latest/meta-data/")).unwrap();
    let e = CvmRoleProvider::new(md, "r")
        .credentials()
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "CVM role r: credentials response has Code \"Failure\", not \"Success\""
    );
}

#[tokio::test]
async fn a_metadata_service_answering_200_with_garbage_gives_no_value() {
    // A proxy or a broken service: 200 and an error document for every path.
    let (url, _) = start(
        |_, _| (200, r#"{"Error":{"Code":"NotFound","Message":"x"}}"#.into()),
        Duration::ZERO,
    )
    .await;
    let md = MetadataClient::new(&format!("{url}/latest/meta-data/")).unwrap();
    let mac = "52:54:00:12:34:56";
    for (e, text) in [
        (
            md.region().await.unwrap_err(),
            "metadata placement/region: the answer is not a region (ap-guangzhou)",
        ),
        (
            md.vpc_id(mac).await.unwrap_err(),
            "metadata network/interfaces/macs/52:54:00:12:34:56/vpc-id: the answer is not a VPC id (vpc-…)",
        ),
        (
            md.subnet_id(mac).await.unwrap_err(),
            "metadata network/interfaces/macs/52:54:00:12:34:56/subnet-id: the answer is not a subnet id (subnet-…)",
        ),
        (
            md.local_ipv4().await.unwrap_err(),
            "metadata local-ipv4: the answer is not an IPv4 address",
        ),
        (md.mac().await.unwrap_err(), "metadata mac: the answer is not a MAC address"),
    ] {
        assert_eq!(e.to_string(), text);
        assert!(!e.to_string().contains("NotFound"), "the body stays out");
    }
    assert!(MetadataClient::new("169.254.0.23/latest/meta-data/").is_err());
    assert_eq!(
        MetadataClient::new("http://u:p@169.254.0.23/")
            .unwrap_err()
            .to_string(),
        "metadata address \"http://<redacted>@169.254.0.23/\" carries a user or password"
    );
}
