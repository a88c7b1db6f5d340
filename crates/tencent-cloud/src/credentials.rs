//! Credentials and the chain that finds them. First hit wins:
//! 1. explicit config (`AccessKeyID`/`AccessKeySecret`, upstream's net-conf names);
//! 2. `ACCESS_KEY_ID`/`ACCESS_KEY_SECRET` (upstream flannel's variables);
//! 3. `TENCENTCLOUD_SECRET_ID`/`TENCENTCLOUD_SECRET_KEY`, with a token from
//!    `TENCENTCLOUD_SESSION_TOKEN`, else `_SECURITY_TOKEN`, else `_TOKEN`;
//! 4. the profile file (`TENCENTCLOUD_CREDENTIALS_FILE`, else `~/.tencentcloud/credentials`);
//! 5. the CVM's CAM role from the metadata service, refreshed 300 s before it expires.
//!
//! Secret-bearing types redact themselves in Debug; no error message contains a secret.

use crate::metadata::{MetadataClient, MetadataError};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Mutex;

/// One set of credentials. The id/key/token triple is always replaced as a whole.
#[derive(Clone)]
pub struct Credentials {
    pub secret_id: String,
    secret_key: SecretString,
    token: Option<SecretString>,
}

impl Credentials {
    pub fn new(
        secret_id: impl Into<String>,
        secret_key: SecretString,
        token: Option<SecretString>,
    ) -> Self {
        Credentials {
            secret_id: secret_id.into(),
            secret_key,
            token,
        }
    }
    /// The secret key, readable only through `expose_secret()` so every read is greppable.
    pub fn secret_key(&self) -> &SecretString {
        &self.secret_key
    }
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.expose_secret())
    }
    /// Temporary (STS / role) credentials carry a token, sent as `X-TC-Token`.
    pub fn is_temporary(&self) -> bool {
        self.token.is_some()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"[REDACTED]")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{set} is set but {missing} is empty")]
    Incomplete {
        set: &'static str,
        missing: &'static str,
    },
    #[error("credentials file {path}: {message}")]
    ProfileFile { path: String, message: String },
    #[error("CVM role {role}")]
    RoleMetadata {
        role: String,
        #[source]
        source: MetadataError,
    },
    #[error("CVM role {role}: credentials response {message}")]
    RoleResponse { role: String, message: String },
    #[error("discovering the CVM role: {0}")]
    RoleDiscovery(MetadataError),
    #[error("no Tencent Cloud credentials found (tried: {})", tried.join("; "))]
    NoneFound { tried: Vec<String> },
}

impl CredentialError {
    /// The metadata service may answer later.
    pub fn is_transient(&self) -> bool {
        match self {
            CredentialError::RoleMetadata { source, .. }
            | CredentialError::RoleDiscovery(source) => source.is_transient(),
            _ => false,
        }
    }
}

/// Where the client gets credentials from.
#[async_trait]
pub trait CredentialProvider: Send + Sync + fmt::Debug {
    async fn credentials(&self) -> Result<Credentials, CredentialError>;
    /// The API rejected the current credentials: the next call must fetch fresh ones.
    async fn invalidate(&self) {}
    /// Whether `invalidate` can produce different credentials.
    fn refreshable(&self) -> bool {
        false
    }
    /// Which link of the chain these come from (for logs; never the secret).
    fn source(&self) -> String;
}

/// Fixed credentials (config, environment, profile file).
#[derive(Debug)]
pub struct StaticProvider {
    creds: Credentials,
    source: String,
}

impl StaticProvider {
    pub fn new(creds: Credentials, source: impl Into<String>) -> Self {
        StaticProvider {
            creds,
            source: source.into(),
        }
    }
}

#[async_trait]
impl CredentialProvider for StaticProvider {
    async fn credentials(&self) -> Result<Credentials, CredentialError> {
        Ok(self.creds.clone())
    }
    fn source(&self) -> String {
        self.source.clone()
    }
}

