//! Upstream's `extension` backend: the data plane is the user's commands. PreStartupCommand
//! runs before the lease (its trimmed output, stdout and stderr together, becomes the lease's
//! BackendData as a JSON string), PostStartupCommand once the lease is held, and
//! SubnetAddCommand / SubnetRemoveCommand for every extension peer that comes, changes or goes,
//! with the peer's BackendData string and a newline on stdin. As current upstream, a command
//! is split on whitespace and `$VAR` / `${VAR}` are expanded in each word from the hook's
//! variables and flanneld's environment; no shell runs, so a value can never become syntax.
//! Beyond upstream: a failed add or remove is retried at the next resync (upstream logs it
//! and forgets), and a hook is killed after [`HOOK_TIMEOUT`].

use super::{base_attrs, Backend, BackendError, Status, Trigger};
use crate::iface::ExternalInterface;
use async_trait::async_trait;
use flannel_core::admission::PeerView;
use flannel_core::backend_config::{BackendKind, ExtensionConfig};
use flannel_core::lease::{Lease, LeaseAttrs};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// A hook that runs longer is killed (and counts as failed).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// A hook that could not run or failed, naming the command.
#[derive(Debug, thiserror::Error)]
#[error("extension {hook} {command:?}{about}: {problem}")]
pub struct HookError {
    pub hook: &'static str,
    pub command: String,
    /// " for 10.5.1.0/24" for a peer's hook.
    pub about: String,
    pub problem: String,
}

/// `command` split on whitespace, `$NAME` and `${NAME}` expanded in each word by `lookup`
/// (unset: empty). A `$` not followed by a name stays as it is. Pure.
pub fn expand(command: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    command
        .split_whitespace()
        .map(|word| expand_word(word, lookup))
        .collect()
}

fn expand_word(word: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(braced) = after.strip_prefix('{') {
            if let Some(end) = braced.find('}') {
                out.push_str(&lookup(&braced[..end]).unwrap_or_default());
                rest = &braced[end + 1..];
                continue;
            }
        }
        let len = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
        if len == 0 {
            out.push('$');
        } else {
            out.push_str(&lookup(&after[..len]).unwrap_or_default());
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// Run one hook: its words expanded from `vars` then the environment, `vars` added to the
/// environment, `stdin` and a newline written to it; the trimmed combined output.
fn run_hook(
    hook: &'static str,
    command: &str,
    about: &str,
    vars: &[(&str, String)],
    stdin: &str,
) -> Result<String, HookError> {
    let fail = |problem: String| HookError {
        hook,
        command: command.to_string(),
        about: about.to_string(),
        problem,
    };
    let lookup = |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let words = expand(command, &lookup);
    let Some((program, args)) = words.split_first() else {
        return Err(fail("empty command".into()));
    };
    let (mut reader, writer) = std::io::pipe().map_err(|e| fail(e.to_string()))?;
    let mut child = Command::new(program)
        .args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(writer.try_clone().map_err(|e| fail(e.to_string()))?)
        .stderr(writer)
        .spawn()
        .map_err(|e| fail(format!("{program}: {e}")))?;
    if let Some(mut pipe) = child.stdin.take() {
        use std::io::Write;
        // A hook that does not read its stdin is fine.
        let _ = pipe.write_all(format!("{stdin}\n").as_bytes());
    }
    let output = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = reader.read_to_end(&mut text);
        String::from_utf8_lossy(&text).trim().to_string()
    });
    let deadline = Instant::now() + HOOK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("killed after {} s", HOOK_TIMEOUT.as_secs())));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let output = output.join().unwrap_or_default();
    if status.success() {
        Ok(output)
    } else {
        Err(fail(format!("{status}: {output}")))
    }
}

