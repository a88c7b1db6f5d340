//! Helpers shared by the flanneld integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

/// Poll `cond` until it holds or `deadline` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async flavour of [`wait_until`].
pub async fn wait_until_async(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A minimal HTTP/1.1 GET: returns (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

/// A host with one interface, eth0, at `ip`.
pub struct FakeHost(pub &'static str);

impl flanneld::iface::HostNetwork for FakeHost {
    fn interfaces(&self) -> Result<Vec<flanneld::iface::Interface>, flanneld::iface::IfaceError> {
        Ok(vec![flanneld::iface::Interface {
            name: "eth0".into(),
            index: 2,
            mtu: 1450,
            ipv4: vec![self.0.parse().unwrap()],
            ipv6: vec![],
        }])
    }
    fn default_route_interface(
        &self,
        _ipv6: bool,
    ) -> Result<Option<String>, flanneld::iface::IfaceError> {
        Ok(Some("eth0".into()))
    }
    fn source_address_for(&self, _dst: IpAddr) -> Result<IpAddr, flanneld::iface::IfaceError> {
        Ok(self.0.parse().unwrap())
    }
}

/// A daemon configuration writing subnet.env into `dir`, with long periods (tests drive events).
pub fn daemon_config(dir: &std::path::Path) -> flanneld::daemon::DaemonConfig {
    flanneld::daemon::DaemonConfig {
        subnet_file: dir.join("subnet.env"),
        ifaces: vec![],
        iface_regexes: vec![],
        iface_can_reach: None,
        public_ip: None,
        public_ipv6: None,
        renew_margin: Duration::from_secs(3600),
        resync_period: Duration::from_secs(30),
        traffic: Default::default(),
        traffic_resync: std::time::Duration::from_secs(5),
    }
}
