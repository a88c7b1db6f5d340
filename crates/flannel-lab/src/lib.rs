//! flannel-lab: a Tencent-VPC-style cluster in network namespaces on one machine. The shape is
//! pure (`topology`), the view is pure (`render`); `lab` builds, reads and breaks the running
//! thing through `netns`.

pub mod lab;
pub mod measure;
pub mod netns;
pub mod pki;
pub mod render;
pub mod topology;

use lab::{Lab, LabError};
use render::{NodeRow, Status, TableRows};
use topology::Mode;

/// Read the lab's state into the status view.
pub fn status(lab: &Lab) -> Result<Status, LabError> {
    let spec = lab.spec();
    let nodes = lab
        .nodes()
        .iter()
        .zip(&lab.state.nodes)
        .map(|(n, s)| NodeRow {
            name: n.name.clone(),
            subnet: n.subnet.id().to_string(),
            ip: n.ip.to_string(),
            instance: n.instance_id.clone(),
            lease: lab.lease_of(n),
            agent: match (lab.agent_running(n.index), lab.agent_ready(n)) {
                (false, _) => "stopped",
                (true, true) => "ready",
                (true, false) => "not ready",
            },
            pod_ip: s.pod_ip.clone(),
        })
        .collect::<Vec<_>>();
    let cloud = lab.cloud()?;
    let by_ip = |ip: &str| nodes.iter().find(|n| n.ip == ip).map(|n| n.name.clone());
    let tables = cloud
        .route_tables
        .iter()
        .map(|t| TableRows {
            id: t.route_table_id.clone(),
            subnets: Lab::table_subnets(&cloud, &t.route_table_id),
            routes: t
                .routes
                .iter()
                .map(|r| {
                    let mut note = match by_ip(&r.gateway_id) {
                        Some(node) if r.route_description.starts_with("flannel") => {
                            format!("flannel, {node}")
                        }
                        _ => r.route_description.clone(),
                    };
                    if !r.enabled {
                        note.push_str(" [disabled]");
                    }
                    (
                        r.destination_cidr_block.to_string(),
                        format!("{} ({})", r.gateway_id, r.gateway_type),
                        note,
                    )
                })
                .collect(),
        })
        .collect();
    let mode = match (spec.backend, spec.mode) {
        (topology::Backend::TencentVpc, Mode::Controller) => " (controller mode)",
        (topology::Backend::TencentVpc, Mode::PerNode) => " (per-node mode)",
        _ => "",
    };
    Ok(Status {
        title: format!(
            "flannel-lab {:?}: {} nodes, backend {}{mode}, pod network {}",
            spec.prefix,
            nodes.len(),
            spec.backend.name(),
            topology::POD_NETWORK
        ),
        nodes,
        tables,
        matrix: lab.ping_matrix(),
        converged_secs: lab.state.converged_secs,
        kube: if spec.kube {
            Some(kube_view(lab)?)
        } else {
            None
        },
    })
}

fn kube_view(lab: &Lab) -> Result<render::KubeView, LabError> {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    Ok(render::KubeView {
        nodes: lab
            .kube_nodes()?
            .into_iter()
            .map(|n| {
                [
                    n.name,
                    yes_no(n.ready),
                    match (n.network_unavailable, n.network_reason) {
                        (Some(status), Some(reason)) => format!("{status} ({reason})"),
                        (Some(status), None) => status,
                        _ => "-".into(),
                    },
                    n.pod_cidr.unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
        pods: lab
            .flannel_pods()?
            .into_iter()
            .map(|p| {
                [
                    p.name,
                    p.node,
                    p.phase,
                    yes_no(p.ready),
                    p.image,
                    p.restarts.to_string(),
                ]
            })
            .collect(),
    })
}