async fn run_hook_async(
    hook: &'static str,
    command: String,
    about: String,
    vars: Vec<(&'static str, String)>,
    stdin: String,
) -> Result<String, HookError> {
    tokio::task::spawn_blocking(move || run_hook(hook, &command, &about, &vars, &stdin))
        .await
        .unwrap_or_else(|e| {
            Err(HookError {
                hook,
                command: String::new(),
                about: String::new(),
                problem: e.to_string(),
            })
        })
}

/// A peer's BackendData as its hooks get it: the string upstream's PreStartupCommand made,
/// or nothing.
fn backend_data_string(lease: &Lease) -> String {
    match &lease.attrs.backend_data {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// A lease's IPv4 subnet as hooks get it (empty for an IPv6-only lease).
fn subnet_text(lease: &Lease) -> String {
    lease.subnet().map(|s| s.to_string()).unwrap_or_default()
}

fn peer_vars(lease: &Lease) -> Vec<(&'static str, String)> {
    vec![
        ("SUBNET", subnet_text(lease)),
        ("PUBLIC_IP", lease.attrs.public_ip.to_string()),
    ]
}

/// What is owed to the hooks: peers whose add or remove failed, by subnet.
#[derive(Default)]
struct Owed {
    post_startup_done: bool,
    adds: BTreeMap<String, Lease>,
    removes: BTreeMap<String, Lease>,
    problem: Option<String>,
}

pub struct ExtensionBackend {
    ext: ExternalInterface,
    config: ExtensionConfig,
    network: String,
    owed: Mutex<Owed>,
}

impl ExtensionBackend {
    pub fn new(ext: ExternalInterface, config: ExtensionConfig, network: String) -> Self {
        ExtensionBackend {
            ext,
            config,
            network,
            owed: Mutex::new(Owed::default()),
        }
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, Owed> {
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run the add (or remove) hook for `lease`; remembered for the next resync when it fails.
    async fn peer_hook(&self, lease: &Lease, add: bool) {
        let (hook, command) = if add {
            ("SubnetAddCommand", &self.config.subnet_add)
        } else {
            ("SubnetRemoveCommand", &self.config.subnet_remove)
        };
        let key = lease.key.to_string();
        {
            let mut owed = self.owed();
            // The newest wish for a subnet wins.
            owed.adds.remove(&key);
            owed.removes.remove(&key);
        }
        if command.is_empty() {
            return;
        }
        let about = format!(" for {}", lease.key);
        match run_hook_async(
            hook,
            command.clone(),
            about,
            peer_vars(lease),
            backend_data_string(lease),
        )
        .await
        {
            Ok(output) => info!(hook, subnet = %lease.key, %output, "ran extension hook"),
            Err(e) => {
                warn!(error = %e, "extension hook failed; retried at the next resync");
                let mut owed = self.owed();
                owed.problem = Some(e.to_string());
                let list = if add {
                    &mut owed.adds
                } else {
                    &mut owed.removes
                };
                list.insert(key, lease.clone());
            }
        }
    }

    fn status(&self) -> Status {
        let owed = self.owed();
        let pending = !owed.adds.is_empty() || !owed.removes.is_empty();
        Status {
            ready: true,
            pending,
            problem: if pending { owed.problem.clone() } else { None },
        }
    }
}

fn is_extension(lease: &Lease) -> bool {
    lease.attrs.backend_type == BackendKind::Extension.name()
}

#[async_trait]
impl Backend for ExtensionBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Extension
    }

    async fn lease_attrs(&self) -> Result<LeaseAttrs, BackendError> {
        let mut attrs = base_attrs(BackendKind::Extension, &self.ext)?;
        if !self.config.pre_startup.is_empty() {
            let output = run_hook_async(
                "PreStartupCommand",
                self.config.pre_startup.clone(),
                String::new(),
                Vec::new(),
                String::new(),
            )
            .await
            .map_err(|e| BackendError::Unsupported(e.to_string()))?;
            info!(%output, "ran PreStartupCommand: its output is the lease's BackendData");
            attrs.backend_data = Some(serde_json::Value::String(output));
        }
        Ok(attrs)
    }

    async fn reconcile(
        &self,
        own: &Lease,
        peers: &PeerView<'_>,
        trigger: Trigger<'_>,
    ) -> Result<Status, BackendError> {
        match trigger {
            Trigger::Start => {
                let first = !std::mem::replace(&mut self.owed().post_startup_done, true);
                if first && !self.config.post_startup.is_empty() {
                    let opt = |v: Option<String>| v.unwrap_or_default();
                    let vars = vec![
                        ("NETWORK", self.network.clone()),
                        ("SUBNET", subnet_text(own)),
                        ("IPV6SUBNET", opt(own.ipv6_subnet().map(|s| s.to_string()))),
                        ("PUBLIC_IP", own.attrs.public_ip.to_string()),
                        (
                            "PUBLIC_IPV6",
                            opt(own.attrs.public_ipv6.map(|a| a.to_string())),
                        ),
                    ];
                    let output = run_hook_async(
                        "PostStartupCommand",
                        self.config.post_startup.clone(),
                        String::new(),
                        vars,
                        String::new(),
                    )
                    .await
                    .map_err(|e| BackendError::Unsupported(e.to_string()))?;
                    info!(%output, "ran PostStartupCommand");
                }
                for peer in peers.iter().filter(|l| is_extension(l)) {
                    self.peer_hook(peer, true).await;
                }
            }
            Trigger::Leases { added, removed } => {
                for peer in removed.iter().filter(|l| is_extension(l)) {
                    self.peer_hook(peer, false).await;
                }
                for peer in added.iter().filter(|l| is_extension(l)) {
                    self.peer_hook(peer, true).await;
                }
            }
            Trigger::Resync { .. } => {
                let (adds, removes) = {
                    let owed = self.owed();
                    (
                        owed.adds.values().cloned().collect::<Vec<_>>(),
                        owed.removes.values().cloned().collect::<Vec<_>>(),
                    )
                };
                for peer in &removes {
                    self.peer_hook(peer, false).await;
                }
                for peer in &adds {
                    self.peer_hook(peer, true).await;
                }
            }
        }
        Ok(self.status())
    }

    fn mtu(&self) -> u32 {
        self.ext.mtu
    }
}

#[cfg(test)]
mod tests;
