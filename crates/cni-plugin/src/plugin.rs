//! The shell of `flannel`, the CNI plugin (spec 1.0.0; 0.3.1 configs as kube-flannel.yml ships them).
//! ADD reads flanneld's subnet.env, saves the delegate config under the data dir (so DEL
//! works even after subnet.env changed) and runs the delegate (`bridge` by default) with
//! it; DEL runs the delegate with the saved config and removes it; CHECK runs the delegate's
//! CHECK; VERSION reports the versions. Errors are CNI error JSON on stdout, exit 1.

use crate::{
    check_container_id, code, delegate_conf, requested_version, CniError, FlannelEnv, NetConf,
    CURRENT_VERSION, SUPPORTED_VERSIONS,
};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// How a command ended.
enum Outcome {
    /// Print this (a result, or nothing) and exit 0.
    Done(Vec<u8>),
    /// The delegate failed: pass its stdout (its error JSON) through, exit 1.
    DelegateFailed(Vec<u8>),
}

/// Run one CNI command from the environment and stdin; the binary's `main`.
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = match requested_version(&stdin) {
        v if v.is_empty() => CURRENT_VERSION.to_string(),
        v => v,
    };
    let result = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(
            CniError::new(code::IO, "reading the network config from stdin").details(e.to_string()),
        ),
    };
    let mut out = std::io::stdout();
    match result {
        Ok(Outcome::Done(bytes)) => {
            let _ = out.write_all(&bytes);
            ExitCode::SUCCESS
        }
        Ok(Outcome::DelegateFailed(bytes)) => {
            let _ = out.write_all(&bytes);
            ExitCode::FAILURE
        }
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            eprintln!("flannel: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn run(stdin: &[u8]) -> Result<Outcome, CniError> {
    let command = env("CNI_COMMAND");
    match command.as_str() {
        "VERSION" => {
            let v = match requested_version(stdin) {
                v if v.is_empty() => CURRENT_VERSION.to_string(),
                v => v,
            };
            let info = json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS });
            Ok(Outcome::Done(info.to_string().into_bytes()))
        }
        "ADD" => add(stdin),
        "DEL" => del(stdin),
        "CHECK" => check(stdin),
        "" => Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?} (expected ADD, DEL, CHECK or VERSION)"),
        )),
    }
}

fn saved_conf_path(n: &NetConf) -> Result<PathBuf, CniError> {
    let id = env("CNI_CONTAINERID");
    check_container_id(&id)?;
    Ok(n.data_dir.join(id))
}

fn add(stdin: &[u8]) -> Result<Outcome, CniError> {
    let n = NetConf::parse(stdin)?;
    let saved = saved_conf_path(&n)?;
    let path = n.subnet_file.display().to_string();
    let text = std::fs::read_to_string(&n.subnet_file).map_err(|e| {
        // flanneld has not written it yet (starting, or not running on this node).
        let code = if e.kind() == ErrorKind::NotFound {
            code::TRY_AGAIN_LATER
        } else {
            code::IO
        };
        CniError::new(
            code,
            format!("failed to load flannel subnet file {path}: {e}; check that flanneld runs on this node"),
        )
    })?;
    let fenv = FlannelEnv::parse(&text, &path)?;
    let conf = serde_json::to_vec(&Value::Object(delegate_conf(&n, &fenv)))
        .expect("a JSON map serialises");
    save(&saved, &conf)?;
    delegate("ADD", &conf)
}

fn del(stdin: &[u8]) -> Result<Outcome, CniError> {
    let n = NetConf::parse(stdin)?;
    let saved = saved_conf_path(&n)?;
    let conf = match std::fs::read(&saved) {
        Ok(c) => c,
        // Never added, or already deleted: DEL is idempotent.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Outcome::Done(Vec::new())),
        Err(e) => {
            return Err(CniError::new(
                code::IO,
                format!("reading the saved delegate config {}: {e}", saved.display()),
            ))
        }
    };
    let outcome = delegate("DEL", &conf)?;
    if let Outcome::Done(_) = outcome {
        if let Err(e) = std::fs::remove_file(&saved) {
            if e.kind() != ErrorKind::NotFound {
                return Err(CniError::new(
                    code::IO,
                    format!(
                        "removing the saved delegate config {}: {e}",
                        saved.display()
                    ),
                ));
            }
        }
    }
    Ok(outcome)
}

