//! Per-key tokens-per-minute buckets. A call may start while its key's
//! bucket is not empty; once it ends the bucket is charged the tokens it
//! actually used (so one large call can take the bucket below zero, and the
//! key waits until the refill brings it back). The clock is passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Buckets kept before full ones are dropped.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One bucket per key hash; the lock is held for arithmetic only.
#[derive(Debug)]
pub struct TokenBuckets {
    per_minute: f64,
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

impl TokenBuckets {
    /// `per_minute` tokens per key per minute (0 = no limit).
    pub fn new(per_minute: u64) -> Self {
        TokenBuckets {
            per_minute: per_minute as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn per_minute(&self) -> u64 {
        self.per_minute as u64
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.per_minute / 60.0).min(self.per_minute);
        b.last = now;
    }

    /// `Ok` when `key` may start a call at `now`; else the seconds until its
    /// bucket is positive again (for `Retry-After`).
    pub fn check(&self, key: &[u8; 32], now: Instant) -> Result<(), u64> {
        if self.per_minute <= 0.0 {
            return Ok(());
        }
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = map.get_mut(key) else {
            return Ok(());
        };
        self.refill(b, now);
        if b.tokens > 0.0 {
            Ok(())
        } else {
            let wait = (-b.tokens + 1.0) * 60.0 / self.per_minute;
            Err(wait.ceil().max(1.0) as u64)
        }
    }

    /// Charges `tokens` a call of `key` used.
    pub fn charge(&self, key: &[u8; 32], tokens: i64, now: Instant) {
        if self.per_minute <= 0.0 || tokens <= 0 {
            return;
        }
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_BUCKETS && !map.contains_key(key) {
            let full = self.per_minute;
            let per_minute = self.per_minute;
            map.retain(|_, b| {
                let dt = now.saturating_duration_since(b.last).as_secs_f64();
                b.tokens + dt * per_minute / 60.0 < full
            });
        }
        let b = map.entry(*key).or_insert(Bucket {
            tokens: self.per_minute,
            last: now,
        });
        self.refill(b, now);
        b.tokens -= tokens as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_key_over_its_minute_waits_for_the_refill() {
        let b = TokenBuckets::new(600); // 10 tokens/s
        let k = [1u8; 32];
        let t0 = Instant::now();
        assert!(b.check(&k, t0).is_ok());
        b.charge(&k, 650, t0); // one big call: -50
        assert_eq!(b.check(&k, t0), Err(6)); // (50 + 1) / 10 s
        assert_eq!(b.check(&k, t0 + Duration::from_secs(4)), Err(2));
        assert!(b.check(&k, t0 + Duration::from_secs(6)).is_ok());
        // another key is not touched
        assert!(b.check(&[2u8; 32], t0).is_ok());
        // 0 = unlimited
        let free = TokenBuckets::new(0);
        free.charge(&k, 1_000_000, t0);
        assert!(free.check(&k, t0).is_ok());
    }
}
