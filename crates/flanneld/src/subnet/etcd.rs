//! The etcd v3 subnet manager, byte-compatible with upstream flannel: the same keys
//! (`<prefix>/config`, `<prefix>/subnets/10.5.52.0-24[&v6-len]`), the same LeaseAttrs JSON,
//! a 24 h TTL through an etcd lease, and creation only if the key does not exist yet.
//!
//! Differences from upstream, all fixes:
//! - a lost creation race is retried (upstream's retry never fires), and the create
//!   transaction's else-branch returns the fresh listing, so a retry costs one round trip;
//!   the random-pick window widens after each lost race;
//! - reservations (keys with no etcd lease) are honoured and never given a TTL (issue 1329);
//! - renewal keeps the existing etcd lease alive instead of granting a new one each time
//!   (upstream leaks one lease object per renewal);
//! - the watch resumes from its last revision after an error and re-lists only after a
//!   compaction; an unparseable key or value is logged and skipped, never turned into
//!   "every peer removed".

use super::{AcquireRequest, LeaseStream, SubnetError, SubnetManager, LEASE_TTL};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use flannel_core::alloc::{self, AcquirePlan};
use flannel_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent, SubnetKey};
use flannel_core::watch::WatchUpdate;
use flannel_core::NetConfig;
use futures::StreamExt;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{debug, info, warn};

/// Upstream's `raceRetries`.
pub const RACE_RETRIES: u32 = 10;
/// Upstream's 24 h lease TTL in etcd's unit.
const LEASE_TTL_SECS: i64 = LEASE_TTL.as_secs() as i64;
/// How long a request keeps retrying `Unavailable` before reporting it.
const FAILOVER_WINDOW: Duration = Duration::from_secs(2);
/// Deadline of one unary etcd request.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach etcd (upstream's `--etcd-*` flags). Debug never shows the password.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub keyfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
}

impl EtcdOptions {
    pub fn new(endpoints: &str, prefix: &str) -> Self {
        EtcdOptions {
            endpoints: endpoints
                .split(',')
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            prefix: prefix.to_string(),
            keyfile: None,
            certfile: None,
            cafile: None,
            username: None,
            password: None,
        }
    }
}

/// The etcd lease behind a stored subnet key: 0 for a reservation.
type EtcdLeaseId = i64;

#[derive(Clone)]
pub struct EtcdManager {
    client: Client,
    prefix: String,
    requests: Arc<AtomicU64>,
    config: Arc<Mutex<Option<NetConfig>>>,
}

fn store_err(op: impl std::fmt::Display, e: impl std::fmt::Display) -> SubnetError {
    SubnetError::Store {
        manager: "etcd",
        message: format!("{op}: {e}"),
    }
}

