//! The DynamoDB table's shape and the AWS actions the adapters call: what the Terraform in
//! `iac/terraform` must agree with (checked by `tests/iac_contract.rs`).

/// The table's partition and sort keys (both strings).
pub const PARTITION_KEY: &str = "pk";
pub const SORT_KEY: &str = "sk";
/// The one global secondary index: listings (a tenant's keys, usage, ledger; open holds).
pub const INDEX: &str = "gsi1";
pub const INDEX_PARTITION_KEY: &str = "gsi1pk";
pub const INDEX_SORT_KEY: &str = "gsi1sk";
/// Unix seconds after which DynamoDB deletes the item: settled holds, idempotency records,
/// full rate-limit buckets.
pub const TTL_ATTRIBUTE: &str = "expires_at";

/// Every DynamoDB action `DynamoStore` calls, for IAM.
pub const DYNAMODB_ACTIONS: &[&str] = &[
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:Scan",
    "dynamodb:TransactWriteItems",
    "dynamodb:UpdateItem",
];

/// Every S3 action `S3ObjectStore` calls.
pub const S3_ACTIONS: &[&str] = &["s3:PutObject"];

/// The prefix under which billing writes its exports (invoices, usage).
pub const EXPORTS_PREFIX: &str = "exports/";
