//! The `ObjectStore` port: objects are written whole, read back, listed per folder in key
//! order (a write in progress never shows), deleted once, and no key climbs out of the store.

use bytes::Bytes;
use ferry_core::ports::{ObjectStore, StoreError};

pub async fn objects_are_written_read_listed_and_deleted(objects: &dyn ObjectStore) {
    let folder = "files/tnt_a";
    assert_eq!(objects.list(folder).await.unwrap(), Vec::<String>::new());
    assert_eq!(objects.get("files/tnt_a/none").await.unwrap(), None);
    for (name, body) in [("b.jsonl", "{\"b\":1}\n"), ("a.json", "{}"), ("c", "")] {
        objects
            .put(&format!("{folder}/{name}"), Bytes::from(body))
            .await
            .unwrap();
    }
    // Another folder, deeper or beside, is not listed.
    objects
        .put("files/tnt_a/deeper/x", Bytes::from_static(b"x"))
        .await
        .unwrap();
    objects
        .put("files/tnt_b/y", Bytes::from_static(b"y"))
        .await
        .unwrap();
    assert_eq!(
        objects.list(folder).await.unwrap(),
        ["files/tnt_a/a.json", "files/tnt_a/b.jsonl", "files/tnt_a/c"]
    );
    assert_eq!(
        objects.get("files/tnt_a/b.jsonl").await.unwrap(),
        Some(Bytes::from_static(b"{\"b\":1}\n"))
    );
    assert_eq!(
        objects.get("files/tnt_a/c").await.unwrap(),
        Some(Bytes::new())
    );
    // Replaced whole.
    objects
        .put("files/tnt_a/c", Bytes::from_static(b"new"))
        .await
        .unwrap();
    assert_eq!(
        objects.get("files/tnt_a/c").await.unwrap(),
        Some(Bytes::from_static(b"new"))
    );
    assert!(objects.delete("files/tnt_a/c").await.unwrap());
    assert!(!objects.delete("files/tnt_a/c").await.unwrap());
    assert_eq!(objects.get("files/tnt_a/c").await.unwrap(), None);
    assert_eq!(objects.list(folder).await.unwrap().len(), 2);
    for bad in ["", "../escape", "a/../../b", "/etc/passwd"] {
        assert!(
            matches!(objects.get(bad).await, Err(StoreError::Invalid(_))),
            "{bad:?}"
        );
        assert!(
            matches!(objects.delete(bad).await, Err(StoreError::Invalid(_))),
            "{bad:?}"
        );
    }
}
