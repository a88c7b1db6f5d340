//! The API client: signs every attempt afresh, sends POST JSON to `/`, parses the envelope,
//! and retries what is safe to retry.
//!
//! Retry policy (tencent-vpc-api.md §2.5):
//! - retryable errors (throttling, internal errors, transport, timeouts, non-200) are retried
//!   with exponential backoff and jitter, up to `max_attempts`;
//! - a stale signature or token is refreshed (new timestamp; role credentials re-fetched) and
//!   retried once;
//! - non-idempotent actions (CreateRoutes, DeleteRoutes, ...) have no idempotency key, so they
//!   are re-sent only when the request certainly was not processed (throttled, refused at
//!   authentication, connection never made). Other failures are returned for the caller to
//!   re-describe and decide;
//! - everything else is returned at once.

use crate::credentials::CredentialProvider;
use crate::error::{ApiError, Error, ErrorClass};
use crate::ratelimit::RateLimiter;
use crate::signing::{sign, SigningInput};
use backoff::Backoff;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, trace, warn};

/// A Tencent Cloud product and its API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    pub name: &'static str,
    pub version: &'static str,
}

pub const VPC: Service = Service {
    name: "vpc",
    version: "2017-03-12",
};
pub const CVM: Service = Service {
    name: "cvm",
    version: "2017-03-12",
};

/// Sent as `X-TC-RequestClient` (allowed characters: `[0-9a-zA-Z-_ ,;.]`).
pub const REQUEST_CLIENT: &str = concat!("flannel-rs_", env!("CARGO_PKG_VERSION"));

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `<service>.tencentcloudapi.com` (nearest region).
    Public,
    /// `<service>.<region>.tencentcloudapi.com`.
    Regional,
    /// `<service>.internal.tencentcloudapi.com` (from inside the VPC, no public egress).
    Internal,
    /// A fixed base URL for every service, e.g. `http://127.0.0.1:9000` for the emulator or
    /// `https://vpc.ap-shanghai-fsi.tencentcloudapi.com` for a finance region.
    Url(String),
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "" | "public" => Ok(Endpoint::Public),
            "regional" => Ok(Endpoint::Regional),
            "internal" => Ok(Endpoint::Internal),
            u if u.starts_with("http://") || u.starts_with("https://") => {
                // Never echo a user or password the URL may carry.
                let shown = error_report::redact_urls(u);
                let rest = u.split_once("://").map(|(_, r)| r).unwrap_or_default();
                if rest.is_empty() || rest.starts_with('/') {
                    return Err(format!("endpoint {shown:?} has no host"));
                }
                match reqwest::Url::parse(u) {
                    Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                        Err(format!(
                            "endpoint {shown:?} carries a user or password: requests are signed with the API keys, leave them out"
                        ))
                    }
                    Ok(url) if url.host_str().is_some() => {
                        Ok(Endpoint::Url(u.trim_end_matches('/').to_string()))
                    }
                    Ok(_) => Err(format!("endpoint {shown:?} has no host")),
                    Err(e) => Err(format!("endpoint {shown:?} is not a valid URL: {e}")),
                }
            }
            h if h.contains('.') && !h.contains('/') && !h.contains(' ') => {
                Ok(Endpoint::Url(format!("https://{h}")))
            }
            other => Err(format!(
                "endpoint {:?} is not public, regional, internal, a host name or an http(s) URL",
                error_report::redact_urls(other)
            )),
        }
    }
}

