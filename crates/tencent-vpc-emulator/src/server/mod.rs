//! The three listeners: the signed API on `POST /` ([`api`]), the metadata service, which
//! answers for the instance whose private IP is the request's source address ([`metadata`]),
//! and the admin API for faults, state, call counts, console edits and reset ([`admin`]).
//!
//! Every change to the account goes through [`Shared::mutate`], which holds one ordering lock
//! across the change, the snapshot and its application (state file, data plane): two
//! concurrent writers can never leave the file or the netns with the older state.
//!
//! A [`Lag`] fault makes the data plane trail the API, as a cloud whose route controller
//! accepts a write before its forwarding follows: each change reaches the netns a delay
//! after the call answered, or only once the fault is cleared. Once lagged, every change
//! goes through one queue, in order.

mod admin;
pub mod api;
mod auth;
mod metadata;

pub use admin::admin_router;
pub use api::api_router;
pub use metadata::metadata_router;

use crate::dataplane::Dataplane;
use crate::scenario::Scenario;
use axum::http::HeaderMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Maximum clock skew accepted (5 minutes, as the real API).
pub const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone)]
struct Credential {
    secret_key: String,
    token: Option<String>,
    expires_at: Option<i64>,
}

/// A fault injected through the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// An action name, or `*` for every action.
    #[serde(default = "star")]
    pub action: String,
    /// Fraction of calls answered with `error_code` (0..=1).
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default = "default_fault_code")]
    pub error_code: String,
    /// Added before answering.
    #[serde(default)]
    pub latency_ms: u64,
    /// Fraction of calls whose connection is dropped mid-response.
    #[serde(default)]
    pub drop_rate: f64,
    /// The fault applies to this many matching calls, then disappears (None: until cleared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Seed of the fault's own random draws, so a test sees the same sequence every run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The data plane's lag behind the API (an admin fault): `{"delay_ms": N}` or
/// `{"never": true}` (nothing reaches it until the fault is cleared).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub never: bool,
}

impl Lag {
    /// How long after the API a change forwards; None: not until the fault is cleared.
    pub fn delay(&self) -> Option<Duration> {
        self.delay_ms
            .filter(|_| !self.never)
            .map(Duration::from_millis)
    }
}

/// A state for the lagging data plane: applied at `due`, then acknowledged.
type Queued = (tokio::time::Instant, Scenario, Option<oneshot::Sender<()>>);

fn star() -> String {
    "*".into()
}
fn default_fault_code() -> String {
    "RequestLimitExceeded".into()
}

/// A fault with its random source and remaining count.
struct ActiveFault {
    fault: Fault,
    rng: StdRng,
    remaining: Option<u64>,
}

/// What an injected fault does to one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FaultDecision {
    pub latency_ms: u64,
    pub drop: bool,
    pub error_code: Option<String>,
}

pub struct Shared {
    state: Mutex<Scenario>,
    /// Serialises changes with their application (see the module docs).
    writer: tokio::sync::Mutex<()>,
    initial: Scenario,
    creds: Mutex<HashMap<String, Credential>>,
    roles: Mutex<HashMap<String, (String, i64)>>,
    rate: Mutex<HashMap<String, (i64, u32)>>,
    faults: Mutex<Vec<ActiveFault>>,
    calls: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    state_file: Option<PathBuf>,
    pub dataplane: Option<Arc<Dataplane>>,
    default_instance: Option<String>,
    lag: Mutex<Option<Lag>>,
    /// The queue into the data plane, from the first lag on.
    lagged: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
}

impl Shared {
    pub fn new(
        scenario: Scenario,
        initial: Scenario,
        state_file: Option<PathBuf>,
        dataplane: Option<Dataplane>,
        default_instance: Option<String>,
    ) -> Shared {
        let creds = Self::static_creds(&initial);
        Shared {
            state: Mutex::new(scenario),
            writer: tokio::sync::Mutex::new(()),
            initial,
            creds: Mutex::new(creds),
            roles: Mutex::new(HashMap::new()),
            rate: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
            calls: Mutex::new(BTreeMap::new()),
            state_file,
            dataplane: dataplane.map(Arc::new),
            default_instance,
            lag: Mutex::new(None),
            lagged: Mutex::new(None),
        }
    }

