//! Unary etcd requests with a deadline and fail-over past unavailable endpoints, and the
//! small lease/key operations built on them.

use super::{EtcdManager, FAILOVER_WINDOW, RPC_TIMEOUT};
use crate::subnet::SubnetError;
use backoff::Backoff;
use etcd_client::{Client, KeyValue, PutOptions};
use std::future::Future;
use std::sync::atomic::Ordering;
use tracing::debug;

/// Pauses between attempts while an endpoint is unavailable (within [`FAILOVER_WINDOW`]).
const FAILOVER_RETRY: Backoff = Backoff::new(
    std::time::Duration::from_millis(10),
    std::time::Duration::from_millis(200),
);

pub(super) fn store_err(
    op: impl std::fmt::Display,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> SubnetError {
    SubnetError::store("etcd", op, e)
}

impl EtcdManager {
    /// One unary request with a deadline. A gRPC `Unavailable` (an endpoint down, as
    /// upstream's default `127.0.0.1:4001` usually is) is retried with short, doubling pauses
    /// for up to [`FAILOVER_WINDOW`], so the balancer can mark the dead endpoint and fail over
    /// like Go's clientv3. Every operation here is safe to repeat (create-if-absent re-checks
    /// its compare).
    pub(super) async fn rpc<T, Fut>(
        &self,
        op: &str,
        f: impl Fn(Client) -> Fut,
    ) -> Result<T, SubnetError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let give_up = tokio::time::Instant::now() + FAILOVER_WINDOW;
        let mut pauses = FAILOVER_RETRY.delays();
        loop {
            let pause = pauses.next_delay();
            self.requests.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(RPC_TIMEOUT, f(self.client.clone())).await {
                Err(_) => return Err(store_err(op, format!("timed out after {RPC_TIMEOUT:?}"))),
                Ok(Err(etcd_client::Error::GRpcStatus(s)))
                    if s.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() + pause < give_up =>
                {
                    debug!(op, error = %s.message(), retry_in = ?pause, "etcd endpoint unavailable; trying again");
                    tokio::time::sleep(pause).await;
                }
                Ok(r) => return r.map_err(|e| store_err(op, e)),
            }
        }
    }

    /// Read one key (None when absent).
    pub(super) async fn get_one(&self, key: &str) -> Result<Option<KeyValue>, SubnetError> {
        let k = key.to_string();
        let resp = self
            .rpc(&format!("reading {key}"), |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        self.observe(resp.header())?;
        Ok(resp.kvs().first().cloned())
    }

    /// Grant an etcd lease of `ttl` seconds: (id, granted TTL).
    pub(super) async fn grant(&self, ttl: i64) -> Result<(i64, i64), SubnetError> {
        let r = self
            .rpc("granting an etcd lease", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        Ok((r.id(), r.ttl()))
    }

    pub(super) async fn revoke(&self, id: i64) {
        if let Err(e) = self
            .rpc("revoking an unused etcd lease", |mut c| async move {
                c.lease_revoke(id).await
            })
            .await
        {
            debug!(error = %crate::Report(&e), "revoke failed; the lease expires on its own");
        }
    }

    /// One keep-alive of an etcd lease: its TTL afterwards (0 when the lease is gone).
    pub(super) async fn keep_alive_once(&self, id: i64) -> Result<i64, SubnetError> {
        self.rpc("keeping the etcd lease alive", |mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.map_or(0, |m| m.ttl()))
        })
        .await
    }

    pub(super) async fn put(
        &self,
        key: String,
        value: String,
        lease: Option<i64>,
    ) -> Result<(), SubnetError> {
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
}