/// Seconds before `ExpiredTime` at which role credentials are refreshed.
pub const ROLE_REFRESH_MARGIN_SECS: i64 = 300;

/// Temporary credentials of the instance's CAM role, from the metadata service.
pub struct CvmRoleProvider {
    metadata: MetadataClient,
    role: String,
    cached: Mutex<Option<(Credentials, i64)>>,
}

impl fmt::Debug for CvmRoleProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CvmRoleProvider")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentialsResponse {
    tmp_secret_id: Option<String>,
    tmp_secret_key: Option<String>,
    token: Option<String>,
    expired_time: Option<i64>,
    code: Option<String>,
}

impl CvmRoleProvider {
    pub fn new(metadata: MetadataClient, role: impl Into<String>) -> Self {
        CvmRoleProvider {
            metadata,
            role: role.into(),
            cached: Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<(Credentials, i64), CredentialError> {
        let role = &self.role;
        let body = self
            .metadata
            .role_credentials_json(role)
            .await
            .map_err(|source| CredentialError::RoleMetadata {
                role: role.clone(),
                source,
            })?;
        let bad = |message: &str| CredentialError::RoleResponse {
            role: role.clone(),
            message: message.to_string(),
        };
        // Never include the body in an error: it holds the secret key and token.
        let r: RoleCredentialsResponse =
            serde_json::from_str(&body).map_err(|_| bad("is not valid JSON"))?;
        match r.code.as_deref() {
            Some("Success") => {}
            Some(other) => return Err(bad(&format!("has Code {other:?}, not \"Success\""))),
            None => return Err(bad("has no Code")),
        }
        let id = r
            .tmp_secret_id
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("has no TmpSecretId"))?;
        let key = r
            .tmp_secret_key
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("has no TmpSecretKey"))?;
        let token = r
            .token
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("has no Token"))?;
        let expires = r.expired_time.ok_or_else(|| bad("has no ExpiredTime"))?;
        Ok((
            Credentials::new(id, SecretString::from(key), Some(SecretString::from(token))),
            expires,
        ))
    }
}