impl EtcdManager {
    /// Connect (lazily: the first request reaches the servers). TLS is used when both
    /// `keyfile` and `certfile` are set, as upstream.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdManager, SubnetError> {
        if opts.endpoints.is_empty() {
            return Err(store_err("--etcd-endpoints", "no endpoint given"));
        }
        let mut co = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        if let Some(user) = opts.username.as_ref().filter(|u| !u.is_empty()) {
            let password = opts
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_string())
                .unwrap_or_default();
            co = co.with_user(user.clone(), password);
        }
        if let (Some(key), Some(cert)) = (&opts.keyfile, &opts.certfile) {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| store_err(format!("reading {}", p.display()), e))
            };
            let mut tls = etcd_client::TlsOptions::new()
                .identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            if let Some(ca) = &opts.cafile {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            co = co.with_tls(tls);
        } else {
            debug!("etcd TLS not configured (keyfile and certfile unset): this is insecure");
        }
        let client = tokio::time::timeout(RPC_TIMEOUT, Client::connect(&opts.endpoints, Some(co)))
            .await
            .map_err(|_| {
                store_err(
                    format!("connecting to {}", opts.endpoints.join(",")),
                    "timed out",
                )
            })?
            .map_err(|e| store_err(format!("connecting to {}", opts.endpoints.join(",")), e))?;
        Ok(EtcdManager {
            client,
            prefix: opts.prefix.trim_end_matches('/').to_string(),
            requests: Arc::new(AtomicU64::new(0)),
            config: Arc::new(Mutex::new(None)),
        })
    }

    /// etcd requests made so far (each unary call or stream opening counts once).
    pub fn round_trips(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn subnet_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    /// One unary request with a deadline. A gRPC `Unavailable` (an endpoint down, as
    /// upstream's default `127.0.0.1:4001` usually is) is retried with short, doubling pauses
    /// for up to [`FAILOVER_WINDOW`], so the balancer can mark the dead endpoint and fail over
    /// like Go's clientv3. Every operation here is safe to repeat (create-if-absent re-checks
    /// its compare).
    async fn rpc<T, Fut>(&self, op: &str, f: impl Fn(Client) -> Fut) -> Result<T, SubnetError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let give_up = tokio::time::Instant::now() + FAILOVER_WINDOW;
        let mut pause = Duration::from_millis(10);
        loop {
            self.requests.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(RPC_TIMEOUT, f(self.client.clone())).await {
                Err(_) => return Err(store_err(op, format!("timed out after {RPC_TIMEOUT:?}"))),
                Ok(Err(etcd_client::Error::GRpcStatus(s)))
                    if s.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() + pause < give_up =>
                {
                    debug!(op, error = %s.message(), retry_in = ?pause, "etcd endpoint unavailable; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Ok(r) => return r.map_err(|e| store_err(op, e)),
            }
        }
    }

    /// Read one key (None when absent).
    async fn get_one(&self, key: &str) -> Result<Option<KeyValue>, SubnetError> {
        let k = key.to_string();
        let resp = self
            .rpc(&format!("reading {key}"), |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        Ok(resp.kvs().first().cloned())
    }

    /// Decode a key under `subnets/`; anything unparseable is logged and skipped.
    fn decode(&self, kv: &KeyValue) -> Option<(Lease, EtcdLeaseId)> {
        let key = String::from_utf8_lossy(kv.key());
        let Some(name) = key.strip_prefix(&self.subnets_prefix()) else {
            warn!(key = %key, "ignoring key outside the subnets prefix");
            return None;
        };
        let subnet: SubnetKey = match name.parse() {
            Ok(k) => k,
            Err(e) => {
                warn!(key = %key, error = %e, "ignoring unparseable subnet key");
                return None;
            }
        };
        let attrs = match LeaseAttrs::from_json(&String::from_utf8_lossy(kv.value())) {
            Ok(a) => a,
            Err(e) => {
                warn!(key = %key, error = %e, "ignoring lease with an unparseable value");
                return None;
            }
        };
        let expiry = if kv.lease() == 0 {
            Expiry::Never
        } else {
            Expiry::Unknown
        };
        Some((
            Lease {
                key: subnet,
                attrs,
                expiry,
            },
            kv.lease(),
        ))
    }

    fn decode_all(&self, kvs: &[KeyValue]) -> (Vec<Lease>, HashMap<SubnetKey, EtcdLeaseId>) {
        let mut leases = Vec::with_capacity(kvs.len());
        let mut ids = HashMap::with_capacity(kvs.len());
        for (l, id) in kvs.iter().filter_map(|kv| self.decode(kv)) {
            ids.insert(l.key, id);
            leases.push(l);
        }
        (leases, ids)
    }

    /// Every lease, and the store revision of the listing.
    pub async fn list(
        &self,
    ) -> Result<(Vec<Lease>, HashMap<SubnetKey, EtcdLeaseId>, i64), SubnetError> {
        let prefix = self.subnets_prefix();
        let resp = self
            .rpc("listing subnets", |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let (leases, ids) = self.decode_all(resp.kvs());
        Ok((leases, ids, rev))
    }

    /// Every lease with its remaining TTL looked up (one request per leased key): for tools.
    pub async fn list_with_ttl(&self) -> Result<Vec<Lease>, SubnetError> {
        let (mut leases, ids, _) = self.list().await?;
        for l in &mut leases {
            let id = ids[&l.key];
            if id == 0 {
                continue;
            }
            let ttl = self
                .rpc("lease time-to-live", |mut c| async move {
                    c.lease_time_to_live(id, None).await
                })
                .await?
                .ttl();
            l.expiry = if ttl > 0 {
                Expiry::At(SystemTime::now() + Duration::from_secs(ttl as u64))
            } else {
                Expiry::Unknown
            };
        }
        Ok(leases)
    }

    /// Grant an etcd lease of `ttl` seconds: (id, granted TTL).
    async fn grant(&self, ttl: i64) -> Result<(i64, i64), SubnetError> {
        let r = self
            .rpc("granting an etcd lease", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        Ok((r.id(), r.ttl()))
    }

    async fn revoke(&self, id: i64) {
        if let Err(e) = self
            .rpc("revoking an unused etcd lease", |mut c| async move {
                c.lease_revoke(id).await
            })
            .await
        {
            debug!(error = %e, "revoke failed; the lease expires on its own");
        }
    }

    /// One keep-alive of an etcd lease: its TTL afterwards (0 when the lease is gone).
    async fn keep_alive_once(&self, id: i64) -> Result<i64, SubnetError> {
        self.rpc("keeping the etcd lease alive", |mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map_or(0, |m| m.ttl()))
        })
        .await
    }

    async fn put(&self, key: String, value: String, lease: Option<i64>) -> Result<(), SubnetError> {
        let op = format!("writing {key}");
        self.rpc(&op, |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                c.put(key, value, lease.map(|id| PutOptions::new().with_lease(id)))
                    .await
            }
        })
        .await?;
        Ok(())
    }

    /// Refresh a lease this node already holds: keep its etcd lease alive (or keep it a
    /// reservation) and rewrite the attributes only if they changed.
    async fn refresh(
        &self,
        existing: &Lease,
        id: EtcdLeaseId,
        attrs: &LeaseAttrs,
    ) -> Result<Lease, SubnetError> {
        let key = self.subnet_key(&existing.key);
        if id == 0 {
            if existing.attrs != *attrs {
                self.put(key, attrs.to_json(), None).await?;
            }
            return Ok(Lease {
                key: existing.key,
                attrs: attrs.clone(),
                expiry: Expiry::Never,
            });
        }
        let mut ttl = self.keep_alive_once(id).await?;
        let mut lease_id = id;
        if ttl <= 0 {
            // The etcd lease ran out between listing and now: bind the key to a new one.
            (lease_id, ttl) = self.grant(LEASE_TTL_SECS).await?;
            self.put(key, attrs.to_json(), Some(lease_id)).await?;
        } else if existing.attrs != *attrs {
            self.put(key, attrs.to_json(), Some(lease_id)).await?;
        }
        Ok(Lease {
            key: existing.key,
            attrs: attrs.clone(),
            expiry: Expiry::At(SystemTime::now() + Duration::from_secs(ttl as u64)),
        })
    }

    fn cached_config(&self) -> Option<NetConfig> {
        self.config.lock().unwrap().clone()
    }

    /// Watch leases from `start_revision` (exposed for compaction tests). The first update
    /// is `snapshot`.
    pub fn watch_from(&self, snapshot: Vec<Lease>, start_revision: i64) -> LeaseStream {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(watch_task(self.clone(), tx, snapshot, start_revision));
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|u| (u, rx)) })
            .boxed()
    }
}

