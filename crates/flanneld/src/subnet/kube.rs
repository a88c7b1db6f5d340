//! The Kubernetes subnet manager (`--kube-subnet-mgr`): the lease is the node's
//! `spec.podCIDR(s)`, published with upstream's annotations through a status patch; peers are
//! the other nodes carrying the `kube-subnet-manager` annotation, watched; the node's
//! NetworkUnavailable condition follows readiness; elections use a coordination.k8s.io Lease;
//! records live in a ConfigMap. Formats are `flannel_core::kube` (pure).

use super::election::LeaderElection;
use super::{AcquireRequest, LeaseStream, SubnetError, SubnetManager};
use async_trait::async_trait;
use flannel_core::kube::{self as fk, AnnotationPrefix, NodeView};
use flannel_core::lease::{Expiry, Lease, LeaseEvent, SubnetKey};
use flannel_core::watch::WatchUpdate;
use flannel_core::ValidatedNetConfig;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tracing::info;

mod leases;
pub use leases::{QUEUE_LABEL, QUEUE_NODE_ANNOTATION};

const MANAGER: &str = "kube";
/// How long acquisition waits for this node's object (upstream: 30 s).
const NODE_WAIT: Duration = Duration::from_secs(30);

/// How to reach the API server and who this node is.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// `--kubeconfig-file`; empty: in-cluster config.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-api-url`: overrides the server of either.
    pub api_url: Option<String>,
    /// The node: NODE_NAME, else the pod's spec.nodeName (POD_NAME, POD_NAMESPACE).
    pub node_name: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub annotation_prefix: String,
    pub net_config_path: PathBuf,
    /// `--set-node-network-unavailable`: keep the node's NetworkUnavailable condition.
    pub set_network_unavailable: bool,
}

pub struct KubeManager {
    client: kube::Client,
    node: String,
    namespace: String,
    prefix: AnnotationPrefix,
    config: ValidatedNetConfig,
    set_network_unavailable: bool,
}

fn store(
    op: impl std::fmt::Display,
    e: impl std::error::Error + Send + Sync + 'static,
) -> SubnetError {
    SubnetError::store(MANAGER, op, e)
}

fn view(node: &Node) -> NodeView {
    let spec = node.spec.clone().unwrap_or_default();
    let mut pod_cidrs = spec.pod_cidrs.unwrap_or_default();
    if pod_cidrs.is_empty() {
        pod_cidrs.extend(spec.pod_cidr);
    }
    NodeView {
        name: node.metadata.name.clone().unwrap_or_default(),
        pod_cidrs,
        annotations: node.metadata.annotations.clone().unwrap_or_default(),
    }
}

