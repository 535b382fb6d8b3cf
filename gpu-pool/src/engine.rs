//! The `Engine` port of a worker: text generation as a stream of events. Implemented by the
//! native candle engine (`native`) and by a wrapper of an external OpenAI-compatible server
//! (`external`, for vLLM or TGI).

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::grammar::OutputConstraint;
use crate::sampling::SamplingParams;
use crate::template::TemplateMessage;

#[derive(Debug, Clone)]
pub enum Prompt {
    /// Rendered through the model's chat template.
    Chat(Vec<TemplateMessage>),
    /// Used as is (legacy completions).
    Text(String),
    Tokens(Vec<u32>),
}

/// A generated token's log probability under the model (after any grammar's mask), and the
/// likeliest tokens at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// Defaults to what is left of the context window.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Independent completions of the same prompt (`n`); choice `i` samples with `seed + i`.
    pub n: usize,
    /// What the output must be (`response_format`); every sampled token keeps it so.
    pub constraint: Option<OutputConstraint>,
    /// Report each token's log probability, with this many likeliest alternatives.
    pub logprobs: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Sent first, once the prompt is tokenized.
    Started { prompt_tokens: usize },
    Delta {
        index: usize,
        text: String,
        /// The tokens this text came from, when log probabilities were asked for (a token's
        /// text may be held back and arrive with a later delta).
        logprobs: Vec<TokenLogprob>,
    },
    Finished {
        index: usize,
        reason: FinishReason,
        completion_tokens: usize,
        /// The stop sequence that ended it, if one did.
        stop_sequence: Option<String>,
    },
    /// Exact totals, when the engine learns them only at the end (an external server's
    /// usage chunk); they replace the counts of `Started` and `Finished`.
    Usage {
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// Generation broke; no more events follow.
    Failed(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The prompt cannot be used (empty, malformed token ids, template refused it).
    #[error("{0}")]
    Invalid(String),
    /// Prompt plus requested completion do not fit the model's context.
    #[error("{0}")]
    ContextExceeded(String),
    /// A request field asks for what this engine cannot do as asked (a schema it cannot
    /// enforce): refused, never served differently.
    #[error("{message}")]
    Unsupported {
        param: &'static str,
        message: String,
    },
    #[error("the engine's queue is full")]
    Overloaded,
    #[error("the engine is unavailable: {0}")]
    Unavailable(String),
}

/// What the autoscaler reads from `/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EngineStats {
    pub queue_depth: usize,
    pub max_queue: usize,
    pub active_sequences: usize,
    pub max_batch: usize,
    pub kv_cache_tokens: usize,
    pub kv_cache_capacity_tokens: usize,
    pub generated_tokens_total: u64,
    pub tokens_per_second: f64,
}

pub type EventStream = mpsc::UnboundedReceiver<Event>;

#[async_trait]
pub trait Engine: Send + Sync {
    /// Queues a request; events arrive on the returned stream. Dropping the stream cancels
    /// the request and frees its batch slot.
    async fn generate(&self, request: GenerateRequest) -> Result<EventStream, EngineError>;

    fn stats(&self) -> EngineStats;
}