async fn watch_task(
    mgr: EtcdManager,
    tx: tokio::sync::mpsc::Sender<Result<WatchUpdate, SubnetError>>,
    snapshot: Vec<Lease>,
    mut next_rev: i64,
) {
    if tx.send(Ok(WatchUpdate::Snapshot(snapshot))).await.is_err() {
        return;
    }
    let prefix = mgr.subnets_prefix();
    let mut backoff = Duration::from_millis(100);
    loop {
        mgr.requests.fetch_add(1, Ordering::Relaxed);
        let opened = mgr
            .client
            .clone()
            .watch(
                prefix.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(next_rev),
                ),
            )
            .await;
        match opened {
            Err(e) => warn!(error = %e, retry_in = ?backoff, "opening the etcd watch failed"),
            Ok(mut stream) => loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                match msg {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 {
                            info!(
                                compacted = resp.compact_revision(),
                                "etcd history compacted past our watch; re-listing"
                            );
                            match mgr.list().await {
                                Ok((leases, _, rev)) => {
                                    next_rev = rev + 1;
                                    if tx.send(Ok(WatchUpdate::Snapshot(leases))).await.is_err() {
                                        return;
                                    }
                                }
                                Err(e) => warn!(error = %e, "re-listing after compaction failed"),
                            }
                            break;
                        }
                        if resp.canceled() {
                            warn!(reason = resp.cancel_reason(), "etcd cancelled the watch");
                            break;
                        }
                        let mut events = Vec::new();
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            next_rev = next_rev.max(kv.mod_revision() + 1);
                            match ev.event_type() {
                                EventType::Put => {
                                    if let Some((l, _)) = mgr.decode(kv) {
                                        events.push(LeaseEvent::Added(l));
                                    }
                                }
                                EventType::Delete => {
                                    let key = String::from_utf8_lossy(kv.key());
                                    match key.strip_prefix(&prefix).map(str::parse::<SubnetKey>) {
                                        Some(Ok(k)) => events.push(LeaseEvent::Removed(Lease {
                                            key: k,
                                            attrs: LeaseAttrs::new(Ipv4Addr::UNSPECIFIED),
                                            expiry: Expiry::Unknown,
                                        })),
                                        _ => {
                                            warn!(key = %key, "ignoring deletion of an unparseable subnet key")
                                        }
                                    }
                                }
                            }
                        }
                        backoff = Duration::from_millis(100);
                        if !events.is_empty()
                            && tx.send(Ok(WatchUpdate::Events(events))).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => {
                        warn!("etcd watch stream ended; resuming");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "etcd watch failed; resuming");
                        break;
                    }
                }
            },
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[async_trait]
impl SubnetManager for EtcdManager {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn network_config(&self) -> Result<NetConfig, SubnetError> {
        let key = self.config_key();
        let Some(kv) = self.get_one(&key).await? else {
            return Err(SubnetError::ConfigMissing);
        };
        let config = NetConfig::parse_and_check(&String::from_utf8_lossy(kv.value()))
            .map_err(|source| SubnetError::RemoteConfig { key, source })?;
        *self.config.lock().unwrap() = Some(config.clone());
        Ok(config)
    }

