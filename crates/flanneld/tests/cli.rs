//! The real binaries: exit codes, messages, no partial state, and a real local run.

mod common;

use common::{free_port, http_get, localhost, wait_until};
use std::process::{Command, Stdio};
use std::time::Duration;

const FLANNELD: &str = env!("CARGO_BIN_EXE_flanneld");
const FLANNELCTL: &str = env!("CARGO_BIN_EXE_flannelctl");

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn config_check_prints_effective_config() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "net.json",
        r#"{"network":"10.3.0.0/16","Backend":{"Type":"alloc","AccessKeySecret":"very-secret"}}"#,
    );
    let out = Command::new(FLANNELCTL)
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["SubnetLen"], 24);
    assert_eq!(v["SubnetMin"], "10.3.1.0");
    assert_eq!(v["SubnetMax"], "10.3.255.0");
    assert_eq!(v["BackendType"], "alloc");
    assert!(v.get("IPv6SubnetLen").is_none());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("very-secret"));
}

#[test]
fn config_check_prints_the_backends_effective_values() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "net.json",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"tx-vpc","RouteTableIds":["rtb-b","rtb-a","rtb-b"],
            "AccessKeyID":"AKIDx","AccessKeySecret":"very-secret"}}"#,
    );
    let out = Command::new(FLANNELCTL)
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &v["Backend"];
    assert_eq!(b["Type"], "tencent-vpc");
    assert_eq!(b["ClusterName"], "10-244-0-0-16");
    assert_eq!(b["RouteTableIds"], serde_json::json!(["rtb-b", "rtb-a"]));
    assert_eq!(b["ResyncInterval"], 60);
    assert_eq!(b["Mode"], "per-node");
    assert_eq!(b["Endpoint"], "public");
    assert_eq!(b["AccessKeySecret"], "<redacted>");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("very-secret"));
}

#[test]
fn config_check_ipv6_defaults() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "net.json",
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"alloc"}}"#,
    );
    let out = Command::new(FLANNELCTL)
        .args(["config", "check"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["IPv6SubnetLen"], 64);
    assert_eq!(v["IPv6SubnetMin"], "fc00:0:0:1::");
    assert_eq!(v["IPv6SubnetMax"], "fc00:0:0:ffff::");
    assert_eq!(v["BackendType"], "alloc");
}

#[test]
fn config_check_errors_exit_2_with_upstream_message() {
    let d = tempfile::tempdir().unwrap();
    for (text, msg) in [
        (
            "{}",
            "please define a correct Network parameter in the flannel config",
        ),
        (
            r#"{"Network":"10.0.0.0/29"}"#,
            "network is too small. Minimum useful network prefix is /28",
        ),
        (
            r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#,
            "SubnetLen must be less than /31",
        ),
        (
            r#"{"Network":"10.0.0.5/16"}"#,
            "net config field Network: \"10.0.0.5/16\" has host bits set (did you mean 10.0.0.0/16?)",
        ),
        ("{\"Network\":", "net config: malformed JSON at line 1 column 11: EOF while parsing a value"),
        // The backend is checked exactly as flanneld checks it.
        (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"ipsec"}}"#, "backend type ipsec: an upstream flannel backend that flannel-rs does not support; supported: tencent-vpc (alias tx-vpc), host-gw, vxlan, wireguard, udp, extension, alloc"),
        (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"bogus"}}"#, "unknown backend type: bogus"),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"tencent-vpc","AccessKeySecret":["s3cr3t"]}}"#,
            "Backend.AccessKeySecret: expected a string, found an array",
        ),
        (
            r#"{"EnableIPv4":false,"EnableIPv6":false,"Network":"10.0.0.0/16","Backend":{"Type":"alloc"}}"#,
            "EnableIPv4 and EnableIPv6 are both false: at least one address family must be enabled",
        ),
        // Everything flanneld checks before any network I/O, config check checks too.
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"tencent-vpc","Endpoint":"not a url"}}"#,
            "Backend.Endpoint: endpoint \"not a url\" is not public, regional, internal, a host name or an http(s) URL",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"tencent-vpc","Endpoint":"ftp://x"}}"#,
            "Backend.Endpoint: endpoint \"ftp://x\" is not public, regional, internal, a host name or an http(s) URL",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"tencent-vpc","Endpoint":"http://user:password@vpc.example.com"}}"#,
            "Backend.Endpoint: endpoint \"http://<redacted>@vpc.example.com\" carries a user or password: requests are signed with the API keys, leave them out",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"tencent-vpc","MetadataURL":"169.254.0.23"}}"#,
            "Backend.MetadataURL: \"169.254.0.23\" is not a valid URL: relative URL without a base",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"tencent-vpc","ResyncInterval":9223372036854775807}}"#,
            "Backend.ResyncInterval: 9223372036854775807 is above the maximum of 3600 seconds",
        ),
        (
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"udp"}}"#,
            "udp carries IPv4 only, as upstream's (set EnableIPv6 to false)",
        ),
    ] {
        let f = write(d.path(), "net.json", text);
        let out = Command::new(FLANNELCTL)
            .args(["config", "check"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("{msg}\n"),
            "{text}: the whole message, said once"
        );
        assert!(out.stdout.is_empty());
    }
    let out = Command::new(FLANNELCTL)
        .args(["config", "check", "/nonexistent/net.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/net.json"));
}

