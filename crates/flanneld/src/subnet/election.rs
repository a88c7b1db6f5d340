//! Leader election, a capability of the subnet manager: etcd (a lease plus create-if-absent),
//! a coordination.k8s.io Lease (Kubernetes), in-process for the in-memory store (tests,
//! benchmarks, one-node setups). Whoever holds leadership runs the cluster-wide jobs (route garbage collection,
//! controller mode), so two holders must never overlap: [`Leadership::is_leader`] is true only
//! until a local deadline (the last confirmed renewal plus the TTL, minus a margin), which
//! passes before any other candidate can possibly win, whatever the network does.

use super::SubnetError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

#[async_trait]
pub trait LeaderElection: Send + Sync {
    /// Wait until this process leads.
    async fn campaign(&self) -> Result<Box<dyn Leadership>, SubnetError>;
    /// The identity of the current leader, if any.
    async fn leader(&self) -> Result<Option<String>, SubnetError>;
}

#[async_trait]
pub trait Leadership: Send + Sync {
    /// True while leadership is certain; false for good once it may have passed on.
    fn is_leader(&self) -> bool;
    /// Resolves when leadership is lost (or may be).
    async fn lost(&self);
    /// Step down now so another candidate can take over at once.
    async fn resign(self: Box<Self>);
}

/// Until when leadership is certain; `None` once it is lost. Shared by a holder's renewal
/// task (writer) and its [`Leadership`] handle (reader).
#[derive(Clone)]
pub struct Deadline {
    tx: Arc<tokio::sync::watch::Sender<Option<Instant>>>,
}

impl Deadline {
    pub fn new(until: Instant) -> Deadline {
        Deadline {
            tx: Arc::new(tokio::sync::watch::channel(Some(until)).0),
        }
    }

    /// Extend (or shorten) the deadline; ignored once lost.
    pub fn extend(&self, until: Instant) {
        self.tx.send_if_modified(|d| match d {
            Some(old) if *old != until => {
                *old = until;
                true
            }
            _ => false,
        });
    }

    pub fn lose(&self) {
        self.tx.send_replace(None);
    }

    pub fn holds(&self) -> bool {
        self.tx.borrow().is_some_and(|d| Instant::now() < d)
    }

