//! The data plane: a network namespace plays the VPC router. Every route table becomes a
//! Linux routing table (id 1000 + its index) in that namespace. A VPC routes a packet by the
//! table of the subnet it comes from, whatever its source address (pod traffic is not
//! masqueraded), so every subnet association is an `ip rule iif <link> lookup <table>` on the
//! router's link into that subnet (the interface holding an address inside the subnet's
//! CIDR, its gateway). A pod route present only in the wrong table blackholes traffic exactly
//! as in a real VPC. Attach the subnets' links before starting the emulator. Enabled NORMAL_CVM routes are
//! installed (several next hops to one destination become a multipath route); disabled
//! routes and other gateway types are not. Changes are applied before the API call answers.

use crate::scenario::Scenario;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use tokio::process::Command;
use tokio::sync::Mutex;
use tracing::{debug, warn};

pub const TABLE_BASE: u32 = 1000;
/// `ip rule` priorities used by the emulator (one per subnet).
pub const RULE_PREF_BASE: u32 = 1000;

pub fn table_id(index: usize) -> u32 {
    TABLE_BASE + index as u32
}

/// Desired routes per Linux table: destination → next hops.
pub type Desired = BTreeMap<u32, BTreeMap<String, Vec<Ipv4Addr>>>;

/// What the namespace should hold for this state (pure).
pub fn desired(s: &Scenario) -> Desired {
    let mut d = Desired::new();
    for (i, t) in s.route_tables.iter().enumerate() {
        let table = d.entry(table_id(i)).or_default();
        for r in t
            .routes
            .iter()
            .filter(|r| r.enabled && r.gateway_type == "NORMAL_CVM")
        {
            if let Ok(gw) = r.gateway_id.parse() {
                table
                    .entry(r.destination_cidr_block.to_string())
                    .or_default()
                    .push(gw);
            }
        }
    }
    d
}

/// `ip -batch` lines that turn `have` into `want` (pure).
pub fn plan(have: &Desired, want: &Desired) -> Vec<String> {
    let mut cmds = Vec::new();
    let empty = BTreeMap::new();
    for (table, routes) in want {
        let old = have.get(table).unwrap_or(&empty);
        for (dest, gws) in routes {
            if old.get(dest) != Some(gws) {
                let via = match gws.as_slice() {
                    [one] => format!("via {one}"),
                    many => many
                        .iter()
                        .map(|g| format!("nexthop via {g}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                };
                cmds.push(format!("route replace {dest} {via} table {table}"));
            }
        }
        for dest in old.keys().filter(|d| !routes.contains_key(*d)) {
            cmds.push(format!("route del {dest} table {table}"));
        }
    }
    cmds
}

/// `have` with the new and changed routes of `want` (pure): the first step of a change, whose
/// plan holds no deletion.
pub fn with_additions(mut have: Desired, want: Desired) -> Desired {
    for (table, routes) in want {
        have.entry(table).or_default().extend(routes);
    }
    have
}

/// The router's links into the scenario's subnets, each with the Linux table of the subnet's
/// route table (pure): a link carrying an address inside a subnet's CIDR attaches that subnet.
pub fn attachments(links: &[(String, Ipv4Addr)], s: &Scenario) -> Vec<(String, u32)> {
    let index: HashMap<&str, usize> = s
        .route_tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.route_table_id.as_str(), i))
        .collect();
    let mut out = Vec::new();
    for sn in &s.subnets {
        let Some(t) = sn.route_table_id.as_deref().and_then(|id| index.get(id)) else {
            continue;
        };
        let mut found = false;
        for (link, _) in links.iter().filter(|(_, a)| sn.cidr_block.contains(a)) {
            if !out.iter().any(|(l, _)| l == link) {
                out.push((link.clone(), table_id(*t)));
            }
            found = true;
        }
        if !found {
            warn!(subnet = %sn.subnet_id, cidr = %sn.cidr_block, "no link of the router namespace is in this subnet; its traffic is not routed by the emulator");
        }
    }
    out
}

/// Every (link, IPv4 address) of `ip -j -4 addr show` output.
fn parse_links(json: &str) -> Result<Vec<(String, Ipv4Addr)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("parsing ip addr: {e}"))?;
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        let Some(name) = link["ifname"].as_str() else {
            continue;
        };
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let Some(ip) = a["local"].as_str().and_then(|s| s.parse().ok()) {
                out.push((name.to_string(), ip));
            }
        }
    }
    Ok(out)
}

pub struct Dataplane {
    netns: String,
    installed: Mutex<Option<Desired>>,
}

