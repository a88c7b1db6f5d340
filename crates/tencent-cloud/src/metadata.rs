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
    #[error("metadata address {0}")]
    BaseUrl(String),
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

/// `ap-guangzhou`, `na-siliconvalley`, `ap-guangzhou-3`: lowercase words joined by hyphens.
fn valid_region(v: &str) -> bool {
    v.len() <= 40
        && v.contains('-')
        && v.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && v.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `vpc-2k9z3x1a` (and the lab's `vpc-lab`): the prefix, then lowercase letters, digits and
/// hyphens.
fn valid_id(prefix: &str, v: &str) -> bool {
    v.strip_prefix(prefix).is_some_and(|rest| {
        (1..=40).contains(&rest.len())
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// Six pairs of hex digits joined by colons.
fn valid_mac(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// CAM role names: letters, digits and `+=,.@_-`, up to 128.
fn valid_role(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

#[derive(Debug, Clone)]
pub struct MetadataClient {
    base: String,
    http: reqwest::Client,
    attempts: u32,
    retry_delay: Duration,
}

/// A metadata base address must be an http(s) URL with a host; the error never shows a
/// user or password the URL may carry.
pub fn check_base_url(u: &str) -> Result<(), String> {
    let shown = error_report::redact_urls(u);
    match reqwest::Url::parse(u) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            Err(format!("{shown:?} is not an http(s) URL"))
        }
        Ok(url) if url.host_str().is_none() => Err(format!("{shown:?} has no host")),
        Ok(url) if !url.username().is_empty() || url.password().is_some() => {
            Err(format!("{shown:?} carries a user or password"))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{shown:?} is not a valid URL: {e}")),
    }
}

impl MetadataClient {
    /// `base` ends with `meta-data/` (a trailing slash is added if missing).
    pub fn new(base: &str) -> Result<Self, MetadataError> {
        check_base_url(base).map_err(MetadataError::BaseUrl)?;
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

    /// GET `path` and check the answer has the shape `valid` accepts: a proxy or a broken
    /// service answering 200 with an error page must not become a region, a VPC or a subnet
    /// (and be published in a lease). The answer itself stays out of the error.
    async fn get_checked(
        &self,
        path: &str,
        what: &str,
        valid: fn(&str) -> bool,
    ) -> Result<String, MetadataError> {
        let v = self.get(path).await?;
        if valid(&v) {
            Ok(v)
        } else {
            Err(MetadataError::Invalid {
                path: path.to_string(),
                message: format!("the answer is not {what}"),
            })
        }
    }

    pub async fn region(&self) -> Result<String, MetadataError> {
        self.get_checked("placement/region", "a region (ap-guangzhou)", valid_region)
            .await
    }
    pub async fn zone(&self) -> Result<String, MetadataError> {
        self.get_checked("placement/zone", "a zone (ap-guangzhou-3)", valid_region)
            .await
    }
    pub async fn instance_id(&self) -> Result<String, MetadataError> {
        self.get_checked("instance-id", "an instance id (ins-…)", |v| {
            valid_id("ins-", v)
        })
        .await
    }
    pub async fn mac(&self) -> Result<String, MetadataError> {
        self.get_checked("mac", "a MAC address", valid_mac).await
    }
    pub async fn local_ipv4(&self) -> Result<String, MetadataError> {
        self.get_checked("local-ipv4", "an IPv4 address", |v| {
            v.parse::<std::net::Ipv4Addr>().is_ok()
        })
        .await
    }
    /// The VPC of the NIC with this MAC (the primary NIC's MAC comes from [`Self::mac`]).
    pub async fn vpc_id(&self, mac: &str) -> Result<String, MetadataError> {
        self.get_checked(
            &format!("network/interfaces/macs/{mac}/vpc-id"),
            "a VPC id (vpc-…)",
            |v| valid_id("vpc-", v),
        )
        .await
    }
    pub async fn subnet_id(&self, mac: &str) -> Result<String, MetadataError> {
        self.get_checked(
            &format!("network/interfaces/macs/{mac}/subnet-id"),
            "a subnet id (subnet-…)",
            |v| valid_id("subnet-", v),
        )
        .await
    }
    /// The CAM role bound to the instance, or `None` when no role is bound (404).
    pub async fn role_name(&self) -> Result<Option<String>, MetadataError> {
        match self.get("cam/security-credentials/").await {
            Ok(r) => {
                let name = r
                    .lines()
                    .next()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty());
                match name {
                    Some(n) if !valid_role(&n) => Err(MetadataError::Invalid {
                        path: "cam/security-credentials/".into(),
                        message: "the answer is not a CAM role name".into(),
                    }),
                    n => Ok(n),
                }
            }
            Err(MetadataError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// The raw JSON of the role's temporary credentials.
    pub async fn role_credentials_json(&self, role: &str) -> Result<String, MetadataError> {
        self.get(&format!("cam/security-credentials/{role}")).await
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn answers_must_have_the_shape_of_what_was_asked() {
        for ok in [
            "ap-guangzhou",
            "na-siliconvalley",
            "ap-guangzhou-3",
            "eu-frankfurt",
        ] {
            assert!(valid_region(ok), "{ok}");
        }
        for bad in [
            r#"{"Error":"not found"}"#,
            "<html>",
            "ApGuangzhou",
            "guangzhou",
            "ap--x",
            "",
        ] {
            assert!(!valid_region(bad), "{bad}");
        }
        assert!(valid_id("vpc-", "vpc-2k9z3x1a") && valid_id("vpc-", "vpc-lab"));
        assert!(valid_id("subnet-", "subnet-a"));
        for bad in ["vpc-", "subnet-a", "vpc-{\"x\"}", "vpc-A B", "vpc-<html>"] {
            assert!(!valid_id("vpc-", bad), "{bad}");
        }
        assert!(valid_mac("52:54:00:12:34:56") && !valid_mac("52:54:00:12:34"));
        assert!(valid_role("flannel-node") && !valid_role("a role"));
    }
}
