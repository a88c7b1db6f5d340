//! A Tencent Cloud VPC emulator for tests, labs and rollout rehearsals: the signed API
//! (TC3 verified, documented errors, quotas, rate limits), the CVM metadata service, an admin
//! API for faults and console edits, optional persistence, and an optional data plane in a
//! network namespace.

pub mod dataplane;
pub mod ops;
pub mod scenario;
pub mod server;

use scenario::Scenario;
use server::Shared;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub scenario: Scenario,
    pub api_listen: SocketAddr,
    pub metadata_listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// Keep the account's state here across restarts (loaded instead of the scenario when present).
    pub state_file: Option<PathBuf>,
    /// Mirror route tables into this network namespace.
    pub dataplane_netns: Option<String>,
    /// Metadata answers for this instance when the source address is no instance's.
    pub metadata_default_instance: Option<String>,
    /// The API over HTTPS as well (what `tccli` needs: it refuses plain HTTP).
    pub api_tls: Option<TlsListen>,
}

/// An HTTPS listener: address, certificate chain and private key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsListen {
    pub addr: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EmulatorConfig {
    /// The API on a free loopback port; metadata, admin, state and data plane off.
    pub fn on_loopback(scenario: Scenario) -> EmulatorConfig {
        EmulatorConfig {
            scenario,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metadata_listen: None,
            admin_listen: None,
            state_file: None,
            dataplane_netns: None,
            metadata_default_instance: None,
            api_tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path}: {message}")]
    StateFile { path: String, message: String },
    #[error(transparent)]
    Scenario(scenario::ScenarioError),
    #[error("data plane in netns {netns}: {message}")]
    Dataplane { netns: String, message: String },
    #[error("TLS certificate {path}: {message}")]
    Tls { path: String, message: String },
}

/// A running emulator; servers stop when it is dropped.
pub struct Emulator {
    pub api: SocketAddr,
    pub metadata: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub api_tls: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A listener on `addr` and the address it got.
async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

async fn serve(
    what: &'static str,
    addr: SocketAddr,
    router: axum::Router,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
    let (listener, local) = bind(what, addr).await?;
    let task = tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(what, error = %error_report::Report(&e), "server stopped");
        }
    });
    Ok((local, task))
}

/// Serve `router` over TLS: each accepted connection is handshaken, then served by hyper.
async fn serve_tls(
    what: &'static str,
    tls: &TlsListen,
    router: axum::Router,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &PathBuf, message: String| StartError::Tls {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(&tls.cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| bad(&tls.key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .map_err(|e| bad(&tls.cert, e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (listener, local) = bind(what, tls.addr).await?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let served = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
                }
            });
        }
    });
    Ok((local, task))
}

impl Emulator {
    pub async fn start(cfg: EmulatorConfig) -> Result<Emulator, StartError> {
        // A scenario given as a value has not been through `from_json`: validate it here so
        // every handler can rely on its cross-references.
        let mut initial = cfg.scenario.clone();
        initial.validate().map_err(StartError::Scenario)?;
        let mut state = initial.clone();
        if let Some(path) = &cfg.state_file {
            let err = |message: String| StartError::StateFile {
                path: path.display().to_string(),
                message,
            };
            if path.exists() {
                let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
                state = Scenario::from_json(&text).map_err(|e| err(e.to_string()))?;
                tracing::info!(path = %path.display(), "loaded state");
            } else {
                // Written now, so a path that cannot be written is a start-up error rather
                // than a warning at each change while nothing is kept.
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                if !dir.is_dir() {
                    return Err(err(format!("directory {} does not exist", dir.display())));
                }
                server::write_state(path, &state)
                    .map_err(|e| err(format!("cannot be written: {e}")))?;
            }
        }
        let dataplane = match &cfg.dataplane_netns {
            Some(ns) => {
                let dp = dataplane::Dataplane::new(ns);
                dp.init(&state)
                    .await
                    .map_err(|message| StartError::Dataplane {
                        netns: ns.clone(),
                        message,
                    })?;
                Some(dp)
            }
            None => None,
        };
        let shared = Arc::new(Shared::new(
            state,
            initial,
            cfg.state_file.clone(),
            dataplane,
            cfg.metadata_default_instance.clone(),
        ));
        let mut tasks = Vec::new();
        let (api, t) = serve(
            "the API",
            cfg.api_listen,
            server::api_router(shared.clone()),
        )
        .await?;
        tasks.push(t);
        let metadata = match cfg.metadata_listen {
            Some(a) => {
                let (addr, t) = serve(
                    "the metadata service",
                    a,
                    server::metadata_router(shared.clone()),
                )
                .await?;
                tasks.push(t);
                Some(addr)
            }
            None => None,
        };
        let admin = match cfg.admin_listen {
            Some(a) => {
                let (addr, t) =
                    serve("the admin API", a, server::admin_router(shared.clone())).await?;
                tasks.push(t);
                Some(addr)
            }
            None => None,
        };
        let api_tls = match &cfg.api_tls {
            Some(tls) => {
                let (addr, t) =
                    serve_tls("the API (HTTPS)", tls, server::api_router(shared.clone())).await?;
                tasks.push(t);
                Some(addr)
            }
            None => None,
        };
        Ok(Emulator {
            api,
            metadata,
            admin,
            api_tls,
            shared,
            tasks,
        })
    }
}
