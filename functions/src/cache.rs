//! The gateway's response cache. Level 1: answers kept in this process (bounded by their
//! size, admitted and evicted by TinyLFU), and concurrent identical misses coalesced so that
//! one upstream call answers them all. Level 2 (optional): a `SharedCache` every replica reads
//! (the SQLite file, or DynamoDB), asked by the one call leading a miss before it goes
//! upstream, and written behind every fresh answer kept. The rules (what is cached, the key,
//! replay) are `ferry_core::cache`'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::cache::{self as rules, CacheKey, Entry};
use ferry_core::ports::{Endpoint, SharedCache};
use serde_json::Value;
use tokio::sync::{Notify, watch};

/// What a lookup found.
pub enum Lookup {
    /// A fresh entry: answer from it.
    Hit(Arc<Entry>),
    /// None: this call asks the upstream. Calls with the same key wait for it until it
    /// finishes (and keeps its answer) or gives up.
    Lead(Leader),
}

/// How long a miss waits on the shared level before it asks upstream anyway.
const SHARED_READ_TIMEOUT: Duration = Duration::from_millis(50);
/// Writes to the shared level under way at once; beyond, answers are kept here only.
const MAX_SHARED_WRITES: usize = 64;

/// What one replica keeps by default: 64 MiB of answers.
pub const DEFAULT_CAPACITY_BYTES: u64 = 64 << 20;

pub struct ResponseCache {
    entries: moka::sync::Cache<CacheKey, Arc<Entry>>,
    /// Keys an upstream call is being made for, and how to tell its waiters.
    in_flight: Mutex<HashMap<CacheKey, watch::Sender<Option<Arc<Entry>>>>>,
    shared: Option<Arc<dyn SharedCache>>,
    /// Writes to the shared level still under way, and a signal when one ends.
    writing: Arc<(AtomicUsize, Notify)>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ResponseCache")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl ResponseCache {
    /// Keeps answers up to about `capacity_bytes` of JSON, in this process only.
    pub fn new(capacity_bytes: u64) -> Arc<ResponseCache> {
        Self::build(capacity_bytes, None)
    }

    /// With a shared level behind this process's.
    pub fn with_shared(capacity_bytes: u64, shared: Arc<dyn SharedCache>) -> Arc<ResponseCache> {
        Self::build(capacity_bytes, Some(shared))
    }

