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

/// The DynamoDB actions (IAM's names) each function needs, by what it does with the store.
/// A `TransactWriteItems` is authorised by its parts: `Put` as `PutItem`, `Update` as
/// `UpdateItem`, `ConditionCheck` as `ConditionCheckItem`. The union is checked against the
/// calls in `dynamo/` (a unit test below) and each list against the Terraform.
pub fn dynamodb_actions(function: &str) -> &'static [&'static str] {
    match function {
        // Keys, tenants, models and prices read; calls admitted and settled.
        "gateway" => &[
            "dynamodb:ConditionCheckItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
        ],
        // Everything the gateway does (its callers' keys are checked the same way), and the
        // admin API's writes, deleting models among them.
        "admin" => &[
            "dynamodb:ConditionCheckItem",
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
        ],
        // Holds expired, months closed, and reconciliation, which reads the whole table.
        "billing" => &[
            "dynamodb:ConditionCheckItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:Scan",
            "dynamodb:UpdateItem",
        ],
        _ => &[],
    }
}

/// The S3 actions each function needs: billing writes its exports.
pub fn s3_actions(function: &str) -> &'static [&'static str] {
    match function {
        "billing" => &["s3:PutObject"],
        // Uploaded files (the Files API) under `files/`, batches under `batches/`: written,
        // read, listed, deleted.
        "gateway" => &[
            "s3:DeleteObject",
            "s3:GetObject",
            "s3:ListBucket",
            "s3:PutObject",
        ],
        _ => &[],
    }
}

/// The prefix under which billing writes its exports (invoices, usage).
pub const EXPORTS_PREFIX: &str = "exports/";

/// The gateway's objects (uploaded files under `files/`, batches under `batches/`) are keyed
/// from the bucket's root.
pub const GATEWAY_PREFIX: &str = "";

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The IAM actions the adapters' source calls: each `client.<operation>()`, and each part
    /// of a transaction. Table creation is for tests and local servers only (the Terraform
    /// owns the table in AWS).
    fn called(sources: &[&str]) -> BTreeSet<String> {
        let mut actions = BTreeSet::new();
        for source in sources {
            for (marker, action) in [
                (".get_item()", "dynamodb:GetItem"),
                (".put_item()", "dynamodb:PutItem"),
                (".update_item()", "dynamodb:UpdateItem"),
                (".delete_item()", "dynamodb:DeleteItem"),
                (".query()", "dynamodb:Query"),
                (".scan()", "dynamodb:Scan"),
                ("Put::builder()", "dynamodb:PutItem"),
                ("Update::builder()", "dynamodb:UpdateItem"),
                ("Delete::builder()", "dynamodb:DeleteItem"),
                ("ConditionCheck::builder()", "dynamodb:ConditionCheckItem"),
                (".put_object()", "s3:PutObject"),
                (".get_object()", "s3:GetObject"),
                // HeadObject is authorized as GetObject; ListObjectsV2 as ListBucket.
                (".head_object()", "s3:GetObject"),
                (".delete_object()", "s3:DeleteObject"),
                (".list_objects_v2()", "s3:ListBucket"),
            ] {
                if source.contains(marker) {
                    actions.insert(action.to_owned());
                }
            }
        }
        actions
    }

    #[test]
    fn the_functions_may_do_exactly_what_the_adapters_call() {
        let sources = [
            include_str!("dynamo/mod.rs"),
            include_str!("dynamo/accounts.rs"),
            include_str!("dynamo/write.rs"),
            include_str!("s3.rs"),
        ];
        let granted: BTreeSet<String> = ["gateway", "admin", "billing"]
            .into_iter()
            .flat_map(|function| {
                dynamodb_actions(function)
                    .iter()
                    .chain(s3_actions(function))
                    .map(|action| (*action).to_owned())
            })
            .collect();
        assert_eq!(granted, called(&sources));
    }
}
