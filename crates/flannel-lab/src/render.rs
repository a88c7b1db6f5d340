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
    /// Row pings column: None where not tried (itself, or a stopped node).
    pub matrix: Vec<Vec<Option<bool>>>,
    pub converged_secs: Option<f64>,
    /// `--kube` labs: Kubernetes' view.
    pub kube: Option<KubeView>,
}

/// What kubectl shows of a `--kube` lab: (name, Ready, NetworkUnavailable, podCIDR) per
/// Node and (name, node, phase, ready, image, restarts) per flannel pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubeView {
    pub nodes: Vec<[String; 4]>,
    pub pods: Vec<[String; 6]>,
}

impl Status {
    /// Pairs of live pods that do not reach each other.
    pub fn failed_pairs(&self) -> usize {
        self.matrix
            .iter()
            .flatten()
            .filter(|ok| **ok == Some(false))
            .count()
    }
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
    if let Some(k) = &s.kube {
        let _ = writeln!(out, "\nKubernetes nodes");
        let rows: Vec<Vec<String>> = k.nodes.iter().map(|r| r.to_vec()).collect();
        table(
            &mut out,
            &["node", "Ready", "NetworkUnavailable", "podCIDR"],
            &rows,
        );
        let _ = writeln!(out, "\nFlannel pods (namespace kube-flannel)");
        let rows: Vec<Vec<String>> = k.pods.iter().map(|r| r.to_vec()).collect();
        table(
            &mut out,
            &["pod", "node", "phase", "ready", "image", "restarts"],
            &rows,
        );
    }
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
                match (i == j, ok) {
                    (true, _) => "·",
                    (false, None) => "-",
                    (false, Some(true)) => "ok",
                    (false, Some(false)) => "FAIL",
                }
                .to_string()
            }));
            r
        })
        .collect();
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    table(&mut out, &header, &rows);
    let tried = s.matrix.iter().flatten().filter(|v| v.is_some()).count();
    let ok = s
        .matrix
        .iter()
        .flatten()
        .filter(|v| **v == Some(true))
        .count();
    let _ = write!(out, "\n{ok}/{tried} pod pairs reachable");
    let stopped = s.nodes.iter().filter(|n| n.agent == "stopped").count();
    if stopped > 0 {
        let _ = write!(out, " ({stopped} stopped nodes not tried)");
    }
    if let Some(c) = s.converged_secs {
        let since = if s.kube.is_some() {
            "the control plane started"
        } else {
            "flanneld started"
        };
        let _ = write!(out, "; converged {c:.1} s after {since}");
    }
    out.push('\n');
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The same view as a picture: the subnets with their nodes (private IP, pod subnet, agent
/// state), each route table beside the subnets it serves with its routes, and the
/// reachability matrix as coloured cells.
pub fn render_svg(s: &Status) -> String {
    const W: usize = 1000;
    let mut body = String::new();
    let mut y = 60;
    let _ = writeln!(
        body,
        r#"<text x="20" y="30" font-size="18" font-weight="bold">{}</text>"#,
        esc(&s.title)
    );
    // Subnets and their nodes.
    let mut subnets: Vec<&str> = s.nodes.iter().map(|n| n.subnet.as_str()).collect();
    subnets.dedup();
    subnets.sort_unstable();
    subnets.dedup();
    for subnet in subnets {
        let nodes: Vec<&NodeRow> = s.nodes.iter().filter(|n| n.subnet == subnet).collect();
        let tables: Vec<&str> = s
            .tables
            .iter()
            .filter(|t| t.subnets.iter().any(|x| x == subnet))
            .map(|t| t.id.as_str())
            .collect();
        let height = 40 + 70 * nodes.len().div_ceil(4);
        let _ = writeln!(
            body,
            r##"<rect x="20" y="{y}" width="{}" height="{height}" rx="8" fill="#eef4fb" stroke="#6b8fb5"/><text x="32" y="{}" font-size="14" font-weight="bold">{} (route table {})</text>"##,
            W - 40,
            y + 20,
            esc(subnet),
            esc(&tables.join(", "))
        );
        for (k, n) in nodes.iter().enumerate() {
            let (x, ny) = (32 + (k % 4) * 238, y + 32 + (k / 4) * 70);
            let fill = match n.agent {
                "ready" => "#e3f6e3",
                "stopped" => "#f9dede",
                _ => "#fdf3d6",
            };
            let _ = writeln!(
                body,
                r##"<rect x="{x}" y="{ny}" width="226" height="60" rx="6" fill="{fill}" stroke="#888"/><text x="{}" y="{}" font-size="13" font-weight="bold">{} · {}</text><text x="{}" y="{}" font-size="12">{} · pods {}</text><text x="{}" y="{}" font-size="11" fill="#555">flanneld {}</text>"##,
                x + 8,
                ny + 18,
                esc(&n.name),
                esc(&n.ip),
                x + 8,
                ny + 36,
                esc(&n.instance),
                esc(n.lease.as_deref().unwrap_or("-")),
                x + 8,
                ny + 52,
                n.agent
            );
        }
        y += height + 16;
    }
    // Route tables.
    for t in &s.tables {
        let height = 30 + 18 * t.routes.len().max(1);
        let _ = writeln!(
            body,
            r##"<rect x="20" y="{y}" width="{}" height="{height}" rx="8" fill="#fafafa" stroke="#999"/><text x="32" y="{}" font-size="14" font-weight="bold">route table {} (serves {})</text>"##,
            W - 40,
            y + 20,
            esc(&t.id),
            esc(&t.subnets.join(", "))
        );
        for (k, (dest, hop, note)) in t.routes.iter().enumerate() {
            let _ = writeln!(
                body,
                r#"<text x="44" y="{}" font-size="12" font-family="monospace">{:<18} → {:<28} {}</text>"#,
                y + 40 + 18 * k,
                esc(dest),
                esc(hop),
                esc(note)
            );
        }
        y += height + 16;
    }
    // Reachability matrix.
    let _ = writeln!(
        body,
        r#"<text x="20" y="{}" font-size="14" font-weight="bold">pod-to-pod reachability (row pings column)</text>"#,
        y + 14
    );
    y += 30;
    let cell = 22;
    for (j, n) in s.nodes.iter().enumerate() {
        let _ = writeln!(
            body,
            r#"<text x="{}" y="{}" font-size="10" transform="rotate(-45 {} {})">{}</text>"#,
            110 + j * cell,
            y + 20,
            110 + j * cell,
            y + 20,
            esc(&n.name)
        );
    }
    y += 30;
    for (i, row) in s.matrix.iter().enumerate() {
        let name = s.nodes.get(i).map_or("", |n| n.name.as_str());
        let _ = writeln!(
            body,
            r#"<text x="20" y="{}" font-size="11">{}</text>"#,
            y + 15 + i * cell,
            esc(name)
        );
        for (j, ok) in row.iter().enumerate() {
            let fill = match (i == j, ok) {
                (true, _) | (false, None) => "#dddddd",
                (false, Some(true)) => "#5cb85c",
                (false, Some(false)) => "#d9534f",
            };
            let _ = writeln!(
                body,
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{fill}" stroke="white"/>"#,
                100 + j * cell,
                y + i * cell,
                cell,
                cell
            );
        }
    }
    y += cell * s.matrix.len() + 20;
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{y}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
{body}</svg>
"#
    )
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
                    agent: "not ready",
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
            matrix: vec![vec![None, Some(false)], vec![Some(false), None]],
            converged_secs: None,
            kube: None,
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
        let svg = render_svg(&s);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("subnet-a (route table ") && svg.contains("node-1 · 172.16.1.11"));
        assert!(svg.contains("10.244.7.0/24"));
        assert_eq!(
            svg.matches("fill=\"#d9534f\"").count(),
            2,
            "two failing pairs in red"
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        // A stopped node's pairs are not tried, and say so.
        let mut stopped = s.clone();
        stopped.nodes[1].agent = "stopped";
        stopped.matrix = vec![vec![None, None], vec![None, None]];
        let text = render(&stopped);
        assert!(text.contains("  node-1  ·       -"), "{text}");
        assert!(
            text.ends_with("0/0 pod pairs reachable (1 stopped nodes not tried)\n"),
            "{text}"
        );
        assert_eq!(stopped.failed_pairs(), 0);
        assert_eq!(s.failed_pairs(), 2);
        // A --kube lab: Kubernetes' view between the nodes and the tables.
        let mut kube = s.clone();
        kube.converged_secs = Some(40.0);
        kube.kube = Some(KubeView {
            nodes: vec![["node-1", "yes", "False (FlannelIsUp)", "10.244.0.0/24"].map(String::from)],
            pods: vec![[
                "kube-flannel-ds-x",
                "node-1",
                "Running",
                "yes",
                "flannel-rs:0.1.0",
                "0",
            ]
            .map(String::from)],
        });
        let text = render(&kube);
        let (nodes, tables) = (
            text.find("Kubernetes nodes").unwrap(),
            text.find("Route table").unwrap(),
        );
        assert!(nodes < tables, "{text}");
        assert!(
            text.contains("  node-1  yes    False (FlannelIsUp)  10.244.0.0/24"),
            "{text}"
        );
        assert!(
            text.contains("  kube-flannel-ds-x  node-1  Running  yes    flannel-rs:0.1.0  0"),
            "{text}"
        );
        assert!(
            text.ends_with("converged 40.0 s after the control plane started\n"),
            "{text}"
        );
    }
}
