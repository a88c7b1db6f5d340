//! The status view as text (pure): nodes, route tables with their routes, the pod-to-pod
//! reachability matrix and the convergence time.

use std::fmt::Write;

/// One node's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub subnet: String,
    pub ip: String,
    pub instance: String,
    pub lease: Option<String>,
    pub agent: &'static str,
    pub pod_ip: Option<String>,
}

/// One route table: the subnets it serves and its routes (destination, next hop, note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    pub id: String,
    pub subnets: Vec<String>,
    pub routes: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub title: String,
    pub nodes: Vec<NodeRow>,
    pub tables: Vec<TableRows>,
    pub matrix: Vec<Vec<bool>>,
    pub converged_secs: Option<f64>,
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut s = String::from(" ");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(s, " {c:<w$} ", w = *w);
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(
        out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    line(
        out,
        &widths.iter().map(|w| "─".repeat(*w)).collect::<Vec<_>>(),
    );
    for r in rows {
        line(out, r);
    }
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", s.title);
    let _ = writeln!(out, "Nodes");
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.subnet.clone(),
                n.ip.clone(),
                n.instance.clone(),
                n.lease.clone().unwrap_or_else(|| "-".into()),
                n.agent.to_string(),
                n.pod_ip.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "node",
            "subnet",
            "private IP",
            "instance",
            "pod subnet (lease)",
            "flanneld",
            "pod",
        ],
        &rows,
    );
    for t in &s.tables {
        let _ = writeln!(
            out,
            "\nRoute table {} (serves {})",
            t.id,
            if t.subnets.is_empty() {
                "no subnet".to_string()
            } else {
                t.subnets.join(", ")
            }
        );
        let rows: Vec<Vec<String>> = t
            .routes
            .iter()
            .map(|(d, h, note)| vec![d.clone(), h.clone(), note.clone()])
            .collect();
        if rows.is_empty() {
            let _ = writeln!(out, "  (no routes)");
        } else {
            table(&mut out, &["destination", "next hop", ""], &rows);
        }
    }
    let _ = writeln!(out, "\nPod-to-pod reachability (row pings column)");
    let names: Vec<String> = s.nodes.iter().map(|n| n.name.clone()).collect();
    let mut header = vec![String::new()];
    header.extend(names.iter().cloned());
    let rows: Vec<Vec<String>> = s
        .matrix
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (row, name))| {
            let mut r = vec![name.clone()];
            r.extend(row.iter().enumerate().map(|(j, ok)| {
                if i == j {
                    "·".to_string()
                } else if *ok {
                    "ok".to_string()
                } else {
                    "FAIL".to_string()
                }
            }));
            r
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&mut out, &header, &rows);
    let pairs = s.matrix.len() * s.matrix.len().saturating_sub(1);
    let ok = s
        .matrix
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.iter().enumerate().filter(move |(j, v)| *j != i && **v))
        .count();
    let _ = write!(out, "\n{ok}/{pairs} pod pairs reachable");
    if let Some(c) = s.converged_secs {
        let _ = write!(out, "; converged {c:.1} s after flanneld started");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text() {
        let s = Status {
            title: "lab fl: tencent-vpc (per-node)".into(),
            nodes: vec![
                NodeRow {
                    name: "node-1".into(),
                    subnet: "subnet-a".into(),
                    ip: "172.16.1.11".into(),
                    instance: "ins-node-1".into(),
                    lease: Some("10.244.7.0/24".into()),
                    agent: "ready",
                    pod_ip: Some("10.244.7.2".into()),
                },
                NodeRow {
                    name: "node-2".into(),
                    subnet: "subnet-b".into(),
                    ip: "172.16.2.12".into(),
                    instance: "ins-node-2".into(),
                    lease: None,
                    agent: "stopped",
                    pod_ip: None,
                },
            ],
            tables: vec![TableRows {
                id: "rtb-b".into(),
                subnets: vec!["subnet-b".into()],
                routes: vec![(
                    "10.244.7.0/24".into(),
                    "172.16.1.11 (NORMAL_CVM)".into(),
                    "flannel node-1".into(),
                )],
            }],
            matrix: vec![vec![false, false], vec![false, false]],
            converged_secs: None,
        };
        let text = render(&s);
        assert!(text.contains("  node-1  subnet-a  172.16.1.11"), "{text}");
        assert!(
            text.contains("Route table rtb-b (serves subnet-b)"),
            "{text}"
        );
        assert!(
            text.contains("  10.244.7.0/24  172.16.1.11 (NORMAL_CVM)  flannel node-1"),
            "{text}"
        );
        assert!(text.contains("  node-1  ·       FAIL"), "{text}");
        assert!(text.ends_with("0/2 pod pairs reachable\n"), "{text}");
    }
}
