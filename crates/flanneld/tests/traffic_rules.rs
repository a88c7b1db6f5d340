//! The masquerade and forward rules against the real iptables and nft, in a network namespace
//! of their own (needs root; CI runs as root): what `iptables -S` prints back is upstream's
//! text, applying twice changes nothing, and the nftables script is accepted.

use flannel_core::traffic::{forward_rules, masq_rules, nft_script, restore_payload, Rule};
use std::io::Write;
use std::process::{Command, Stdio};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("traffic-{tag}-{}", std::process::id());
        run(&["ip", "netns", "add", &name], None);
        Netns(name)
    }

    fn exec(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.0];
        all.extend_from_slice(args);
        run(&all, stdin)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Apply as flanneld will: our chains through iptables-restore --noflush, the jumps from the
/// built-in chains added only when missing.
fn apply(ns: &Netns, rules: &[Rule]) {
    ns.exec(
        &["iptables-restore", "--noflush"],
        Some(&restore_payload(rules)),
    );
    for r in rules.iter().filter(|r| !r.in_own_chain()) {
        let mut check = vec!["iptables", "-t", r.table, "-C", r.chain];
        let args = r.argv();
        check.extend(args.iter().map(String::as_str));
        let present = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .args(&check)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if !present {
            let mut add = vec!["iptables", "-t", r.table, "-A", r.chain];
            add.extend(args.iter().map(String::as_str));
            ns.exec(&add, None);
        }
    }
}

fn appended(ns: &Netns, table: &str) -> Vec<String> {
    ns.exec(&["iptables", "-t", table, "-S"], None)
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored"]
fn iptables_prints_back_upstreams_rules_and_reapplying_changes_nothing() {
    let ns = Netns::new("ipt");
    let network = "10.244.0.0/16".parse().unwrap();
    let mut rules = masq_rules(network, "10.244.7.1/24".parse().unwrap(), true);
    rules.extend(forward_rules(network));
    apply(&ns, &rules);
    apply(&ns, &rules);
    let want = |table: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| r.table == table)
            .map(Rule::spec)
            .collect()
    };
    assert_eq!(appended(&ns, "nat"), want("nat"));
    assert_eq!(appended(&ns, "filter"), want("filter"));
}

#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored"]
fn the_nftables_script_is_accepted_and_replaces_itself() {
    let ns = Netns::new("nft");
    let script = nft_script(
        "10.244.0.0/16".parse().unwrap(),
        "10.244.7.0/24".parse().unwrap(),
        true,
        true,
    );
    ns.exec(&["nft", "-f", "-"], Some(&script));
    ns.exec(&["nft", "-f", "-"], Some(&script));
    let listed = ns.exec(&["nft", "list", "table", "ip", "flannel-ipv4"], None);
    assert_eq!(
        listed.matches("masquerade fully-random").count(),
        2,
        "applied twice, present once: {listed}"
    );
    assert!(
        listed.contains("ip saddr != 10.244.7.0/24 ip daddr 10.244.0.0/16 return"),
        "{listed}"
    );
}

/// flanneld's own packet filters in a namespace: a rule somebody adds to our chain (or table)
/// is seen as not in place, and applying again removes it; for iptables and nftables alike.
#[test]
#[ignore = "needs root (network namespaces): run with --include-ignored"]
fn an_extra_rule_in_our_chain_is_seen_and_removed_with_either_filter() {
    use flanneld::kernel::packet_filter::{Iptables, Nftables, PacketFilter, RuleSet};
    let ns = flanneld_testing::netns::Netns::new(&format!("pf-{}", std::process::id()));
    let set = RuleSet {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet: "10.244.7.0/24".parse().unwrap(),
        masquerade: true,
        forward: true,
        random_fully: false,
    };
    let filters: [(&dyn PacketFilter, &[&str]); 2] = [
        (
            &Iptables,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "FLANNEL-POSTRTG",
                "-s",
                "10.9.0.0/16",
                "-j",
                "RETURN",
            ],
        ),
        (
            &Nftables,
            &[
                "nft",
                "add",
                "rule",
                "ip",
                "flannel-ipv4",
                "postrtg",
                "ip",
                "saddr",
                "10.9.0.0/16",
                "return",
            ],
        ),
    ];
    for (filter, intruder) in filters {
        ns.inside(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                filter.apply(&set).await.unwrap();
                assert!(filter.in_place(&set).await.unwrap(), "{intruder:?}");
                let out = std::process::Command::new(intruder[0])
                    .args(&intruder[1..])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(
                    !filter.in_place(&set).await.unwrap(),
                    "the extra rule is seen"
                );
                filter.apply(&set).await.unwrap();
                assert!(filter.in_place(&set).await.unwrap(), "and removed");
            })
        });
    }
    let listed = ns.ok(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    assert!(!listed.contains("10.9.0.0/16"), "{listed}");
    let listed = ns.ok(&["nft", "list", "table", "ip", "flannel-ipv4"]);
    assert!(!listed.contains("10.9.0.0/16"), "{listed}");
}
