//! The native engine: a llama-family GGUF model on candle, driven by a continuous-batching
//! scheduler on its own thread.
//!
//! Between two decoding steps the scheduler admits queued requests (prefilling each prompt)
//! and retires finished or abandoned sequences, so requests join and leave the running batch
//! without waiting for each other. Each sequence owns its KV cache.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc as std_mpsc};
use std::time::Instant;

use async_trait::async_trait;
use candle_core::Device;
use llguidance::Matcher;
use tokenizers::Tokenizer;
use tokio::sync::mpsc;

use crate::engine::{
    Engine, EngineError, EngineStats, Event, EventStream, FinishReason, GenerateRequest, Prompt,
    TokenLogprob,
};
use crate::grammar::{self, GrammarError, Grammars};
use crate::llama::{GgufFile, KvCache, Llama, LoadError, WeightFormat};
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::{StopMatcher, StopOutcome};
use crate::template::{ChatTemplate, TemplateError};
use crate::tokenizer::{self, Detokenizer, TokenizerError};

#[derive(Debug, Clone)]
pub struct BatchingConfig {
    /// Sequences decoded together in one step.
    pub max_batch: usize,
    /// Requests waiting beyond the batch; more are refused (503) rather than queued forever.
    pub max_queue: usize,
}

impl Default for BatchingConfig {
    fn default() -> BatchingConfig {
        BatchingConfig {
            max_batch: 16,
            max_queue: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NativeLoadError {
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the model file has no chat template (`tokenizer.chat_template`)")]
    NoTemplate,
    #[error("could not start the engine thread: {0}")]
    Thread(std::io::Error),
}

/// Counters shared between the scheduler thread and readers of `/stats`.
#[derive(Default)]
struct Shared {
    queue_depth: AtomicUsize,
    active: AtomicUsize,
    kv_tokens: AtomicUsize,
    generated: AtomicU64,
    tokens_per_second_bits: AtomicU64,
}

struct Job {
    prompt: Vec<u32>,
    sampling: SamplingParams,
    max_tokens: usize,
    stop: Vec<String>,
    n: usize,
    /// The output's grammar, ready at its start; each choice takes a copy.
    matcher: Option<Matcher>,
    logprobs: Option<usize>,
    events: mpsc::UnboundedSender<Event>,
}

pub struct NativeEngine {
    jobs: std_mpsc::Sender<Job>,
    shared: Arc<Shared>,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    context_length: usize,
    vocab_size: usize,
    end_tokens: Vec<u32>,
    /// Built on the first constrained request (the vocabulary's trie takes a while), so
    /// a replica that never sees one does not pay for it at its cold start.
    grammars: OnceLock<Result<Grammars, String>>,
    config: BatchingConfig,
}

impl NativeEngine {
    pub fn load(
        path: &Path,
        device: &Device,
        config: BatchingConfig,
    ) -> Result<NativeEngine, NativeLoadError> {
        let file = GgufFile::open(path)?;
        let tokenizer = tokenizer::from_gguf(&file.content)?;
        let source = file
            .content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|value| value.to_string().ok())
            .ok_or(NativeLoadError::NoTemplate)?;
        let token_text = |key: &str| {
            tokenizer::token_id(&file.content, key)
                .and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let template = ChatTemplate::new(
            source,
            &token_text("tokenizer.ggml.bos_token_id"),
            &token_text("tokenizer.ggml.eos_token_id"),
        )?;
        let mut end_tokens: HashSet<u32> =
            tokenizer::token_id(&file.content, "tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect();
        // Chat models also end turns with their template's closing token.
        for marker in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"] {
            if let Some(id) = tokenizer.token_to_id(marker) {
                end_tokens.insert(id);
            }
        }
        let model = Llama::load(&file, device, WeightFormat::Hybrid)?;
        drop(file);
        let vocab_size = model.config.vocab_size;
        let config = BatchingConfig {
            max_batch: config.max_batch.max(1),
            ..config
        };
        let context_length = model.config.context_length;
        let tokenizer = Arc::new(tokenizer);
        let shared = Arc::new(Shared::default());
        let (jobs, receiver) = std_mpsc::channel();
        let mut end_token_list: Vec<u32> = end_tokens.iter().copied().collect();
        end_token_list.sort_unstable();
        let scheduler = Scheduler {
            model,
            tokenizer: tokenizer.clone(),
            end_tokens,
            shared: shared.clone(),
            max_batch: config.max_batch,
            running: Vec::new(),
        };
        std::thread::Builder::new()
            .name("ferry-engine".into())
            .spawn(move || scheduler.run(receiver))
            .map_err(NativeLoadError::Thread)?;
        Ok(NativeEngine {
            jobs,
            shared,
            tokenizer,
            template,
            context_length,
            vocab_size,
            end_tokens: end_token_list,
            grammars: OnceLock::new(),
            config,
        })
    }

    /// A matcher for the request's constraint, or why it cannot be enforced.
    fn matcher(&self, constraint: &grammar::OutputConstraint) -> Result<Matcher, EngineError> {
        let grammars = self
            .grammars
            .get_or_init(|| {
                Grammars::new(self.tokenizer.clone(), &self.end_tokens, self.vocab_size)
                    .map_err(|error| error.to_string())
            })
            .as_ref()
            .map_err(|error| EngineError::Unavailable(error.clone()))?;
        grammars.matcher(constraint).map_err(|error| match error {
            GrammarError::Unsupported(message) => EngineError::Unsupported {
                param: "response_format",
                message: format!("this JSON schema cannot be enforced: {message}"),
            },
            GrammarError::Vocabulary(message) => EngineError::Unavailable(message),
        })
    }

    /// Token ids of a prompt, after the chat template for chat prompts.
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let text = match prompt {
            Prompt::Tokens(tokens) => {
                // An id past the vocabulary would index out of bounds on the device.
                if let Some(bad) = tokens.iter().find(|id| **id as usize >= self.vocab_size) {
                    return Err(EngineError::Invalid(format!(
                        "token id {bad} is outside the vocabulary of {}",
                        self.vocab_size
                    )));
                }
                return Ok(tokens.clone());
            }
            Prompt::Text(text) => text.clone(),
            Prompt::Chat(messages) => self
                .template
                .render(messages)
                .map_err(|error| EngineError::Invalid(error.to_string()))?,
        };
        let encoding = self.tokenizer.encode(text, false).map_err(|error| {
            EngineError::Invalid(format!("cannot tokenize the prompt: {error}"))
        })?;
        Ok(encoding.get_ids().to_vec())
    }
}

#[async_trait]
impl Engine for NativeEngine {
    async fn generate(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let prompt = self.tokenize(&request.prompt)?;
        if prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        let room = self.context_length.saturating_sub(prompt.len());
        if room == 0 {
            return Err(EngineError::Invalid(format!(
                "the prompt has {} tokens; this model's context holds {}",
                prompt.len(),
                self.context_length
            )));
        }
        if request
            .max_tokens
            .is_some_and(|max_tokens| max_tokens > room)
        {
            return Err(EngineError::ContextExceeded(format!(
                "max_tokens plus the prompt's {} tokens exceeds the model's context of {} tokens",
                prompt.len(),
                self.context_length
            )));
        }
        let matcher = request
            .constraint
            .as_ref()
            .map(|constraint| self.matcher(constraint))
            .transpose()?;
        if self.shared.queue_depth.load(Ordering::Relaxed) >= self.config.max_queue {
            return Err(EngineError::Overloaded);
        }
        let (events, stream) = mpsc::unbounded_channel();
        let job = Job {
            prompt,
            sampling: request.sampling,
            max_tokens: request.max_tokens.unwrap_or(room),
            stop: request.stop,
            n: request.n.max(1),
            matcher,
            logprobs: request.logprobs,
            events,
        };
        self.shared.queue_depth.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(job).is_err() {
            self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Unavailable(
                "the engine thread has stopped".into(),
            ));
        }
        Ok(stream)
    }

    fn stats(&self) -> EngineStats {
        let shared = &self.shared;
        EngineStats {
            queue_depth: shared.queue_depth.load(Ordering::Relaxed),
            max_queue: self.config.max_queue,
            active_sequences: shared.active.load(Ordering::Relaxed),
            max_batch: self.config.max_batch,
            kv_cache_tokens: shared.kv_tokens.load(Ordering::Relaxed),
            kv_cache_capacity_tokens: self.config.max_batch * self.context_length,
            generated_tokens_total: shared.generated.load(Ordering::Relaxed),
            tokens_per_second: f64::from_bits(
                shared.tokens_per_second_bits.load(Ordering::Relaxed),
            ),
        }
    }
}

struct Sequence {
    index: usize,
    cache: KvCache,
    last_token: u32,
    generated: usize,
    max_tokens: usize,
    sampler: Sampler,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    /// Keeps the output inside the request's grammar, where it has one.
    matcher: Option<Matcher>,
    /// Log probabilities asked for (with this many alternatives), and those not yet sent.
    logprobs: Option<usize>,
    pending_logprobs: Vec<TokenLogprob>,
    events: mpsc::UnboundedSender<Event>,
    done: bool,
}

struct Scheduler {
    model: Llama,
    tokenizer: Arc<Tokenizer>,
    end_tokens: HashSet<u32>,
    shared: Arc<Shared>,
    max_batch: usize,
    running: Vec<Sequence>,
}

impl Scheduler {
    fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        loop {
            // Admit queued requests while there is room; block only when there is no work.
            while self.running.len() < self.max_batch {
                let job = if self.running.is_empty() {
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                };
                self.shared.queue_depth.fetch_sub(1, Ordering::Relaxed);
                let others_waiting = !self.running.is_empty();
                self.admit(job);
                // A prefill stalls every running stream: admit one per step while they wait.
                if others_waiting {
                    break;
                }
            }
            // A caller who went away frees their slot before the next step is paid for.
            self.running
                .retain(|sequence| !sequence.done && !sequence.events.is_closed());
            if !self.running.is_empty() {
                self.step();
            }
            self.running.retain(|sequence| !sequence.done);
            self.shared
                .active
                .store(self.running.len(), Ordering::Relaxed);
            self.shared.kv_tokens.store(
                self.running
                    .iter()
                    .map(|sequence| sequence.cache.len())
                    .sum(),
                Ordering::Relaxed,
            );
            if self.running.is_empty() {
                self.shared
                    .tokens_per_second_bits
                    .store(0f64.to_bits(), Ordering::Relaxed);
            }
        }
    }

