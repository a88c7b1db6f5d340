//! Network namespaces and the commands run inside them (`ip netns exec`). Lab addresses are
//! only ever used from inside these namespaces: from the root namespace they would leave the
//! machine by its default route. A `Netns` here is a name: the lab's namespaces outlive the
//! process that made them (`flannel-lab up` returns, `down` deletes them).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("{cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

fn shown(ns: Option<&str>, args: &[&str]) -> String {
    match ns {
        Some(ns) => format!("(in {ns}) {}", args.join(" ")),
        None => args.join(" "),
    }
}

/// Run a command in the root namespace; stdout on success.
pub fn host(args: &[&str]) -> Result<String, CmdError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CmdError::Spawn {
            cmd: shown(None, args),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CmdError::Failed {
            cmd: shown(None, args),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The names of the existing network namespaces.
pub fn list() -> Vec<String> {
    host(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// A named network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Create it (a leftover of the same name is deleted first), loopback up.
    pub fn create(name: &str) -> Result<Netns, CmdError> {
        let ns = Netns { name: name.into() };
        ns.delete();
        host(&["ip", "netns", "add", name])?;
        ns.ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// An existing namespace by name.
    pub fn named(name: &str) -> Netns {
        Netns { name: name.into() }
    }

    pub fn exists(&self) -> bool {
        list().contains(&self.name)
    }

    /// Delete it (its veths go with it); absent is fine.
    pub fn delete(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }

    /// The processes running inside.
    pub fn pids(&self) -> Vec<i32> {
        host(&["ip", "netns", "pids", &self.name])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run inside with `stdin`; the output whatever the exit status.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<Output, CmdError> {
        let spawn = |source| CmdError::Spawn {
            cmd: shown(Some(&self.name), args),
            source,
        };
        let mut child = self
            .command(args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(stdin.unwrap_or_default()).map_err(spawn)?;
        }
        child.wait_with_output().map_err(spawn)
    }

    /// Run inside; stdout on success, the command and its stderr on failure.
    pub fn ok(&self, args: &[&str]) -> Result<String, CmdError> {
        self.ok_with(args, None)
    }

    pub fn ok_with(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<String, CmdError> {
        let out = self.run(args, stdin)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(CmdError::Failed {
                cmd: shown(Some(&self.name), args),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Whether the command succeeds inside.
    pub fn succeeds(&self, args: &[&str]) -> bool {
        self.run(args, None).is_ok_and(|o| o.status.success())
    }

    /// Start a long-running process inside, in its own process group (it outlives us),
    /// output appended to `log`; its pid.
    pub fn spawn_detached(
        &self,
        args: &[&str],
        env: &[(&str, String)],
        log: &std::path::Path,
    ) -> Result<u32, CmdError> {
        let mut cmd = self.command(args[0]);
        cmd.args(&args[1..]);
        detach(cmd, &shown(Some(&self.name), args), env, log)
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), CmdError> {
        self.ok(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }
}

/// Start a long-running process in the root namespace (e.g. one that enters namespaces
/// itself), detached like [`Netns::spawn_detached`]; its pid.
pub fn spawn_detached_host(
    args: &[&str],
    env: &[(&str, String)],
    log: &std::path::Path,
) -> Result<u32, CmdError> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    detach(cmd, &shown(None, args), env, log)
}

fn detach(
    mut cmd: Command,
    shown: &str,
    env: &[(&str, String)],
    log: &std::path::Path,
) -> Result<u32, CmdError> {
    let spawn = |source| CmdError::Spawn {
        cmd: shown.to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(spawn)?;
    let child = cmd
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(spawn)?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .map_err(spawn)?;
    Ok(child.id())
}

/// Poll `f` until it returns Ok or `timeout` passes; the last failure on timeout.
pub fn wait_until<T>(
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Run `f` on a thread inside the network namespace `name` (sockets it opens live there), so
/// a lab address is reached from inside the lab, never from the root namespace.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(&path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

/// An HTTP request from inside namespace `ns`: the status and the body.
pub fn http(
    ns: &str,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<(u16, String), CmdError> {
    let shown = format!("(in {ns}) {method} {url}");
    let failed = |e: String| CmdError::Failed {
        cmd: shown.clone(),
        stderr: e,
    };
    let method =
        reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| failed(e.to_string()))?;
    in_netns(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let mut req = client.request(method, url);
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let resp = req.send().await.map_err(|e| error_report::report(&e))?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(|e| error_report::report(&e))?;
            Ok::<_, String>((status, text))
        })
    })
    .map_err(|e| CmdError::Spawn {
        cmd: shown.clone(),
        source: e,
    })?
    .map_err(failed)
}

/// Whether process `pid` lives in one of `namespaces` (its network namespace is theirs).
pub fn in_any(pid: &i32, namespaces: &[Netns]) -> bool {
    let Ok(theirs) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    namespaces.iter().any(|n| {
        std::fs::metadata(format!("/run/netns/{}", n.name))
            .is_ok_and(|m| m.ino() == theirs.ino() && m.dev() == theirs.dev())
    })
}
