//! A small TTL cache of looked-up API keys, misses included (negative caching), so random keys
//! and hot keys cost no store round trip, while revocations still land within the TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::ports::KeyRecord;

/// Beyond this many entries the cache starts over: a flood of random keys cannot grow memory.
const CAPACITY: usize = 10_000;

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Option<KeyRecord>)>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(found)` when a fresh lookup result is cached (`found` may itself be `None`).
    pub fn get(&self, public_id: &str) -> Option<Option<KeyRecord>> {
        let entries = self.entries.lock().ok()?;
        let (stored_at, record) = entries.get(public_id)?;
        (stored_at.elapsed() < self.ttl).then(|| record.clone())
    }

    pub fn put(&self, public_id: &str, record: Option<KeyRecord>) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.retain(|_, (stored_at, _)| stored_at.elapsed() < self.ttl);
                if entries.len() >= CAPACITY {
                    entries.clear();
                }
            }
            entries.insert(public_id.to_owned(), (Instant::now(), record));
        }
    }

    pub fn forget(&self, public_id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(public_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_cached_and_expire() {
        let cache = KeyCache::new(Duration::from_millis(30));
        assert_eq!(cache.get("a"), None);
        cache.put("a", None);
        assert_eq!(cache.get("a"), Some(None));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn forget_drops_an_entry_and_zero_ttl_caches_nothing() {
        let cache = KeyCache::new(Duration::from_secs(60));
        cache.put("a", None);
        cache.forget("a");
        assert_eq!(cache.get("a"), None);
        let uncached = KeyCache::new(Duration::ZERO);
        uncached.put("a", None);
        assert_eq!(uncached.get("a"), None);
    }
}
