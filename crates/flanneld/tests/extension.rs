//! The `extension` backend for real (root; CI runs as root): three nodes in namespaces whose
//! only data plane is the user's hooks (small scripts that route each peer's subnet via its
//! address, as host-gw would), pods through our CNI plugin reaching each other, and a lease
//! written the way upstream flanneld writes it (through etcdctl) handed to the hooks.

#[path = "common/cluster.rs"]
mod cluster;

use cluster::Cluster;
use flanneld_testing::netns::wait_for;
use std::path::Path;
use std::time::Duration;

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\nme=$(ip -o -4 addr show dev eth0 | awk '{{print $4}}' | cut -d/ -f1)\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[test]
#[ignore = "needs root (network namespaces) and etcd: run with --include-ignored"]
fn hooks_route_the_pods_and_get_an_upstream_lease() {
    let hooks = tempfile::tempdir().unwrap();
    let d = hooks.path();
    let log = |me: &str| d.join(format!("log-{me}"));
    let l = d.display();
    let config = serde_json::json!({
        "Network": "10.244.0.0/16",
        "Backend": {
            "Type": "extension",
            "PreStartupCommand": script(d, "pre.sh", "echo \"vtep-of-$me\""),
            "PostStartupCommand": script(d, "post.sh", &format!("echo \"post $NETWORK $SUBNET $PUBLIC_IP\" >> {l}/log-$me")),
            "SubnetAddCommand": format!("{} $SUBNET ${{PUBLIC_IP}}", script(d, "add.sh", &format!("ip route replace $1 via $2 && echo \"add $1 $2 $(cat)\" >> {l}/log-$me"))),
            "SubnetRemoveCommand": format!("{} $SUBNET $PUBLIC_IP", script(d, "remove.sh", &format!("ip route del $1 via $2; echo \"remove $1 $(cat)\" >> {l}/log-$me"))),
        }
    })
    .to_string();
    let c = Cluster::start("ext", &config, 3, &["--ip-masq"]);
    let pods = vec![
        c.add_pod(1, 1, "0.3.1"),
        c.add_pod(2, 1, "1.0.0"),
        c.add_pod(3, 1, "0.3.1"),
    ];
    c.all_pods_reach_each_other(&pods);

    // The lease's BackendData is PreStartupCommand's output, a JSON string as upstream's.
    let key = format!(
        "/coreos.com/network/subnets/{}",
        c.node(1).subnet().replace('/', "-")
    );
    let value = c.etcd.etcdctl(&["get", "--print-value-only", &key]);
    let lease: serde_json::Value = serde_json::from_str(value.trim()).unwrap();
    assert_eq!(lease["BackendType"], "extension");
    assert_eq!(lease["BackendData"], "vtep-of-172.16.0.1");
    let n1 = log("172.16.0.1");
    let text = std::fs::read_to_string(&n1).unwrap();
    assert!(
        text.starts_with(&format!(
            "post 10.244.0.0/16 {} 172.16.0.1\n",
            c.node(1).subnet()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "add {} 172.16.0.2 vtep-of-172.16.0.2\n",
            c.node(2).subnet()
        )),
        "{text}"
    );

    // An upstream node's lease (etcdctl, upstream's JSON): its hooks run with its data.
    let upstream = "/coreos.com/network/subnets/10.244.200.0-24";
    c.etcd.etcdctl(&[
        "put",
        upstream,
        r#"{"PublicIP":"172.16.0.99","PublicIPv6":null,"BackendType":"extension","BackendData":"from-upstream"}"#,
    ]);
    wait_for(
        "node 1's add hook for the upstream lease",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&n1).unwrap_or_default();
            let route = c.node(1).ns.ok(&["ip", "route", "show", "10.244.200.0/24"]);
            (text.contains("add 10.244.200.0/24 172.16.0.99 from-upstream\n")
                && route.contains("via 172.16.0.99"))
            .then_some(())
            .ok_or(text)
        },
    );
    c.etcd.etcdctl(&["del", upstream]);
    wait_for("node 1's remove hook", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&n1).unwrap_or_default();
        let route = c.node(1).ns.ok(&["ip", "route", "show", "10.244.200.0/24"]);
        (text.contains("remove 10.244.200.0/24 from-upstream\n") && route.is_empty())
            .then_some(())
            .ok_or(text)
    });
}
