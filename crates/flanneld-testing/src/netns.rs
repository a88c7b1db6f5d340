//! Network namespaces for tests and benches (root only; CI runs as root), on top of
//! `flannel_lab::netns`: a namespace deleted on drop, commands that panic with their stderr,
//! and a switched underlay joining "node" namespaces the way a VPC subnet joins CVMs. Lab
//! addresses are only ever used from inside these namespaces.

use std::process::{Child, Output, Stdio};
use std::time::Duration;

/// A network namespace, deleted (with its veths) on drop. Everything of the lab's `Netns`
/// (`name`, `command`, `succeeds`) is reachable through it; `run`, `ok` and `sysctl` panic
/// instead of returning errors.
pub struct Netns(flannel_lab::netns::Netns);

impl std::ops::Deref for Netns {
    type Target = flannel_lab::netns::Netns;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Netns {
    /// Create `name` (deleting a leftover of the same name first) with loopback up.
    pub fn new(name: &str) -> Netns {
        Netns(flannel_lab::netns::Netns::create(name).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Run `f` on a thread inside this namespace (what it spawns, and the sockets it opens,
    /// live there): to drive our own code against the namespace's kernel.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        flannel_lab::netns::in_netns(&self.name, f)
            .unwrap_or_else(|e| panic!("entering {}: {e}", self.name))
    }

    /// Run inside; the output whatever the exit status.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.0.run(args, stdin).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run inside and return stdout; panic with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        self.0.ok(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start a long-running process inside, owned by the test (killed by it).
    pub fn spawn(&self, args: &[&str], log: std::fs::File) -> Child {
        self.command(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.0.sysctl(key, value).unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.0.delete();
    }
}

/// Wait until `f` returns Ok, or panic after `timeout` naming `what` and the last state.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Result<T, String>) -> T {
    flannel_lab::netns::wait_until(timeout, f).unwrap_or_else(|last| {
        panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
    })
}

/// A switched underlay: namespace `<tag>-sw` holds bridge `br0` with `172.16.0.254/24`
/// (where shared services such as etcd listen); each node namespace `<tag>-n<i>` gets
/// `eth0` with `172.16.0.<i>/24` cabled to it, and IP forwarding on.
pub struct Underlay {
    pub tag: String,
    pub switch: Netns,
}

/// The switch's own address on the underlay.
pub const SWITCH_IP: &str = "172.16.0.254";

impl Underlay {
    pub fn new(tag: &str) -> Underlay {
        let switch = Netns::new(&format!("{tag}-sw"));
        // A fixed MAC, so that cabling a node never changes the switch's (see flannel-lab).
        switch.ok(&[
            "ip",
            "link",
            "add",
            "br0",
            "address",
            "02:00:ac:10:00:fe",
            "type",
            "bridge",
        ]);
        switch.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{SWITCH_IP}/24"),
            "dev",
            "br0",
        ]);
        switch.ok(&["ip", "link", "set", "br0", "up"]);
        Underlay {
            tag: tag.into(),
            switch,
        }
    }

    /// The underlay address of node `i`.
    pub fn node_ip(i: u8) -> String {
        format!("172.16.0.{i}")
    }

    /// Node `i`'s underlay IPv6 address (given by [`Underlay::add_ipv6`]).
    pub fn node_ip6(i: u8) -> String {
        format!("fd10::{i}")
    }

    /// Give node `i` (made by [`Underlay::node`]) its IPv6 address on the underlay, usable at
    /// once (no duplicate address detection), with forwarding on.
    pub fn add_ipv6(ns: &Netns, i: u8) {
        ns.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/64", Self::node_ip6(i)),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    }

    /// Add node `i` (1..=253).
    pub fn node(&self, i: u8) -> Netns {
        let ns = Netns::new(&format!("{}-n{i}", self.tag));
        let port = format!("n{i}");
        self.switch.ok(&[
            "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.switch
            .ok(&["ip", "link", "set", &port, "master", "br0", "up"]);
        ns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", Self::node_ip(i)),
            "dev",
            "eth0",
        ]);
        ns.ok(&["ip", "link", "set", "eth0", "up"]);
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns
    }
}
