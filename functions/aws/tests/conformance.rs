//! The store conformance suite (`functions/tests/conformance/`) on DynamoDB, served by moto
//! (`moto_server`, from pip `moto[server]`) on loopback: each test gets a table of its own, so
//! the tests run in parallel against one server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod moto;

use ferry_aws::DynamoStore;

type TestStore = DynamoStore;

async fn new_store() -> DynamoStore {
    moto::fresh_store().await
}

#[path = "../../tests/conformance/accounts.rs"]
mod accounts;
#[path = "../../tests/conformance/store.rs"]
mod store;