#[async_trait]
impl CredentialProvider for CvmRoleProvider {
    async fn credentials(&self) -> Result<Credentials, CredentialError> {
        let mut cached = self.cached.lock().await;
        let now = crate::unix_now();
        if let Some((c, expires)) = cached.as_ref() {
            if now < expires - ROLE_REFRESH_MARGIN_SECS {
                return Ok(c.clone());
            }
        }
        match self.fetch().await {
            Ok((c, expires)) => {
                tracing::debug!(role = %self.role, expires, "fetched CVM role credentials");
                *cached = Some((c.clone(), expires));
                Ok(c)
            }
            // Keep using still-valid credentials when a refresh fails.
            Err(e) => match cached.as_ref() {
                Some((c, expires)) if now < *expires => {
                    tracing::warn!(role = %self.role, error = %error_report::Report(&e), "refreshing CVM role credentials failed; using the current ones until they expire");
                    Ok(c.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    fn refreshable(&self) -> bool {
        true
    }

    fn source(&self) -> String {
        format!("CVM role {}", self.role)
    }
}

/// What the chain looks at. `env` is injectable so tests need not touch the process env.
pub struct ChainInput<'a> {
    pub explicit_id: Option<String>,
    pub explicit_key: Option<SecretString>,
    pub env: &'a (dyn Fn(&str) -> Option<String> + Sync),
    pub home: Option<PathBuf>,
    /// `None` skips the CVM role link (e.g. off-cloud tools).
    pub metadata: Option<MetadataClient>,
}

fn pair(
    id: Option<String>,
    key: Option<String>,
    id_name: &'static str,
    key_name: &'static str,
) -> Result<Option<(String, String)>, CredentialError> {
    let id = id.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let key = key.filter(|s| !s.trim().is_empty());
    match (id, key) {
        (Some(i), Some(k)) => Ok(Some((i, k.trim().to_string()))),
        (Some(_), None) => Err(CredentialError::Incomplete {
            set: id_name,
            missing: key_name,
        }),
        (None, Some(_)) => Err(CredentialError::Incomplete {
            set: key_name,
            missing: id_name,
        }),
        (None, None) => Ok(None),
    }
}

/// Parse an INI profile file's `[default]` section: `secret_id`, `secret_key`, optional `token`.
fn read_profile(path: &Path) -> Result<Option<Credentials>, CredentialError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CredentialError::ProfileFile {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    let mut section = String::new();
    let (mut id, mut key, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        if section != "default" {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "secret_id" => id = Some(v),
                "secret_key" => key = Some(v),
                "token" => token = Some(v).filter(|t| !t.is_empty()),
                _ => {}
            }
        }
    }
    let p = path.display().to_string();
    match pair(id, key, "secret_id", "secret_key") {
        Ok(Some((i, k))) => Ok(Some(Credentials::new(
            i,
            SecretString::from(k),
            token.map(SecretString::from),
        ))),
        Ok(None) => Ok(None),
        Err(e) => Err(CredentialError::ProfileFile {
            path: p,
            message: e.to_string(),
        }),
    }
}

/// Walk the chain; the first link that has credentials wins.
pub async fn resolve_chain(
    input: ChainInput<'_>,
) -> Result<Arc<dyn CredentialProvider>, CredentialError> {
    let env = |k: &str| (input.env)(k);
    let mut tried = Vec::new();

    let explicit_key = input
        .explicit_key
        .as_ref()
        .map(|k| k.expose_secret().to_string());
    if let Some((i, k)) = pair(
        input.explicit_id.clone(),
        explicit_key,
        "AccessKeyID",
        "AccessKeySecret",
    )? {
        return Ok(Arc::new(StaticProvider::new(
            Credentials::new(i, SecretString::from(k), None),
            "config",
        )));
    }
    tried.push("config AccessKeyID/AccessKeySecret".to_string());

    if let Some((i, k)) = pair(
        env("ACCESS_KEY_ID"),
        env("ACCESS_KEY_SECRET"),
        "ACCESS_KEY_ID",
        "ACCESS_KEY_SECRET",
    )? {
        return Ok(Arc::new(StaticProvider::new(
            Credentials::new(i, SecretString::from(k), None),
            "env ACCESS_KEY_ID",
        )));
    }
    tried.push("env ACCESS_KEY_ID/ACCESS_KEY_SECRET".to_string());

    if let Some((i, k)) = pair(
        env("TENCENTCLOUD_SECRET_ID"),
        env("TENCENTCLOUD_SECRET_KEY"),
        "TENCENTCLOUD_SECRET_ID",
        "TENCENTCLOUD_SECRET_KEY",
    )? {
        let token = [
            "TENCENTCLOUD_SESSION_TOKEN",
            "TENCENTCLOUD_SECURITY_TOKEN",
            "TENCENTCLOUD_TOKEN",
        ]
        .iter()
        .find_map(|v| env(v).filter(|t| !t.trim().is_empty()))
        .map(|t| SecretString::from(t.trim().to_string()));
        return Ok(Arc::new(StaticProvider::new(
            Credentials::new(i, SecretString::from(k), token),
            "env TENCENTCLOUD_SECRET_ID",
        )));
    }
    tried.push("env TENCENTCLOUD_SECRET_ID/TENCENTCLOUD_SECRET_KEY".to_string());

    let profile = env("TENCENTCLOUD_CREDENTIALS_FILE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            input
                .home
                .as_ref()
                .map(|h| h.join(".tencentcloud/credentials"))
        });
    if let Some(path) = profile {
        if let Some(c) = read_profile(&path)? {
            return Ok(Arc::new(StaticProvider::new(
                c,
                format!("profile {}", path.display()),
            )));
        }
        tried.push(format!("profile {}", path.display()));
    }

    if let Some(md) = input.metadata {
        match md.role_name().await {
            Ok(Some(role)) => {
                let p = CvmRoleProvider::new(md, role);
                // Fetch once now so a broken role fails at start-up, not at the first call.
                p.credentials().await?;
                return Ok(Arc::new(p));
            }
            Ok(None) => tried.push("CVM role (no role bound to this instance)".to_string()),
            Err(e) => tried.push(format!("CVM role ({})", error_report::report(&e))),
        }
    }
    Err(CredentialError::NoneFound { tried })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    async fn chain(
        env: &[(&str, &str)],
        home: Option<PathBuf>,
    ) -> Result<Arc<dyn CredentialProvider>, CredentialError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.get(k).cloned();
        resolve_chain(ChainInput {
            explicit_id: None,
            explicit_key: None,
            env: &lookup,
            home,
            metadata: None,
        })
        .await
    }

    #[tokio::test]
    async fn explicit_config_wins() {
        let lookup = |_: &str| Some("env-value".to_string());
        let p = resolve_chain(ChainInput {
            explicit_id: Some("AKIDcfg".into()),
            explicit_key: Some(SecretString::from("cfgkey".to_string())),
            env: &lookup,
            home: None,
            metadata: None,
        })
        .await
        .unwrap();
        let c = p.credentials().await.unwrap();
        assert_eq!(
            (
                c.secret_id.as_str(),
                c.secret_key().expose_secret(),
                p.source().as_str()
            ),
            ("AKIDcfg", "cfgkey", "config")
        );
    }

    #[tokio::test]
    async fn upstream_env_then_tencentcloud_env_with_token_order() {
        let p = chain(
            &[
                ("ACCESS_KEY_ID", "AKID1"),
                ("ACCESS_KEY_SECRET", "k1"),
                ("TENCENTCLOUD_SECRET_ID", "AKID2"),
                ("TENCENTCLOUD_SECRET_KEY", "k2"),
            ],
            None,
        )
        .await
        .unwrap();
        assert_eq!(p.credentials().await.unwrap().secret_id, "AKID1");
        let p = chain(
            &[
                ("TENCENTCLOUD_SECRET_ID", "AKID2"),
                ("TENCENTCLOUD_SECRET_KEY", "k2"),
                ("TENCENTCLOUD_SECURITY_TOKEN", "tok-security"),
                ("TENCENTCLOUD_TOKEN", "tok-plain"),
            ],
            None,
        )
        .await
        .unwrap();
        let c = p.credentials().await.unwrap();
        assert_eq!(c.token(), Some("tok-security"));
        assert!(c.is_temporary());
    }

    #[tokio::test]
    async fn half_pairs_are_errors_naming_the_missing_variable() {
        let e = chain(&[("ACCESS_KEY_ID", "AKID1")], None)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ACCESS_KEY_ID is set but ACCESS_KEY_SECRET is empty"
        );
    }

