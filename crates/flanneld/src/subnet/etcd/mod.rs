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

mod codec;
mod election;
mod history;
mod rpc;
mod watch;

pub use election::Election;
pub use history::Rewind;

use super::{AcquireRequest, LeaseStream, SubnetError, SubnetManager, LEASE_TTL};
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse,
};
use flannel_core::alloc::{self, AcquirePlan};
use flannel_core::lease::{Expiry, Lease, LeaseAttrs, SubnetKey};
use flannel_core::ValidatedNetConfig;
use rand::Rng;
use rpc::store_err;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{debug, info, warn};

/// Upstream's `raceRetries`.
pub const RACE_RETRIES: u32 = 10;
/// Upstream's 24 h lease TTL in etcd's unit.
/// How long a request keeps retrying `Unavailable` before reporting it.
const FAILOVER_WINDOW: Duration = Duration::from_secs(2);
/// Deadline of one unary etcd request.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach etcd (upstream's `--etcd-*` flags). Debug never shows the password, nor a user
/// and password written into an endpoint URL.
#[derive(Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub keyfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub cafile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// The lifetime of this node's subnet lease (`--subnet-lease-ttl`, default 24 h).
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| error_report::redact_urls(e).into_owned())
            .collect();
        f.debug_struct("EtcdOptions")
            .field("endpoints", &endpoints)
            .field("prefix", &self.prefix)
            .field("keyfile", &self.keyfile)
            .field("certfile", &self.certfile)
            .field("cafile", &self.cafile)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
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
            lease_ttl: LEASE_TTL,
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
    config: Arc<Mutex<Option<ValidatedNetConfig>>>,
    history: Arc<history::StoreHistory>,
    /// Seconds an etcd lease is granted for.
    lease_ttl: i64,
}

impl EtcdManager {
    async fn open(opts: &EtcdOptions, with_user: bool) -> Result<Client, SubnetError> {
        let mut co = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        if let Some(user) = opts.username.as_ref().filter(|_| with_user) {
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
        let target = format!(
            "connecting to {}",
            error_report::redact_urls(&opts.endpoints.join(","))
        );
        tokio::time::timeout(RPC_TIMEOUT, Client::connect(&opts.endpoints, Some(co)))
            .await
            .map_err(|_| store_err(&target, "timed out"))?
            .map_err(|e| store_err(&target, e))
    }

    /// Connect (lazily: the first request reaches the servers). TLS is used when both
    /// `keyfile` and `certfile` are set, as upstream.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdManager, SubnetError> {
        if opts.endpoints.is_empty() {
            return Err(store_err("--etcd-endpoints", "no endpoint given"));
        }
        let with_user = opts.username.as_ref().is_some_and(|u| !u.is_empty());
        let client = match Self::open(opts, with_user).await {
            // Like upstream's client: credentials for an etcd without auth are not an error.
            Err(SubnetError::Store { source, .. })
                if with_user && source.to_string().contains("authentication is not enabled") =>
            {
                warn!("etcd credentials given but authentication is not enabled on the server; continuing without them");
                Self::open(opts, false).await?
            }
            other => other?,
        };
        Ok(EtcdManager {
            client,
            prefix: opts.prefix.trim_end_matches('/').to_string(),
            requests: Arc::new(AtomicU64::new(0)),
            config: Arc::new(Mutex::new(None)),
            history: Arc::default(),
            lease_ttl: opts.lease_ttl.as_secs() as i64,
        })
    }

