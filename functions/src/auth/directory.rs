//! The key directory: a Bloom filter of the live keys' public ids, so a random or forged key is
//! turned away without a store read.
//!
//! Freshness is bounded without reading the store per call. A key created on this replica is
//! added at once (`insert`). One created on another replica moves the store's key-set version;
//! when an id misses the filter and the filter was last checked more than `recheck` ago, one
//! caller reads that version (a single cheap read, shared by every caller waiting) and rebuilds
//! the filter if it moved. So a new key works everywhere within `recheck`, and a flood of random
//! keys costs at most one version read per `recheck` per replica. A revoked key stays in the
//! filter until the next rebuild; revocation itself is enforced by the store read the filter
//! lets through (bounded by the authenticator's key cache TTL).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ferry_core::bloom::BloomFilter;
use ferry_core::ports::{Store, StoreResult};

use crate::clock;

struct Loaded {
    filter: BloomFilter,
    version: u64,
    checked_at: Instant,
}

pub struct KeyDirectory {
    store: Arc<dyn Store>,
    recheck: Duration,
    loaded: RwLock<Option<Loaded>>,
    refreshing: tokio::sync::Mutex<()>,
    rebuilds: AtomicU64,
}

impl KeyDirectory {
    pub fn new(store: Arc<dyn Store>, recheck: Duration) -> KeyDirectory {
        KeyDirectory {
            store,
            recheck,
            loaded: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            rebuilds: AtomicU64::new(0),
        }
    }

    /// False only when no live key has this public id (as of at most `recheck` ago). If the
    /// store cannot be read, true: the caller's own store read then decides (and fails).
    pub async fn might_exist(&self, public_id: &str) -> bool {
        if let Some(answer) = self.answer_from_memory(public_id) {
            return answer;
        }
        match self.refresh().await {
            Ok(()) => self.answer_from_memory(public_id).unwrap_or(true),
            Err(error) => {
                tracing::warn!(%error, "the key directory could not be refreshed");
                true
            }
        }
    }

    /// Adds a key created here, so it works on this replica at once.
    pub fn insert(&self, public_id: &str) {
        if let Ok(mut loaded) = self.loaded.write()
            && let Some(loaded) = loaded.as_mut()
        {
            loaded.filter.insert(public_id);
        }
    }

    /// How many times the filter was built from the store's key list.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    /// `Some` when memory can answer: the id is in the filter, or the filter is fresh enough
    /// for a miss to stand.
    fn answer_from_memory(&self, public_id: &str) -> Option<bool> {
        let loaded = self.loaded.read().ok()?;
        let loaded = loaded.as_ref()?;
        if loaded.filter.might_contain(public_id) {
            Some(true)
        } else if loaded.checked_at.elapsed() < self.recheck {
            Some(false)
        } else {
            None
        }
    }

    async fn refresh(&self) -> StoreResult<()> {
        let _one_at_a_time = self.refreshing.lock().await;
        let known = match self.loaded.read() {
            Ok(loaded) => loaded
                .as_ref()
                .map(|loaded| (loaded.version, loaded.checked_at.elapsed() < self.recheck)),
            Err(_) => None,
        };
        // Another caller refreshed while this one waited.
        if let Some((_, true)) = known {
            return Ok(());
        }
        let version = self.store.key_set_version().await?;
        if let Some((loaded_version, _)) = known
            && loaded_version == version
        {
            if let Ok(mut loaded) = self.loaded.write()
                && let Some(loaded) = loaded.as_mut()
            {
                loaded.checked_at = Instant::now();
            }
            return Ok(());
        }
        // The version is read before the list, so a change racing the list only makes the
        // next check rebuild again.
        let ids = self.store.live_key_ids(clock::unix_seconds()).await?;
        let filter = BloomFilter::of(ids.iter().map(String::as_str));
        tracing::debug!(
            keys = ids.len(),
            bytes = filter.size_bytes(),
            "key directory rebuilt"
        );
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut loaded) = self.loaded.write() {
            *loaded = Some(Loaded {
                filter,
                version,
                checked_at: Instant::now(),
            });
        }
        Ok(())
    }
}