    fn static_creds(s: &Scenario) -> HashMap<String, Credential> {
        s.credentials
            .iter()
            .map(|c| {
                (
                    c.secret_id.clone(),
                    Credential {
                        secret_key: c.secret_key.clone(),
                        token: c.token.clone(),
                        expires_at: c.expires_at,
                    },
                )
            })
            .collect()
    }

    /// A copy of the account's current state.
    pub fn snapshot(&self) -> Scenario {
        self.state.lock().unwrap().clone()
    }

    /// Read the state without copying it.
    pub fn read<R>(&self, f: impl FnOnce(&Scenario) -> R) -> R {
        f(&self.state.lock().unwrap())
    }

    /// Change the state; when `f` succeeds, persist the result and mirror it into the data
    /// plane before the next change may start. A route the API lists is already forwarding:
    /// new routes reach the data plane before readers see the new state, and removed ones
    /// leave it only after (else a reader could take a listed route for a working path).
    pub async fn mutate<R, E>(
        &self,
        f: impl FnOnce(&mut Scenario) -> Result<R, E>,
    ) -> Result<R, E> {
        let _order = self.writer.lock().await;
        let mut next = self.snapshot();
        let result = f(&mut next);
        if result.is_err() {
            *self.state.lock().unwrap() = next;
            return result;
        }
        // Straight into the data plane until the first lag; from then on through its queue,
        // in order (setting a lag always starts the queue).
        let direct = self
            .dataplane
            .as_ref()
            .filter(|_| self.lagged.lock().unwrap().is_none());
        if direct.is_none() {
            match self.lag() {
                None => self.through_queue(Duration::ZERO, next.clone(), true).await,
                // With no delay (never), the state reaches it when the fault is cleared.
                Some(lag) => {
                    if let Some(delay) = lag.delay() {
                        self.through_queue(delay, next.clone(), false).await;
                    }
                }
            }
        }
        if let Some(dp) = direct {
            dp.add(&next).await;
        }
        *self.state.lock().unwrap() = next.clone();
        if let Some(path) = &self.state_file {
            if let Err(e) = write_state(path, &next) {
                warn!(path = %path.display(), error = %e, "writing the state file failed");
            }
        }
        if let Some(dp) = direct {
            dp.remove(&next).await;
        }
        result
    }

    /// Hand `state` to the data plane's queue, to be applied `after` from now (waiting for
    /// it when `wait`). The queue's worker starts with the first lag.
    async fn through_queue(&self, after: Duration, state: Scenario, wait: bool) {
        let Some(tx) = self.queue() else { return };
        let (done, applied) = oneshot::channel();
        let due = tokio::time::Instant::now() + after;
        if tx.send((due, state, wait.then_some(done))).is_ok() && wait {
            let _ = applied.await;
        }
    }

    /// The data plane's queue, its worker started on first use.
    fn queue(&self) -> Option<mpsc::UnboundedSender<Queued>> {
        let dp = self.dataplane.as_ref()?;
        let tx = self
            .lagged
            .lock()
            .unwrap()
            .get_or_insert_with(|| {
                let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
                let dp = Arc::clone(dp);
                tokio::spawn(async move {
                    while let Some((due, state, done)) = rx.recv().await {
                        tokio::time::sleep_until(due).await;
                        dp.sync(&state).await;
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                    }
                });
                tx
            })
            .clone();
        Some(tx)
    }

    /// Make the data plane lag the API (None: catch up now and follow again).
    pub async fn set_lag(&self, lag: Option<Lag>) {
        let _order = self.writer.lock().await;
        *self.lag.lock().unwrap() = lag;
        if lag.is_some() {
            let _ = self.queue();
        } else if self.lagged.lock().unwrap().is_some() {
            self.through_queue(Duration::ZERO, self.snapshot(), true)
                .await;
        }
    }

    pub fn lag(&self) -> Option<Lag> {
        *self.lag.lock().unwrap()
    }

