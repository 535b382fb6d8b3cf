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

/// Keys made on this replica since the last rebuild, kept to add to the next filter; past this
/// many the oldest are dropped (they are in the store's list by then).
const MAX_PENDING: usize = 100_000;

#[derive(Default)]
struct State {
    loaded: Option<Loaded>,
    /// Ids inserted here since the last rebuild began: a rebuild whose list was read before
    /// their creation committed must not lose them.
    pending: Vec<String>,
    /// When the last refresh failed: until `recheck` has passed, misses go to the store
    /// rather than every caller retrying the refresh in turn.
    failed_at: Option<Instant>,
}

struct Loaded {
    filter: BloomFilter,
    version: u64,
    checked_at: Instant,
}

pub struct KeyDirectory {
    store: Arc<dyn Store>,
    recheck: Duration,
    state: RwLock<State>,
    refreshing: tokio::sync::Mutex<()>,
    rebuilds: AtomicU64,
}

/// What memory can say about an id.
enum Known {
    Yes,
    No,
    /// The filter is missing or stale: refresh, then ask again.
    Stale,
    /// The directory cannot answer (a recent failure): let the store decide.
    Unsure,
}

impl KeyDirectory {
    pub fn new(store: Arc<dyn Store>, recheck: Duration) -> KeyDirectory {
        KeyDirectory {
            store,
            recheck,
            state: RwLock::new(State::default()),
            refreshing: tokio::sync::Mutex::new(()),
            rebuilds: AtomicU64::new(0),
        }
    }

    /// False only when no live key has this public id (as of at most `recheck` ago). If the
    /// store cannot be read, true: the caller's own store read then decides (and fails).
    pub async fn might_exist(&self, public_id: &str) -> bool {
        match self.known(public_id) {
            Known::Yes | Known::Unsure => return true,
            Known::No => return false,
            Known::Stale => {}
        }
        if let Err(error) = self.refresh().await {
            tracing::warn!(%error, "the key directory could not be refreshed");
            if let Ok(mut state) = self.state.write() {
                state.failed_at = Some(Instant::now());
            }
        }
        !matches!(self.known(public_id), Known::No)
    }

    /// Adds a key created here, so it works on this replica at once.
    pub fn insert(&self, public_id: &str) {
        if let Ok(mut state) = self.state.write() {
            if let Some(loaded) = state.loaded.as_mut() {
                loaded.filter.insert(public_id);
            }
            if state.pending.len() >= MAX_PENDING {
                state.pending.drain(..MAX_PENDING / 2);
            }
            state.pending.push(public_id.to_owned());
        }
    }

    /// How many times the filter was built from the store's key list.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }

    fn known(&self, public_id: &str) -> Known {
        let Ok(state) = self.state.read() else {
            return Known::Unsure;
        };
        if let Some(loaded) = &state.loaded {
            if loaded.filter.might_contain(public_id) {
                return Known::Yes;
            }
            if loaded.checked_at.elapsed() < self.recheck {
                return Known::No;
            }
        }
        match state.failed_at {
            Some(failed_at) if failed_at.elapsed() < self.recheck => Known::Unsure,
            _ => Known::Stale,
        }
    }

    async fn refresh(&self) -> StoreResult<()> {
        let _one_at_a_time = self.refreshing.lock().await;
        // Another caller refreshed (or failed to) while this one waited.
        let known = match self.state.read() {
            Ok(state) => {
                let failed_recently = state
                    .failed_at
                    .is_some_and(|failed_at| failed_at.elapsed() < self.recheck);
                let loaded = state
                    .loaded
                    .as_ref()
                    .map(|loaded| (loaded.version, loaded.checked_at.elapsed() < self.recheck));
                if failed_recently || matches!(loaded, Some((_, true))) {
                    return Ok(());
                }
                loaded.map(|(version, _)| version)
            }
            Err(_) => None,
        };
        let version = self.store.key_set_version().await?;
        if known == Some(version) {
            if let Ok(mut state) = self.state.write()
                && let Some(loaded) = state.loaded.as_mut()
            {
                loaded.checked_at = Instant::now();
            }
            return Ok(());
        }
        // The version is read before the list, so a change racing the list only makes the
        // next check rebuild again; keys made here meanwhile are in `pending`.
        let ids = self.store.live_key_ids(clock::unix_seconds()).await?;
        let mut filter = BloomFilter::of(ids.iter().map(String::as_str));
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut state) = self.state.write() {
            for id in state.pending.drain(..) {
                filter.insert(&id);
            }
            tracing::debug!(
                keys = ids.len(),
                bytes = filter.size_bytes(),
                "key directory rebuilt"
            );
            state.loaded = Some(Loaded {
                filter,
                version,
                checked_at: Instant::now(),
            });
            state.failed_at = None;
        }
        Ok(())
    }
}
