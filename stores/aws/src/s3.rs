//! `S3ObjectStore`: the object store on an S3 bucket (usage exports, invoices).

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use ferry_core::ports::{ObjectStore, StoreError, StoreResult};

#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: Client,
    bucket: String,
    /// Prepended to every key (e.g. `exports/`), so one bucket can serve several uses and IAM
    /// can grant each only its prefix.
    prefix: String,
}

impl S3ObjectStore {
    pub fn new(
        client: Client,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> S3ObjectStore {
        S3ObjectStore {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    /// On `bucket` under `prefix`, with the AWS configuration given; `path_style` for
    /// S3-compatible servers that need it.
    pub fn from_config(
        config: &aws_config::SdkConfig,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
        path_style: bool,
    ) -> S3ObjectStore {
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build();
        S3ObjectStore::new(Client::from_conf(s3_config), bucket, prefix)
    }

    fn object_key(&self, key: &str) -> StoreResult<String> {
        // Keys are ours, but a tenant id ends up in them: no empty or climbing segments.
        if key.is_empty()
            || key
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(StoreError::Invalid(format!("not an object key: {key:?}")));
        }
        Ok(format!("{}{key}", self.prefix))
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        // One PutObject: S3 makes the object visible whole or not at all.
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object_key(key)?)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| {
                StoreError::Unavailable(format!(
                    "s3://{}/{key}: {}",
                    self.bucket,
                    error
                        .message()
                        .map_or_else(|| format!("{error:?}"), str::to_owned)
                ))
            })?;
        Ok(())
    }

    fn locate(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }
}
