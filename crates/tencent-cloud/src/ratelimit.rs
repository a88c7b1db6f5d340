//! A client-side token bucket, one per action, so a fleet of agents stays well under the
//! API's documented 100 requests/s per action per account.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Wait until a token is available and take it.
    pub async fn acquire(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap();
                let now = Instant::now();
                let elapsed = now.duration_since(s.1).as_secs_f64();
                s.0 = (s.0 + elapsed * self.rate).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// One bucket per key (the action name).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<String, Arc<TokenBucket>>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub async fn acquire(&self, key: &str) {
        let bucket = self
            .buckets
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(TokenBucket::new(self.rate, self.burst)))
            .clone();
        bucket.acquire().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_its_rate() {
        let b = TokenBucket::new(10.0, 1);
        let start = Instant::now();
        for _ in 0..21 {
            b.acquire().await;
        }
        // 1 immediately, then 20 more at 10/s: 2 s of (virtual) time, not less.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1990), "{took:?}");
        assert!(took < Duration::from_millis(2100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn burst_is_free_then_rate_applies() {
        let b = TokenBucket::new(5.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            b.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        b.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(199));
    }

    #[tokio::test(start_paused = true)]
    async fn actions_have_separate_buckets() {
        let l = RateLimiter::new(1.0, 1);
        let start = Instant::now();
        l.acquire("DescribeRouteTables").await;
        l.acquire("CreateRoutes").await;
        assert!(start.elapsed() < Duration::from_millis(1));
        l.acquire("CreateRoutes").await;
        assert!(start.elapsed() >= Duration::from_millis(999));
    }
}
