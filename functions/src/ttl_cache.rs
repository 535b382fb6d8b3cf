//! A small, bounded TTL cache of looked-up values by id, misses included (negative caching when
//! the value is an `Option`), so hot and random ids alike cost no store round trip while a
//! change made elsewhere still lands within the TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Beyond this many entries the cache starts over: a flood of random ids cannot grow memory.
const CAPACITY: usize = 10_000;

pub struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> TtlCache<V> {
        TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached value, if it is still fresh.
    pub fn get(&self, id: &str) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (stored_at, value) = entries.get(id)?;
        (stored_at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn put(&self, id: &str, value: V) {
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
            entries.insert(id.to_owned(), (Instant::now(), value));
        }
    }

    pub fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_are_cached_and_expire() {
        let cache = TtlCache::<Option<u8>>::new(Duration::from_millis(30));
        assert_eq!(cache.get("a"), None);
        cache.put("a", None);
        assert_eq!(cache.get("a"), Some(None));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn forget_drops_an_entry_and_zero_ttl_caches_nothing() {
        let cache = TtlCache::<Option<u8>>::new(Duration::from_secs(60));
        cache.put("a", None);
        cache.forget("a");
        assert_eq!(cache.get("a"), None);
        let uncached = TtlCache::<Option<u8>>::new(Duration::ZERO);
        uncached.put("a", None);
        assert_eq!(uncached.get("a"), None);
    }
}
