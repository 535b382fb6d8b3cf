//! Ferry's AWS adapters: [`DynamoStore`] implements the store ports (`Store`, `Accounts`) on one
//! DynamoDB table, and [`S3ObjectStore`] the object store on a bucket. The table's design is in
//! `ARCHITECTURE.md`; [`schema`] holds the names the Terraform must agree with.

mod dynamo;
mod s3;
pub mod schema;

pub use dynamo::DynamoStore;
pub use s3::S3ObjectStore;

/// The AWS configuration of the environment: region, credentials and, where set (tests, a
/// local AWS-compatible server), `AWS_ENDPOINT_URL`.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}
