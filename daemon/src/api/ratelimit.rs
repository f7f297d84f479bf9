//! Per-(SdkAppId, action) token buckets for `limits.api_rate_per_second`.
//!
//! Sans-IO: callers pass `now`. A bucket holds at most one second's worth
//! of tokens, so a caller may burst up to the rate and then sustain it.
//! Full buckets carry no information, so they are pruned when the map
//! grows, which keeps memory bounded even in dev mode where any SdkAppId is
//! accepted.

use std::collections::HashMap;
use std::time::Instant;

const PRUNE_ABOVE: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets: HashMap<(u32, &'static str), Bucket>,
}

impl RateLimiter {
    pub fn new(rate_per_second: u32) -> Self {
        Self {
            rate: f64::from(rate_per_second.max(1)),
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.rate);
        b.updated = now;
    }

    /// Takes one token for `(app, action)`; false when the caller is over the rate.
    pub fn try_acquire(&mut self, app: u32, action: &'static str, now: Instant) -> bool {
        if self.buckets.len() > PRUNE_ABOVE {
            let rate = self.rate;
            self.buckets.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
                b.tokens + elapsed * rate < rate
            });
        }
        let rate = self.rate;
        let mut bucket = self.buckets.remove(&(app, action)).unwrap_or(Bucket {
            tokens: rate,
            updated: now,
        });
        self.refill(&mut bucket, now);
        let granted = bucket.tokens >= 1.0;
        if granted {
            bucket.tokens -= 1.0;
        }
        self.buckets.insert((app, action), bucket);
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_to_the_rate_then_sustains_it() {
        let mut rl = RateLimiter::new(20);
        let t0 = Instant::now();
        let granted = (0..25)
            .filter(|_| rl.try_acquire(1, "Describe", t0))
            .count();
        assert_eq!(granted, 20);
        // 50 ms later one more token has accrued.
        assert!(rl.try_acquire(1, "Describe", t0 + Duration::from_millis(50)));
        assert!(!rl.try_acquire(1, "Describe", t0 + Duration::from_millis(50)));
        // Sustained at exactly 20/s: always granted.
        let mut ok = 0;
        for i in 1..=200u64 {
            if rl.try_acquire(1, "Describe", t0 + Duration::from_millis(100 + i * 50)) {
                ok += 1;
            }
        }
        assert_eq!(ok, 200);
    }

    #[test]
    fn apps_and_actions_are_separate() {
        let mut rl = RateLimiter::new(1);
        let t = Instant::now();
        assert!(rl.try_acquire(1, "Create", t));
        assert!(!rl.try_acquire(1, "Create", t));
        assert!(rl.try_acquire(1, "Describe", t));
        assert!(rl.try_acquire(2, "Create", t));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut rl = RateLimiter::new(5);
        let t = Instant::now();
        for app in 0..20_000u32 {
            rl.try_acquire(app, "Describe", t + Duration::from_millis(u64::from(app)));
        }
        assert!(rl.buckets.len() <= PRUNE_ABOVE + 1, "{}", rl.buckets.len());
    }
}
