//! Shared by the HTTP-level tests: a scriptable local server and client helpers.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use secrecy::SecretString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tencent_cloud::credentials::{CredentialProvider, Credentials, StaticProvider};
use tencent_cloud::signing::{parse_authorization, sign, SigningInput};
use tencent_cloud::{Client, ClientConfig, MetadataClient};

pub const SECRET_KEY: &str = "SK-do-not-leak-0123456789abcdef";
pub const TOKEN: &str = "TOKEN-do-not-leak-abcdef";

#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

pub type Handler = dyn Fn(&Seen, usize) -> (u16, String) + Send + Sync;

#[derive(Clone)]
pub struct Mock {
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

pub async fn start(
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

pub fn ok(body: &str) -> (u16, String) {
    (
        200,
        format!(r#"{{"Response":{{{body}"RequestId":"req-ok"}}}}"#),
    )
}

pub fn api_error(code: &str) -> (u16, String) {
    (
        200,
        format!(
            r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"scripted {code}"}},"RequestId":"req-{code}"}}}}"#
        ),
    )
}

pub fn static_creds(token: Option<&str>) -> Arc<dyn CredentialProvider> {
    Arc::new(StaticProvider::new(
        Credentials::new(
            "AKIDtest",
            SecretString::from(SECRET_KEY.to_string()),
            token.map(|t| SecretString::from(t.to_string())),
        ),
        "test",
    ))
}

pub fn client(url: &str, creds: Arc<dyn CredentialProvider>) -> Client {
    let mut cfg = ClientConfig::new("ap-guangzhou");
    cfg.endpoint = url.parse().unwrap();
    cfg.backoff_base = Duration::from_millis(1);
    cfg.backoff_max = Duration::from_millis(5);
    cfg.rate_per_second = 10_000.0;
    cfg.burst = 100;
    Client::new(cfg, creds).unwrap()
}

/// Recompute the signature from what the server received, with the key we know.
pub fn verify_signature(s: &Seen, secret_key: &str) {
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
        extra_headers: &[],
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

/// A metadata server whose role credentials change on every fetch.
pub async fn metadata_server(expires_in: i64) -> (MetadataClient, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let (url, _) = start(
        move |s, _| match s.path.as_str() {
            "/latest/meta-data/cam/security-credentials/" => (200, "flannel-role\n".into()),
            "/latest/meta-data/cam/security-credentials/flannel-role" => {
                let n = f.fetch_add(1, Ordering::SeqCst) + 1;
                let now = tencent_cloud::unix_now();
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
            .unwrap()
            .with_retries(2, Duration::from_millis(1)),
        fetches,
    )
}
