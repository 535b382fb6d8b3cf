//! `ferry-core` is Ferry's domain: the OpenAI wire types, ids, exact money, API-key rules,
//! principals and roles, model routes and prices, and the port traits that adapters implement.
//!
//! Invariant: nothing in this crate does I/O. Time and randomness come in as arguments, so every
//! rule here is a plain function with table tests, and the crate builds for `wasm32-wasip1`.

pub mod admission;
pub mod anthropic;
pub mod api_key;
pub mod autoscale;
pub mod batches;
pub mod billing;
pub mod bloom;
pub mod body;
pub mod cache;
pub mod calendar;
pub mod call;
pub mod edge;
pub mod error;
pub mod files;
pub mod ids;
pub mod lease;
pub mod ledger;
pub mod model;
pub mod money;
pub mod openai;
pub mod ports;
pub mod principal;
pub mod ratelimit;
pub mod replay;
pub mod responses;
pub mod route;
pub mod session;
pub mod sse;
pub mod usage;

pub use error::{ApiError, ErrorKind};
pub use money::Money;
