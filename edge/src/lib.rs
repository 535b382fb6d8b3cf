//! `ferry-edge`: what Ferry does at the edge, as a plain library.
//!
//! An edge sits in front of the functions (the origin). For each request it either answers
//! from its key-value store (a cache hit), refuses what is plainly bad (no credential, a body
//! that is not JSON or too large), or forwards the request to the origin. An answer the origin
//! marks keepable (it carries a grant, see `ferry_core::edge`) is kept, with its expiry in the
//! value. Each hit is recorded in the store and later sent to the origin in a signed report,
//! which bills it at the cache-hit price, once.
//!
//! Tenant safety: an entry's key is bound to the caller's credential (a hash of it), so only
//! the same credential can hit it, and the grant names the tenant the origin authenticated.
//! The cache rules (which calls, the canonical body, replay as SSE) are `ferry_core::cache`'s,
//! the same the origin applies.
//!
//! Everything that touches the world comes in through [`KeyValue`] and [`Origin`], and time and
//! randomness come in as arguments, so the logic is tested natively; the Spin entry point only
//! adapts Spin's HTTP, key-value and outbound HTTP to them.

#[cfg(all(target_arch = "wasm32", feature = "spin"))]
mod component;
mod jwt;
mod kv;

use ferry_core::cache::{self, CacheKey, Decision, Directives};
use ferry_core::edge::{self, Grant, Hit, HitReport, MAX_HITS_PER_REPORT, ReportOutcome};
use ferry_core::ports::Endpoint;
use ferry_core::{ApiError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use jwt::EdgeJwt;
pub use kv::{KeyValue, MemoryKv};

/// Where entries and hits live in the key-value store.
const ENTRY_PREFIX: &str = "ferry/cache/";
const HIT_PREFIX: &str = "ferry/hit/";
/// Present while hits wait to be reported: a cheap check before listing them.
const PENDING_MARKER: &str = "ferry/pending";

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("key-value store: {0}")]
    Store(String),
    #[error("origin: {0}")]
    Origin(String),
}

#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// The secret shared with the origin (`FERRY_EDGE_SECRET` there): reports are signed with it.
    pub secret: Vec<u8>,
    /// This edge's name, for the origin's logs.
    pub edge_id: String,
    /// Larger bodies are refused here with 413.
    pub max_body_bytes: usize,
    /// OIDC tokens checked here against the provider's keys (the origin checks them again);
    /// `None`: tokens go to the origin unchecked.
    pub jwt: Option<EdgeJwt>,
}

/// An HTTP request or response, as the edge sees it. Header names are lower case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn answer(status: u16, content_type: &str, body: Vec<u8>) -> Message {
        Message {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
            ..Message::default()
        }
    }
}

/// The outside world, for what the edge itself sends: hit reports to the origin, and the
/// identity provider's keys.
pub trait Origin {
    fn post(
        &self,
        path: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<Message, EdgeError>>;

    /// GET of an absolute URL (the identity provider's JWKS).
    fn fetch(&self, url: &str) -> impl Future<Output = Result<Message, EdgeError>>;
}

/// What to do with a request.
#[derive(Debug)]
pub enum Step {
    /// Answer it now: a hit, or a refusal.
    Answer(Message),
    /// Send it to the origin, then hand the origin's answer to [`Edge::keep`].
    Forward(Forward),
}

#[derive(Debug)]
pub struct Forward {
    pub request: Message,
    keep: Option<Keep>,
}

impl Forward {
    /// Whether the origin's answer may be kept (the entry point must then buffer it; others
    /// stream straight through).
    pub fn may_keep(&self) -> bool {
        self.keep.is_some()
    }
}

#[derive(Debug)]
struct Keep {
    entry_key: String,
    endpoint: Endpoint,
    ttl_ms: u64,
}

/// What the store holds for one kept answer.
#[derive(Debug, Serialize, Deserialize)]
struct StoredEntry {
    expires_at_ms: u64,
    grant: String,
    response: Value,
}

/// What one report did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reported {
    pub sent: usize,
    pub billed: usize,
    pub duplicate: usize,
    pub rejected: usize,
    pub retry: usize,
}

pub struct Edge<K> {
    config: EdgeConfig,
    store: K,
}

impl<K: KeyValue> Edge<K> {
    pub fn new(config: EdgeConfig, store: K) -> Edge<K> {
        Edge { config, store }
    }

    pub fn store(&self) -> &K {
        &self.store
    }

