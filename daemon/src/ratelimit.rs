//! Token buckets keyed by whatever a caller limits: `(SdkAppId, action)`
//! for `limits.api_rate_per_second`, a client address, an app or a room
//! for WHIP offers (`[ingest]` offer limits).
//!
//! Sans-IO: callers pass `now`. A bucket holds at most `burst` tokens and
//! refills at `rate` per second, so a caller may burst and then sustain the
//! rate. Full buckets carry no information, so they are pruned when the
//! map grows, which keeps memory bounded whoever the keys belong to.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const PRUNE_ABOVE: usize = 4096;

/// The key a client address is limited by: an IPv4 address as it is
/// (IPv4-mapped IPv6 too), an IPv6 address by its /64 — one subscriber's
/// prefix, so that a host with a /64 cannot take a fresh limit for each of
/// its 2^64 addresses.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(std::net::Ipv6Addr::from(s))
            }
        },
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `rate_per_second` sustained, bursts of `burst` (at least one).
    pub fn new(rate_per_second: f64, burst: f64) -> Self {
        Self {
            rate: rate_per_second.max(f64::MIN_POSITIVE),
            burst: burst.max(1.0),
            buckets: HashMap::new(),
        }
    }

    /// A bucket of one second's worth: `rate` per second, bursts of `rate`.
    pub fn per_second(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self::new(rate, rate)
    }

    /// Whether `key` has a token now, without taking it (so that a caller
    /// limited by two buckets spends neither unless both have one).
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let Some(b) = self.buckets.get(key) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        let tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }

    /// Takes one token for `key`; when the caller is over the rate, how
    /// long until a token is there (for `Retry-After`).
    pub fn try_acquire(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        if self.buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, b| {
                let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
                b.tokens + elapsed * rate < burst
            });
        }
        let (rate, burst) = (self.rate, self.burst);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_to_the_rate_then_sustains_it() {
        let mut rl = RateLimiter::per_second(20);
        let t0 = Instant::now();
        let granted = (0..25)
            .filter(|_| rl.try_acquire((1, "Describe"), t0).is_ok())
            .count();
        assert_eq!(granted, 20);
        // 50 ms later one more token has accrued.
        assert!(rl
            .try_acquire((1, "Describe"), t0 + Duration::from_millis(50))
            .is_ok());
        assert!(rl
            .try_acquire((1, "Describe"), t0 + Duration::from_millis(50))
            .is_err());
        // Sustained at exactly 20/s: always granted.
        let mut ok = 0;
        for i in 1..=200u64 {
            if rl
                .try_acquire((1, "Describe"), t0 + Duration::from_millis(100 + i * 50))
                .is_ok()
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 200);
    }

    #[test]
    fn keys_are_separate() {
        let mut rl = RateLimiter::per_second(1);
        let t = Instant::now();
        assert!(rl.try_acquire((1, "Create"), t).is_ok());
        assert!(rl.try_acquire((1, "Create"), t).is_err());
        assert!(rl.try_acquire((1, "Describe"), t).is_ok());
        assert!(rl.try_acquire((2, "Create"), t).is_ok());
    }

    #[test]
    fn a_refusal_says_when_to_retry() {
        // 6 a minute, bursts of 3.
        let mut rl = RateLimiter::new(0.1, 3.0);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(rl.try_acquire("a", t).is_ok());
        }
        let wait = rl.try_acquire("a", t).expect_err("over the rate");
        assert_eq!(wait.as_secs_f64().round(), 10.0);
        let wait = rl
            .try_acquire("a", t + Duration::from_secs(4))
            .expect_err("still over");
        assert_eq!(wait.as_secs_f64().round(), 6.0);
        assert!(rl.try_acquire("a", t + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().expect("v6");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("mapped");
        assert_eq!(
            client_key(mapped),
            "192.0.2.7".parse::<IpAddr>().expect("v4")
        );
        let v4: IpAddr = "192.0.2.8".parse().expect("v4");
        assert_eq!(client_key(v4), v4);
    }

    #[test]
    fn a_check_spends_nothing() {
        let mut rl = RateLimiter::new(1.0, 2.0);
        let t = Instant::now();
        assert!(rl.check(&"a", t).is_ok());
        assert!(rl.try_acquire("a", t).is_ok());
        assert!(rl.check(&"a", t).is_ok());
        assert!(rl.check(&"a", t).is_ok());
        assert!(rl.try_acquire("a", t).is_ok());
        let wait = rl.check(&"a", t).expect_err("empty");
        assert_eq!(wait, Duration::from_secs(1));
        assert!(rl.check(&"a", t + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn memory_stays_bounded() {
        let mut rl = RateLimiter::per_second(5);
        let t = Instant::now();
        for app in 0..20_000u32 {
            let _ = rl.try_acquire(app, t + Duration::from_millis(u64::from(app)));
        }
        assert!(rl.buckets.len() <= PRUNE_ABOVE + 1, "{}", rl.buckets.len());
    }
}