impl KubeManager {
    /// The manager of this node (NODE_NAME, else the pod's node).
    pub async fn connect(o: &KubeOptions) -> Result<KubeManager, SubnetError> {
        let mut m = Self::observer(o).await?;
        m.node = match o.node_name.clone().filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => {
                let (Some(pod), Some(ns)) = (&o.pod_name, &o.pod_namespace) else {
                    return Err(SubnetError::NodeUnknown(
                        "env variables POD_NAME and POD_NAMESPACE must be set".into(),
                    ));
                };
                let p: k8s_openapi::api::core::v1::Pod = Api::namespaced(m.client.clone(), ns)
                    .get(pod)
                    .await
                    .map_err(|e| store(format!("get pod {ns}/{pod}"), e))?;
                p.spec.and_then(|s| s.node_name).ok_or_else(|| {
                    SubnetError::NodeUnknown(format!("pod {ns}/{pod} has no nodeName"))
                })?
            }
        };
        Ok(m)
    }

    /// A manager that holds no lease: it reads the config, the leases and the records, and
    /// stands in elections (`flannelctl`, `flanneld --controller`). It is no node's, so it
    /// cannot acquire a lease.
    pub async fn observer(o: &KubeOptions) -> Result<KubeManager, SubnetError> {
        let prefix = AnnotationPrefix::parse(&o.annotation_prefix).map_err(SubnetError::Kube)?;
        let text = std::fs::read_to_string(&o.net_config_path).map_err(|source| {
            SubnetError::ConfigFile {
                path: o.net_config_path.display().to_string(),
                source,
            }
        })?;
        let config = flannel_core::config::parse_and_check(&text).map_err(|source| {
            SubnetError::RemoteConfig {
                key: o.net_config_path.display().to_string(),
                source,
            }
        })?;
        let mut cfg = match &o.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| store(format!("reading kubeconfig {}", path.display()), e))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| store(format!("kubeconfig {}", path.display()), e))?
            }
            None => kube::Config::incluster().map_err(|e| store("in-cluster config", e))?,
        };
        if let Some(url) = &o.api_url {
            cfg.cluster_url = url
                .parse()
                .map_err(|e| store(format!("--kube-api-url {url:?}"), e))?;
        }
        let client = kube::Client::try_from(cfg).map_err(|e| store("building the client", e))?;
        let namespace = o
            .pod_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "kube-flannel".into());
        Ok(KubeManager {
            client,
            node: String::new(),
            namespace,
            prefix,
            config,
            set_network_unavailable: o.set_network_unavailable,
        })
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// This node's object, waiting for it (and its podCIDR) up to 30 s.
    async fn own_node(&self) -> Result<Node, SubnetError> {
        if self.node.is_empty() {
            return Err(SubnetError::NodeUnknown(
                "this Kubernetes manager observes only: it is no node's".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + NODE_WAIT;
        loop {
            match self.nodes().get(&self.node).await {
                Ok(n) => return Ok(n),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(store(format!("get node {}", self.node), e))
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(3)).await,
            }
        }
    }

    /// Set NetworkUnavailable to False (ready) or True with a reason.
    pub async fn set_network_unavailable(
        &self,
        up: bool,
        reason: &str,
        message: &str,
    ) -> Result<(), SubnetError> {
        let now = k8s_openapi::jiff::Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
            .to_string();
        let condition = fk::network_unavailable(up, reason, message, &now);
        let patch = serde_json::json!({"status": {"conditions": [condition]}});
        self.nodes()
            .patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map_err(|e| store(format!("patch node {} status", self.node), e))?;
        Ok(())
    }

    /// A Warning Event on this node (what `kubectl describe node` shows): a route conflict, a
    /// full route table.
    async fn node_event(&self, reason: &str, message: &str) -> Result<(), SubnetError> {
        use k8s_openapi::api::core::v1::Event;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event: Event = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": format!("{}.", self.node), "namespace": "default"},
            "involvedObject": {"kind": "Node", "name": self.node, "apiVersion": "v1"},
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": "flanneld", "host": self.node},
            "count": 1,
        }))
        .map_err(|e| store("building an event", e))?;
        let mut event = event;
        event.first_timestamp = Some(now.clone());
        event.last_timestamp = Some(now);
        Api::<Event>::namespaced(self.client.clone(), "default")
            .create(&PostParams::default(), &event)
            .await
            .map_err(|e| store(format!("create event on node {}", self.node), e))?;
        Ok(())
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// The records ConfigMap (flannel-rs's own small records, never read by upstream).
const RECORDS: &str = "flannel-rs-records";

