//! Network namespaces for tests, benches and the lab (root only; CI runs as root): a named
//! namespace deleted on drop, commands run inside it, and a switched underlay joining
//! "node" namespaces the way a VPC subnet joins CVMs. Lab addresses are only ever used
//! from inside these namespaces.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A network namespace, deleted (with its veths) on drop.
pub struct Netns {
    pub name: String,
}

/// Run a command on the host, panicking with its stderr if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    /// Create `name` (deleting a leftover of the same name first) with loopback up.
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", name]);
        let ns = Netns { name: name.into() };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run inside; the output whatever the exit status.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut c = self.command(args[0]);
        c.args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let mut pipe = child.stdin.take().expect("stdin piped");
        pipe.write_all(stdin.unwrap_or_default())
            .expect("writing stdin");
        drop(pipe);
        child.wait_with_output().expect("waiting for the command")
    }

    /// Run inside and return stdout; panic with stderr on failure.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(
            out.status.success(),
            "in {}: {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether the command succeeds inside.
    pub fn succeeds(&self, args: &[&str]) -> bool {
        self.run(args, None).status.success()
    }

    /// Start a long-running process inside.
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
        self.ok(&["sysctl", "-qw", &format!("{key}={value}")]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Wait until `f` returns Some, or panic after `timeout` naming `what` and the last state.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
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