    /// Resolves once the deadline passes or leadership is dropped.
    pub async fn expired(&self) {
        let mut rx = self.tx.subscribe();
        loop {
            let Some(until) = *rx.borrow_and_update() else {
                return;
            };
            if Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// A standing candidacy: campaigns in the background for as long as it lives and, once it
/// leads, again after losing. [`LeaderSeat::is_leader`] is the leadership's own deadline-bound
/// answer, so a job checked against it never runs on two holders at once.
pub struct LeaderSeat {
    held: Arc<Mutex<Option<Arc<dyn Leadership>>>>,
    /// True from election until the leadership is lost.
    leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Pauses between failed campaigns (the store unreachable).
const CAMPAIGN_RETRY: backoff::Backoff = backoff::Backoff::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(10),
);

impl LeaderSeat {
    pub fn stand(election: Box<dyn LeaderElection>) -> LeaderSeat {
        let held: Arc<Mutex<Option<Arc<dyn Leadership>>>> = Arc::default();
        let slot = Arc::clone(&held);
        let (tell, leading) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut pauses = CAMPAIGN_RETRY.delays();
            loop {
                match election.campaign().await {
                    Ok(l) => {
                        pauses.reset();
                        let l: Arc<dyn Leadership> = Arc::from(l);
                        tracing::info!("elected leader");
                        *slot.lock().unwrap() = Some(Arc::clone(&l));
                        tell.send_replace(true);
                        l.lost().await;
                        *slot.lock().unwrap() = None;
                        tell.send_replace(false);
                        tracing::warn!("leadership lost; standing again");
                    }
                    Err(e) => {
                        let wait = pauses.next_delay();
                        tracing::warn!(error = %crate::report(&e), retry_in = ?wait, "campaign failed");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        });
        LeaderSeat {
            held,
            leading,
            task,
        }
    }

    /// Changes of leadership as they happen (true: elected; false: lost), for a job that
    /// waits for leadership instead of polling for it. Before acting, ask
    /// [`LeaderSeat::is_leader`]: it is bound by the leadership's deadline.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leading.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.held
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|l| l.is_leader())
    }
}

impl Drop for LeaderSeat {
    fn drop(&mut self) {
        self.task.abort();
        // Dropping the leadership releases it (the in-process seat at once, etcd's lease
        // when revoked or expired).
        self.held.lock().unwrap().take();
    }
}

/// Elections among the tasks of one process (the in-memory subnet manager's).
#[derive(Default)]
pub struct InProcessElections {
    holders: Mutex<HashMap<String, (String, u64)>>,
    next_term: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

pub struct InProcessElection {
    elections: Arc<InProcessElections>,
    name: String,
    identity: String,
}

impl InProcessElections {
    pub fn election(self: &Arc<Self>, name: &str, identity: &str) -> InProcessElection {
        InProcessElection {
            elections: Arc::clone(self),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    fn release(&self, name: &str, term: u64) {
        let mut h = self.holders.lock().unwrap();
        if h.get(name).is_some_and(|(_, t)| *t == term) {
            h.remove(name);
        }
        drop(h);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl LeaderElection for InProcessElection {
    async fn campaign(&self) -> Result<Box<dyn Leadership>, SubnetError> {
        loop {
            let notified = self.elections.changed.notified();
            {
                let mut h = self.elections.holders.lock().unwrap();
                if !h.contains_key(&self.name) {
                    let term = self
                        .elections
                        .next_term
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    h.insert(self.name.clone(), (self.identity.clone(), term));
                    return Ok(Box::new(InProcessLeadership {
                        elections: Arc::clone(&self.elections),
                        name: self.name.clone(),
                        term,
                        held: Arc::new(std::sync::atomic::AtomicBool::new(true)),
                    }));
                }
            }
            notified.await;
        }
    }

    async fn leader(&self) -> Result<Option<String>, SubnetError> {
        let h = self.elections.holders.lock().unwrap();
        Ok(h.get(&self.name).map(|(id, _)| id.clone()))
    }
}

struct InProcessLeadership {
    elections: Arc<InProcessElections>,
    name: String,
    term: u64,
    held: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Leadership for InProcessLeadership {
    fn is_leader(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn lost(&self) {
        // In one process nothing can take leadership away: only resign or drop end it.
        std::future::pending::<()>().await;
    }

    async fn resign(self: Box<Self>) {
        // Dropping releases.
    }
}

impl Drop for InProcessLeadership {
    fn drop(&mut self) {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
        self.elections.release(&self.name, self.term);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn in_process_election_has_one_leader_and_hands_over_on_resign() {
        let e = Arc::new(InProcessElections::default());
        let a = e.election("gc", "a");
        let b = e.election("gc", "b");
        let la = a.campaign().await.unwrap();
        assert!(la.is_leader());
        assert_eq!(b.leader().await.unwrap().as_deref(), Some("a"));
        let waiting = tokio::spawn(async move { b.campaign().await.unwrap() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "b must wait while a leads");
        la.resign().await;
        let lb = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("b takes over once a resigns")
            .unwrap();
        assert!(lb.is_leader());
        assert_eq!(a.leader().await.unwrap().as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_expires_unless_extended() {
        let d = Deadline::new(Instant::now() + Duration::from_secs(3));
        assert!(d.holds());
        tokio::time::advance(Duration::from_secs(2)).await;
        d.extend(Instant::now() + Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(d.holds(), "extended");
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(!d.holds(), "past the deadline, leadership is not claimed");
        d.expired().await;
        d.lose();
        d.extend(Instant::now() + Duration::from_secs(60));
        assert!(!d.holds(), "a lost deadline stays lost");
    }
}
