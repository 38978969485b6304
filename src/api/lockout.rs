//! Keys that fail (issue #16, item 6): an unknown key is remembered for a
//! while, so trying it again costs no ledger lookup, and each client address
//! may fail only so often — past that it gets 429 with `Retry-After` before
//! any lookup is made. A client's valid keys that are already cached keep
//! working meanwhile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;

use super::auth::key_hash;
use super::ratelimit::{RateLimit, RateLimiter};

/// How long an unknown key is answered 401 without a lookup.
pub const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(60);
/// Most unknown keys remembered (a flood of random keys evicts old ones).
const MAX_UNKNOWN_KEYS: usize = 10_000;
/// Failed authentications a client address may make: a burst, then one a second.
pub const FAILURES: RateLimit = RateLimit {
    per_second: 1.0,
    burst: 20.0,
};

/// Unknown keys and failed attempts per client.
pub struct Lockout {
    failures: RateLimiter,
    unknown: Mutex<HashMap<[u8; 32], Instant>>,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout {
            failures: RateLimiter::new(FAILURES),
            unknown: Mutex::new(HashMap::new()),
        }
    }
}

impl Lockout {
    /// Whether `key` failed a lookup within [`UNKNOWN_KEY_TTL`].
    pub fn is_unknown(&self, key: &[u8; 32], now: Instant) -> bool {
        let unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        unknown
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < UNKNOWN_KEY_TTL)
    }

    /// Remembers a key the ledger does not know.
    pub fn remember_unknown(&self, key: [u8; 32], now: Instant) {
        let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
        if unknown.len() >= MAX_UNKNOWN_KEYS {
            unknown.retain(|_, at| now.saturating_duration_since(*at) < UNKNOWN_KEY_TTL);
            if unknown.len() >= MAX_UNKNOWN_KEYS {
                unknown.clear();
            }
        }
        unknown.insert(key, now);
    }

    /// Forgets an unknown key (it was just created).
    pub fn forget(&self, key: &[u8; 32]) {
        self.unknown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// `Err(seconds)` while `client` has used up its failures.
    pub fn blocked(&self, client: &[u8; 32], now: Instant) -> Result<(), u64> {
        self.failures.peek(client, now)
    }

    /// Counts one failure of `client`; `Err(seconds)` when it had none left.
    pub fn fail(&self, client: &[u8; 32], now: Instant) -> Result<(), u64> {
        self.failures.check(client, now)
    }
}

/// The caller's address as a bucket key (the peer address the server saw;
/// one shared bucket where the server was started without connect info).
pub fn client_id(parts: &Parts) -> [u8; 32] {
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => key_hash(&format!("client:{}", addr.ip())),
        None => [0u8; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_remembered_for_a_while_and_failures_run_out() {
        let l = Lockout::default();
        let t0 = Instant::now();
        let k = [9u8; 32];
        assert!(!l.is_unknown(&k, t0));
        l.remember_unknown(k, t0);
        assert!(l.is_unknown(&k, t0 + Duration::from_secs(59)));
        assert!(!l.is_unknown(&k, t0 + UNKNOWN_KEY_TTL));
        l.forget(&k);
        assert!(!l.is_unknown(&k, t0));
        let c = [1u8; 32];
        for _ in 0..20 {
            assert_eq!(l.blocked(&c, t0), Ok(()));
            assert_eq!(l.fail(&c, t0), Ok(()));
        }
        assert_eq!(l.blocked(&c, t0), Err(1));
        assert!(l.fail(&c, t0).is_err());
        assert_eq!(
            l.blocked(&[2u8; 32], t0),
            Ok(()),
            "another client is not blocked"
        );
        assert_eq!(l.blocked(&c, t0 + Duration::from_secs(1)), Ok(()));
    }
}
