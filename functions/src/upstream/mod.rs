//! Upstream adapters: implementations of [`ferry_core::ports::Upstream`].

mod http;

pub use http::{HttpUpstream, UpstreamConfig};