impl Endpoint {
    /// The URL to POST to and the Host header that is signed.
    pub fn url_and_host(&self, service: &str, region: &str) -> (String, String) {
        let host = match self {
            Endpoint::Public => format!("{service}.tencentcloudapi.com"),
            Endpoint::Regional => format!("{service}.{region}.tencentcloudapi.com"),
            Endpoint::Internal => format!("{service}.internal.tencentcloudapi.com"),
            Endpoint::Url(u) => {
                let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
                let host = rest.split('/').next().unwrap_or(rest).to_string();
                return (format!("{u}/"), host);
            }
        };
        (format!("https://{host}/"), host)
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub region: String,
    pub endpoint: Endpoint,
    /// Per-attempt timeout (connect + response).
    pub timeout: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Client-side limit per action; the API allows about 100/s per action per account.
    pub rate_per_second: f64,
    pub burst: u32,
    /// `X-TC-Language` for error messages.
    pub language: String,
    /// Told the outcome of every request sent (for metrics).
    pub observer: Option<CallObserver>,
}

/// A hook told `(action, outcome)` after each request: `Success`, the API error code, or
/// `Transport`, `Timeout`, `HttpStatus`, `Decode` for failures without one.
#[derive(Clone)]
pub struct CallObserver(pub Arc<ObserveFn>);

/// `(action, outcome)`.
pub type ObserveFn = dyn Fn(&str, &str) + Send + Sync;

impl fmt::Debug for CallObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallObserver")
    }
}

impl Error {
    /// The outcome label of this error for a [`CallObserver`].
    pub fn outcome(&self) -> &str {
        match self {
            Error::Api(e) => &e.code,
            Error::HttpStatus { .. } => "HttpStatus",
            Error::Transport { .. } => "Transport",
            Error::Timeout { .. } => "Timeout",
            Error::Decode { .. } => "Decode",
            Error::Credentials { .. } => "Credentials",
            Error::Encode { .. } => "Encode",
            Error::HttpClient(_) => "HttpClient",
        }
    }
}

impl ClientConfig {
    pub fn new(region: impl Into<String>) -> Self {
        ClientConfig {
            region: region.into(),
            endpoint: Endpoint::Public,
            timeout: Duration::from_secs(10),
            max_attempts: 5,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            rate_per_second: 20.0,
            burst: 5,
            language: "en-US".to_string(),
            observer: None,
        }
    }
}

pub struct Client {
    cfg: ClientConfig,
    creds: Arc<dyn CredentialProvider>,
    http: reqwest::Client,
    limiter: RateLimiter,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("region", &self.cfg.region)
            .field("endpoint", &self.cfg.endpoint)
            .field("credentials", &self.creds.source())
            .finish_non_exhaustive()
    }
}

/// Parse a response body: the `Response` object, its `Error`, or the typed payload.
pub fn parse_envelope<T: DeserializeOwned>(action: &str, body: &[u8]) -> Result<T, Error> {
    let decode = |message: String, request_id: Option<String>| Error::Decode {
        action: action.to_string(),
        message,
        request_id,
    };
    // Two passes over the bytes, no document tree: the head (RequestId, Error) skipping the
    // payload, then the payload straight into its type. A DescribeRouteTables of thousands
    // of routes as a `serde_json::Value` (and its copy) cost the controller tens of MB.
    let head: Head = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => decode("no Response object".into(), None),
        _ => decode(format!("body is not JSON ({e})"), None),
    })?;
    let r = head
        .response
        .ok_or_else(|| decode("no Response object".into(), None))?;
    if let Some(err) = r.error {
        return match err.code {
            Some(code) => Err(Error::Api(ApiError {
                action: action.to_string(),
                code,
                message: err.message.unwrap_or_default(),
                request_id: r.request_id.unwrap_or_default(),
            })),
            None => Err(decode("Error without a Code".into(), r.request_id)),
        };
    }
    serde_json::from_slice::<Payload<T>>(body)
        .map(|p| p.response)
        .map_err(|e| decode(e.to_string(), r.request_id))
}

/// What every answer has: its RequestId and, when it failed, its Error.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "Response")]
    response: Option<HeadBody>,
}

#[derive(serde::Deserialize)]
struct HeadBody {
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
    #[serde(rename = "Error")]
    error: Option<ApiErrorBody>,
}

#[derive(serde::Deserialize)]
struct ApiErrorBody {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
}

/// The answer's payload, typed.
#[derive(serde::Deserialize)]
struct Payload<T> {
    #[serde(rename = "Response")]
    response: T,
}

