//! A small per-tenant cache whose entries are trusted for a fixed time:
//! lookups another replica may change (quotas, month-to-date use, model
//! grants) are reread at most that often, and this server drops an entry
//! when it changes the value itself. The lock is held for a map operation
//! only, never across an `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct TtlCache<V> {
    ttl: Duration,
    map: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The value of `key` if it was stored less than the ttl ago.
    pub fn get(&self, key: &str) -> Option<V> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Stores `value` for `key`, read at `read_at`.
    pub fn put(&self, key: &str, read_at: Instant, value: V) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), (read_at, value));
    }

    pub fn forget(&self, key: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let c = TtlCache::new(Duration::from_secs(60));
        c.put("a", Instant::now(), 1);
        assert_eq!(c.get("a"), Some(1));
        c.put("b", Instant::now() - Duration::from_secs(61), 2);
        assert_eq!(c.get("b"), None);
        c.forget("a");
        assert_eq!(c.get("a"), None);
    }
}
