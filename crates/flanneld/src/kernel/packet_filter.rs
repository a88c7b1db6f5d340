//! Applying the masquerade and forward rules (`flannel_core::traffic`) to the kernel: with
//! iptables (`iptables-restore --noflush --wait` for our chains, `-C`/`-A` for the jumps from
//! the built-in chains) or, with EnableNFTables, by replacing our nftables table whole.
//! Only our chains and tables are ever written or read back.

use async_trait::async_trait;
use flannel_core::traffic::{self, Rule};
use ipnet::IpNet;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The rules of one address family, as values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub network: IpNet,
    pub subnet: IpNet,
    pub masquerade: bool,
    pub forward: bool,
    pub random_fully: bool,
}

impl RuleSet {
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        if self.masquerade {
            rules.extend(traffic::masq_rules(
                self.network,
                self.subnet,
                self.random_fully,
            ));
        }
        if self.forward {
            rules.extend(traffic::forward_rules(self.network));
        }
        rules
    }

    fn v6(&self) -> bool {
        self.network.addr().is_ipv6()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed: {stderr}")]
    Failed { program: String, stderr: String },
}

/// Where the rules go.
#[async_trait]
pub trait PacketFilter: Send + Sync {
    /// Put the rule set in place (idempotent; our chains end up holding exactly it).
    async fn apply(&self, set: &RuleSet) -> Result<(), FilterError>;
    /// Whether every rule of the set is in place.
    async fn in_place(&self, set: &RuleSet) -> Result<bool, FilterError>;
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, FilterError> {
    let spawn = |source| FilterError::Spawn {
        program: program.to_string(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(spawn)?;
    }
    let out = child.wait_with_output().await.map_err(spawn)?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

async fn run_ok(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FilterError> {
    let out = run(program, args, stdin).await?;
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(FilterError::Failed {
            program: format!("{program} {}", args.join(" ")),
            stderr: out.stderr,
        })
    }
}

/// iptables (the iptables/ip6tables on PATH, nf_tables or legacy alike).
pub struct Iptables;

impl Iptables {
    fn programs(set: &RuleSet) -> (&'static str, &'static str) {
        if set.v6() {
            ("ip6tables", "ip6tables-restore")
        } else {
            ("iptables", "iptables-restore")
        }
    }

    /// Whether this iptables can `--random-fully` (1.6.2 and later, as upstream checks).
    pub async fn supports_random_fully() -> bool {
        match run("iptables", &["--version"], None).await {
            Ok(out) if out.ok => random_fully_in(&out.stdout),
            _ => false,
        }
    }
}

/// `iptables v1.8.9 (nf_tables)` → at least 1.6.2?
fn random_fully_in(version: &str) -> bool {
    let Some(v) = version.split_whitespace().find_map(|w| w.strip_prefix('v')) else {
        return false;
    };
    let parts: Vec<u32> = v.split('.').filter_map(|p| p.parse().ok()).collect();
    parts.as_slice() >= [1, 6, 2].as_slice()
}

#[async_trait]
impl PacketFilter for Iptables {
    async fn apply(&self, set: &RuleSet) -> Result<(), FilterError> {
        let rules = set.rules();
        let (iptables, restore) = Self::programs(set);
        // Our chains, declared (flushed) and filled in one transaction; then the jumps.
        run_ok(
            restore,
            &["--noflush", "--wait"],
            Some(&traffic::restore_payload(&rules)),
        )
        .await?;
        for r in rules.iter().filter(|r| !r.in_own_chain()) {
            let argv = r.argv();
            let args: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mut check = vec!["--wait", "-t", r.table, "-C", r.chain];
            check.extend(&args);
            if !run(iptables, &check, None).await?.ok {
                let mut add = vec!["--wait", "-t", r.table, "-A", r.chain];
                add.extend(&args);
                run_ok(iptables, &add, None).await?;
            }
        }
        Ok(())
    }

    async fn in_place(&self, set: &RuleSet) -> Result<bool, FilterError> {
        let rules = set.rules();
        let (iptables, _) = Self::programs(set);
        let mut tables: Vec<&str> = rules.iter().map(|r| r.table).collect();
        tables.dedup();
        for table in tables {
            let listed = run_ok(iptables, &["--wait", "-t", table, "-S"], None).await?;
            let have: Vec<&str> = listed.lines().collect();
            let want: Vec<String> = rules
                .iter()
                .filter(|r| r.table == table)
                .map(Rule::spec)
                .collect();
            if want.iter().any(|w| !have.contains(&w.as_str())) {
                return Ok(false);
            }
            // Nothing else in our chains (a rule of the old network, a stray one).
            let ours = |l: &str| {
                l.starts_with(&format!("-A {} ", traffic::POSTRTG))
                    || l.starts_with(&format!("-A {} ", traffic::FWD))
            };
            let extra = have
                .iter()
                .filter(|l| ours(l) && !want.iter().any(|w| w == *l))
                .count();
            if extra > 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// nftables (EnableNFTables): our table replaced whole.
pub struct Nftables;

impl Nftables {
    fn table(set: &RuleSet) -> [&'static str; 2] {
        if set.v6() {
            ["ip6", "flannel-ipv6"]
        } else {
            ["ip", "flannel-ipv4"]
        }
    }
}

#[async_trait]
impl PacketFilter for Nftables {
    async fn apply(&self, set: &RuleSet) -> Result<(), FilterError> {
        let script = traffic::nft_script(set.network, set.subnet, set.random_fully, set.forward);
        run_ok("nft", &["-f", "-"], Some(&script)).await.map(drop)
    }

    async fn in_place(&self, set: &RuleSet) -> Result<bool, FilterError> {
        let [family, table] = Self::table(set);
        let out = run("nft", &["list", "table", family, table], None).await?;
        if !out.ok {
            return Ok(false);
        }
        let script = traffic::nft_script(set.network, set.subnet, set.random_fully, set.forward);
        Ok(nft_in_place(&script, &out.stdout))
    }
}

/// The rules of an nft script or listing, per chain: the lines inside a chain block that
/// are neither its `type … hook` line nor a brace.
fn nft_rules(text: &str) -> Vec<(String, String)> {
    let mut chain = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("chain ") {
            chain = name.trim_end_matches('{').trim().to_string();
        } else if line.is_empty()
            || line == "}"
            || line.starts_with("table ")
            || line.starts_with("flush ")
            || line.starts_with("type ")
        {
            continue;
        } else if !chain.is_empty() {
            out.push((chain.clone(), line.to_string()));
        }
    }
    out
}

/// Whether `listed` holds exactly the rules of `script`, chain by chain: nothing missing and
/// nothing extra (a rule of the old network, or one somebody added to our table).
fn nft_in_place(script: &str, listed: &str) -> bool {
    let mut want = nft_rules(script);
    let mut have = nft_rules(listed);
    want.sort();
    have.sort();
    want == have
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_rules_in_place_means_nothing_missing_and_nothing_extra() {
        let script = traffic::nft_script(
            "10.244.0.0/16".parse().unwrap(),
            "10.244.7.0/24".parse().unwrap(),
            true,
            true,
        );
        // What `nft list table ip flannel-ipv4` prints for it.
        let listed = "table ip flannel-ipv4 {\n\tchain postrtg {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tmeta mark 0x00004000 return\n\t\tip saddr 10.244.7.0/24 ip daddr 10.244.0.0/16 return\n\t\tip saddr 10.244.0.0/16 ip daddr 10.244.7.0/24 return\n\t\tip saddr != 10.244.7.0/24 ip daddr 10.244.0.0/16 return\n\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random\n\t}\n\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tip saddr 10.244.0.0/16 accept\n\t\tip daddr 10.244.0.0/16 accept\n\t}\n}\n";
        assert!(nft_in_place(&script, listed));
        let extra = listed.replace(
            "\t\tip daddr 10.244.0.0/16 accept\n",
            "\t\tip daddr 10.244.0.0/16 accept\n\t\tip saddr 10.9.0.0/16 accept\n",
        );
        assert!(!nft_in_place(&script, &extra), "an extra rule");
        let missing = listed.replace("\t\tmeta mark 0x00004000 return\n", "");
        assert!(!nft_in_place(&script, &missing), "a missing rule");
    }

    #[test]
    fn random_fully_needs_1_6_2() {
        assert!(random_fully_in("iptables v1.8.9 (nf_tables)\n"));
        assert!(random_fully_in("iptables v1.6.2"));
        assert!(!random_fully_in("iptables v1.6.1"));
        assert!(!random_fully_in("iptables v1.4.21"));
        assert!(!random_fully_in("garbage"));
    }
}