impl Client {
    pub fn new(cfg: ClientConfig, creds: Arc<dyn CredentialProvider>) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .no_proxy()
            .build()
            .map_err(Error::HttpClient)?;
        let limiter = RateLimiter::new(cfg.rate_per_second, cfg.burst);
        Ok(Client {
            cfg,
            creds,
            http,
            limiter,
        })
    }

    /// Call `action` of `service`. `idempotent` says whether the request may be re-sent after
    /// an ambiguous failure (true for Describe*).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: Service,
        action: &'static str,
        req: &Req,
        idempotent: bool,
    ) -> Result<Resp, Error> {
        let body = serde_json::to_vec(req).map_err(|e| Error::Encode {
            action: action.to_string(),
            message: e.to_string(),
        })?;
        let (url, host) = self
            .cfg
            .endpoint
            .url_and_host(service.name, &self.cfg.region);
        let mut refreshed = false;
        let mut attempt = 0u32;
        let mut pauses = Backoff::new(self.cfg.backoff_base, self.cfg.backoff_max).delays();
        loop {
            attempt += 1;
            self.limiter.acquire(action).await;
            let sent = self.send_once(service, action, &url, &host, &body).await;
            if let Some(CallObserver(observe)) = &self.cfg.observer {
                observe(
                    action,
                    sent.as_ref().map_or_else(Error::outcome, |_| "Success"),
                );
            }
            let err = match sent {
                Ok(resp) => {
                    if attempt > 1 {
                        debug!(action, attempt, "succeeded after retry");
                    }
                    return Ok(resp);
                }
                Err(e) => e,
            };
            let may_resend = idempotent || err.not_processed();
            match err.class() {
                ErrorClass::Retryable if may_resend && attempt < self.cfg.max_attempts => {
                    let wait = pauses.next_delay();
                    debug!(action, attempt, code = err.code(), request_id = err.request_id(), error = %error_report::Report(&err), retry_in = ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                }
                ErrorClass::RefreshThenRetry if !refreshed && may_resend => {
                    let expired_signature = err.code() == Some("AuthFailure.SignatureExpire");
                    if !expired_signature && !self.creds.refreshable() {
                        return Err(err);
                    }
                    if expired_signature {
                        warn!(action, "signature expired: re-signing with a fresh timestamp (check NTP on this node)");
                    } else {
                        warn!(action, code = err.code(), source = %self.creds.source(), "credentials rejected: refreshing them");
                    }
                    refreshed = true;
                    self.creds.invalidate().await;
                }
                _ => return Err(err),
            }
        }
    }

    async fn send_once<Resp: DeserializeOwned>(
        &self,
        service: Service,
        action: &'static str,
        url: &str,
        host: &str,
        body: &[u8],
    ) -> Result<Resp, Error> {
        let creds = self
            .creds
            .credentials()
            .await
            .map_err(|source| Error::Credentials {
                action: action.to_string(),
                source,
            })?;
        let timestamp = crate::unix_now();
        let content_type = "application/json";
        let sig = sign(&SigningInput {
            secret_id: &creds.secret_id,
            secret_key: creds.secret_key().expose_secret(),
            service: service.name,
            host,
            method: "POST",
            content_type,
            extra_headers: &[],
            canonical_query: "",
            payload: body,
            timestamp,
        });
        let header = |v: &str| {
            HeaderValue::from_str(v).map_err(|e| Error::Encode {
                action: action.to_string(),
                message: format!("header value: {e}"),
            })
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(HOST, header(host)?);
        headers.insert(HeaderName::from_static("x-tc-action"), header(action)?);
        headers.insert(
            HeaderName::from_static("x-tc-version"),
            header(service.version)?,
        );
        headers.insert(
            HeaderName::from_static("x-tc-region"),
            header(&self.cfg.region)?,
        );
        headers.insert(
            HeaderName::from_static("x-tc-timestamp"),
            header(&timestamp.to_string())?,
        );
        headers.insert(
            HeaderName::from_static("x-tc-requestclient"),
            HeaderValue::from_static(REQUEST_CLIENT),
        );
        headers.insert(
            HeaderName::from_static("x-tc-language"),
            header(&self.cfg.language)?,
        );
        let mut auth = header(&sig.authorization)?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        if let Some(token) = creds.token() {
            let mut t = header(token)?;
            t.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-tc-token"), t);
        }
        trace!(action, host, body = %String::from_utf8_lossy(body), "request");

        let timeout = self.cfg.timeout;
        let exchange = async {
            let resp = self
                .http
                .post(url)
                .headers(headers)
                .body(body.to_vec())
                .send()
                .await?;
            let status = resp.status();
            let bytes = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                return Err(Error::Timeout {
                    action: action.to_string(),
                    host: host.to_string(),
                    after: timeout,
                })
            }
            Ok(Err(e)) if e.is_timeout() => {
                return Err(Error::Timeout {
                    action: action.to_string(),
                    host: host.to_string(),
                    after: timeout,
                })
            }
            Ok(Err(source)) => {
                return Err(Error::Transport {
                    action: action.to_string(),
                    host: host.to_string(),
                    source,
                })
            }
            Ok(Ok(r)) => r,
        };
        if status != reqwest::StatusCode::OK {
            return Err(Error::HttpStatus {
                action: action.to_string(),
                host: host.to_string(),
                status: status.as_u16(),
            });
        }
        trace!(action, body = %String::from_utf8_lossy(&bytes), "response");
        parse_envelope(action, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e: Endpoint = "regional".parse().unwrap();
        assert_eq!(
            e.url_and_host("vpc", "ap-guangzhou").1,
            "vpc.ap-guangzhou.tencentcloudapi.com"
        );
        let e: Endpoint = "".parse().unwrap();
        assert_eq!(
            e.url_and_host("vpc", "x"),
            (
                "https://vpc.tencentcloudapi.com/".into(),
                "vpc.tencentcloudapi.com".into()
            )
        );
        let e: Endpoint = "internal".parse().unwrap();
        assert_eq!(
            e.url_and_host("cvm", "x").1,
            "cvm.internal.tencentcloudapi.com"
        );
        let e: Endpoint = "http://127.0.0.1:9000/".parse().unwrap();
        assert_eq!(
            e.url_and_host("vpc", "x"),
            ("http://127.0.0.1:9000/".into(), "127.0.0.1:9000".into())
        );
        let e: Endpoint = "vpc.ap-shanghai-fsi.tencentcloudapi.com".parse().unwrap();
        assert_eq!(
            e.url_and_host("vpc", "x").1,
            "vpc.ap-shanghai-fsi.tencentcloudapi.com"
        );
        assert!("ftp://x".parse::<Endpoint>().is_err());
        assert!("http://".parse::<Endpoint>().is_err());
    }

    #[test]
    fn request_client_uses_allowed_characters() {
        assert!(REQUEST_CLIENT.len() <= 128);
        assert!(REQUEST_CLIENT
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_ ,;.".contains(c)));
    }

    #[test]
    fn envelope_parsing() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(rename_all = "PascalCase")]
        struct R {
            total_count: u64,
        }
        let ok: R =
            parse_envelope("X", br#"{"Response":{"TotalCount":3,"RequestId":"r1"}}"#).unwrap();
        assert_eq!(ok.total_count, 3);
        let e = parse_envelope::<R>(
            "CreateRoutes",
            br#"{"Response":{"Error":{"Code":"LimitExceeded","Message":"full"},"RequestId":"r2"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "CreateRoutes: LimitExceeded: full (RequestId r2)"
        );
        assert_eq!(e.class(), ErrorClass::Fatal);
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"Response":1}"#,
            br#"{"Response":{"Error":{"Message":"x"}}}"#,
            br#"{"Response":{"TotalCount":"x","RequestId":"r3"}}"#,
        ] {
            let e = parse_envelope::<R>("X", bad).unwrap_err();
            assert!(matches!(e, Error::Decode { .. }), "{e}");
        }
        let e = parse_envelope::<R>("X", br#"{"Response":{"RequestId":"r4"}}"#).unwrap_err();
        assert!(
            e.to_string().contains("missing field `TotalCount`") && e.to_string().contains("r4"),
            "{e}"
        );
    }
}
