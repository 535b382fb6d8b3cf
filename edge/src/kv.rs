//! The key-value port, and an in-memory store (tests, and a single-process edge).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::EdgeError;

/// A key-value store: Spin's (or `wasi:keyvalue`'s) at the edge. Values carry their own expiry,
/// so a store without TTLs is enough.
pub trait KeyValue {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, EdgeError>>;
    fn set(&self, key: &str, value: &[u8]) -> impl Future<Output = Result<(), EdgeError>>;
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), EdgeError>>;
    /// Up to `limit` keys starting with `prefix`.
    fn keys(
        &self,
        prefix: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, EdgeError>>;
}

#[derive(Debug, Default)]
pub struct MemoryKv {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryKv {
    fn locked(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>>, EdgeError> {
        self.entries
            .lock()
            .map_err(|_| EdgeError::Store("poisoned".into()))
    }
}

impl KeyValue for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EdgeError> {
        Ok(self.locked()?.get(key).cloned())
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), EdgeError> {
        self.locked()?.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), EdgeError> {
        self.locked()?.remove(key);
        Ok(())
    }

    async fn keys(&self, prefix: &str, limit: usize) -> Result<Vec<String>, EdgeError> {
        Ok(self
            .locked()?
            .range(prefix.to_owned()..)
            .map(|(key, _)| key)
            .take_while(|key| key.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
    }
}