    fn admit(&mut self, mut job: Job) {
        if job.events.is_closed() {
            return;
        }
        let _ = job.events.send(Event::Started {
            prompt_tokens: job.prompt.len(),
        });
        let mut cache = self.model.new_cache();
        let mut logits = match self.model.prefill(&job.prompt, &mut cache) {
            Ok(logits) => logits,
            Err(error) => {
                tracing::error!(%error, "prefill failed");
                let _ = job.events.send(Event::Failed(format!(
                    "the model failed on the prompt: {error}"
                )));
                return;
            }
        };
        for index in 0..job.n {
            // KV tensors are immutable and shared: the `n` choices reuse one prefill. The
            // last choice takes the prefill's logits and grammar; the others, copies (a
            // grammar's mask is applied to the logits in place).
            let last = index + 1 == job.n;
            let cache = KvCache::clone_of(&cache);
            let sampling = SamplingParams {
                seed: job.sampling.seed.wrapping_add(index as u64),
                ..job.sampling.clone()
            };
            let mut sequence = Sequence {
                index,
                cache,
                last_token: 0,
                generated: 0,
                max_tokens: job.max_tokens,
                sampler: Sampler::new(sampling),
                detokenizer: Detokenizer::new(),
                stop: StopMatcher::new(job.stop.clone()),
                matcher: if last {
                    job.matcher.take()
                } else {
                    job.matcher.as_ref().map(Matcher::deep_clone)
                },
                logprobs: job.logprobs,
                pending_logprobs: Vec::new(),
                events: job.events.clone(),
                done: false,
            };
            let mut logits = if last {
                std::mem::take(&mut logits)
            } else {
                logits.clone()
            };
            if let Some(token) = self.sample(&mut sequence, &mut logits) {
                self.accept(&mut sequence, token);
            }
            if !sequence.done {
                self.running.push(sequence);
            }
        }
    }

