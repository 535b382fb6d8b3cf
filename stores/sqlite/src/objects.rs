//! `LocalObjectStore`: the object store of `ferry serve`, a directory. Keys become paths under
//! it; each object is written to a temporary file and renamed into place, so a reader never
//! sees half an export.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use ferry_core::ports::{ObjectStore, StoreError, StoreResult};

#[derive(Debug, Clone)]
pub struct LocalObjectStore {
    root: PathBuf,
}

impl LocalObjectStore {
    pub fn new(root: impl Into<PathBuf>) -> LocalObjectStore {
        LocalObjectStore { root: root.into() }
    }

    fn path_of(&self, key: &str) -> StoreResult<PathBuf> {
        let relative = Path::new(key);
        // Keys are ours, but a tenant id ends up in them: never let one climb out of the root.
        if key.is_empty()
            || !relative
                .components()
                .all(|component| matches!(component, Component::Normal(_)))
        {
            return Err(StoreError::Invalid(format!("not an object key: {key:?}")));
        }
        Ok(self.root.join(relative))
    }
}

#[async_trait]
impl ObjectStore for LocalObjectStore {
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        let path = self.path_of(key)?;
        let unavailable =
            |error: std::io::Error| StoreError::Unavailable(format!("{}: {error}", path.display()));
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(unavailable)?;
        }
        // A name of its own: two writers of one key (or of keys differing only in extension)
        // never share a temporary file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut partial = path.clone().into_os_string();
        partial.push(format!(".{}.{serial}.partial", std::process::id()));
        let partial = PathBuf::from(partial);
        tokio::fs::write(&partial, &body)
            .await
            .map_err(unavailable)?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreError::Unavailable(format!(
                "{}: {error}",
                path.display()
            ))),
        }
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(StoreError::Unavailable(format!(
                "{}: {error}",
                path.display()
            ))),
        }
    }

    async fn list(&self, folder: &str) -> StoreResult<Vec<String>> {
        let path = self.path_of(folder)?;
        let mut entries = match tokio::fs::read_dir(&path).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(StoreError::Unavailable(format!(
                    "{}: {error}",
                    path.display()
                )));
            }
        };
        let mut keys = Vec::new();
        let unavailable =
            |error: std::io::Error| StoreError::Unavailable(format!("{}: {error}", path.display()));
        while let Some(entry) = entries.next_entry().await.map_err(unavailable)? {
            let is_file = entry.file_type().await.map_err(unavailable)?.is_file();
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // A write in progress is not an object yet.
            if is_file && !name.ends_with(".partial") {
                keys.push(format!("{folder}/{name}"));
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn locate(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn objects_land_whole_under_the_root_and_never_outside() {
        let root = std::env::temp_dir().join(format!("ferry-objects-{}", std::process::id()));
        let store = LocalObjectStore::new(&root);
        store
            .put("usage/period=2026-11/t.jsonl", Bytes::from_static(b"{}\n"))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(root.join("usage/period=2026-11/t.jsonl")).unwrap(),
            b"{}\n"
        );
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(
                matches!(
                    store.put(bad, Bytes::new()).await,
                    Err(StoreError::Invalid(_))
                ),
                "{bad}"
            );
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[tokio::test]
    async fn keeps_the_object_store_contract() {
        let root = std::env::temp_dir().join(format!("ferry-objects-c-{}", std::process::id()));
        let store = LocalObjectStore::new(&root);
        ferry_store_conformance::objects::objects_are_written_read_listed_and_deleted(&store).await;
        std::fs::remove_dir_all(root).unwrap();
    }
}
