//! The one retry pacing used by every retry loop in flannel-rs (the daemon, the etcd store,
//! the cloud client): a ceiling that doubles from `initial` up to `max`, and each pause drawn
//! uniformly from the upper half of the ceiling ("equal jitter"). A fleet of nodes restarting
//! against a dead store therefore spreads its retries instead of hammering it in lockstep,
//! while no pause is ever shorter than half the intended one.
//!
//! Pure apart from the random draw, which is injectable ([`Delays::with_rng`]) for tests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// A retry policy: a doubling ceiling from `initial` to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max }
    }

    /// The ceiling of the `attempt`-th pause (0-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max)
            .max(self.initial.min(self.max))
    }

    /// A fresh sequence of pauses (`Send`, so it may be held across an `.await`).
    pub fn delays(&self) -> Delays<StdRng> {
        Delays::with_rng(*self, StdRng::from_rng(&mut rand::rng()))
    }
}

/// The pauses of one retry loop. `reset` after a success so the next failure starts short.
#[derive(Debug, Clone)]
pub struct Delays<R> {
    policy: Backoff,
    attempt: u32,
    rng: R,
}

impl<R: Rng> Delays<R> {
    pub fn with_rng(policy: Backoff, rng: R) -> Self {
        Delays {
            policy,
            attempt: 0,
            rng,
        }
    }

    /// The next pause (and advance).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.policy.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        equal_jitter(ceiling, self.rng.random_range(0.0..=1.0))
    }

    /// How many pauses were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl<R: Rng> Iterator for Delays<R> {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

/// Half of `ceiling` fixed, the other half scaled by `unit` (in 0..=1).
pub fn equal_jitter(ceiling: Duration, unit: f64) -> Duration {
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// `period` spread by ±`spread` (a fraction, e.g. 0.1): periodic work such as resyncs, so
/// nodes started together do not tick together.
pub fn spread(period: Duration, spread: f64) -> Duration {
    let s = spread.clamp(0.0, 0.99);
    period.mul_f64(rand::rng().random_range((1.0 - s)..=(1.0 + s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An rng that always draws zero: every pause is the lower bound.
    struct Zero;
    impl rand::RngCore for Zero {
        fn next_u32(&mut self) -> u32 {
            0
        }
        fn next_u64(&mut self) -> u64 {
            0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(0);
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_and_caps() {
        let b = Backoff::new(100 * MS, 1000 * MS);
        let c: Vec<_> = (0..6).map(|a| b.ceiling(a)).collect();
        assert_eq!(
            c,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        assert_eq!(
            b.ceiling(u32::MAX),
            1000 * MS,
            "no overflow at huge attempts"
        );
    }

    #[test]
    fn pauses_stay_in_the_upper_half_of_the_ceiling() {
        let b = Backoff::new(100 * MS, 5000 * MS);
        let mut d = b.delays();
        for attempt in 0..40 {
            let p = d.next_delay();
            let c = b.ceiling(attempt);
            assert!(
                p >= c / 2 && p <= c,
                "attempt {attempt}: {p:?} outside [{:?}, {c:?}]",
                c / 2
            );
        }
        assert_eq!(d.attempts(), 40);
        d.reset();
        assert!(d.next_delay() <= 100 * MS, "reset starts short again");
    }

    #[test]
    fn jitter_extremes() {
        assert_eq!(equal_jitter(1000 * MS, 0.0), 500 * MS);
        assert_eq!(equal_jitter(1000 * MS, 1.0), 1000 * MS);
        assert_eq!(equal_jitter(1000 * MS, 7.0), 1000 * MS, "clamped");
    }

    #[test]
    fn a_fleet_does_not_retry_in_lockstep() {
        // 100 independent loops: their first pauses are not all equal.
        let b = Backoff::new(1000 * MS, 30_000 * MS);
        let firsts: std::collections::BTreeSet<_> =
            (0..100).map(|_| b.delays().next_delay()).collect();
        assert!(
            firsts.len() > 50,
            "only {} distinct first pauses",
            firsts.len()
        );
    }

    #[test]
    fn injected_rng_is_deterministic() {
        let b = Backoff::new(100 * MS, 1000 * MS);
        let a: Vec<_> = Delays::with_rng(b, Zero).take(3).collect();
        assert_eq!(a, [50 * MS, 100 * MS, 200 * MS]);
    }

    #[test]
    fn spread_stays_within_bounds() {
        for _ in 0..200 {
            let p = spread(1000 * MS, 0.1);
            assert!(p >= 900 * MS && p <= 1100 * MS, "{p:?}");
        }
    }
}