    /// Decides what to do with a request. `hit_id` is fresh randomness (a hit's id). A store
    /// that fails only costs the cache: the request is forwarded.
    pub async fn handle(
        &self,
        request: Message,
        now_ms: u64,
        hit_id: [u8; 16],
        outside: &impl Origin,
    ) -> Step {
        let Some(endpoint) = endpoint_of(&request) else {
            return Step::Forward(Forward {
                request,
                keep: None,
            });
        };
        let Some(credential) = bearer(&request) else {
            return refuse(
                ApiError::new(
                    ErrorKind::Unauthenticated,
                    "You didn't provide an API key. Send it in the Authorization header as `Bearer fy_…`.",
                )
                .with_code("missing_api_key"),
            );
        };
        if let Some(jwt) = &self.config.jwt
            && jwt::looks_like_a_jwt(credential)
            && let Err(refused) = jwt.check(credential, &self.store, outside, now_ms).await
        {
            return refuse(refused);
        }
        if request.body.len() > self.config.max_body_bytes {
            return refuse(
                ApiError::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "The request body is larger than {} bytes.",
                        self.config.max_body_bytes
                    ),
                )
                .with_code("request_too_large"),
            );
        }
        let body: Value = match serde_json::from_slice(&request.body) {
            Ok(body @ Value::Object(_)) => body,
            _ => {
                return refuse(
                    ApiError::new(
                        ErrorKind::InvalidRequest,
                        "The request body must be a JSON object.",
                    )
                    .with_code("invalid_json"),
                );
            }
        };
        let directives = match Directives::parse(
            request.header("cache-control"),
            request.header(cache::TTL_HEADER),
        ) {
            Ok(directives) => directives,
            // The origin answers the caller's mistake in full.
            Err(_) => {
                return Step::Forward(Forward {
                    request,
                    keep: None,
                });
            }
        };
        let Decision::Use {
            read,
            write,
            ttl_seconds,
        } = cache::decide(endpoint, &body, &directives)
        else {
            return Step::Forward(Forward {
                request,
                keep: None,
            });
        };
        // Bound to the credential itself: the edge cannot tell tenants apart, so it never
        // lets two credentials share an entry.
        let digest = Sha256::digest(credential.as_bytes());
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        let subject = format!("bearer:{hex}");
        let key = CacheKey::of(&subject, "edge", endpoint, &body);
        let entry_key = format!("{ENTRY_PREFIX}{key}");
        let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
        if read && let Some(response) = self.hit(&entry_key, &body, stream, now_ms, hit_id).await {
            return Step::Answer(response);
        }
        // Only whole answers are kept here; a stream passes through untouched.
        let keep = (write && !stream).then(|| Keep {
            entry_key,
            endpoint,
            ttl_ms: ttl_seconds.saturating_mul(1000),
        });
        Step::Forward(Forward { request, keep })
    }

    /// Keeps the origin's answer to a forwarded request when the origin granted it; true if
    /// kept.
    pub async fn keep(&self, forward: &Forward, response: &Message, now_ms: u64) -> bool {
        let Some(keep) = &forward.keep else {
            return false;
        };
        if response.status != 200 {
            return false;
        }
        let Some(token) = response.header(edge::GRANT_HEADER) else {
            return false;
        };
        // Only the origin can check a grant; the edge needs its expiry, and trusts its origin.
        let Ok(grant) = Grant::peek(token) else {
            return false;
        };
        let Ok(answer) = serde_json::from_slice::<Value>(&response.body) else {
            return false;
        };
        if !cache::is_storable(keep.endpoint, &answer) {
            return false;
        }
        let expires_at_ms = grant.expires_at_ms.min(now_ms.saturating_add(keep.ttl_ms));
        if expires_at_ms <= now_ms {
            return false;
        }
        let entry = StoredEntry {
            expires_at_ms,
            grant: token.to_owned(),
            response: answer,
        };
        let Ok(value) = serde_json::to_vec(&entry) else {
            return false;
        };
        self.store.set(&keep.entry_key, &value).await.is_ok()
    }

    /// Sends the recorded hits (up to a report's worth) to the origin, and forgets those the
    /// origin has dealt with. A report that fails leaves them for the next one; sending a hit
    /// twice bills it once.
    pub async fn report(&self, origin: &impl Origin) -> Result<Reported, EdgeError> {
        let keys = self.store.keys(HIT_PREFIX, MAX_HITS_PER_REPORT).await?;
        let mut hits = Vec::with_capacity(keys.len());
        for key in &keys {
            if let Some(value) = self.store.get(key).await? {
                match serde_json::from_slice::<Hit>(&value) {
                    Ok(hit) => hits.push(hit),
                    // Unreadable: never billable, so not worth keeping.
                    Err(_) => self.store.delete(key).await?,
                }
            }
        }
        if hits.is_empty() {
            return Ok(Reported::default());
        }
        let report = HitReport {
            edge: self.config.edge_id.clone(),
            hits,
        };
        let body =
            serde_json::to_vec(&report).map_err(|error| EdgeError::Origin(error.to_string()))?;
        let headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            (
                edge::SIGNATURE_HEADER.to_owned(),
                edge::sign_report(&self.config.secret, &body),
            ),
        ];
        let answer = origin.post(edge::HITS_PATH, headers, body).await?;
        if answer.status != 200 {
            return Err(EdgeError::Origin(format!(
                "the origin answered a report with {}",
                answer.status
            )));
        }
        let outcome: ReportOutcome = serde_json::from_slice(&answer.body)
            .map_err(|error| EdgeError::Origin(format!("unreadable report outcome: {error}")))?;
        // Hits to retry stay for the next report.
        let settled = outcome
            .billed
            .iter()
            .chain(&outcome.duplicate)
            .chain(outcome.rejected.iter().map(|rejected| &rejected.id));
        for id in settled {
            self.store.delete(&format!("{HIT_PREFIX}{id}")).await?;
        }
        Ok(Reported {
            sent: report.hits.len(),
            billed: outcome.billed.len(),
            duplicate: outcome.duplicate.len(),
            rejected: outcome.rejected.len(),
            retry: outcome.retry.len(),
        })
    }

    /// Reports the recorded hits if any are waiting (one cheap read when none are). The marker
    /// is cleared before the hits are listed, so a hit recorded meanwhile sets it again and is
    /// never stranded; if the report fails, the marker is set again.
    pub async fn report_if_due(&self, origin: &impl Origin) -> Result<Option<Reported>, EdgeError> {
        if self.store.get(PENDING_MARKER).await?.is_none() {
            return Ok(None);
        }
        self.store.delete(PENDING_MARKER).await?;
        match self.report(origin).await {
            Ok(reported) => {
                if reported.retry > 0 || reported.sent == MAX_HITS_PER_REPORT {
                    self.store.set(PENDING_MARKER, b"1").await?;
                }
                Ok(Some(reported))
            }
            Err(error) => {
                self.store.set(PENDING_MARKER, b"1").await?;
                Err(error)
            }
        }
    }

    /// The kept answer, if fresh, shaped for this caller; the hit is recorded for the report.
    async fn hit(
        &self,
        entry_key: &str,
        body: &Value,
        stream: bool,
        now_ms: u64,
        hit_id: [u8; 16],
    ) -> Option<Message> {
        let value = self.store.get(entry_key).await.ok()??;
        let entry: StoredEntry = serde_json::from_slice(&value).ok()?;
        if entry.expires_at_ms <= now_ms {
            // Expiry lives in the value: a store without TTLs still never serves it.
            let _ = self.store.delete(entry_key).await;
            return None;
        }
        let mut answer = entry.response;
        // The price of a hit is the origin's to set; the edge shows no cost rather than the
        // miss's.
        if let Some(usage) = answer.get_mut("usage").and_then(Value::as_object_mut) {
            usage.remove("cost");
        }
        let response = if stream {
            // Only chat answers replay as a stream; anything else goes to the origin.
            if !answer
                .get("object")
                .is_some_and(|object| object == "chat.completion")
            {
                return None;
            }
            let include_usage =
                body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
            Message::answer(
                200,
                "text/event-stream",
                cache::chat_as_sse(&answer, include_usage)
                    .concat()
                    .into_bytes(),
            )
        } else {
            Message::answer(200, "application/json", serde_json::to_vec(&answer).ok()?)
        };
        let hit = Hit {
            id: base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, hit_id),
            at_ms: now_ms,
            grant: entry.grant,
        };
        // A hit that cannot be recorded could not be billed: the caller goes to the origin.
        // The marker first: a hit recorded is then always one the next report will find, and
        // a failure before the record leaves nothing to bill for an answer not served.
        let recorded = serde_json::to_vec(&hit).ok()?;
        self.store.set(PENDING_MARKER, b"1").await.ok()?;
        self.store
            .set(&format!("{HIT_PREFIX}{}", hit.id), &recorded)
            .await
            .ok()?;
        let mut response = response;
        response
            .headers
            .push((cache::STATUS_HEADER.into(), "HIT".into()));
        response.headers.push(("x-ferry-edge".into(), "hit".into()));
        Some(response)
    }
}

fn endpoint_of(request: &Message) -> Option<Endpoint> {
    if request.method != "POST" {
        return None;
    }
    let path = request.path.split('?').next().unwrap_or_default();
    match path {
        "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    }
}

fn bearer(request: &Message) -> Option<&str> {
    let value = request.header("authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn refuse(error: ApiError) -> Step {
    Step::Answer(error_response(&error))
}

/// An OpenAI-style error answer.
pub fn error_response(error: &ApiError) -> Message {
    let body = serde_json::to_vec(&error.body()).unwrap_or_default();
    let mut response = Message::answer(error.kind.status(), "application/json", body);
    response.headers.extend(error.headers().iter().cloned());
    if let Some(seconds) = error.retry_after_seconds {
        response
            .headers
            .push(("retry-after".into(), seconds.to_string()));
    }
    response
}
