//! Constrained decoding: output kept inside a grammar (a JSON schema, any JSON object) by
//! masking, before every sampled token, the tokens that would leave it. llguidance computes the
//! mask from the vocabulary as bytes, so the model's own tokenizer is all it needs; a grammar
//! it cannot express is refused when the request arrives, never ignored.
//!
//! Why llguidance rather than outlines-core: it compiles a schema lazily (milliseconds, where
//! outlines-core builds a whole index over the vocabulary up front, seconds to minutes for
//! large schemas), covers more of JSON Schema (numeric bounds, `anyOf`, string formats, which
//! outlines-core ignores silently), says which keyword it cannot handle, and builds from pure
//! Rust without a second `tokenizers`.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

/// What the output must be.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputConstraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON that validates against this schema.
    JsonSchema(Value),
    /// A Lark grammar in llguidance's dialect (`%json {...}` embeds a schema): how a tool
    /// call is told apart from text.
    Lark(String),
}

/// How JSON is written under a constraint: one way (", " and ": ", no other whitespace), since
/// a small model given free whitespace may spend its whole budget on newlines.
pub fn compact(mut schema: Value) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    #[error("the model's vocabulary cannot be read for constrained decoding: {0}")]
    Vocabulary(String),
    /// The grammar cannot be expressed (an unsupported keyword, an unsatisfiable schema).
    #[error("{0}")]
    Unsupported(String),
}

/// Compiles constraints into per-sequence matchers for one model's vocabulary.
pub struct Grammars {
    factory: ParserFactory,
}

/// The vocabulary as llguidance sees it: each token's bytes, in a trie.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        self.tokenizer
            .encode(String::from_utf8_lossy(bytes).as_ref(), false)
            .map(|encoding| encoding.get_ids().to_vec())
            .unwrap_or_default()
    }
}

impl Grammars {
    /// `vocab_size` is the width of the model's logits (it may exceed the tokenizer's);
    /// `end_tokens` end a sequence, and are allowed exactly where the grammar may end.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        end_tokens: &[u32],
        vocab_size: usize,
    ) -> Result<Grammars, GrammarError> {
        let vocabulary_error = GrammarError::Vocabulary;
        let described: Value = tokenizer
            .to_string(false)
            .map_err(|error| vocabulary_error(error.to_string()))
            .and_then(|text| {
                serde_json::from_str(&text).map_err(|error| vocabulary_error(error.to_string()))
            })?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&described)
            .map_err(|error| vocabulary_error(error.to_string()))?;
        words.resize(vocab_size.max(words.len()), Vec::new());
        let Some(&eos) = end_tokens.first() else {
            return Err(vocabulary_error(
                "the model has no end-of-text token".into(),
            ));
        };
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(end_tokens);
        let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer });
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|error| vocabulary_error(error.to_string()))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// A fresh matcher for one sequence, or why the constraint cannot be served.
    pub fn matcher(&self, constraint: &OutputConstraint) -> Result<Matcher, GrammarError> {
        let grammar = match constraint {
            OutputConstraint::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(json!({"type": "object"})))
            }
            OutputConstraint::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            OutputConstraint::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|error| GrammarError::Unsupported(error.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(error) => Err(GrammarError::Unsupported(error)),
            None => Ok(matcher),
        }
    }
}

/// Sets every token the grammar does not allow next to minus infinity.
pub fn mask_logits(allowed: &SimpleVob, logits: &mut [f32]) {
    let width = allowed.len();
    for (token, logit) in logits.iter_mut().enumerate() {
        if token >= width || !allowed.is_allowed(token as u32) {
            *logit = f32::NEG_INFINITY;
        }
    }
}
