//! The client against a local HTTP server: headers, signatures (verified server-side),
//! paging, every error class, role-credential refresh, timeouts, and no secret in any log.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use secrecy::SecretString;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tencent_cloud::credentials::{
    CredentialProvider, Credentials, CvmRoleProvider, StaticProvider,
};
use tencent_cloud::signing::{parse_authorization, sign, SigningInput};
use tencent_cloud::vpc::{Filter, NewRoute};
use tencent_cloud::{Client, ClientConfig, Error, ErrorClass, MetadataClient};

const SECRET_KEY: &str = "SK-do-not-leak-0123456789abcdef";
const TOKEN: &str = "TOKEN-do-not-leak-abcdef";

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

type Handler = dyn Fn(&Seen, usize) -> (u16, String) + Send + Sync;

#[derive(Clone)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Arc<Handler>,
    delay: Duration,
}

async fn serve_any(
    State(m): State<Mock>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let seen = Seen {
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    };
    let n = {
        let mut s = m.seen.lock().unwrap();
        s.push(seen.clone());
        s.len() - 1
    };
    if !m.delay.is_zero() {
        tokio::time::sleep(m.delay).await;
    }
    let (status, body) = (m.handler)(&seen, n);
    (StatusCode::from_u16(status).unwrap(), body)
}

async fn start(
    handler: impl Fn(&Seen, usize) -> (u16, String) + Send + Sync + 'static,
    delay: Duration,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mock = Mock {
        seen: seen.clone(),
        handler: Arc::new(handler),
        delay,
    };
    let app = Router::new().fallback(serve_any).with_state(mock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn ok(body: &str) -> (u16, String) {
    (
        200,
        format!(r#"{{"Response":{{{body}"RequestId":"req-ok"}}}}"#),
    )
}

fn api_error(code: &str) -> (u16, String) {
    (
        200,
        format!(
            r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"scripted {code}"}},"RequestId":"req-{code}"}}}}"#
        ),
    )
}

fn static_creds(token: Option<&str>) -> Arc<dyn CredentialProvider> {
    Arc::new(StaticProvider::new(
        Credentials::new(
            "AKIDtest",
            SecretString::from(SECRET_KEY.to_string()),
            token.map(|t| SecretString::from(t.to_string())),
        ),
        "test",
    ))
}

fn client(url: &str, creds: Arc<dyn CredentialProvider>) -> Client {
    let mut cfg = ClientConfig::new("ap-guangzhou");
    cfg.endpoint = url.parse().unwrap();
    cfg.backoff_base = Duration::from_millis(1);
    cfg.backoff_max = Duration::from_millis(5);
    cfg.rate_per_second = 10_000.0;
    cfg.burst = 100;
    Client::new(cfg, creds)
}

/// Recompute the signature from what the server received, with the key we know.
fn verify_signature(s: &Seen, secret_key: &str) {
    let h = |k: &str| {
        s.headers
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let auth = parse_authorization(&h("authorization")).expect("a TC3 Authorization header");
    assert_eq!(auth.signed_headers, "content-type;host");
    let ts: i64 = h("x-tc-timestamp").parse().unwrap();
    let expected = sign(&SigningInput {
        secret_id: &auth.secret_id,
        secret_key,
        service: &auth.service,
        host: &h("host"),
        method: "POST",
        content_type: &h("content-type"),
        canonical_query: "",
        payload: &s.body,
        timestamp: ts,
    });
    assert_eq!(
        expected.signature, auth.signature,
        "the bytes signed are the bytes sent"
    );
    assert_eq!(auth.date, tencent_cloud::signing::utc_date(ts));
}

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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
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
    let mut ids: Vec<&str> = tables.iter().map(|t| t.id()).collect();
    ids.dedup();
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

/// A metadata server whose role credentials change on every fetch.
async fn metadata_server(expires_in: i64) -> (MetadataClient, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let (url, _) = start(
        move |s, _| match s.path.as_str() {
            "/latest/meta-data/cam/security-credentials/" => (200, "flannel-role\n".into()),
            "/latest/meta-data/cam/security-credentials/flannel-role" => {
                let n = f.fetch_add(1, Ordering::SeqCst) + 1;
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
                (200, format!(
                    r#"{{"TmpSecretId":"AKIDtmp{n}","TmpSecretKey":"{SECRET_KEY}{n}","Token":"{TOKEN}{n}","ExpiredTime":{},"Expiration":"x","Code":"Success"}}"#,
                    now + expires_in
                ))
            }
            "/latest/meta-data/placement/region" => (200, "ap-guangzhou\n".into()),
            _ => (404, "not found".into()),
        },
        Duration::ZERO,
    )
    .await;
    (
        MetadataClient::new(&format!("{url}/latest/meta-data/"))
            .with_retries(2, Duration::from_millis(1)),
        fetches,
    )
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
    let md = MetadataClient::new(&format!("{url}/latest/meta-data/"));
    let e = CvmRoleProvider::new(md, "r")
        .credentials()
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "CVM role r: credentials response has Code \"Failure\", not \"Success\""
    );
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_in_trace_logs_errors_or_debug() {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let cap = Capture(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || cap.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (md, _) = metadata_server(3600).await;
    let role: Arc<dyn CredentialProvider> = Arc::new(CvmRoleProvider::new(md, "flannel-role"));
    let mut texts = Vec::new();
    let (url, _) = start(
        |_, n| match n {
            0 => api_error("AuthFailure.TokenFailure"),
            1 => api_error("RequestLimitExceeded"),
            2 => ok(r#""TotalCount":0,"#),
            _ => api_error("UnauthorizedOperation"),
        },
        Duration::ZERO,
    )
    .await;
    let c = client(&url, role.clone());
    c.describe_subnets(&[]).await.unwrap();
    let e = c.describe_route_tables(&[]).await.unwrap_err();
    texts.push(e.to_string());
    texts.push(format!("{e:?}"));
    texts.push(format!("{c:?}"));
    texts.push(format!("{role:?}"));
    texts.push(format!("{:?}", role.credentials().await.unwrap()));
    let e = client(&url, static_creds(Some(TOKEN)))
        .describe_route_tables(&[])
        .await
        .unwrap_err();
    texts.push(format!("{e} {e:?}"));

    let logs = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("request"),
        "trace logging was captured: {logs}"
    );
    assert!(logs.contains("credentials rejected"), "{logs}");
    for text in texts.iter().chain(std::iter::once(&logs)) {
        assert!(!text.contains(SECRET_KEY), "secret key leaked: {text}");
        assert!(!text.contains(TOKEN), "token leaked: {text}");
    }
}