    #[tokio::test]
    async fn profile_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".tencentcloud")).unwrap();
        std::fs::write(
            d.path().join(".tencentcloud/credentials"),
            "[other]\nsecret_id=x\n[default]\nsecret_id = AKIDprof\nsecret_key = profkey\n",
        )
        .unwrap();
        let p = chain(&[], Some(d.path().to_path_buf())).await.unwrap();
        assert_eq!(p.credentials().await.unwrap().secret_id, "AKIDprof");
        assert!(p.source().starts_with("profile "));
    }

    #[tokio::test]
    async fn nothing_found_lists_what_was_tried() {
        let e = chain(&[], Some("/nonexistent-home".into()))
            .await
            .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("no Tencent Cloud credentials found"), "{s}");
        assert!(
            s.contains("env TENCENTCLOUD_SECRET_ID")
                && s.contains("/nonexistent-home/.tencentcloud/credentials"),
            "{s}"
        );
    }

    #[test]
    fn debug_redacts() {
        let c = Credentials::new(
            "AKID",
            SecretString::from("sk-xyz".to_string()),
            Some(SecretString::from("tok-xyz".to_string())),
        );
        let d = format!("{c:?}");
        assert!(!d.contains("sk-xyz") && !d.contains("tok-xyz"), "{d}");
    }
}
