//! The flannel CNI plugin's answers to bad input, run as the runtime runs it (no network
//! change happens before these errors): CNI error JSON on stdout, the spec's codes, exit 1.

use std::io::Write;
use std::process::{Command, Stdio};

fn cni(env: &[(&str, &str)], stdin: &str) -> (i32, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flannel"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (out.status.code().unwrap(), json)
}

#[test]
fn bad_input_gets_cni_error_json() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("subnet.env");
    let conf = format!(
        r#"{{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{{"hairpinMode":true,"isDefaultGateway":true}},"subnetFile":"{}","dataDir":"{}"}}"#,
        missing.display(),
        dir.path().join("cni").display()
    );
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];

    // No subnet.env yet: try again later (flanneld is starting).
    let (rc, e) = cni(&add, &conf);
    assert_eq!(rc, 1);
    assert_eq!(e["code"], 11);
    assert_eq!(e["cniVersion"], "0.3.1");
    assert_eq!(
        e["msg"].as_str().unwrap(),
        format!(
            "failed to load flannel subnet file {}: No such file or directory (os error 2); check that flanneld runs on this node",
            missing.display()
        )
    );
    assert!(!dir.path().join("cni").exists(), "nothing saved on failure");

    // A subnet.env without the subnet: invalid config naming the file and the field.
    std::fs::write(
        &missing,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let (_, e) = cni(&add, &conf);
    assert_eq!(e["code"], 7);
    assert_eq!(
        e["msg"].as_str().unwrap(),
        format!(
            "{}: neither FLANNEL_SUBNET nor FLANNEL_IPV6_SUBNET is set",
            missing.display()
        )
    );

    // Malformed config: decoding failure.
    let (rc, e) = cni(&add, "{\"cniVersion\":");
    assert_eq!((rc, e["code"].as_u64()), (1, Some(6)));
    assert_eq!(e["msg"], "failed to decode the network config");

    // Unknown command, no command, a version we do not speak, a path in the container ID.
    let (_, e) = cni(&[("CNI_COMMAND", "FROB")], &conf);
    assert_eq!(e["code"], 4);
    assert_eq!(
        e["msg"],
        "unknown CNI_COMMAND \"FROB\" (expected ADD, DEL, CHECK or VERSION)"
    );
    let (_, e) = cni(&[], &conf);
    assert_eq!(
        (e["code"].as_u64(), e["msg"].as_str()),
        (Some(4), Some("CNI_COMMAND is not set"))
    );
    let (_, e) = cni(
        &add,
        r#"{"cniVersion":"2.0.0","name":"x","type":"flannel"}"#,
    );
    assert_eq!(e["code"], 1);
    let (_, e) = cni(
        &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "../../etc")],
        &conf,
    );
    assert_eq!(e["code"], 4);

    // CHECK needs CNI 0.4.0 or later.
    let (_, e) = cni(
        &[("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c1")],
        &conf,
    );
    assert_eq!(e["code"], 1);
    assert_eq!(e["msg"], "config version 0.3.1 does not allow CHECK");

    // DEL of a container never added succeeds with no output... and VERSION answers.
    let out = Command::new(env!("CARGO_BIN_EXE_flannel"))
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", "never-added")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(conf.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty());
    let (rc, v) = cni(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(rc, 0);
    assert_eq!(
        v.to_string(),
        r#"{"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]}"#
    );
}