    async fn acquire_lease(&self, req: &AcquireRequest) -> Result<Lease, SubnetError> {
        let config = match self.cached_config() {
            Some(c) => c,
            None => self.network_config().await?,
        };
        let (mut leases, mut ids, _) = self.list().await?;
        let mut granted: Option<(i64, i64)> = None;
        for attempt in 0..RACE_RETRIES {
            let plan = alloc::plan_acquire(
                &alloc::AcquireRequest {
                    config: &config,
                    leases: &leases,
                    public_ip: req.attrs.public_ip,
                    public_ipv6: req.attrs.public_ipv6,
                    previous: req.previous,
                    previous_ipv6: req.previous_ipv6,
                    candidates: alloc::candidates_for_attempt(attempt),
                },
                &mut |n| rand::rng().random_range(0..n),
            )
            .map_err(SubnetError::Alloc)?;
            match plan {
                AcquirePlan::Renew(existing) => {
                    if let Some((id, _)) = granted {
                        self.revoke(id).await;
                    }
                    info!(subnet = %existing.key, "found the lease of this node's public IP, reusing it");
                    return self
                        .refresh(
                            &existing,
                            ids.get(&existing.key).copied().unwrap_or(0),
                            &req.attrs,
                        )
                        .await;
                }
                AcquirePlan::Create { key, origin, stale } => {
                    if let Some(s) = stale {
                        info!(subnet = %s.key, "this node's lease no longer fits the network config; deleting it");
                        let k = self.subnet_key(&s.key);
                        self.rpc(&format!("deleting {k}"), |mut c| {
                            let k = k.clone();
                            async move { c.delete(k, None).await }
                        })
                        .await?;
                    }
                    let (lease_id, ttl) = match granted {
                        Some(g) => g,
                        None => *granted.insert(self.grant(LEASE_TTL_SECS).await?),
                    };
                    let etcd_key = self.subnet_key(&key);
                    let txn = Txn::new()
                        .when([Compare::version(etcd_key.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            etcd_key.clone(),
                            req.attrs.to_json(),
                            Some(PutOptions::new().with_lease(lease_id)),
                        )])
                        .or_else([TxnOp::get(
                            self.subnets_prefix(),
                            Some(GetOptions::new().with_prefix()),
                        )]);
                    let resp = self
                        .rpc(&format!("creating {etcd_key}"), |mut c| {
                            let txn = txn.clone();
                            async move { c.txn(txn).await }
                        })
                        .await?;
                    if resp.succeeded() {
                        info!(subnet = %key, ?origin, attempt, "lease created");
                        return Ok(Lease {
                            key,
                            attrs: req.attrs.clone(),
                            expiry: Expiry::At(SystemTime::now() + Duration::from_secs(ttl as u64)),
                        });
                    }
                    debug!(subnet = %key, attempt, "another node took this subnet first; retrying");
                    for op in resp.op_responses() {
                        if let TxnOpResponse::Get(g) = op {
                            (leases, ids) = self.decode_all(g.kvs());
                        }
                    }
                }
            }
        }
        if let Some((id, _)) = granted {
            self.revoke(id).await;
        }
        Err(SubnetError::RaceRetriesExhausted)
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, SubnetError> {
        let key = self.subnet_key(&lease.key);
        let Some(kv) = self.get_one(&key).await? else {
            return Err(SubnetError::LeaseNotFound(lease.key.to_string()));
        };
        let Some((current, id)) = self.decode(&kv) else {
            return Err(store_err(
                format!("renewing {key}"),
                "the stored value is unparseable",
            ));
        };
        self.refresh(&current, id, &lease.attrs).await
    }

    async fn watch_leases(&self) -> Result<LeaseStream, SubnetError> {
        let (leases, _, rev) = self.list().await?;
        Ok(self.watch_from(leases, rev + 1))
    }
}

/// Leader election on the same etcd: an etcd lease plus a create-if-absent transaction on
/// `<prefix>/leader/<name>` (outside `subnets/`, so upstream nodes never see it).
pub struct Election {
    mgr: EtcdManager,
    key: String,
    identity: String,
    ttl_secs: i64,
}

/// Held while this process is the leader. Dropping it without [`Leadership::resign`] stops
/// the keep-alives: leadership passes on when the etcd lease expires (a crash looks the same).
pub struct Leadership {
    mgr: EtcdManager,
    lease_id: i64,
    lost: tokio::sync::watch::Receiver<bool>,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Election {
    pub fn new(mgr: &EtcdManager, name: &str, identity: &str, ttl_secs: i64) -> Election {
        Election {
            mgr: mgr.clone(),
            key: format!("{}/leader/{name}", mgr.prefix),
            identity: identity.to_string(),
            ttl_secs: ttl_secs.max(2),
        }
    }

    /// The identity of the current leader, if any.
    pub async fn leader(&self) -> Result<Option<String>, SubnetError> {
        let kv = self.mgr.get_one(&self.key).await?;
        Ok(kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Wait until this process is the leader.
    pub async fn campaign(&self) -> Result<Leadership, SubnetError> {
        loop {
            let (lease_id, _) = self.mgr.grant(self.ttl_secs).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.key.clone(),
                    self.identity.clone(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )])
                .or_else([TxnOp::get(self.key.clone(), None)]);
            let resp = self
                .mgr
                .rpc("campaigning", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                info!(key = %self.key, identity = %self.identity, "became leader");
                return Ok(self.hold(lease_id));
            }
            self.mgr.revoke(lease_id).await;
            let rev = resp.header().map_or(0, |h| h.revision());
            self.wait_for_vacancy(rev + 1).await;
        }
    }

    /// Block until the leader key is deleted (or the watch breaks, then re-check).
    async fn wait_for_vacancy(&self, from_rev: i64) {
        self.mgr.requests.fetch_add(1, Ordering::Relaxed);
        let opened = self
            .mgr
            .client
            .clone()
            .watch(
                self.key.clone(),
                Some(WatchOptions::new().with_start_revision(from_rev)),
            )
            .await;
        let Ok(mut stream) = opened else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return;
        };
        while let Ok(Some(resp)) = stream.message().await {
            if resp.compact_revision() > 0 || resp.canceled() {
                return;
            }
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return;
            }
        }
    }

    fn hold(&self, lease_id: i64) -> Leadership {
        let (tx, lost) = tokio::sync::watch::channel(false);
        let mgr = self.mgr.clone();
        let period = Duration::from_secs(self.ttl_secs as u64) / 3;
        let keepalive = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match mgr.keep_alive_once(lease_id).await {
                    Ok(ttl) if ttl > 0 => {}
                    Ok(_) => {
                        warn!("election lease expired: leadership lost");
                        let _ = tx.send(true);
                        return;
                    }
                    Err(e) => warn!(error = %e, "election keep-alive failed; retrying"),
                }
            }
        });
        Leadership {
            mgr: self.mgr.clone(),
            lease_id,
            lost,
            keepalive,
        }
    }
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        !*self.lost.borrow()
    }

    /// Resolves when leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|l| *l).await;
    }

    /// Step down now: revoking the lease deletes the leader key at once.
    pub async fn resign(self) {
        self.keepalive.abort();
        self.mgr.revoke(self.lease_id).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}
