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

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key)?)
            .send()
            .await
        {
            Ok(object) => object,
            Err(error) if error.code() == Some("NoSuchKey") => return Ok(None),
            Err(error) => return Err(self.failed(key, &error)),
        };
        let body = object.body.collect().await.map_err(|error| {
            StoreError::Unavailable(format!("s3://{}/{key}: {error}", self.bucket))
        })?;
        Ok(Some(body.into_bytes()))
    }

    async fn delete(&self, key: &str) -> StoreResult<bool> {
        let object_key = self.object_key(key)?;
        // DeleteObject says nothing of whether there was one: ask first.
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(_) => {}
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {
                return Ok(false);
            }
            Err(error) => return Err(self.failed(key, &error)),
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(object_key)
            .send()
            .await
            .map_err(|error| self.failed(key, &error))?;
        Ok(true)
    }

    async fn list(&self, folder: &str) -> StoreResult<Vec<String>> {
        let prefix = format!("{}/", self.object_key(folder)?);
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.failed(folder, &error))?;
            for object in page.contents() {
                if let Some(key) = object.key().and_then(|key| key.strip_prefix(&self.prefix)) {
                    keys.push(key.to_owned());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn locate(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }
}

impl S3ObjectStore {
    fn failed(&self, key: &str, error: &impl ProvideErrorMetadata) -> StoreError
    where
        Self: Sized,
    {
        StoreError::Unavailable(format!(
            "s3://{}/{key}: {}",
            self.bucket,
            error.message().unwrap_or("the request failed")
        ))
    }
}