    fn build(capacity_bytes: u64, shared: Option<Arc<dyn SharedCache>>) -> Arc<ResponseCache> {
        Arc::new(ResponseCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity_bytes)
                .weigher(|_, entry: &Arc<Entry>| {
                    u32::try_from(entry.response.to_string().len()).unwrap_or(u32::MAX)
                })
                .build(),
            in_flight: Mutex::new(HashMap::new()),
            shared,
            writing: Arc::default(),
        })
    }

    fn fresh(&self, key: &CacheKey, now_ms: u64) -> Option<Arc<Entry>> {
        let entry = self.entries.get(key)?;
        if entry.is_fresh(now_ms) {
            Some(entry)
        } else {
            self.entries.invalidate(key);
            None
        }
    }

    /// A fresh entry for `key` at either level, without waiting for a call in flight or taking
    /// the lead: for a call that may go nowhere else (every backend refused by its breaker).
    pub async fn peek(&self, key: CacheKey, now_ms: u64) -> Option<Arc<Entry>> {
        if let Some(entry) = self.fresh(&key, now_ms) {
            return Some(entry);
        }
        let shared = self.shared.as_ref()?;
        let read = tokio::time::timeout(SHARED_READ_TIMEOUT, shared.get(&key, now_ms));
        let entry = Arc::new(read.await.ok()?.ok()??);
        if !entry.is_fresh(now_ms) {
            return None;
        }
        self.entries.insert(key, Arc::clone(&entry));
        Some(entry)
    }

    /// The entry for `key`, waiting for an identical call in flight if there is one; or the
    /// lead, for the caller to make the call.
    pub async fn lookup(self: &Arc<Self>, key: CacheKey, now_ms: impl Fn() -> u64) -> Lookup {
        if let Some(entry) = self.fresh(&key, now_ms()) {
            return Lookup::Hit(entry);
        }
        let turn = {
            let Ok(mut in_flight) = self.in_flight.lock() else {
                // A poisoned lock: no coalescing, but no wrong answer either.
                return Lookup::Lead(self.alone(key));
            };
            match in_flight.get(&key) {
                Some(sender) => Turn::Wait(sender.subscribe()),
                None => {
                    let (sender, _) = watch::channel(None);
                    in_flight.insert(key, sender);
                    Turn::Lead(Leader {
                        cache: Arc::clone(self),
                        key,
                        leads: true,
                    })
                }
            }
        };
        let mut waiting = match turn {
            Turn::Wait(waiting) => waiting,
            // This call leads: the shared level may have the answer another replica kept.
            Turn::Lead(leader) => return self.lead(leader, now_ms).await,
        };
        // The leader answers with its entry, or drops its sender without one (it failed, or
        // its answer may not be kept): then every waiter makes its own call at once.
        if waiting.wait_for(Option::is_some).await.is_ok()
            && let Some(entry) = waiting.borrow().clone()
        {
            return Lookup::Hit(entry);
        }
        Lookup::Lead(self.alone(key))
    }

    /// Asks the shared level before the leader goes upstream: a fresh entry there answers this
    /// call and every call waiting on it, and is kept here too.
    async fn lead(self: &Arc<Self>, leader: Leader, now_ms: impl Fn() -> u64) -> Lookup {
        let Some(shared) = &self.shared else {
            return Lookup::Lead(leader);
        };
        // A slow shared level must not eat the call's own time: past this, it is a miss.
        let read = tokio::time::timeout(SHARED_READ_TIMEOUT, shared.get(&leader.key, now_ms()));
        match read.await.unwrap_or(Ok(None)) {
            Ok(Some(entry)) if entry.is_fresh(now_ms()) => {
                let entry = Arc::new(entry);
                leader.publish(Some(Arc::clone(&entry)));
                Lookup::Hit(entry)
            }
            Ok(_) => Lookup::Lead(leader),
            Err(error) => {
                tracing::warn!(%error, "the shared cache could not be read; asking upstream");
                Lookup::Lead(leader)
            }
        }
    }

    /// Keeps a fresh answer here and, behind the caller's back, in the shared level.
    fn keep(&self, key: CacheKey, entry: &Arc<Entry>) {
        self.entries.insert(key, Arc::clone(entry));
        let (Some(shared), Ok(runtime)) = (&self.shared, tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let shared = Arc::clone(shared);
        let entry = Arc::clone(entry);
        let writing = Arc::clone(&self.writing);
        if writing.0.fetch_add(1, Ordering::SeqCst) >= MAX_SHARED_WRITES {
            writing.0.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        runtime.spawn(async move {
            if let Err(error) = shared.put(&key, &entry, crate::clock::unix_millis()).await {
                tracing::warn!(%error, "an answer could not be kept in the shared cache");
            }
            writing.0.fetch_sub(1, Ordering::SeqCst);
            writing.1.notify_waiters();
        });
    }

    /// Returns once every answer kept so far has reached the shared level (or failed to):
    /// for a graceful shutdown, and for tests.
    pub async fn flush(&self) {
        loop {
            let ended = self.writing.1.notified();
            if self.writing.0.load(Ordering::SeqCst) == 0 {
                return;
            }
            ended.await;
        }
    }

    /// A lead that no call waits on: it only keeps its answer.
    pub fn alone(self: &Arc<Self>, key: CacheKey) -> Leader {
        Leader {
            cache: Arc::clone(self),
            key,
            leads: false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

/// Where a call's answer goes once it is whole: into the cache (if it may be kept) and to the
/// calls waiting for it. Dropped unfinished (the call failed or was cut off), it keeps nothing.
pub struct Keeper {
    pub cache: Arc<ResponseCache>,
    pub key: CacheKey,
    pub endpoint: Endpoint,
    pub expires_at_ms: u64,
    /// Set when this call leads others waiting for the same answer.
    pub leader: Option<Leader>,
}

impl Keeper {
    pub fn finish(self, answer: Option<Value>) {
        let entry = answer
            .filter(|answer| rules::is_storable(self.endpoint, answer))
            .map(|response| Entry {
                expires_at_ms: self.expires_at_ms,
                response,
            });
        match self.leader {
            Some(leader) => leader.finish(entry),
            None => {
                if let Some(entry) = entry {
                    self.cache.keep(self.key, &Arc::new(entry));
                }
            }
        }
    }
}

/// A lookup's turn: wait for the call in flight, or lead.
enum Turn {
    Wait(watch::Receiver<Option<Arc<Entry>>>),
    Lead(Leader),
}

/// The one call making the upstream call for a key. Finishing it keeps the answer and hands
/// it to the calls waiting; dropping it lets them go on their own.
pub struct Leader {
    cache: Arc<ResponseCache>,
    key: CacheKey,
    /// Other calls wait on this one.
    leads: bool,
}

impl Leader {
    /// Keeps a fresh answer (if any), here and in the shared level, and wakes the waiting calls.
    pub fn finish(self, entry: Option<Entry>) {
        let entry = entry.map(Arc::new);
        if let Some(entry) = &entry {
            self.cache.keep(self.key, entry);
        }
        self.publish(entry);
    }

    /// Hands `entry` to the waiting calls (and keeps it in this process).
    fn publish(mut self, entry: Option<Arc<Entry>>) {
        if let Some(entry) = &entry {
            self.cache.entries.insert(self.key, Arc::clone(entry));
        }
        if self.leads {
            self.leads = false;
            if let Ok(mut in_flight) = self.cache.in_flight.lock()
                && let Some(sender) = in_flight.remove(&self.key)
            {
                sender.send_replace(entry);
            }
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.leads
            && let Ok(mut in_flight) = self.cache.in_flight.lock()
        {
            // Dropping the sender wakes the waiters empty-handed: each makes its own call.
            in_flight.remove(&self.key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ferry_core::ports::Endpoint;
    use serde_json::json;

    use super::*;

    fn key(text: &str) -> CacheKey {
        CacheKey::of("t", "d", Endpoint::Embeddings, &json!({"input": text}))
    }

    fn entry(expires_at_ms: u64) -> Entry {
        Entry {
            expires_at_ms,
            response: json!({"data": [1]}),
        }
    }

    #[tokio::test]
    async fn concurrent_misses_wait_for_one_leader() {
        let cache = ResponseCache::new(1 << 20);
        let leads = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (cache, leads) = (Arc::clone(&cache), Arc::clone(&leads));
                tokio::spawn(async move {
                    match cache.lookup(key("a"), || 10).await {
                        Lookup::Hit(entry) => entry.expires_at_ms,
                        Lookup::Lead(leader) => {
                            leads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            leader.finish(Some(entry(100)));
                            100
                        }
                    }
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), 100);
        }
        assert_eq!(leads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_leader_passes_the_lead_on_and_stale_entries_are_misses() {
        let cache = ResponseCache::new(1 << 20);
        let Lookup::Lead(first) = cache.lookup(key("a"), || 10).await else {
            panic!("the first call leads");
        };
        let waiter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(
                async move { matches!(cache.lookup(key("a"), || 10).await, Lookup::Lead(_)) },
            )
        };
        tokio::task::yield_now().await;
        drop(first);
        assert!(
            waiter.await.unwrap(),
            "the waiter makes its own call, at once"
        );

        let Lookup::Lead(leader) = cache.lookup(key("b"), || 10).await else {
            panic!("a miss");
        };
        leader.finish(Some(entry(20)));
        assert!(matches!(
            cache.lookup(key("b"), || 19).await,
            Lookup::Hit(_)
        ));
        assert!(matches!(
            cache.lookup(key("b"), || 20).await,
            Lookup::Lead(_)
        ));
    }
}
