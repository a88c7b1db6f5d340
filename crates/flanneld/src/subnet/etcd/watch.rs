//! The lease watch: a snapshot, then a prefix watch from the snapshot's revision that
//! resumes from its last revision after errors and re-lists after a compaction.

use super::EtcdManager;
use crate::subnet::{LeaseStream, SubnetError};
use backoff::Backoff;
use etcd_client::{EventType, WatchOptions};
use flannel_core::lease::{Expiry, Lease, LeaseAttrs, LeaseEvent};
use flannel_core::watch::WatchUpdate;
use futures::StreamExt;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use tracing::{info, warn};

/// Pauses before re-opening a broken watch.
const REOPEN_RETRY: Backoff = Backoff::new(
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(5),
);

impl EtcdManager {
    /// Watch leases from `start_revision` (exposed for compaction tests). The first update
    /// is `snapshot`.
    pub fn watch_from(&self, snapshot: Vec<Lease>, start_revision: i64) -> LeaseStream {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(watch_task(self.clone(), tx, snapshot, start_revision));
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|u| (u, rx)) })
            .boxed()
    }
}

pub(super) async fn watch_task(
    mgr: EtcdManager,
    tx: tokio::sync::mpsc::Sender<Result<WatchUpdate, SubnetError>>,
    snapshot: Vec<Lease>,
    mut next_rev: i64,
) {
    if tx.send(Ok(WatchUpdate::Snapshot(snapshot))).await.is_err() {
        return;
    }
    let prefix = mgr.subnets_prefix();
    let mut pauses = REOPEN_RETRY.delays();
    let mut reopened = false;
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
            Err(e) => warn!(error = %crate::Report(&e), "opening the etcd watch failed"),
            Ok(mut stream) => loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                match msg {
                    Ok(Some(resp)) => {
                        // A watch reopened after an outage may face another store: one
                        // wiped or restored would silently never send what we are missing.
                        if resp.created() && std::mem::replace(&mut reopened, false) {
                            match mgr.check_history().await {
                                Err(e @ SubnetError::StoreRewound { .. }) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                                Err(e) => {
                                    warn!(error = %crate::report(&e), "checking the store after reopening the watch failed");
                                    break;
                                }
                                Ok(()) => {}
                            }
                        }
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
                                Err(e @ SubnetError::StoreRewound { .. }) => {
                                    let _ = tx.send(Err(e)).await;
                                    return;
                                }
                                Err(e) => {
                                    warn!(error = %crate::report(&e), "re-listing after compaction failed")
                                }
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
                                    match super::codec::decode_deleted_key(&prefix, kv.key()) {
                                        Some(k) => events.push(LeaseEvent::Removed(Lease {
                                            key: k,
                                            attrs: LeaseAttrs::new(Ipv4Addr::UNSPECIFIED),
                                            expiry: Expiry::Unknown,
                                        })),
                                        None => warn!(
                                            key = %String::from_utf8_lossy(kv.key()),
                                            "ignoring deletion of an unparseable subnet key"
                                        ),
                                    }
                                }
                            }
                        }
                        pauses.reset();
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
                        warn!(error = %crate::Report(&e), "etcd watch failed; resuming");
                        break;
                    }
                }
            },
        }
        reopened = true;
        tokio::select! {
            _ = tokio::time::sleep(pauses.next_delay()) => {}
            _ = tx.closed() => return,
        }
    }
}
