//! `ferry-scaler`: the GPU pool's control plane.
//!
//! - The **activator** (`proxy`) sits between the functions and the workers. A call for a
//!   deployment goes to its least busy ready replica; when none has room, it waits in the
//!   deployment's bounded queue until one does or its deadline passes (then 503 with
//!   `Retry-After`). A waiting call also wakes the autoscaler, so a cold start begins at once.
//! - The **autoscaler loop** (`control`) reads every replica's `/stats`, feeds the policy in
//!   `ferry_core::autoscale`, and applies the decision through a `Provider`: it starts
//!   replicas, and scales down by draining (no new calls; stopped once nothing is in flight),
//!   so no call is ever lost to a scale event.
//! - **Providers** (`provider`) make and remove replicas: `LocalProcesses` spawns and reaps
//!   `ferry worker` processes, gated on `/readyz`. On Kubernetes, `knative` renders a Knative
//!   Service per deployment instead, and Knative's activator and autoscaler do this work.
//!
//! The functions never link this crate: they reach the activator over HTTP like any upstream.

pub mod control;
pub mod deployment;
#[cfg(feature = "aws")]
pub mod ecs;
pub mod knative;
pub mod metrics;
pub mod provider;
pub mod proxy;

pub use control::Pool;
pub use deployment::{Deployment, DeploymentConfig};
pub use provider::{LocalProcesses, Provider, ProviderError, ReplicaId};
