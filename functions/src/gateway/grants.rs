//! What an edge may keep: a signed grant on an answer the origin keeps, naming who was served
//! and what the answer cost to make, so the edge's replays are billed to them
//! (`ferry_core::edge`).

use axum::http::HeaderValue;
use axum::response::Response;
use ferry_core::api_key;
use ferry_core::edge::{GRANT_HEADER, Grant, MAX_EDGE_TTL_MS};
use ferry_core::openai::Usage;
use ferry_core::ports::Endpoint;
use ferry_core::principal::{Credential, Principal};

use crate::app::AppState;
use crate::clock;

/// What the gateway knows when it answers a call an edge may keep.
pub struct Served<'a> {
    pub principal: &'a Principal,
    pub model: &'a str,
    pub deployment: &'a str,
    pub endpoint: Endpoint,
}

/// The grant header for an answer with `usage` that the origin keeps until `expires_at_ms`,
/// when edges are configured and the caller is a tenant's (the operator's own calls are not
/// billed, so an edge has nothing to report for them).
pub fn grant_header(
    state: &AppState,
    served: &Served<'_>,
    usage: &Usage,
    expires_at_ms: u64,
) -> Option<HeaderValue> {
    let keys = state.edge.as_ref()?;
    let tenant_id = served.principal.tenant_id.clone()?;
    let (key_public_id, token_caller) = match &served.principal.credential {
        Credential::ApiKey { key_id } => (Some(api_key::public_id_of(key_id)?.to_owned()), None),
        token @ Credential::Jwt { .. } => (None, Some(token.caller_id())),
    };
    let grant = Grant {
        tenant_id,
        key_public_id,
        token_caller,
        model: served.model.to_owned(),
        deployment: served.deployment.to_owned(),
        endpoint: served.endpoint.name().to_owned(),
        prompt_tokens: usage.prompt_tokens,
        cached_tokens: usage.cached_tokens(),
        completion_tokens: usage.completion_tokens,
        expires_at_ms: expires_at_ms.min(clock::unix_millis().saturating_add(MAX_EDGE_TTL_MS)),
    };
    HeaderValue::from_str(&grant.sign(keys.grant())).ok()
}

/// Lets an edge keep this answer (and bill its replays), when edges are configured.
pub(crate) fn add_grant(
    response: &mut Response,
    state: &AppState,
    served: &Served<'_>,
    usage: &Usage,
    expires_at_ms: u64,
) {
    if let Some(grant) = grant_header(state, served, usage, expires_at_ms) {
        response.headers_mut().insert(GRANT_HEADER, grant);
    }
}