    fn count(&self, action: &str, result: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(action.to_string())
            .or_default()
            .entry(result.to_string())
            .or_default() += 1;
    }

    fn rate_limited(&self, action: &str, now: i64) -> bool {
        let limit = self.state.lock().unwrap().rate_limit_per_second;
        let mut r = self.rate.lock().unwrap();
        let e = r.entry(action.to_string()).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 += 1;
        f64::from(e.1) > limit
    }

    /// Install a fault, replacing any earlier one for the same action.
    pub fn add_fault(&self, fault: Fault) {
        let rng = match fault.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let mut faults = self.faults.lock().unwrap();
        faults.retain(|x| x.fault.action != fault.action);
        faults.push(ActiveFault {
            remaining: fault.count,
            fault,
            rng,
        });
    }

    pub fn faults(&self) -> Vec<Fault> {
        let faults = self.faults.lock().unwrap();
        faults
            .iter()
            .map(|f| Fault {
                count: f.remaining,
                ..f.fault.clone()
            })
            .collect()
    }

    /// Draw what the fault for `action` (or `*`) does to this call.
    fn fault_for(&self, action: &str) -> Option<FaultDecision> {
        let mut faults = self.faults.lock().unwrap();
        let i = faults
            .iter()
            .rposition(|f| f.fault.action == action)
            .or_else(|| faults.iter().rposition(|f| f.fault.action == "*"))?;
        let f = &mut faults[i];
        let drop = f.rng.random_bool(f.fault.drop_rate.clamp(0.0, 1.0));
        let fail = f.rng.random_bool(f.fault.error_rate.clamp(0.0, 1.0));
        let decision = FaultDecision {
            latency_ms: f.fault.latency_ms,
            drop,
            error_code: fail.then(|| f.fault.error_code.clone()),
        };
        if let Some(n) = f.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                faults.remove(i);
            }
        }
        Some(decision)
    }
}

pub(crate) fn write_state(path: &std::path::Path, state: &Scenario) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut f = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A request header as text ("" when absent or not UTF-8).
fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// `n` random lower-case hex digits.
fn random_hex(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| char::from_digit(rng.random_range(0..16u32), 16).unwrap_or('0'))
        .collect()
}

/// A RequestId in the real API's form (a version-4 UUID).
fn request_id() -> String {
    let h = random_hex(32);
    let variant = ["8", "9", "a", "b"][rand::rng().random_range(0..4usize)];
    format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        variant,
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let id = request_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(
            parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]),
            "{id}"
        );
        assert_ne!(request_id(), id);
    }

    fn shared() -> Shared {
        let s = Scenario::from_json(include_str!("../../scenarios/lab.json")).unwrap();
        Shared::new(s.clone(), s, None, None, None)
    }

    #[test]
    fn a_seeded_fault_repeats_its_sequence_and_a_counted_one_expires() {
        let draw = |seed| {
            let sh = shared();
            sh.add_fault(Fault {
                action: "*".into(),
                error_rate: 0.5,
                error_code: "InternalError".into(),
                latency_ms: 0,
                drop_rate: 0.0,
                count: None,
                seed: Some(seed),
            });
            (0..64)
                .map(|_| sh.fault_for("CreateRoutes").unwrap().error_code.is_some())
                .collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7), "same seed, same sequence");
        assert!(a.contains(&true) && a.contains(&false));

        let sh = shared();
        sh.add_fault(Fault {
            action: "DescribeRouteTables".into(),
            error_rate: 1.0,
            error_code: "RequestLimitExceeded".into(),
            latency_ms: 0,
            drop_rate: 0.0,
            count: Some(2),
            seed: None,
        });
        assert!(sh
            .fault_for("DescribeRouteTables")
            .unwrap()
            .error_code
            .is_some());
        assert_eq!(sh.faults()[0].count, Some(1));
        assert!(sh
            .fault_for("DescribeRouteTables")
            .unwrap()
            .error_code
            .is_some());
        assert_eq!(
            sh.fault_for("DescribeRouteTables"),
            None,
            "expired after 2 calls"
        );
        assert!(sh.faults().is_empty());
    }
}