#[test]
fn flanneld_unknown_flag_and_version() {
    let out = Command::new(FLANNELD)
        .arg("-no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    let out = Command::new(FLANNELD).arg("-version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        env!("CARGO_PKG_VERSION")
    );
    let out = Command::new(FLANNELD)
        .arg("--subnet-lease-renew-margin=0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("between 1 and 1439"));
}

/// How long a flanneld given bad input may take to refuse it (it refuses at once; a hang
/// is a failure, not a stuck CI job).
const EXIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Run `cmd` to its end; kill it and fail if it is still running after `limit`.
fn output_within(cmd: &mut Command, limit: std::time::Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let end = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

#[test]
fn flanneld_bad_inputs_leave_no_subnet_file() {
    let d = tempfile::tempdir().unwrap();
    let env_file = d.path().join("subnet.env");
    let f = d.path().join("net.json");
    for (conf, msg) in [
        (
            r#"{"Network":"10.5.0.0/16","SubnetLen":40}"#,
            format!("network config {}: SubnetLen must be less than /31", f.display()),
        ),
        (
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard","PSK":"hunter2-not-a-key"}}"#,
            "Backend.PSK: is not a WireGuard key (base64 of 32 bytes, as `wg genpsk` prints)".to_string(),
        ),
        (
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}"#,
            "backend type ipip: an upstream flannel backend that flannel-rs does not support; supported: tencent-vpc (alias tx-vpc), host-gw, vxlan, wireguard, udp, extension, alloc".to_string(),
        ),
        (
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":"one"}}"#,
            "Backend.VNI: expected an integer, found \"one\"".to_string(),
        ),
        (
            r#"{"Network":"#,
            format!(
                "network config {}: net config: malformed JSON at line 1 column 11: EOF while parsing a value",
                f.display()
            ),
        ),
    ] {
        std::fs::write(&f, conf).unwrap();
        let mut cmd = Command::new(FLANNELD);
        cmd
            .args([
                "--local-subnet-mgr",
                "--iface=lo",
                "--iptables-forward-rules=false",
            ])
            .arg(format!("--net-config-path={}", f.display()))
            .arg(format!("--subnet-file={}", env_file.display()));
        let out = output_within(&mut cmd, EXIT_LIMIT);
        assert_eq!(out.status.code(), Some(1), "{conf}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.lines().last(),
            Some(format!("flanneld: {msg}").as_str()),
            "{conf}: the whole message, said once"
        );
        assert!(!env_file.exists(), "{conf} left a subnet file");
    }
    // An error with a cause: the cause follows once, after the error naming the flag.
    let mut cmd = Command::new(FLANNELD);
    cmd.args([
        "--local-subnet-mgr",
        "--iface-regex=eth(",
        "--iptables-forward-rules=false",
    ])
    .arg(format!("--subnet-file={}", env_file.display()));
    let out = output_within(&mut cmd, EXIT_LIMIT);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr.find("flanneld: invalid --iface-regex \"eth(\": regex parse error:");
    assert!(said.is_some(), "{stderr}");
    assert_eq!(
        stderr.matches("regex parse error").count(),
        2,
        "once in the log, once on stderr: {stderr}"
    );
    assert_eq!(stderr.matches("unclosed group").count(), 2, "{stderr}");
    assert!(!env_file.exists());

    let out = Command::new(FLANNELD)
        .args([
            "--kube-subnet-mgr",
            "--net-config-path=/nonexistent/net-conf.json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("flanneld: Kubernetes subnet manager: reading network config /nonexistent/net-conf.json: No such file or directory"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "plain logs to a pipe carry no colour codes: {stderr:?}"
    );
}

#[test]
fn flanneld_real_local_run_serves_readyz_and_stops_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let conf = write(
        d.path(),
        "net.json",
        r#"{"Network":"10.42.0.0/16","Backend":{"Type":"alloc"}}"#,
    );
    let env_file = d.path().join("run/subnet.env");
    let port = free_port();
    let child = Command::new(FLANNELD)
        .args([
            "-local-subnet-mgr",
            "-iface=lo",
            "-iptables-forward-rules=false",
            "-healthz-ip=127.0.0.1",
        ])
        .arg(format!("-healthz-port={port}"))
        .arg(format!("-net-config-path={}", conf.display()))
        .arg(format!("-subnet-file={}", env_file.display()))
        .env("FLANNELD_LOG_FORMAT", "json")
        .env("FLANNELD_ETCD_PASSWORD", "never-print-me")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::new(localhost(), port);
    wait_until(
        "/readyz 200",
        Duration::from_secs(20),
        || matches!(http_get(addr, "/readyz"), Ok((200, ref b)) if b == "flanneld is ready"),
    );
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.starts_with("FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42."),
        "{env}"
    );
    assert!(env.contains("FLANNEL_MTU=65536\n"), "lo's MTU: {env}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('{')),
        "json logs: {logs}"
    );
    assert!(logs.contains("lease acquired"));
    assert!(!logs.contains("never-print-me"), "password leaked: {logs}");
}