    /// etcd requests made so far (each unary call or stream opening counts once).
    pub fn round_trips(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/flannel-rs/<name>`: outside `subnets/`, so upstream never sees it.
    pub fn record_key(&self, name: &str) -> String {
        format!("{}/flannel-rs/{name}", self.prefix)
    }

    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn subnet_key(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets_prefix())
    }

    /// Decode a key under `subnets/`; anything unparseable is logged and skipped.
    fn decode(&self, kv: &KeyValue) -> Option<(Lease, EtcdLeaseId)> {
        codec::decode_lease(&self.subnets_prefix(), kv.key(), kv.value(), kv.lease())
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
        let rev = self.observe(resp.header())?;
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
                SystemTime::now()
                    .checked_add(Duration::from_secs(ttl as u64))
                    .map_or(Expiry::Unknown, Expiry::At)
            } else {
                Expiry::Unknown
            };
        }
        Ok(leases)
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
            (lease_id, ttl) = self.grant(self.lease_ttl).await?;
            self.put(key, attrs.to_json(), Some(lease_id)).await?;
        } else if existing.attrs != *attrs {
            self.put(key, attrs.to_json(), Some(lease_id)).await?;
        }
        Ok(Lease {
            key: existing.key,
            attrs: attrs.clone(),
            expiry: SystemTime::now()
                .checked_add(Duration::from_secs(ttl as u64))
                .map_or(Expiry::Unknown, Expiry::At),
        })
    }

    /// Check a linearizable read's header against the history seen so far: its revision.
    fn observe(&self, header: Option<&etcd_client::ResponseHeader>) -> Result<i64, SubnetError> {
        let Some(h) = header else { return Ok(0) };
        self.history
            .observe(h.cluster_id(), h.revision())
            .map_err(|r| {
                warn!(error = %r, "the etcd store went backwards");
                SubnetError::StoreRewound {
                    manager: "etcd",
                    source: Box::new(r),
                }
            })?;
        Ok(h.revision())
    }

    /// One cheap linearizable read, to check the store has not gone backwards.
    async fn check_history(&self) -> Result<(), SubnetError> {
        let prefix = self.subnets_prefix();
        let resp = self
            .rpc("checking the store revision", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await
                }
            })
            .await?;
        self.observe(resp.header()).map(|_| ())
    }

    fn cached_config(&self) -> Option<ValidatedNetConfig> {
        self.config.lock().unwrap().clone()
    }
}

#[async_trait]
impl SubnetManager for EtcdManager {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, SubnetError> {
        self.list_with_ttl().await
    }

    async fn network_config(&self) -> Result<ValidatedNetConfig, SubnetError> {
        let key = self.config_key();
        let Some(kv) = self.get_one(&key).await? else {
            return Err(SubnetError::ConfigMissing);
        };
        let config = flannel_core::config::parse_and_check(&String::from_utf8_lossy(kv.value()))
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
                        None => *granted.insert(self.grant(self.lease_ttl).await?),
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
                            expiry: SystemTime::now()
                                .checked_add(Duration::from_secs(ttl as u64))
                                .map_or(Expiry::Unknown, Expiry::At),
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
        if current.attrs.public_ip != lease.attrs.public_ip {
            return Err(SubnetError::LeaseTaken {
                subnet: lease.key.ipv4,
                holder: current.attrs.public_ip,
            });
        }
        self.refresh(&current, id, &lease.attrs).await
    }

    fn leader_election(
        &self,
        name: &str,
        identity: &str,
    ) -> Box<dyn crate::subnet::election::LeaderElection> {
        Box::new(Election::new(
            self,
            name,
            identity,
            election::DEFAULT_TTL_SECS,
        ))
    }

    async fn put_record(&self, name: &str, value: &str) -> Result<(), SubnetError> {
        self.put(self.record_key(name), value.to_string(), None)
            .await
    }

    async fn get_record(&self, name: &str) -> Result<Option<String>, SubnetError> {
        Ok(self
            .get_one(&self.record_key(name))
            .await?
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// An entry is a key `<prefix>/flannel-rs/queues/<name>/<random>` holding the time in Unix
    /// milliseconds, attached to an etcd lease of `ttl`; the store's order is the keys' create
    /// revisions, and the entries ahead are those created at or before ours (one range read
    /// with `max_create_revision`). Values that are not a time are skipped (store input).
    async fn join_queue(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Vec<SystemTime>>, SubnetError> {
        let (lease, _) = self.grant(ttl.as_secs().max(1) as i64).await?;
        let dir = self.record_key(&format!("queues/{name}/"));
        let key = format!("{dir}{:016x}", rand::rng().random::<u64>());
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            .to_string();
        let put = self
            .rpc(&format!("writing {key}"), |mut c| {
                let (key, value) = (key.clone(), now_ms.clone());
                async move {
                    c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                        .await
                }
            })
            .await?;
        // Not `observe`d: a queue entry says nothing about the leases, and concurrent
        // callers' answers may arrive out of revision order.
        let mine = put
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| store_err(format!("writing {key}"), "no response header"))?;
        let resp = self
            .rpc(&format!("listing {dir}"), |mut c| {
                let dir = dir.clone();
                async move {
                    c.get(
                        dir,
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_max_create_revision(mine)
                                .with_sort(SortTarget::Create, SortOrder::Ascend),
                        ),
                    )
                    .await
                }
            })
            .await?;
        Ok(Some(
            resp.kvs()
                .iter()
                .filter_map(|kv| kv.value_str().ok()?.parse::<u64>().ok())
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
                .collect(),
        ))
    }

    async fn watch_leases(&self) -> Result<LeaseStream, SubnetError> {
        let (leases, _, rev) = self.list().await?;
        Ok(self.watch_from(leases, rev + 1))
    }
}
