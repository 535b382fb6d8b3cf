//! `ferry-functions`: Ferry's stateless functions as axum routers — the OpenAI-compatible
//! gateway (`/v1`) and the admin API (`/admin/v1`) — with the adapters they run on: the SQLite
//! store, the HTTP upstream, and identity (API keys and OIDC JWTs).
//!
//! Handlers never know which runtime serves them (a local process, Knative or Lambda).

pub mod admin;
mod app;
pub mod auth;
pub mod batch_runner;
pub mod billing;
mod body;
pub mod cache;
mod console;
pub mod edge;
pub mod environment;
mod error;
mod extract;
mod gateway;
pub mod metrics;
mod openapi;
mod pool;
pub mod server;
mod session;
pub mod store;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
mod ttl_cache;
pub mod upstream;

pub use app::{AppState, MoneyConfig, RouterConfig, Surface, router, router_for};
pub use body::BodyRate;
pub use error::ErrorResponse;
pub use ferry_clock as clock;
pub use gateway::route;
pub use openapi::{ApiDoc, openapi_json};
