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
}

/// A running emulator; servers stop when it is dropped.
pub struct Emulator {
    pub api: SocketAddr,
    pub metadata: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
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

async fn serve(
    what: &'static str,
    addr: SocketAddr,
    router: axum::Router,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), StartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })?;
    let task = tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(what, error = %error_report::Report(&e), "server stopped");
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
        Ok(Emulator {
            api,
            metadata,
            admin,
            shared,
            tasks,
        })
    }
}
