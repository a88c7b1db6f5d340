//! The lab's nodes: a namespace cabled to the VPC router, flanneld, a pod through our CNI
//! plugin, and whether pods reach each other (stopped nodes left out).

use super::{alive, io, tail, wait, Lab, LabError, NodeState, CNI_PLUGINS, HEALTH_PORT};
use crate::netns::{CmdError, Netns};
use crate::topology::NodeSpec;
use std::time::{Duration, Instant};

impl Lab {
    /// The node's namespace, its cable to the router, and its flanneld; when flanneld started.
    pub(crate) fn create_node(&mut self, n: &NodeSpec) -> Result<Instant, LabError> {
        self.create_node_namespace(n)?;
        let started = Instant::now();
        self.start_flanneld(n)?;
        Ok(started)
    }

    /// The node's namespace, its cable to the router, its directory and state entry.
    pub(crate) fn create_node_namespace(&mut self, n: &NodeSpec) -> Result<(), LabError> {
        let router = self.router();
        let ns = Netns::create(&n.ns)?;
        router.ok(&[
            "ip",
            "link",
            "add",
            &n.router_port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &n.ns,
        ])?;
        router.ok(&[
            "ip",
            "link",
            "set",
            &n.router_port,
            "master",
            n.subnet.bridge(),
            "up",
        ])?;
        ns.ok(&["ip", "addr", "add", &format!("{}/24", n.ip), "dev", "eth0"])?;
        ns.ok(&["ip", "link", "set", "eth0", "up"])?;
        ns.ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &n.subnet.gateway().to_string(),
        ])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let dir = self.node_dir(n);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        self.state.nodes.push(NodeState {
            index: n.index,
            flanneld_pid: None,
            pod_ip: None,
            kubelet_pid: None,
        });
        self.save()
    }

    /// Whether `from`'s pod reaches `ip` (one ping, `wait` seconds).
    fn pod_pings(&self, from: &NodeSpec, ip: &str, wait: &str) -> bool {
        if self.spec().kube {
            return self.kube_pod_pings(from, ip);
        }
        Netns::named(&from.pod_ns).succeeds(&["ping", "-c1", &format!("-W{wait}"), ip])
    }

    /// The kube-flannel.yml CNI config for node `n`'s files.
    pub(crate) fn cni_config(&self, n: &NodeSpec) -> String {
        let dir = self.node_dir(n);
        format!(
            r#"{{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","delegate":{{"hairpinMode":true,"isDefaultGateway":true}},"subnetFile":"{}","dataDir":"{}","ipam":{{"dataDir":"{}"}}}}"#,
            dir.join("subnet.env").display(),
            dir.join("cni").display(),
            dir.join("ipam").display()
        )
    }

    /// A pod on `n` through our CNI plugin, once flanneld wrote subnet.env.
    pub(crate) fn add_pod(&mut self, n: &NodeSpec) -> Result<(), LabError> {
        let env_file = self.node_dir(n).join("subnet.env");
        wait(
            &format!("{}'s flanneld to write subnet.env", n.name),
            Duration::from_secs(60),
            || {
                env_file
                    .exists()
                    .then_some(())
                    .ok_or_else(|| tail(&self.node_dir(n).join("flanneld.log")))
            },
        )?;
        Netns::create(&n.pod_ns)?;
        let mut cmd = Netns::named(&n.ns).command(&self.state.bins.flannel.display().to_string());
        cmd.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("pod-{}", n.name))
            .env("CNI_NETNS", format!("/run/netns/{}", n.pod_ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PLUGINS)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let spawn = |source| CmdError::Spawn {
            cmd: format!("CNI ADD on {}", n.name),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn)?;
        if let Some(mut pipe) = child.stdin.take() {
            use std::io::Write;
            pipe.write_all(self.cni_config(n).as_bytes())
                .map_err(spawn)?;
        }
        let out = child.wait_with_output().map_err(spawn)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(CmdError::Failed {
                cmd: format!("CNI ADD on {}", n.name),
                stderr: text,
            }
            .into());
        }
        let result: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .map(str::to_string);
        if let Some(s) = self.state.nodes.iter_mut().find(|s| s.index == n.index) {
            s.pod_ip = ip;
        }
        self.save()
    }

    /// The pods' reachability: `matrix[i][j]` = whether the pod of node i reaches the pod of
    /// node j; None where not tried (i = j, or a node whose flanneld is stopped: its routes
    /// go, so its pod is expected to be cut off).
    pub fn ping_matrix(&self) -> Vec<Vec<Option<bool>>> {
        let nodes = self.nodes();
        let live: Vec<bool> = nodes.iter().map(|n| self.agent_running(n.index)).collect();
        let ips: Vec<Option<String>> = self.state.nodes.iter().map(|n| n.pod_ip.clone()).collect();
        std::thread::scope(|scope| {
            let rows: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, from)| {
                    let (ips, live) = (&ips, &live);
                    scope.spawn(move || {
                        ips.iter()
                            .enumerate()
                            .map(|(j, to)| {
                                if i == j || !live[i] || !live[j] {
                                    return None;
                                }
                                Some(to.as_ref().is_some_and(|ip| self.pod_pings(from, ip, "1")))
                            })
                            .collect::<Vec<Option<bool>>>()
                    })
                })
                .collect();
            rows.into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Wait until every live pod reaches every other live pod; record the time since
    /// `started` (a lost ping costs 0.2 s, so that is the resolution).
    pub fn converge(&mut self, started: Instant) -> Result<(), LabError> {
        wait(
            "every pod to reach every other pod",
            Duration::from_secs(120),
            || {
                let bad = self
                    .ping_matrix()
                    .iter()
                    .flatten()
                    .filter(|ok| **ok == Some(false))
                    .count();
                (bad == 0)
                    .then_some(())
                    .ok_or_else(|| format!("{bad} pod pairs cannot talk yet"))
            },
        )?;
        self.state.converged_secs = Some(started.elapsed().as_secs_f64());
        self.save()
    }

    /// Wait until node `index`'s pod and every other pod reach each other (all pings in
    /// parallel); record the time since `started`.
    pub(crate) fn converge_node(&mut self, index: u8, started: Instant) -> Result<(), LabError> {
        let me = self.spec().node(index);
        let my_ip = self.pod_ip(index);
        // Stopped nodes are expected to be unreachable: not waited for.
        let others: Vec<(NodeSpec, Option<String>)> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.index != index && self.agent_running(n.index))
            .map(|n| (self.spec().node(n.index), n.pod_ip.clone()))
            .collect();
        let lab: &Lab = self;
        wait(
            &format!("{}'s pod and every other pod to reach each other", me.name),
            Duration::from_secs(120),
            || {
                let failed = std::thread::scope(|scope| {
                    let checks: Vec<_> = others
                        .iter()
                        .flat_map(|(other, ip)| [(&me, ip.clone()), (other, my_ip.clone())])
                        .map(|(from, to)| {
                            scope.spawn(move || match to {
                                Some(ip) => lab.pod_pings(from, &ip, "0.2"),
                                None => false,
                            })
                        })
                        .collect();
                    checks
                        .into_iter()
                        .map(|h| h.join().unwrap_or(false))
                        .filter(|ok| !ok)
                        .count()
                });
                (failed == 0)
                    .then_some(())
                    .ok_or_else(|| format!("{failed} pings failed"))
            },
        )?;
        self.state.converged_secs = Some(started.elapsed().as_secs_f64());
        self.save()
    }

    pub(crate) fn pod_ip(&self, index: u8) -> Option<String> {
        self.state
            .nodes
            .iter()
            .find(|n| n.index == index)
            .and_then(|n| n.pod_ip.clone())
    }

    /// One more node (and its pod), the lab waiting until it is reachable.
    pub fn add_node(&mut self) -> Result<NodeSpec, LabError> {
        let (n, started) = self.start_node()?;
        self.add_pod(&n)?;
        self.converge_node(n.index, started)?;
        Ok(n)
    }

    /// One more node with its flanneld started, not waited for (no pod yet): for tests that
    /// watch a join; [`Lab::finish_join`] adds its pod and waits until it is reachable.
    pub fn start_node(&mut self) -> Result<(NodeSpec, Instant), LabError> {
        let next = self.state.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        if next > crate::topology::MAX_NODES {
            return Err(LabError::Full(next - 1));
        }
        let n = self.spec().node(next);
        let started = self.create_node(&n)?;
        Ok((n, started))
    }

    /// The pods of nodes from [`Lab::start_node`], waiting until every pod reaches every
    /// other (the time recorded from `started`).
    pub fn finish_join(&mut self, nodes: &[NodeSpec], started: Instant) -> Result<(), LabError> {
        for n in nodes {
            self.add_pod(n)?;
        }
        self.converge(started)
    }

    /// What a node's flanneld has logged.
    pub fn agent_log(&self, n: &NodeSpec) -> String {
        std::fs::read_to_string(self.node_dir(n).join("flanneld.log")).unwrap_or_default()
    }

    pub fn find(&self, name: &str) -> Result<NodeSpec, LabError> {
        self.nodes()
            .into_iter()
            .find(|n| n.name == name || n.ns == name)
            .ok_or_else(|| LabError::UnknownNode(name.into()))
    }

    /// Whether a node's flanneld is running (`--kube`: its kubelet, which runs it).
    pub fn agent_running(&self, index: u8) -> bool {
        self.state
            .nodes
            .iter()
            .find(|s| s.index == index)
            .and_then(|s| {
                if self.spec().kube {
                    s.kubelet_pid
                } else {
                    s.flanneld_pid
                }
            })
            .is_some_and(alive)
    }

    /// Whether a node's flanneld answers /readyz with 200.
    pub fn agent_ready(&self, n: &NodeSpec) -> bool {
        let url = format!("http://127.0.0.1:{HEALTH_PORT}/readyz");
        crate::netns::http(&n.ns, "GET", &url, None).is_ok_and(|(status, _)| status == 200)
    }

    /// The node's lease subnet, from its subnet.env.
    pub fn lease_of(&self, n: &NodeSpec) -> Option<String> {
        let env = match self.spec().kube {
            // The DaemonSet's hostPath /run/flannel: the node's own copy.
            true => self.node_dir(n).join("host/run/flannel/subnet.env"),
            false => self.node_dir(n).join("subnet.env"),
        };
        let text = std::fs::read_to_string(env).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .and_then(|s| s.parse::<ipnet::Ipv4Net>().ok())
            .map(|n| n.trunc().to_string())
    }
}
