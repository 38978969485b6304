//! Per-key token buckets: requests per second for every API key, and the
//! token gateway's tokens per minute (charged after each call). The clock is passed in so the
//! arithmetic is testable; the map is keyed by the SHA-256 of the API key so
//! no secret is ever held here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Sustained rate and burst for every key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second (sustained requests/s).
    pub per_second: f64,
    /// Bucket capacity (requests allowed at once after a quiet period).
    pub burst: f64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 50.0,
            burst: 100.0,
        }
    }
}

/// Buckets kept before refilled ones are dropped (many client addresses).
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets, one per key hash. The lock is held for a few arithmetic
/// operations only and never across an `.await`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Whether `key` has a token at `now`, without taking it (`Err` as [`Self::check`]).
    pub fn peek(&self, key: &[u8; 32], now: Instant) -> Result<(), u64> {
        let RateLimit { per_second, burst } = self.limit;
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = buckets.get(key) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        let tokens = (b.tokens + elapsed * per_second).min(burst);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(((1.0 - tokens) / per_second).ceil().max(1.0) as u64)
        }
    }

    /// `key`'s bucket at `now`, refilled (made full when new; buckets that
    /// refilled are dropped first when there are too many).
    fn bucket<'a>(
        &self,
        buckets: &'a mut HashMap<[u8; 32], Bucket>,
        key: &[u8; 32],
        now: Instant,
    ) -> &'a mut Bucket {
        let RateLimit { per_second, burst } = self.limit;
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Buckets that refilled are the same as new ones: drop them.
            let full = std::time::Duration::from_secs_f64(burst / per_second);
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < full);
        }
        let b = buckets.entry(*key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_second).min(burst);
        b.last = now;
        b
    }

    /// Takes one token for `key` at `now`. `Err(s)`: the bucket is empty and
    /// a token will be available in `s` whole seconds (≥ 1, for `Retry-After`).
    pub fn check(&self, key: &[u8; 32], now: Instant) -> Result<(), u64> {
        let per_second = self.limit.per_second;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = self.bucket(&mut buckets, key, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }

    /// Takes `amount` tokens for `key` at `now`, however many are left: the
    /// bucket may go below zero, and [`Self::peek`] refuses until the refill
    /// brings it back (the token gateway charges a call's actual tokens
    /// after it).
    pub fn charge(&self, key: &[u8; 32], amount: f64, now: Instant) {
        if amount <= 0.0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        self.bucket(&mut buckets, key, now).tokens -= amount;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(RateLimit {
            per_second: 2.0,
            burst: 3.0,
        });
        let k = [7u8; 32];
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rl.check(&k, t0), Ok(()));
        }
        // Empty: one token needs 0.5 s, reported as 1 whole second.
        assert_eq!(rl.check(&k, t0), Err(1));
        // Another key has its own bucket.
        assert_eq!(rl.check(&[8u8; 32], t0), Ok(()));
        // After 1 s two tokens came back, not more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(rl.check(&k, t1), Ok(()));
        assert_eq!(rl.check(&k, t1), Ok(()));
        assert!(rl.check(&k, t1).is_err());
        // A long pause refills only up to the burst.
        let t2 = t1 + Duration::from_secs(100);
        for _ in 0..3 {
            assert_eq!(rl.check(&k, t2), Ok(()));
        }
        assert!(rl.check(&k, t2).is_err());
    }

    #[test]
    fn a_charge_beyond_the_bucket_waits_for_the_refill() {
        let rl = RateLimiter::new(RateLimit {
            per_second: 10.0,
            burst: 600.0,
        });
        let k = [1u8; 32];
        let t0 = Instant::now();
        assert!(rl.peek(&k, t0).is_ok());
        rl.charge(&k, 650.0, t0); // one big call: -50
        assert_eq!(rl.peek(&k, t0), Err(6)); // (50 + 1) / 10 s
        assert_eq!(rl.peek(&k, t0 + Duration::from_secs(4)), Err(2));
        assert!(rl.peek(&k, t0 + Duration::from_secs(6)).is_ok());
        assert!(rl.peek(&[2u8; 32], t0).is_ok());
    }

    #[test]
    fn slow_rate_reports_whole_seconds_to_wait() {
        let rl = RateLimiter::new(RateLimit {
            per_second: 0.25,
            burst: 1.0,
        });
        let k = [1u8; 32];
        let t0 = Instant::now();
        assert_eq!(rl.check(&k, t0), Ok(()));
        assert_eq!(rl.check(&k, t0), Err(4));
    }
}