    fn step(&mut self) {
        let started = Instant::now();
        let tokens: Vec<u32> = self
            .running
            .iter()
            .map(|sequence| sequence.last_token)
            .collect();
        let mut caches: Vec<&mut KvCache> = self
            .running
            .iter_mut()
            .map(|sequence| &mut sequence.cache)
            .collect();
        let logits = match self.model.decode(&tokens, &mut caches) {
            Ok(logits) => logits,
            Err(error) => {
                tracing::error!(%error, "decoding step failed");
                for sequence in &mut self.running {
                    let _ = sequence.events.send(Event::Failed(format!(
                        "the model failed while generating: {error}"
                    )));
                    sequence.done = true;
                }
                return;
            }
        };
        let mut running = std::mem::take(&mut self.running);
        for (sequence, mut logits) in running.iter_mut().zip(logits) {
            if let Some(token) = self.sample(sequence, &mut logits) {
                self.accept(sequence, token);
            }
        }
        self.running = running;
        let rate = tokens.len() as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let previous = f64::from_bits(self.shared.tokens_per_second_bits.load(Ordering::Relaxed));
        let smoothed = if previous == 0.0 {
            rate
        } else {
            0.8 * previous + 0.2 * rate
        };
        self.shared
            .tokens_per_second_bits
            .store(smoothed.to_bits(), Ordering::Relaxed);
    }

