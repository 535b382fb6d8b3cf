//! The embeddings engine: a BERT-family model (safetensors + `tokenizer.json` + `config.json`,
//! the usual Hugging Face layout), attention-masked mean pooling, L2-normalised vectors.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Inputs per forward pass: bounds memory on long batches.
const BATCH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
    #[error("invalid model files: {0}")]
    Invalid(String),
    #[error("the model failed: {0}")]
    Model(#[from] candle_core::Error),
    /// The caller's input cannot be embedded (a token id outside the vocabulary).
    #[error("{0}")]
    BadInput(String),
    /// Too many calls are already waiting; retry later.
    #[error("the embeddings engine is busy")]
    Busy,
}

/// Calls that may wait for the engine; more are refused at once rather than queued.
const MAX_WAITING: usize = 64;

/// One input: text to tokenize, or token ids as the caller's tokenizer made them.
#[derive(Debug, Clone)]
pub enum EmbeddingInput {
    Text(String),
    Tokens(Vec<u32>),
}

pub struct EmbeddingEngine {
    model: BertModel,
    tokenizer: Tokenizer,
    max_tokens: usize,
    vocab_size: u32,
    device: Device,
    /// One forward pass at a time: parallel passes only fight over the same cores.
    busy: Mutex<()>,
    waiting: AtomicUsize,
}

impl EmbeddingEngine {
    pub fn load(directory: &Path, device: &Device) -> Result<EmbeddingEngine, EmbedError> {
        let read = |name: &str| {
            std::fs::read(directory.join(name))
                .map_err(|error| EmbedError::Io(name.to_owned(), error))
        };
        let config: Config = serde_json::from_slice(&read("config.json")?)
            .map_err(|error| EmbedError::Invalid(format!("config.json: {error}")))?;
        let raw_config: serde_json::Value = serde_json::from_slice(&read("config.json")?)
            .map_err(|error| EmbedError::Invalid(format!("config.json: {error}")))?;
        let config_number = |key: &str, default: u64| {
            raw_config
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(default)
        };
        let max_tokens = config_number("max_position_embeddings", 512) as usize;
        let vocab_size = u32::try_from(config_number("vocab_size", 0)).unwrap_or(u32::MAX);
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|error| EmbedError::Invalid(format!("tokenizer.json: {error}")))?;
        // The shipped tokenizer pads to a fixed length; pad per batch instead, and mask.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|error| EmbedError::Invalid(error.to_string()))?;
        let weights = read("model.safetensors")?;
        let tensors = candle_core::safetensors::load_buffer(&weights, device)?;
        let builder = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(builder, &config)
            .map_err(|error| EmbedError::Invalid(format!("model.safetensors: {error}")))?;
        Ok(EmbeddingEngine {
            model,
            tokenizer,
            max_tokens,
            vocab_size,
            device: device.clone(),
            busy: Mutex::new(()),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Unit-length embeddings of `inputs`, in order, and the number of tokens they took.
    pub fn embed(&self, inputs: &[EmbeddingInput]) -> Result<(Vec<Vec<f32>>, usize), EmbedError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(EmbedError::Busy);
        }
        let result = self.embed_now(inputs);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        result
    }

    fn embed_now(&self, inputs: &[EmbeddingInput]) -> Result<(Vec<Vec<f32>>, usize), EmbedError> {
        let _busy = self
            .busy
            .lock()
            .map_err(|_| EmbedError::Invalid("engine lock poisoned".into()))?;
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut tokens = 0;
        for batch in inputs.chunks(BATCH) {
            let ids = self.token_ids(batch)?;
            tokens += ids.iter().map(Vec::len).sum::<usize>();
            vectors.extend(self.forward(&ids)?);
        }
        Ok((vectors, tokens))
    }

    fn token_ids(&self, batch: &[EmbeddingInput]) -> Result<Vec<Vec<u32>>, EmbedError> {
        batch
            .iter()
            .map(|input| match input {
                EmbeddingInput::Tokens(ids) => {
                    match ids.iter().find(|id| **id >= self.vocab_size) {
                        // Out of range would index past the embedding table on the device.
                        Some(bad) => Err(EmbedError::BadInput(format!(
                            "token id {bad} is outside the vocabulary of {}",
                            self.vocab_size
                        ))),
                        None => Ok(ids.iter().copied().take(self.max_tokens).collect()),
                    }
                }
                EmbeddingInput::Text(text) => self
                    .tokenizer
                    .encode(text.as_str(), true)
                    .map(|encoding| {
                        let mask = encoding.get_attention_mask();
                        encoding
                            .get_ids()
                            .iter()
                            .zip(mask)
                            .filter(|(_, keep)| **keep == 1)
                            .map(|(id, _)| *id)
                            .collect()
                    })
                    .map_err(|error| EmbedError::Invalid(format!("cannot tokenize: {error}"))),
            })
            .collect()
    }

    fn forward(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let longest = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut padded = Vec::with_capacity(ids.len() * longest);
        let mut mask = Vec::with_capacity(ids.len() * longest);
        for row in ids {
            padded.extend(
                row.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, longest - row.len())),
            );
            mask.extend(
                std::iter::repeat_n(1u32, row.len())
                    .chain(std::iter::repeat_n(0, longest - row.len())),
            );
        }
        let shape = (ids.len(), longest);
        let input_ids = Tensor::from_vec(padded, shape, &self.device)?;
        let attention_mask = Tensor::from_vec(mask, shape, &self.device)?;
        let token_type_ids = input_ids.zeros_like()?;
        let hidden = self
            .model
            .forward(&input_ids, &token_type_ids, Some(&attention_mask))?;
        // Mean over real tokens only: padding must not pull the average.
        let mask = attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2()?)
    }
}

pub fn cosine(left: &[f32], right: &[f32]) -> f32 {
    let dot: f32 = left.iter().zip(right).map(|(a, b)| a * b).sum();
    let norm = |values: &[f32]| values.iter().map(|value| value * value).sum::<f32>().sqrt();
    dot / (norm(left) * norm(right)).max(f32::MIN_POSITIVE)
}
