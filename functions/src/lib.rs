//! `ferry-functions`: Ferry's stateless functions as axum routers — the OpenAI-compatible
//! gateway (`/v1`) and the admin API (`/admin/v1`) — with the adapters they run on: the SQLite
//! store, the HTTP upstream, and identity (API keys and OIDC JWTs).
//!
//! Handlers never know which runtime serves them (a local process, Knative or Lambda).

pub mod admin;
mod app;
pub mod auth;
mod billing;
mod body;
pub mod cache;
pub mod clock;
mod console;
pub mod edge;
pub mod environment;
mod error;
mod extract;
mod gateway;
pub mod jobs;
mod meter;
pub mod metrics;
mod openapi;
mod pool;
mod relay;
pub mod route;
pub mod server;
mod session;
pub mod store;
pub mod telemetry;
mod ttl_cache;
pub mod upstream;

pub use app::{AppState, MoneyConfig, RouterConfig, Surface, router, router_for};
pub use body::BodyRate;
pub use error::Failure;
pub use openapi::{ApiDoc, openapi_json};
