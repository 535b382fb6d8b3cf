//! The store conformance suite (`ferry-store-conformance`) on DynamoDB, served by moto
//! (`moto_server`, from pip `moto[server]`) on loopback: each test gets a table of its own, so
//! the tests run in parallel against one server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod moto;

use ferry_aws::DynamoStore;
use ferry_store_conformance::Harness;

/// A table of its own for each case.
struct Moto;

impl Harness for Moto {
    type Store = DynamoStore;

    async fn new_store() -> DynamoStore {
        moto::fresh_store().await
    }
}

ferry_store_conformance::conformance_tests!(Moto);
ferry_store_conformance::lease_conformance_tests!(Moto);

/// `S3ObjectStore` writes whole objects under its prefix and refuses keys that climb out.
mod objects {
    use bytes::Bytes;
    use ferry_aws::S3ObjectStore;
    use ferry_core::ports::{ObjectStore, StoreError};

    use super::moto;

    #[tokio::test]
    async fn exports_land_under_the_prefix_whole() {
        let config = moto::sdk_config();
        let bucket = moto::unique("exports");
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        );
        client.create_bucket().bucket(&bucket).send().await.unwrap();
        let objects = S3ObjectStore::from_config(&config, &bucket, "exports/", true);

        let body = Bytes::from_static(b"{\"total_usd\":\"1.5\"}\n");
        objects
            .put("invoices/period=2100-01/inv_a.json", body.clone())
            .await
            .unwrap();
        let stored = client
            .get_object()
            .bucket(&bucket)
            .key("exports/invoices/period=2100-01/inv_a.json")
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert_eq!(stored, body);
        assert_eq!(
            objects.locate("invoices/period=2100-01/inv_a.json"),
            format!("s3://{bucket}/exports/invoices/period=2100-01/inv_a.json")
        );
        let files = S3ObjectStore::from_config(&config, &bucket, "files/", true);
        ferry_store_conformance::objects::objects_are_written_read_listed_and_deleted(&files).await;
        for bad in ["", "../escape", "a//b", "a/./b"] {
            assert!(
                matches!(
                    objects.put(bad, Bytes::new()).await,
                    Err(StoreError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}