    /// The next token: within the sequence's grammar, where it has one (the grammar then
    /// takes it in). `None` when the grammar broke: the sequence has failed.
    fn sample(&self, sequence: &mut Sequence, logits: &mut [f32]) -> Option<u32> {
        let Some(matcher) = sequence.matcher.as_mut() else {
            let token = sequence.sampler.sample(logits);
            self.note_logprob(sequence, logits, token);
            return Some(token);
        };
        let constrained = matcher.compute_mask().and_then(|allowed| {
            grammar::mask_logits(&allowed, logits);
            let token = sequence.sampler.sample(logits);
            matcher.consume_token(token).map(|()| token)
        });
        match constrained {
            Ok(token) => {
                self.note_logprob(sequence, logits, token);
                Some(token)
            }
            Err(error) => {
                tracing::error!(%error, "constrained decoding failed");
                let _ = sequence.events.send(Event::Failed(format!(
                    "constrained decoding failed: {error}"
                )));
                sequence.done = true;
                None
            }
        }
    }

    /// The token's log probability (log-softmax of the logits it was sampled from, before
    /// temperature) and the likeliest alternatives, where the request asked for them.
    fn note_logprob(&self, sequence: &mut Sequence, logits: &[f32], token: u32) {
        let Some(alternatives) = sequence.logprobs else {
            return;
        };
        let finite = || logits.iter().copied().filter(|logit| logit.is_finite());
        let max = finite().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = finite().map(|logit| f64::from(logit - max).exp()).sum();
        let log_total = max + total.ln() as f32;
        let text = |id: u32| self.tokenizer.decode(&[id], false).unwrap_or_default();
        let mut top: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, logit)| logit.is_finite())
            .map(|(id, logit)| (id as u32, *logit))
            .collect();
        let keep = alternatives.min(top.len());
        if keep > 0 && keep < top.len() {
            top.select_nth_unstable_by(keep - 1, |a, b| b.1.total_cmp(&a.1));
        }
        top.truncate(keep);
        top.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let logprob = logits
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |logit| logit - log_total);
        sequence.pending_logprobs.push(TokenLogprob {
            token: text(token),
            logprob,
            top: top
                .into_iter()
                .map(|(id, logit)| (text(id), logit - log_total))
                .collect(),
        });
    }

    /// Takes one sampled token into a sequence: emit its text, or finish.
    fn accept(&self, sequence: &mut Sequence, token: u32) {
        self.shared.generated.fetch_add(1, Ordering::Relaxed);
        sequence.generated += 1;
        sequence.last_token = token;
        let finish = |sequence: &mut Sequence, reason: FinishReason, text: String| {
            if !text.is_empty() || !sequence.pending_logprobs.is_empty() {
                let _ = sequence.events.send(Event::Delta {
                    index: sequence.index,
                    text,
                    logprobs: std::mem::take(&mut sequence.pending_logprobs),
                });
            }
            let _ = sequence.events.send(Event::Finished {
                index: sequence.index,
                reason,
                completion_tokens: sequence.generated,
                stop_sequence: sequence.stop.matched().map(str::to_owned),
            });
            sequence.done = true;
        };
        if self.end_tokens.contains(&token) {
            // The end of text is not part of the answer, nor of its log probabilities.
            sequence.pending_logprobs.pop();
            let held = sequence.detokenizer.finish(&self.tokenizer);
            let rest = stop_or_flush(&mut sequence.stop, &held);
            return finish(sequence, FinishReason::Stop, rest);
        }
        let piece = sequence.detokenizer.push(&self.tokenizer, token);
        // The grammar is complete and allows nothing more: the output is whole.
        if sequence.matcher.as_ref().is_some_and(Matcher::is_stopped) {
            let held = sequence.detokenizer.finish(&self.tokenizer);
            let rest = stop_or_flush(&mut sequence.stop, &(piece + &held));
            return finish(sequence, FinishReason::Stop, rest);
        }
        match sequence.stop.push(&piece) {
            StopOutcome::Stopped(text) => finish(sequence, FinishReason::Stop, text),
            StopOutcome::Continue(text) => {
                let out_of_room = sequence.cache.len() + 1 >= self.model.config.context_length;
                if sequence.generated >= sequence.max_tokens || out_of_room {
                    let held = sequence.detokenizer.finish(&self.tokenizer);
                    let rest = text + &stop_or_flush(&mut sequence.stop, &held);
                    finish(sequence, FinishReason::Length, rest);
                } else if !text.is_empty()
                    && sequence
                        .events
                        .send(Event::Delta {
                            index: sequence.index,
                            text,
                            logprobs: std::mem::take(&mut sequence.pending_logprobs),
                        })
                        .is_err()
                {
                    sequence.done = true;
                }
            }
        }
    }
}

/// The last held-back text of a finished sequence, still cut at a stop sequence if one shows.
fn stop_or_flush(stop: &mut StopMatcher, held: &str) -> String {
    match stop.push(held) {
        StopOutcome::Stopped(text) => text,
        StopOutcome::Continue(text) => text + &stop.finish(),
    }
}
