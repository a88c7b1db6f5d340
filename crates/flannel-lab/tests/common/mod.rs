//! What the lab tests share: a lab of the test's own prefix, removed on drop, and views of
//! it.
#![allow(dead_code)]

use flannel_lab::lab::{self, Bins, Lab};
use flannel_lab::topology::{Backend, LabSpec, Mode, USER_ROUTE};
use std::collections::BTreeMap;
use std::path::Path;

/// A lab removed on drop (even when the test fails).
pub struct TestLab {
    pub lab: Lab,
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let _ = lab::down(&self.lab.spec().prefix);
    }
}

pub fn bins() -> Bins {
    let dir = Path::new(env!("CARGO_BIN_EXE_flannel-lab"))
        .parent()
        .unwrap()
        .to_path_buf();
    Bins::from_dir(Some(dir))
}

pub fn up(prefix: &str, backend: Backend, mode: Mode, nodes: u8) -> TestLab {
    up_spec(spec(prefix, backend, mode, false), nodes)
}

/// An `up --kube` lab.
pub fn up_kube(prefix: &str, backend: Backend, mode: Mode, nodes: u8) -> TestLab {
    up_spec(spec(prefix, backend, mode, true), nodes)
}

fn spec(prefix: &str, backend: Backend, mode: Mode, kube: bool) -> LabSpec {
    LabSpec {
        prefix: prefix.into(),
        backend,
        mode,
        route_quota: flannel_lab::topology::DEFAULT_QUOTA,
        fallback: false,
        kube,
    }
}

pub fn up_spec(spec: LabSpec, nodes: u8) -> TestLab {
    up_until(spec, nodes, lab::Reach::Full)
}

/// A lab up, waiting for `reach`.
pub fn up_until(spec: LabSpec, nodes: u8, reach: lab::Reach) -> TestLab {
    let prefix = spec.prefix.clone();
    let prefix = prefix.as_str();
    let _ = lab::down(prefix);
    match Lab::up_until(spec, nodes, bins(), &mut |_| {}, reach) {
        Ok(lab) => TestLab { lab },
        Err(e) => {
            let logs = std::fs::read_dir(lab::state_dir(prefix))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path().display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let _ = lab::down(prefix);
            panic!("lab up: {e} (files: {logs})")
        }
    }
}

/// Every pair of live pods reaches each other (and some pair was tried).
pub fn full(m: &[Vec<Option<bool>>]) -> bool {
    let tried: Vec<bool> = m.iter().flatten().flatten().copied().collect();
    !tried.is_empty() && tried.iter().all(|ok| *ok)
}

/// Destination → next hops, per table.
pub fn routes(lab: &Lab) -> BTreeMap<String, BTreeMap<String, String>> {
    lab.cloud()
        .unwrap()
        .route_tables
        .iter()
        .map(|t| {
            (
                t.route_table_id.clone(),
                t.routes
                    .iter()
                    .filter(|r| r.enabled)
                    .map(|r| (r.destination_cidr_block.to_string(), r.gateway_id.clone()))
                    .collect(),
            )
        })
        .collect()
}

pub fn writes(lab: &Lab) -> u64 {
    lab.calls()
        .unwrap()
        .iter()
        .filter(|(action, _)| {
            [
                "CreateRoutes",
                "DeleteRoutes",
                "ReplaceRoutes",
                "EnableRoutes",
                "DisableRoutes",
            ]
            .contains(&action.as_str())
        })
        .flat_map(|(_, results)| results.values())
        .sum()
}

pub fn assert_user_route(lab: &Lab) {
    assert_eq!(
        routes(lab)["rtb-a"].get(USER_ROUTE).map(String::as_str),
        Some("vpngw-lab"),
        "the user's own route is untouched"
    );
}

/// The metrics a node's flanneld (or, in the router, the controller) serves.
pub fn metrics(ns: &str) -> String {
    flannel_lab::netns::http(ns, "GET", "http://127.0.0.1:8081/metrics", None)
        .map(|(_, text)| text)
        .unwrap_or_default()
}

/// The value of a metric line `name{labels}` (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Calls of `action` so far, any result.
pub fn calls(lab: &Lab, action: &str) -> u64 {
    lab.calls()
        .unwrap()
        .get(action)
        .map_or(0, |r| r.values().sum())
}
