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

/// The traffic rules as a fake packet filter holds them: what was applied, and whether they
/// are still in place (a test clears this to play an operator flushing the chains).
#[derive(Default)]
pub struct FakeFilter {
    pub applies: std::sync::atomic::AtomicUsize,
    pub in_place: std::sync::atomic::AtomicBool,
}

pub static FILTER: std::sync::LazyLock<std::sync::Arc<FakeFilter>> =
    std::sync::LazyLock::new(Default::default);

#[async_trait::async_trait]
impl flanneld::kernel::packet_filter::PacketFilter for FakeFilter {
    async fn apply(
        &self,
        _set: &flanneld::kernel::packet_filter::RuleSet,
    ) -> Result<(), flanneld::kernel::packet_filter::FilterError> {
        use std::sync::atomic::Ordering;
        self.applies.fetch_add(1, Ordering::SeqCst);
        self.in_place.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn in_place(
        &self,
        _set: &flanneld::kernel::packet_filter::RuleSet,
    ) -> Result<bool, flanneld::kernel::packet_filter::FilterError> {
        Ok(self.in_place.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Routes in memory (the blackhole route's only user here).
#[derive(Default)]
pub struct MemoryRoutes(std::sync::Mutex<Vec<flanneld::kernel::ListedRoute>>);

#[async_trait::async_trait]
impl flanneld::kernel::Routes for MemoryRoutes {
    async fn routes(
        &self,
        family: flanneld::kernel::Family,
    ) -> Result<Vec<flanneld::kernel::ListedRoute>, flanneld::kernel::KernelError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|r| flanneld::kernel::family_of(&r.route.dst) == family)
            .cloned()
            .collect())
    }
    async fn replace_route(
        &self,
        route: &flanneld::kernel::Route,
    ) -> Result<(), flanneld::kernel::KernelError> {
        let mut v = self.0.lock().unwrap();
        v.retain(|r| r.route.dst != route.dst);
        v.push(flanneld::kernel::ListedRoute {
            route: route.clone(),
            ours: true,
        });
        Ok(())
    }
    async fn delete_route(
        &self,
        route: &flanneld::kernel::Route,
    ) -> Result<(), flanneld::kernel::KernelError> {
        self.0.lock().unwrap().retain(|r| r.route.dst != route.dst);
        Ok(())
    }
    async fn is_on_link(&self, _ip: IpAddr) -> Result<bool, flanneld::kernel::KernelError> {
        Ok(false)
    }
}

/// FakeHost's traffic rules go to [`FILTER`]; its routes to memory.
#[async_trait::async_trait]
impl flanneld::kernel::Platform for FakeHost {
    fn prober(&self, _networks: Vec<ipnet::IpNet>) -> std::sync::Arc<dyn flanneld::probe::Prober> {
        PROBER
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| std::sync::Arc::new(flanneld::probe::AssumeAnswered))
    }
    async fn packet_filter(
        &self,
        _nftables: bool,
    ) -> (
        std::sync::Arc<dyn flanneld::kernel::packet_filter::PacketFilter>,
        bool,
    ) {
        (FILTER.clone(), true)
    }
    fn routes(
        &self,
        _networks: Vec<ipnet::IpNet>,
    ) -> Result<std::sync::Arc<dyn flanneld::kernel::Routes>, flanneld::kernel::KernelError> {
        Ok(std::sync::Arc::new(MemoryRoutes::default()))
    }
    fn kernel_changes(
        &self,
        _networks: Vec<ipnet::IpNet>,
    ) -> Result<Option<flanneld::kernel::monitor::KernelChanges>, flanneld::kernel::KernelError>
    {
        Ok(KERNEL_CHANGES.lock().unwrap().take())
    }
}

/// The prober FakeHost hands to the next daemon (else every probe counts as answered).
pub static PROBER: std::sync::Mutex<Option<std::sync::Arc<dyn flanneld::probe::Prober>>> =
    std::sync::Mutex::new(None);

/// The kernel notifications FakeHost hands to the one daemon whose backend asks for them.
pub static KERNEL_CHANGES: std::sync::Mutex<Option<flanneld::kernel::monitor::KernelChanges>> =
    std::sync::Mutex::new(None);

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
