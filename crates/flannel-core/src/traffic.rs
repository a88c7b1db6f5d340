//! The masquerade and forward rules, as values (pure): upstream flanneld's exact rules
//! (`pkg/trafficmngr`), rendered as `iptables -S` lines (what a golden test compares), as an
//! `iptables-restore --noflush` payload (how they are applied, our chains only), and as an
//! nftables script for `EnableNFTables`.

use ipnet::IpNet;
use std::fmt::Write;

/// The nat chain of the masquerade rules.
pub const POSTRTG: &str = "FLANNEL-POSTRTG";
/// The filter chain of the forward rules.
pub const FWD: &str = "FLANNEL-FWD";
const MASQ_COMMENT: &str = "flanneld masq";
const FWD_COMMENT: &str = "flanneld forward";
/// Kubernetes' masquerade-skip mark (kube-proxy marks what it has already handled).
const KUBE_MARK: &str = "0x4000/0x4000";

/// One rule: its table, its chain and its match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub args: String,
}

impl Rule {
    fn new(table: &'static str, chain: &'static str, args: String) -> Rule {
        Rule { table, chain, args }
    }

    /// The line `iptables -t <table> -S` prints for it.
    pub fn spec(&self) -> String {
        format!("-A {} {}", self.chain, self.args)
    }

