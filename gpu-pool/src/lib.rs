//! `ferry-worker`: a GPU-pool replica. Engines that turn prompts into tokens — the native
//! candle engine (llama-family GGUF chat models with continuous batching, BERT embeddings) or
//! a wrapper of an external OpenAI-compatible server — served over an OpenAI-compatible API
//! with the readiness and load figures an autoscaler needs.
//!
//! The functions never link this crate: they reach a worker over HTTP like any upstream.

pub mod device;
pub mod embed;
pub mod engine;
pub mod external;
pub mod grammar;
pub mod llama;
pub mod native;
pub mod sampling;
pub mod server;
pub mod source;
mod stop;
pub mod template;
pub mod tokenizer;
pub mod tools;
pub mod worker;
