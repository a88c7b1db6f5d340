use super::*;
use crate::backend::host_gw::tests::lease;
use crate::backend::testing::Peers;
use std::net::Ipv4Addr;
use std::path::Path;

fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn commands_split_on_whitespace_and_expand_each_word() {
    let v = vars(&[("SUBNET", "10.5.1.0/24"), ("PUBLIC_IP", "172.16.0.2")]);
    assert_eq!(
        expand("  ip route replace $SUBNET via ${PUBLIC_IP}  ", &v),
        ["ip", "route", "replace", "10.5.1.0/24", "via", "172.16.0.2"]
    );
    // A value never splits or becomes syntax: no shell.
    let v = vars(&[("X", "a b; rm -rf /")]);
    assert_eq!(expand("echo $X", &v), ["echo", "a b; rm -rf /"]);
    // Unset is empty; names end at a non-name character; a lone `$` stays.
    let v = vars(&[("A", "1")]);
    assert_eq!(
        expand("x$A.y $B- $ ${A}z ${", &v),
        ["x1.y", "-", "$", "1z", "${"]
    );
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn config() -> flannel_core::ValidatedNetConfig {
    flannel_core::config::parse_and_check(
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"extension"}}"#,
    )
    .unwrap()
}

fn ext_lease(subnet: &str, ip: &str, data: &str) -> Lease {
    let mut l = lease(subnet, ip, "extension");
    l.attrs.backend_data = Some(serde_json::Value::String(data.into()));
    l
}

#[tokio::test]
async fn hooks_get_upstreams_variables_and_stdin_and_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let fail = dir.path().join("fail");
    let l = log.display();
    let ext = ExternalInterface::ipv4("eth0", 2, 1450, Ipv4Addr::new(172, 16, 0, 1));
    let cfg = ExtensionConfig {
        pre_startup: format!(
            "{} pre",
            script(
                dir.path(),
                "pre.sh",
                "echo \"  data-of-$1  \"; echo to-stderr >&2"
            )
        ),
        post_startup: script(
            dir.path(),
            "post.sh",
            &format!(
                "echo \"post $NETWORK $SUBNET [$IPV6SUBNET] $PUBLIC_IP [$PUBLIC_IPV6]\" >> {l}"
            ),
        ),
        subnet_add: format!(
            "{} $SUBNET",
            script(
                dir.path(),
                "add.sh",
                &format!(
                    "[ -e {} ] && exit 3; echo \"add $1 $PUBLIC_IP $(cat)\" >> {l}",
                    fail.display()
                )
            )
        ),
        subnet_remove: format!(
            "{} ${{SUBNET}}",
            script(
                dir.path(),
                "remove.sh",
                &format!("echo \"remove $1 $(cat)\" >> {l}")
            )
        ),
    };
    let b = ExtensionBackend::new(ext, cfg, "10.5.0.0/16".into());
    assert_eq!(b.mtu(), 1450);

    // PreStartupCommand's trimmed combined output is the BackendData string.
    let attrs = b.lease_attrs().await.unwrap();
    assert_eq!(attrs.backend_type, "extension");
    assert_eq!(
        attrs.backend_data,
        Some(serde_json::Value::String("data-of-pre  \nto-stderr".into()))
    );

    let own = ext_lease("10.5.1.0/24", "172.16.0.1", "mine");
    let p2 = ext_lease("10.5.2.0/24", "172.16.0.2", "two");
    let other = lease("10.5.4.0/24", "172.16.0.4", "vxlan");
    let mut peers = Peers::new(&config(), &own);
    peers.set(&[own.clone(), p2.clone(), other.clone()]);
    let status = peers.reconcile(&b, &own, Trigger::Start).await;
    assert!(status.ready && !status.pending);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        read(),
        "post 10.5.0.0/16 10.5.1.0/24 [] 172.16.0.1 []\nadd 10.5.2.0/24 172.16.0.2 two\n"
    );

    // An add that fails is pending and retried at the resync; a removed peer gets its
    // remove; only extension peers are hooked.
    std::fs::write(&fail, "").unwrap();
    let p3 = ext_lease("10.5.3.0/24", "172.16.0.3", "three");
    let status = b
        .reconcile(
            &own,
            &peers.0.view(),
            Trigger::Leases {
                added: &[p3.clone(), lease("10.5.5.0/24", "172.16.0.5", "host-gw")],
                removed: std::slice::from_ref(&p2),
            },
        )
        .await
        .unwrap();
    assert!(status.ready && status.pending);
    let problem = status.problem.unwrap();
    assert!(
        problem.starts_with("extension SubnetAddCommand \"")
            && problem.contains(" for 10.5.3.0-24: exit status: 3"),
        "{problem}"
    );
    std::fs::remove_file(&fail).unwrap();
    let status = peers
        .reconcile(&b, &own, Trigger::Resync { fresh: true })
        .await;
    assert!(!status.pending, "{status:?}");
    assert_eq!(
        read(),
        "post 10.5.0.0/16 10.5.1.0/24 [] 172.16.0.1 []\nadd 10.5.2.0/24 172.16.0.2 two\nremove 10.5.2.0/24 two\nadd 10.5.3.0/24 172.16.0.3 three\n"
    );
    // Nothing owed: a resync runs nothing.
    peers
        .reconcile(&b, &own, Trigger::Resync { fresh: true })
        .await;
    assert_eq!(read().lines().count(), 4);
}

#[tokio::test]
async fn a_failing_startup_hook_is_an_error_naming_it() {
    let ext = ExternalInterface::ipv4("eth0", 2, 1500, Ipv4Addr::new(172, 16, 0, 1));
    let cfg = ExtensionConfig {
        pre_startup: "/nonexistent/hook --flag".into(),
        ..ExtensionConfig::default()
    };
    let b = ExtensionBackend::new(ext, cfg, "10.5.0.0/16".into());
    let e = b.lease_attrs().await.unwrap_err().to_string();
    assert!(
        e.starts_with("extension PreStartupCommand \"/nonexistent/hook --flag\": /nonexistent/hook: No such file"),
        "{e}"
    );
}