    /// The arguments as an argv, split as a shell would (the comment is quoted).
    pub fn argv(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for c in self.args.chars() {
            match c {
                '"' => quoted = !quoted,
                ' ' if !quoted => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Our own chain, or a jump from a built-in one into ours.
    pub fn in_own_chain(&self) -> bool {
        self.chain == POSTRTG || self.chain == FWD
    }
}

fn multicast(network: &IpNet) -> &'static str {
    match network {
        IpNet::V4(_) => "224.0.0.0/4",
        IpNet::V6(_) => "ff00::/8",
    }
}

/// The masquerade rules for `network` (N) and this node's lease `subnet` (P), in upstream's
/// order: the jump from POSTROUTING, then traffic kube-proxy marked, pod-to-pod inside the
/// network and traffic to this node's pods returned untouched; pod traffic leaving the network
/// (but not multicast) and outside traffic into the network masqueraded.
pub fn masq_rules(network: IpNet, subnet: IpNet, random_fully: bool) -> Vec<Rule> {
    let n = network.trunc();
    let p = subnet.trunc();
    let c = format!("-m comment --comment \"{MASQ_COMMENT}\"");
    let masq = if random_fully {
        "MASQUERADE --random-fully"
    } else {
        "MASQUERADE"
    };
    vec![
        Rule::new("nat", "POSTROUTING", format!("{c} -j {POSTRTG}")),
        Rule::new(
            "nat",
            POSTRTG,
            format!("-m mark --mark {KUBE_MARK} {c} -j RETURN"),
        ),
        Rule::new("nat", POSTRTG, format!("-s {p} -d {n} {c} -j RETURN")),
        Rule::new("nat", POSTRTG, format!("-s {n} -d {p} {c} -j RETURN")),
        Rule::new("nat", POSTRTG, format!("! -s {n} -d {p} {c} -j RETURN")),
        Rule::new(
            "nat",
            POSTRTG,
            format!("-s {n} ! -d {} {c} -j {masq}", multicast(&n)),
        ),
        Rule::new("nat", POSTRTG, format!("! -s {n} -d {n} {c} -j {masq}")),
    ]
}

/// The forward rules: accept everything from and to the network.
pub fn forward_rules(network: IpNet) -> Vec<Rule> {
    let n = network.trunc();
    let c = format!("-m comment --comment \"{FWD_COMMENT}\"");
    vec![
        Rule::new("filter", "FORWARD", format!("{c} -j {FWD}")),
        Rule::new("filter", FWD, format!("-s {n} {c} -j ACCEPT")),
        Rule::new("filter", FWD, format!("-d {n} {c} -j ACCEPT")),
    ]
}

/// The `iptables-restore --noflush` payload that makes our chains hold exactly `rules`:
/// declaring a chain flushes it, built-in chains are left alone (their jumps into ours are
/// checked and added one by one, never duplicated).
pub fn restore_payload(rules: &[Rule]) -> String {
    let mut out = String::new();
    let mut tables: Vec<&str> = rules.iter().map(|r| r.table).collect();
    tables.dedup();
    for table in tables {
        let _ = writeln!(out, "*{table}");
        let mut chains: Vec<&str> = rules
            .iter()
            .filter(|r| r.table == table && r.in_own_chain())
            .map(|r| r.chain)
            .collect();
        chains.dedup();
        for chain in &chains {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for r in rules
            .iter()
            .filter(|r| r.table == table && r.in_own_chain())
        {
            let _ = writeln!(out, "{}", r.spec());
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The nftables script for `EnableNFTables`: table `ip flannel-ipv4` (or `ip6
/// flannel-ipv6`), replaced whole (the table is declared, flushed, then filled), with
/// upstream's rules, including its `ip saddr != P ip daddr N return` (which differs from the
/// iptables rule `! -s N -d P`).
pub fn nft_script(network: IpNet, subnet: IpNet, random_fully: bool, forward: bool) -> String {
    let n = network.trunc();
    let p = subnet.trunc();
    let (family, table, ip) = match n {
        IpNet::V4(_) => ("ip", "flannel-ipv4", "ip"),
        IpNet::V6(_) => ("ip6", "flannel-ipv6", "ip6"),
    };
    let masq = if random_fully {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let mut out = String::new();
    let _ = writeln!(out, "table {family} {table}");
    let _ = writeln!(out, "flush table {family} {table}");
    let _ = writeln!(out, "table {family} {table} {{");
    let _ = writeln!(out, "  chain postrtg {{");
    let _ = writeln!(
        out,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    let _ = writeln!(out, "    meta mark 0x00004000 return");
    let _ = writeln!(out, "    {ip} saddr {p} {ip} daddr {n} return");
    let _ = writeln!(out, "    {ip} saddr {n} {ip} daddr {p} return");
    let _ = writeln!(out, "    {ip} saddr != {p} {ip} daddr {n} return");
    let _ = writeln!(
        out,
        "    {ip} saddr {n} {ip} daddr != {} {masq}",
        multicast(&n)
    );
    let _ = writeln!(out, "    {ip} saddr != {n} {ip} daddr {n} {masq}");
    let _ = writeln!(out, "  }}");
    if forward {
        let _ = writeln!(out, "  chain forward {{");
        let _ = writeln!(
            out,
            "    type filter hook forward priority filter; policy accept;"
        );
        let _ = writeln!(out, "    {ip} saddr {n} accept");
        let _ = writeln!(out, "    {ip} daddr {n} accept");
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn masquerade_rules_are_upstreams_golden_text() {
        let rules = masq_rules(net("10.244.0.0/16"), net("10.244.7.0/24"), true);
        let lines: Vec<String> = rules.iter().map(Rule::spec).collect();
        assert_eq!(
            lines,
            [
                r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#,
                r#"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.7.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment "flanneld masq" -j RETURN"#,
                r#"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
                r#"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully"#,
            ]
        );
        let plain = masq_rules(net("10.244.0.0/16"), net("10.244.7.1/24"), false);
        assert!(
            plain[5].spec().ends_with("-j MASQUERADE"),
            "no --random-fully when disabled"
        );
        assert!(
            plain[2].spec().contains("-s 10.244.7.0/24"),
            "FLANNEL_SUBNET's host bits dropped"
        );
        let v6 = masq_rules(net("fd00::/48"), net("fd00:0:0:7::/64"), true);
        assert!(v6[5].spec().contains("-s fd00::/48 ! -d ff00::/8"));
    }

    #[test]
    fn argv_keeps_the_quoted_comment_whole() {
        let r = &masq_rules(net("10.244.0.0/16"), net("10.244.7.0/24"), true)[0];
        assert_eq!(
            r.argv(),
            [
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG"
            ]
        );
    }

    #[test]
    fn forward_rules_and_the_restore_payload_touch_only_our_chains() {
        let mut rules = masq_rules(net("10.244.0.0/16"), net("10.244.7.0/24"), true);
        rules.extend(forward_rules(net("10.244.0.0/16")));
        assert_eq!(
            rules[8].spec(),
            r#"-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT"#
        );
        let payload = restore_payload(&rules);
        assert_eq!(
            payload,
            concat!(
                "*nat\n",
                ":FLANNEL-POSTRTG - [0:0]\n",
                "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n",
                "-A FLANNEL-POSTRTG -s 10.244.7.0/24 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN\n",
                "-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment \"flanneld masq\" -j RETURN\n",
                "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.7.0/24 -m comment --comment \"flanneld masq\" -j RETURN\n",
                "-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n",
                "-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n",
                "COMMIT\n",
                "*filter\n",
                ":FLANNEL-FWD - [0:0]\n",
                "-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n",
                "-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n",
                "COMMIT\n",
            )
        );
    }

    #[test]
    fn nftables_script_is_upstreams_rule_set() {
        let s = nft_script(net("10.244.0.0/16"), net("10.244.7.0/24"), true, true);
        assert_eq!(
            s,
            concat!(
                "table ip flannel-ipv4\n",
                "flush table ip flannel-ipv4\n",
                "table ip flannel-ipv4 {\n",
                "  chain postrtg {\n",
                "    type nat hook postrouting priority srcnat; policy accept;\n",
                "    meta mark 0x00004000 return\n",
                "    ip saddr 10.244.7.0/24 ip daddr 10.244.0.0/16 return\n",
                "    ip saddr 10.244.0.0/16 ip daddr 10.244.7.0/24 return\n",
                "    ip saddr != 10.244.7.0/24 ip daddr 10.244.0.0/16 return\n",
                "    ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n",
                "    ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n",
                "  }\n",
                "  chain forward {\n",
                "    type filter hook forward priority filter; policy accept;\n",
                "    ip saddr 10.244.0.0/16 accept\n",
                "    ip daddr 10.244.0.0/16 accept\n",
                "  }\n",
                "}\n",
            )
        );
        assert!(
            nft_script(net("fd00::/48"), net("fd00:0:0:7::/64"), false, false)
                .starts_with("table ip6 flannel-ipv6\n")
        );
    }
}