async fn ip(netns: &str, args: &[&str], stdin: Option<String>) -> Result<String, String> {
    let mut cmd = Command::new("ip");
    cmd.arg("-n").arg(netns).args(args);
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("running ip: {e}"))?;
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("piped");
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip -n {netns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Dataplane {
    pub fn new(netns: &str) -> Dataplane {
        Dataplane {
            netns: netns.to_string(),
            installed: Mutex::new(None),
        }
    }

    /// Start from a clean slate: our rules and tables removed, then rules for every subnet.
    pub async fn init(&self, s: &Scenario) -> Result<(), String> {
        let rules = ip(&self.netns, &["-j", "rule", "show"], None).await?;
        let rules: serde_json::Value =
            serde_json::from_str(&rules).map_err(|e| format!("parsing ip rules: {e}"))?;
        for pref in rules
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["priority"].as_u64())
        {
            if (u64::from(RULE_PREF_BASE)..u64::from(RULE_PREF_BASE) + 1000).contains(&pref) {
                ip(
                    &self.netns,
                    &["rule", "del", "pref", &pref.to_string()],
                    None,
                )
                .await?;
            }
        }
        for (i, _) in s.route_tables.iter().enumerate() {
            // "flush" of an empty table fails on some iproute2 versions; that is fine.
            let _ = ip(
                &self.netns,
                &["route", "flush", "table", &table_id(i).to_string()],
                None,
            )
            .await;
        }
        let links = parse_links(&ip(&self.netns, &["-j", "-4", "addr", "show"], None).await?)?;
        for (j, (link, table)) in attachments(&links, s).iter().enumerate() {
            ip(
                &self.netns,
                &[
                    "rule",
                    "add",
                    "iif",
                    link,
                    "lookup",
                    &table.to_string(),
                    "pref",
                    &(RULE_PREF_BASE + j as u32).to_string(),
                ],
                None,
            )
            .await?;
        }
        *self.installed.lock().await = Some(Desired::new());
        self.sync(s).await;
        Ok(())
    }

    /// Make the namespace match `s`.
    pub async fn sync(&self, s: &Scenario) {
        self.add(s).await;
        self.remove(s).await;
    }

    /// Install the routes of `s` that are new or changed, keeping the others for now.
    pub async fn add(&self, s: &Scenario) {
        let have = self.installed.lock().await.clone().unwrap_or_default();
        self.apply(with_additions(have, desired(s))).await;
    }

    /// Remove what `s` no longer has.
    pub async fn remove(&self, s: &Scenario) {
        self.apply(desired(s)).await;
    }

    /// Make the namespace match `want`. Failures are logged; the next change retries from
    /// scratch.
    async fn apply(&self, want: Desired) {
        let mut installed = self.installed.lock().await;
        let have = installed.clone().unwrap_or_default();
        let cmds = plan(&have, &want);
        if cmds.is_empty() {
            return;
        }
        debug!(netns = %self.netns, commands = ?cmds, "data plane update");
        match ip(
            &self.netns,
            &["-force", "-batch", "-"],
            Some(cmds.join("\n") + "\n"),
        )
        .await
        {
            Ok(_) => *installed = Some(want),
            Err(e) => {
                warn!(error = %e, "data plane update failed");
                // Unknown state: next time, re-issue everything (replace is idempotent).
                *installed = Some(Desired::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_attaches_through_the_link_holding_its_gateway() {
        let s = Scenario::from_json(include_str!("../scenarios/lab.json")).unwrap();
        let links = parse_links(
            r#"[{"ifname":"lo","addr_info":[{"local":"127.0.0.1","prefixlen":8}]},
                {"ifname":"ra","addr_info":[{"local":"172.16.1.1","prefixlen":24}]},
                {"ifname":"rb","addr_info":[{"local":"172.16.2.1","prefixlen":24}]}]"#,
        )
        .unwrap();
        // subnet-a uses the main table (rtb-main, the first), subnet-b its own (rtb-b).
        assert_eq!(
            attachments(&links, &s),
            vec![("ra".to_string(), 1000), ("rb".to_string(), 1001)]
        );
        assert!(attachments(&links[..1], &s).is_empty());
    }

    #[test]
    fn a_change_adds_first_and_deletes_last() {
        let gw = |s: &str| vec![s.parse::<Ipv4Addr>().unwrap()];
        let have: Desired = [(
            101,
            [
                ("10.244.1.0/24".to_string(), gw("172.16.1.7")),
                ("10.244.2.0/24".to_string(), gw("172.16.1.8")),
            ]
            .into(),
        )]
        .into();
        let want: Desired = [(
            101,
            [
                ("10.244.2.0/24".to_string(), gw("172.16.1.9")),
                ("10.244.3.0/24".to_string(), gw("172.16.1.10")),
            ]
            .into(),
        )]
        .into();
        let step = with_additions(have.clone(), want.clone());
        assert_eq!(
            plan(&have, &step),
            [
                "route replace 10.244.2.0/24 via 172.16.1.9 table 101",
                "route replace 10.244.3.0/24 via 172.16.1.10 table 101"
            ]
        );
        assert_eq!(plan(&step, &want), ["route del 10.244.1.0/24 table 101"]);
    }

    #[test]
    fn plan_adds_replaces_and_deletes() {
        let mut have = Desired::new();
        have.entry(1000)
            .or_default()
            .insert("10.244.1.0/24".into(), vec!["172.16.1.7".parse().unwrap()]);
        have.entry(1000)
            .or_default()
            .insert("10.244.9.0/24".into(), vec!["172.16.1.9".parse().unwrap()]);
        let mut want = Desired::new();
        want.entry(1000)
            .or_default()
            .insert("10.244.1.0/24".into(), vec!["172.16.1.8".parse().unwrap()]);
        want.entry(1001).or_default().insert(
            "10.244.2.0/24".into(),
            vec!["172.16.2.7".parse().unwrap(), "172.16.2.8".parse().unwrap()],
        );
        assert_eq!(
            plan(&have, &want),
            vec![
                "route replace 10.244.1.0/24 via 172.16.1.8 table 1000",
                "route del 10.244.9.0/24 table 1000",
                "route replace 10.244.2.0/24 nexthop via 172.16.2.7 nexthop via 172.16.2.8 table 1001",
            ]
        );
        assert!(plan(&want, &want).is_empty());
    }
}
