//! One way to reach Tencent Cloud, shared by `flannelctl` and the tencent-vpc backend:
//! region, endpoint, metadata address and the credential chain (explicit keys from
//! net-conf.json or flags first, then the environment, the profile file and the CVM role).

use secrecy::SecretString;
use std::sync::Arc;
use tencent_cloud::credentials::{resolve_chain, ChainInput, CredentialError};
use tencent_cloud::metadata::{MetadataError, DEFAULT_BASE_URL};
use tencent_cloud::{Client, ClientConfig, Endpoint, MetadataClient};

/// Overrides the metadata address (labs and tests) when no flag or backend key gives one.
pub const METADATA_URL_ENV: &str = "FLANNEL_TENCENT_METADATA_URL";

/// What the caller knows; everything missing comes from the environment or the metadata
/// service. Debug never shows the secret.
#[derive(Debug, Clone, Default)]
pub struct CloudSetup {
    pub region: Option<String>,
    /// `public`, `regional`, `internal` or a URL (the emulator).
    pub endpoint: Option<String>,
    pub metadata_url: Option<String>,
    pub access_key_id: Option<String>,
    pub access_key_secret: Option<SecretString>,
    /// Told the outcome of every API request (metrics).
    pub observer: Option<tencent_cloud::CallObserver>,
}

/// A ready client with the metadata client and the region it was built for.
pub struct Cloud {
    pub client: Client,
    pub metadata: MetadataClient,
    pub region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudSetupError {
    #[error("{0}")]
    Endpoint(String),
    #[error("cloud credentials")]
    Credentials(#[from] CredentialError),
    #[error(
        "no region: set it explicitly or TENCENTCLOUD_REGION (the metadata service did not answer)"
    )]
    Region(#[source] MetadataError),
    #[error("metadata service")]
    Metadata(#[source] MetadataError),
    #[error("cloud API client")]
    Client(#[source] tencent_cloud::Error),
}

/// A metadata address must be an http(s) URL with a host (checked before any request).
pub fn check_metadata_url(u: &str) -> Result<(), String> {
    tencent_cloud::metadata::check_base_url(u)
}

/// The metadata address: explicit, else [`METADATA_URL_ENV`], else the link-local default.
pub fn metadata_url(explicit: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> String {
    explicit
        .map(str::to_string)
        .or_else(|| env(METADATA_URL_ENV))
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
}

/// Build the client. `env` is the process environment in production, a map in tests.
pub async fn connect(
    setup: CloudSetup,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Result<Cloud, CloudSetupError> {
    let endpoint: Endpoint = setup
        .endpoint
        .as_deref()
        .unwrap_or("public")
        .parse()
        .map_err(CloudSetupError::Endpoint)?;
    let metadata = MetadataClient::new(&metadata_url(setup.metadata_url.as_deref(), env))
        .map_err(CloudSetupError::Metadata)?;
    let region = match setup
        .region
        .or_else(|| env("TENCENTCLOUD_REGION"))
        .filter(|r| !r.is_empty())
    {
        Some(r) => r,
        None => metadata.region().await.map_err(CloudSetupError::Region)?,
    };
    let creds = resolve_chain(ChainInput {
        explicit_id: setup.access_key_id,
        explicit_key: setup.access_key_secret,
        env,
        home: env("HOME").map(Into::into),
        metadata: Some(metadata.clone()),
    })
    .await?;
    let mut cfg = ClientConfig::new(region.clone());
    cfg.endpoint = endpoint;
    cfg.observer = setup.observer;
    let client = Client::new(cfg, Arc::clone(&creds)).map_err(CloudSetupError::Client)?;
    Ok(Cloud {
        client,
        metadata,
        region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn metadata_url_precedence() {
        let none = |_: &str| None;
        let set = |k: &str| (k == METADATA_URL_ENV).then(|| "http://10.0.0.1/md/".to_string());
        assert_eq!(metadata_url(None, &none), DEFAULT_BASE_URL);
        assert_eq!(metadata_url(None, &set), "http://10.0.0.1/md/");
        assert_eq!(metadata_url(Some("http://x/"), &set), "http://x/");
        assert!(
            DEFAULT_BASE_URL.starts_with("http://169.254.0.23/"),
            "link-local, no DNS"
        );
    }

    #[tokio::test]
    async fn explicit_region_and_keys_build_a_client_and_a_bad_endpoint_is_refused() {
        let env = |_: &str| None;
        let cloud = connect(
            CloudSetup {
                region: Some("ap-guangzhou".into()),
                endpoint: Some("http://127.0.0.1:1".into()),
                access_key_id: Some("AKIDexplicit".into()),
                access_key_secret: Some(SecretString::from("s3cr3t")),
                ..Default::default()
            },
            &env,
        )
        .await
        .unwrap();
        assert_eq!(cloud.region, "ap-guangzhou");

        let e = connect(
            CloudSetup {
                region: Some("ap-guangzhou".into()),
                endpoint: Some("ftp:/nonsense".into()),
                ..Default::default()
            },
            &env,
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(e, CloudSetupError::Endpoint(_)), "{e}");
        let secret = SecretString::from("s3cr3t");
        let dbg = format!(
            "{:?}",
            CloudSetup {
                access_key_secret: Some(secret.clone()),
                ..Default::default()
            }
        );
        assert!(!dbg.contains(secret.expose_secret()), "{dbg}");
    }
}