fn check(stdin: &[u8]) -> Result<Outcome, CniError> {
    let n = NetConf::parse(stdin)?;
    if matches!(
        n.cni_version.as_str(),
        "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1"
    ) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version {} does not allow CHECK", n.cni_version),
        ));
    }
    let saved = saved_conf_path(&n)?;
    let conf = std::fs::read(&saved).map_err(|e| {
        CniError::new(
            code::CONTAINER_UNKNOWN,
            format!(
                "no saved delegate config {} for this container: {e}",
                saved.display()
            ),
        )
    })?;
    let mut conf: Value = serde_json::from_slice(&conf).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("saved delegate config {}", saved.display()),
        )
        .details(e.to_string())
    })?;
    if let (Some(prev), Value::Object(m)) = (&n.prev_result, &mut conf) {
        m.insert("prevResult".into(), prev.clone());
    }
    delegate(
        "CHECK",
        &serde_json::to_vec(&conf).expect("JSON serialises"),
    )
}

/// Write the delegate config atomically, readable by root only (it may carry IPAM secrets).
fn save(path: &Path, conf: &[u8]) -> Result<(), CniError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |what: &str, e: std::io::Error| {
        CniError::new(code::IO, format!("{what} {}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("creating the directory of", e))?;
    // A temporary name no other container's file can have, created exclusively: a
    // container named `<id>.tmp` keeps its saved config whatever `<id>`'s ADD does.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("conf");
    let (mut f, tmp) = (0..100u32)
        .find_map(|n| {
            let tmp = dir.join(format!(".{name}.{}.{n}.saving", std::process::id()));
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .ok()
                .map(|f| (f, tmp))
        })
        .ok_or_else(|| {
            io(
                "saving the delegate config",
                std::io::Error::other("no free temporary name"),
            )
        })?;
    let written = f
        .write_all(conf)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("saving the delegate config", e));
    }
    Ok(())
}

/// Run the delegate plugin named by the config's `type`, found in CNI_PATH, with the
/// runtime's environment and `command`.
fn delegate(command: &str, conf: &[u8]) -> Result<Outcome, CniError> {
    let kind = serde_json::from_slice::<Value>(conf)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_string))
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "delegate config has no type"))?;
    // A saved config from an older version went unchecked: check the name again here.
    crate::check_plugin_name("delegate.type", &kind)?;
    let cni_path = env("CNI_PATH");
    let plugin = cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(&kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::DELEGATE,
                format!("failed to find plugin {kind:?} in path [{cni_path}]"),
            )
        })?;
    let mut child = Command::new(&plugin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::new(code::DELEGATE, format!("running {}: {e}", plugin.display())))?;
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(conf);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::DELEGATE, format!("running {}: {e}", plugin.display())))?;
    if out.status.success() {
        Ok(Outcome::Done(out.stdout))
    } else if out.stdout.is_empty() {
        Err(CniError::new(
            code::DELEGATE,
            format!(
                "delegate {kind} {command} failed ({}) with no result",
                out.status
            ),
        ))
    } else {
        Ok(Outcome::DelegateFailed(out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_one_containers_config_never_touches_anothers() {
        let d = tempfile::tempdir().unwrap();
        // Container `c1.tmp` first, then `c1`: the old temporary name of `c1` was `c1.tmp`.
        save(&d.path().join("c1.tmp"), b"first").unwrap();
        save(&d.path().join("c1"), b"second").unwrap();
        assert_eq!(std::fs::read(d.path().join("c1.tmp")).unwrap(), b"first");
        assert_eq!(std::fs::read(d.path().join("c1")).unwrap(), b"second");
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["c1", "c1.tmp"], "no temporary file left");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("c1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