#[async_trait]
impl SubnetManager for KubeManager {
    fn name(&self) -> &'static str {
        MANAGER
    }

    fn allocation(&self) -> flannel_core::admission::Allocation {
        flannel_core::admission::Allocation::External
    }

    async fn network_config(&self) -> Result<ValidatedNetConfig, SubnetError> {
        Ok(self.config.clone())
    }

    async fn acquire_lease(&self, req: &AcquireRequest) -> Result<Lease, SubnetError> {
        let node = self.own_node().await?;
        let v = view(&node);
        let (v4, v6) = fk::own_subnets(&v, self.config.network(), self.config.ipv6_network())
            .map_err(SubnetError::Kube)?;
        let want = fk::node_annotations(&self.prefix, &req.attrs);
        let differs = want
            .iter()
            .any(|(k, val)| v.annotations.get(k) != Some(val));
        if differs {
            let patch = serde_json::json!({"metadata": {"annotations": want}});
            self.nodes()
                .patch_status(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| store(format!("patch node {} annotations", self.node), e))?;
            info!(node = %self.node, "node annotations written");
        }
        Ok(Lease {
            key: SubnetKey {
                ipv4: v4.unwrap_or_default(),
                ipv6: v6,
            },
            attrs: req.attrs.clone(),
            expiry: Expiry::Node,
        })
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, SubnetError> {
        // A podCIDR does not expire.
        Ok(lease.clone())
    }

    async fn watch_leases(&self) -> Result<LeaseStream, SubnetError> {
        let prefix = self.prefix.clone();
        // The watcher re-lists by itself after an error: paced (exponential, jittered), so a
        // lasting 403 or 5xx is not a tight loop of LISTs; the lease feed reopens with its
        // own backoff on top.
        let stream = watcher(self.nodes(), watcher::Config::default()).default_backoff();
        // Per node: its last lease, so updates that do not change it are dropped.
        let state = std::sync::Arc::new(std::sync::Mutex::new((
            BTreeMap::<String, NodeView>::new(),
            Vec::<Lease>::new(),
        )));
        let s = stream.filter_map(move |ev| {
            let prefix = prefix.clone();
            let state = state.clone();
            async move {
                let mut st = state.lock().expect("watch state");
                match ev {
                    Err(e) => Some(Err(store("watch nodes", e))),
                    Ok(watcher::Event::Init) => {
                        st.1.clear();
                        None
                    }
                    Ok(watcher::Event::InitApply(n)) => {
                        let v = view(&n);
                        if let Some(l) = fk::peer_lease(&prefix, &v) {
                            st.1.push(l);
                        }
                        st.0.insert(v.name.clone(), v);
                        None
                    }
                    Ok(watcher::Event::InitDone) => {
                        Some(Ok(WatchUpdate::Snapshot(std::mem::take(&mut st.1))))
                    }
                    Ok(watcher::Event::Apply(n)) => {
                        let v = view(&n);
                        let changed =
                            st.0.get(&v.name)
                                .is_none_or(|old| fk::lease_changed(&prefix, old, &v));
                        let lease = fk::peer_lease(&prefix, &v);
                        st.0.insert(v.name.clone(), v);
                        match (changed, lease) {
                            (true, Some(l)) => {
                                Some(Ok(WatchUpdate::Events(vec![LeaseEvent::Added(l)])))
                            }
                            _ => None,
                        }
                    }
                    Ok(watcher::Event::Delete(n)) => {
                        let v = view(&n);
                        st.0.remove(&v.name);
                        fk::peer_lease(&prefix, &v)
                            .map(|l| Ok(WatchUpdate::Events(vec![LeaseEvent::Removed(l)])))
                    }
                }
            }
        });
        Ok(s.boxed())
    }

    fn leader_election(&self, name: &str, identity: &str) -> Box<dyn LeaderElection> {
        Box::new(leases::LeaseElection::new(
            Api::namespaced(self.client.clone(), &self.namespace),
            name,
            identity,
        ))
    }

    async fn put_record(&self, name: &str, value: &str) -> Result<(), SubnetError> {
        let patch = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": RECORDS}, "data": {name: value}});
        self.config_maps()
            .patch(
                RECORDS,
                &PatchParams::apply("flannel-rs").force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| store(format!("write record {name}"), e))?;
        Ok(())
    }

    async fn report_ready(
        &self,
        ready: bool,
        reason: Option<&str>,
        problem: Option<&str>,
    ) -> Result<(), SubnetError> {
        if ready {
            if self.set_network_unavailable {
                self.set_network_unavailable(
                    true,
                    "FlannelIsUp",
                    "Flannel is running on this node",
                )
                .await?;
            }
            return Ok(());
        }
        let message = problem.unwrap_or(
            "flanneld runs but this node's routes are not in place yet (see its log and /readyz)",
        );
        if self.set_network_unavailable {
            self.set_network_unavailable(false, reason.unwrap_or("FlannelNotReady"), message)
                .await?;
        }
        if let Some(p) = problem {
            self.node_event(reason.unwrap_or("FlannelRoutesNotInPlace"), p)
                .await?;
        }
        Ok(())
    }

    async fn join_queue(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Vec<std::time::SystemTime>>, SubnetError> {
        let api = Api::namespaced(self.client.clone(), &self.namespace);
        leases::join_queue(api, &self.node, name, ttl)
            .await
            .map(Some)
    }

    async fn get_record(&self, name: &str) -> Result<Option<String>, SubnetError> {
        match self.config_maps().get_opt(RECORDS).await {
            Ok(cm) => Ok(cm.and_then(|c| c.data).and_then(|d| d.get(name).cloned())),
            Err(e) => Err(store(format!("read record {name}"), e)),
        }
    }
}

#[cfg(test)]
#[path = "kube_mock_tests.rs"]
mod mock_tests;