#[test]
fn verbose_logs_come_from_our_crates_only() {
    use std::io::BufRead;
    // etcd down: the config retry loop runs through tonic, h2 and hyper, which would log
    // every frame at debug if -v=2 reached them.
    let port = free_port();
    let mut child = Command::new(FLANNELD)
        .arg(format!("--etcd-endpoints=http://127.0.0.1:{port}"))
        .args(["-v=2", "--iface=lo", "--iptables-forward-rules=false"])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut lines = Vec::new();
    let mut retries = 0;
    while retries < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("two config retries within 20 s");
        retries += usize::from(line.contains("failed to retrieve network config"));
        lines.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains(" DEBUG ")),
        "-v=2 shows our debug lines: {lines:#?}"
    );
    for l in &lines {
        // "<time>  <LEVEL> <target>: <message>"
        let target = l.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            [
                "flanneld",
                "flannel_core",
                "tencent_cloud",
                "jittered_backoff"
            ]
            .iter()
            .any(|ours| target.starts_with(ours)),
            "a dependency's line at -v=2: {l}"
        );
    }
}

#[test]
fn flanneld_controller_needs_a_tencent_vpc_config() {
    let d = tempfile::tempdir().unwrap();
    let conf = write(
        d.path(),
        "net.json",
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#,
    );
    let out = Command::new(FLANNELD)
        .args(["--controller", "--local-subnet-mgr"])
        .arg(format!("--net-config-path={}", conf.display()))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.lines().last(),
        Some("flanneld: --controller routes tencent-vpc leases, but Backend.Type is alloc"),
        "{stderr}"
    );
    // FLANNELD_CONTROLLER works as every other flag's variable.
    let out = Command::new(FLANNELD)
        .args(["--local-subnet-mgr"])
        .arg(format!("--net-config-path={}", conf.display()))
        .env("FLANNELD_CONTROLLER", "true")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--controller routes tencent-vpc leases"));
}
