//! Tokenizers: built from a GGUF file's own metadata (vocabulary, merges, special tokens), and
//! incremental detokenization that never splits a UTF-8 character.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("the model file has no `{0}` metadata")]
    Missing(&'static str),
    #[error("the model's tokenizer is `{0}`; only GPT-2 style BPE (`gpt2`) is supported")]
    Unsupported(String),
    #[error("building the tokenizer failed: {0}")]
    Build(String),
}

/// GGUF's `tokenizer.ggml.token_type` value for control tokens such as `<|im_start|>`.
const CONTROL_TOKEN: i32 = 3;

fn strings(content: &Content, key: &'static str) -> Result<Vec<String>, TokenizerError> {
    let values = content
        .metadata
        .get(key)
        .and_then(|value| value.to_vec().ok())
        .ok_or(TokenizerError::Missing(key))?;
    values
        .iter()
        .map(|value| {
            value
                .to_string()
                .cloned()
                .map_err(|_| TokenizerError::Missing(key))
        })
        .collect()
}

/// The tokenizer a GGUF file describes, with its control tokens registered as special tokens
/// so `<|im_start|>` in a rendered template is one token, never split into pieces.
pub fn from_gguf(content: &Content) -> Result<Tokenizer, TokenizerError> {
    let model = content
        .metadata
        .get("tokenizer.ggml.model")
        .and_then(|value| value.to_string().ok())
        .ok_or(TokenizerError::Missing("tokenizer.ggml.model"))?;
    if model != "gpt2" {
        return Err(TokenizerError::Unsupported(model.clone()));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = strings(content, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|merge| {
            merge
                .split_once(' ')
                .map(|(left, right)| (left.to_owned(), right.to_owned()))
        })
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|error| TokenizerError::Build(error.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|value| value.to_string().ok())
        .cloned()
        .unwrap_or_default();
    // Each `pre` names a pre-tokenizer; guessing a wrong one would tokenize prompts unlike the
    // model's training, so only the known ones are accepted.
    let byte_level = ByteLevel::new(false, true, true);
    match pre.as_str() {
        // Digits one by one, then GPT-2 byte-level splitting.
        "smollm" => tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            byte_level.into(),
        ]))),
        "gpt2" | "default" | "" => tokenizer.with_pre_tokenizer(Some(byte_level)),
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "gpt2 with the `{other}` pre-tokenizer"
            )));
        }
    };
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let types: Vec<i32> = content
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|value| value.to_vec().ok())
        .map(|values| {
            values
                .iter()
                .map(|value| value.to_i32().unwrap_or(1))
                .collect()
        })
        .unwrap_or_default();
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, kind)| **kind == CONTROL_TOKEN)
        .map(|(token, _)| AddedToken::from(token.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|error| TokenizerError::Build(error.to_string()))?;
    Ok(tokenizer)
}

/// A token id named in GGUF metadata (`tokenizer.ggml.eos_token_id`…).
pub fn token_id(content: &Content, key: &str) -> Option<u32> {
    content
        .metadata
        .get(key)
        .and_then(|value: &Value| value.to_u32().ok())
}

/// Turns generated token ids into text piece by piece. Text is released only once it decodes
/// to whole characters: a multi-byte character split across tokens waits for its last byte.
///
/// Only a short window is decoded per token (the tokens since the last released piece, plus
/// a few before them for context), so the cost per token does not grow with the output.
#[derive(Debug, Default)]
pub struct Detokenizer {
    tokens: Vec<u32>,
    /// Start of the context window: decoding from here gives correct spacing.
    prefix_offset: usize,
    /// Tokens before this have been released as text.
    read_offset: usize,
}

impl Detokenizer {
    pub fn new() -> Detokenizer {
        Detokenizer::default()
    }

    pub fn push(&mut self, tokenizer: &Tokenizer, token: u32) -> String {
        self.tokens.push(token);
        let decode = |tokens: &[u32]| tokenizer.decode(tokens, true).unwrap_or_default();
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let text = decode(&self.tokens[self.prefix_offset..]);
        // A trailing U+FFFD means an incomplete UTF-8 sequence: hold it back.
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return String::new();
        }
        let Some(piece) = text.get(prefix.len()..) else {
            return String::new();
        };
        let piece = piece.to_owned();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.tokens.len();
        piece
    }

    /// Whatever is still held back when generation ends (a cut-off character shows as U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> String {
        let decode = |tokens: &[u32]| tokenizer.decode(tokens, true).unwrap_or_default();
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset]);
        let text = decode(&self.tokens[self.prefix_offset..]);
        self.read_offset = self.tokens.len();
        self.prefix_offset = self.read_offset;
        text.get(prefix.len()..).unwrap_or_default().to_owned()
    }
}
