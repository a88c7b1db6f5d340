//! The CVM instance metadata service (`http://metadata.tencentyun.com/latest/meta-data/`):
//! plain-text answers, short timeouts, a few retries, and errors that name the path and the
//! status. Response bodies are never put in errors (the role-credentials path holds secrets).

use std::time::Duration;

/// The metadata service at its link-local address. The name `metadata.tencentyun.com` is not
/// used: on a node whose DNS runs as a pod it cannot resolve before the pod network exists,
/// and a lab or test must never send a DNS query out.
pub const DEFAULT_BASE_URL: &str = "http://169.254.0.23/latest/meta-data/";

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata {path}: not found (HTTP 404)")]
    NotFound { path: String },
    #[error("metadata {path}: HTTP status {status}")]
    Status { path: String, status: u16 },
    #[error("metadata {path}")]
    Transport {
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("metadata {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("building the metadata HTTP client")]
    HttpClient(#[source] reqwest::Error),
}

impl MetadataError {
    /// Worth retrying later (the service was unreachable or failing).
    pub fn is_transient(&self) -> bool {
        match self {
            MetadataError::Transport { .. } => true,
            MetadataError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetadataClient {
    base: String,
    http: reqwest::Client,
    attempts: u32,
    retry_delay: Duration,
}

impl MetadataClient {
    /// `base` ends with `meta-data/` (a trailing slash is added if missing).
    pub fn new(base: &str) -> Result<Self, MetadataError> {
        let mut base = base.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .no_proxy()
            .build()
            .map_err(MetadataError::HttpClient)?;
        Ok(MetadataClient {
            base,
            http,
            attempts: 3,
            retry_delay: Duration::from_millis(200),
        })
    }

    pub fn with_retries(mut self, attempts: u32, delay: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.retry_delay = delay;
        self
    }

    /// GET one path, trimmed. 404 is final at once; transport errors and 5xx are retried.
    pub async fn get(&self, path: &str) -> Result<String, MetadataError> {
        let url = format!("{}{}", self.base, path);
        let mut last = None;
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.retry_delay * attempt).await;
            }
            let result = match self.http.get(&url).send().await {
                Err(source) => Err(MetadataError::Transport {
                    path: path.to_string(),
                    source,
                }),
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                    return Err(MetadataError::NotFound {
                        path: path.to_string(),
                    })
                }
                Ok(r) if !r.status().is_success() => Err(MetadataError::Status {
                    path: path.to_string(),
                    status: r.status().as_u16(),
                }),
                Ok(r) => r
                    .text()
                    .await
                    .map(|t| t.trim().to_string())
                    .map_err(|source| MetadataError::Transport {
                        path: path.to_string(),
                        source,
                    }),
            };
            match result {
                Ok(v) if v.is_empty() => {
                    return Err(MetadataError::Invalid {
                        path: path.to_string(),
                        message: "empty answer".into(),
                    })
                }
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    tracing::debug!(path, attempt, error = %error_report::Report(&e), "metadata request failed");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt ran"))
    }

    pub async fn region(&self) -> Result<String, MetadataError> {
        self.get("placement/region").await
    }
    pub async fn zone(&self) -> Result<String, MetadataError> {
        self.get("placement/zone").await
    }
    pub async fn instance_id(&self) -> Result<String, MetadataError> {
        self.get("instance-id").await
    }
    pub async fn mac(&self) -> Result<String, MetadataError> {
        self.get("mac").await
    }
    pub async fn local_ipv4(&self) -> Result<String, MetadataError> {
        self.get("local-ipv4").await
    }
    /// The VPC of the NIC with this MAC (the primary NIC's MAC comes from [`Self::mac`]).
    pub async fn vpc_id(&self, mac: &str) -> Result<String, MetadataError> {
        self.get(&format!("network/interfaces/macs/{mac}/vpc-id"))
            .await
    }
    pub async fn subnet_id(&self, mac: &str) -> Result<String, MetadataError> {
        self.get(&format!("network/interfaces/macs/{mac}/subnet-id"))
            .await
    }
    /// The CAM role bound to the instance, or `None` when no role is bound (404).
    pub async fn role_name(&self) -> Result<Option<String>, MetadataError> {
        match self.get("cam/security-credentials/").await {
            Ok(r) => Ok(r
                .lines()
                .next()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())),
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// The raw JSON of the role's temporary credentials.
    pub async fn role_credentials_json(&self, role: &str) -> Result<String, MetadataError> {
        self.get(&format!("cam/security-credentials/{role}")).await
    }
}
