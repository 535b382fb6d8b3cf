//! The origin's side of the edge (see `ferry_core::edge`): its secrets, and `POST /v1/edge/hits`,
//! where edges report the answers they served so each is billed, once, at the cache-hit price.
//! (The grants on answers an edge may keep are the gateway's: `gateway::grants`.)

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use ferry_core::admission::TokenEstimate;
use ferry_core::api_key;
use ferry_core::edge::{
    self, Grant, Hit, HitReport, MAX_HITS_PER_REPORT, RejectedHit, ReportOutcome,
};
use ferry_core::openai::{PromptTokensDetails, Usage};
use ferry_core::ports::{Endpoint, Settled, UsageRecord};
use ferry_core::principal::{Credential, KeyPolicy, Principal, Role};
use ferry_core::{ApiError, ErrorKind, Money};

use crate::app::AppState;
use crate::clock;
use crate::error::{ErrorResponse, HandlerResult};
use crate::extract::RawBody;
use crate::gateway::admit;
use ferry_core::call::AdmissionAsk;

/// How far ahead of the origin's clock an edge's hit time may be.
const CLOCK_SKEW_MS: u64 = 60_000;

/// The origin's edge secrets. Never printed.
#[derive(Clone)]
pub struct EdgeKeys {
    /// Shared with the operator's edges: their reports are signed with it.
    shared: Arc<[u8]>,
    /// The origin's alone: grants are signed with it, so no edge (nor anyone who learns the
    /// shared secret) can make a grant that bills some tenant.
    grant: Arc<[u8]>,
}

/// The shortest secret accepted: a guessable one would let anyone bill any tenant.
pub const MIN_SECRET_BYTES: usize = 32;

impl EdgeKeys {
    pub fn new(shared: &[u8], grant: &[u8]) -> Result<EdgeKeys, String> {
        if shared.len() < MIN_SECRET_BYTES || grant.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "edge secrets must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(EdgeKeys {
            shared: shared.into(),
            grant: grant.into(),
        })
    }

    fn shared(&self) -> &[u8] {
        &self.shared
    }

    pub(crate) fn grant(&self) -> &[u8] {
        &self.grant
    }
}

impl fmt::Debug for EdgeKeys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("EdgeKeys(..)")
    }
}

/// Bills the hits an edge reports. The body must carry the edge's signature; each hit is billed
/// under `edge_<hit id>`, so a report sent again changes nothing.
pub async fn report_hits(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> HandlerResult<Json<ReportOutcome>> {
    let Some(keys) = state.edge.clone() else {
        return Err(
            ApiError::new(ErrorKind::NotFound, "Edges are not configured here.")
                .with_code("not_found")
                .into(),
        );
    };
    let signed = headers
        .get(edge::SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|signature| edge::verify_report(keys.shared(), &body, signature));
    if !signed {
        return Err(ApiError::new(
            ErrorKind::Unauthenticated,
            "The report's signature is missing or does not match.",
        )
        .with_code("invalid_signature")
        .into());
    }
    let report: HitReport = serde_json::from_slice(&body)
        .map_err(|error| ApiError::invalid("hits", format!("the report is malformed: {error}")))?;
    if report.hits.len() > MAX_HITS_PER_REPORT {
        return Err(ApiError::invalid(
            "hits",
            format!("a report carries at most {MAX_HITS_PER_REPORT} hits"),
        )
        .into());
    }
    let mut outcome = ReportOutcome::default();
    for hit in &report.hits {
        match bill(&state, &keys, hit).await {
            Ok(Billed::Now) => outcome.billed.push(hit.id.clone()),
            Ok(Billed::Before) => outcome.duplicate.push(hit.id.clone()),
            Err(Rejected::Permanently(code)) => outcome.rejected.push(RejectedHit {
                id: hit.id.clone(),
                code: code.into(),
            }),
            // The store failed: the edge keeps the hit and sends it again; the others stand.
            Err(Rejected::ForNow(failure)) => {
                match &failure.detail {
                    Some(detail) => {
                        tracing::error!(hit = %hit.id, %detail, "edge hit not billed yet: the store failed");
                    }
                    None => {
                        tracing::warn!(hit = %hit.id, error = %failure.error.message, "edge hit not billed yet");
                    }
                }
                outcome.retry.push(hit.id.clone());
            }
        }
    }
    tracing::info!(
        edge = %report.edge,
        billed = outcome.billed.len(),
        duplicate = outcome.duplicate.len(),
        rejected = outcome.rejected.len(),
        retry = outcome.retry.len(),
        "edge hits reported"
    );
    Ok(Json(outcome))
}

enum Billed {
    Now,
    Before,
}

enum Rejected {
    Permanently(&'static str),
    /// The store failed; what went wrong underneath is logged once, with the hit.
    ForNow(ErrorResponse),
}

impl From<ferry_core::ports::StoreError> for Rejected {
    fn from(error: ferry_core::ports::StoreError) -> Rejected {
        Rejected::ForNow(ErrorResponse::from(error))
    }
}

async fn bill(state: &AppState, keys: &EdgeKeys, hit: &Hit) -> Result<Billed, Rejected> {
    if !hit.has_valid_id() {
        return Err(Rejected::Permanently("invalid_hit_id"));
    }
    let grant = Grant::verify(&hit.grant, keys.grant())
        .map_err(|_| Rejected::Permanently("invalid_grant"))?;
    let now_ms = clock::unix_millis();
    if hit.at_ms > grant.expires_at_ms {
        return Err(Rejected::Permanently("grant_expired"));
    }
    // Reports arrive within hours; a much older one is a replay, refused before any write (the
    // store's own idempotency guards do not live forever).
    if now_ms
        > grant
            .expires_at_ms
            .saturating_add(edge::MAX_REPORT_DELAY_MS)
    {
        return Err(Rejected::Permanently("report_too_late"));
    }
    if hit.at_ms > now_ms.saturating_add(CLOCK_SKEW_MS) {
        return Err(Rejected::Permanently("hit_in_the_future"));
    }
    let endpoint =
        Endpoint::from_name(&grant.endpoint).ok_or(Rejected::Permanently("invalid_grant"))?;
    let model = state
        .store
        .get_model(&grant.model)
        .await?
        .ok_or(Rejected::Permanently("unknown_model"))?;
    let principal = principal(state, &grant, hit.at_ms).await?;
    let price = state
        .accounts
        .price_at(&grant.model, &grant.deployment, hit.at_ms)
        .await?;
    let mut usage = Usage {
        prompt_tokens: grant.prompt_tokens,
        completion_tokens: grant.completion_tokens,
        total_tokens: grant.prompt_tokens.saturating_add(grant.completion_tokens),
        prompt_tokens_details: (grant.cached_tokens > 0).then_some(PromptTokensDetails {
            cached_tokens: grant.cached_tokens,
        }),
        cost: None,
    };
    let cost = price.as_ref().map_or(Money::ZERO, |price| {
        ferry_core::usage::hit_cost(price, &usage)
    });
    usage.cost = Some(cost);
    let request_id = hit.request_id();
    let caller = grant
        .key_public_id
        .as_deref()
        .map(api_key::key_id)
        .or_else(|| grant.token_caller.clone())
        .unwrap_or_default();
    // Admitted like any hit: it counts against rate limits and holds its exact cost.
    let admitted = admit(
        state,
        AdmissionAsk {
            request_id: &request_id,
            principal: &principal,
            caller: &caller,
            tenant_id: &grant.tenant_id,
            model: &model.spec,
            deployment: &grant.deployment,
            endpoint,
            estimate: TokenEstimate {
                prompt_max: grant.prompt_tokens,
                prompt_likely: grant.prompt_tokens,
                output_max: grant.completion_tokens,
                output_likely: grant.completion_tokens,
            },
            hold: cost,
            now_ms,
            rate_limited: false,
        },
    )
    .await;
    match admitted {
        Ok(_) => {}
        // Admitted by an earlier report: settling below finishes it if that report did not.
        Err(failure) if failure.error.kind == ErrorKind::Conflict => {}
        Err(failure)
            if matches!(
                failure.error.kind,
                ErrorKind::Internal | ErrorKind::NoCapacity
            ) =>
        {
            return Err(Rejected::ForNow(failure));
        }
        Err(failure) => {
            tracing::warn!(request_id, error = %failure.error.message, "edge hit refused");
            return Err(Rejected::Permanently(refusal_code(&failure.error)));
        }
    }
    let record = UsageRecord {
        request_id,
        tenant_id: grant.tenant_id.clone(),
        key_id: Some(caller).filter(|caller| !caller.is_empty()),
        model: grant.model.clone(),
        deployment: grant.deployment.clone(),
        endpoint: endpoint.name().to_owned(),
        prompt_tokens: usage.prompt_tokens,
        cached_tokens: usage.cached_tokens(),
        completion_tokens: usage.completion_tokens,
        cost,
        status: 200,
        latency_ms: 0,
        ttft_ms: None,
        cache_status: "edge_hit".into(),
        route: ferry_core::ports::NO_ROUTE.into(),
        attempts: 0,
        created_at: hit.at_ms / 1000,
        user: None,
        metadata: Default::default(),
    };
    match state.accounts.settle(&record).await? {
        Settled::Recorded { .. } => Ok(Billed::Now),
        Settled::Duplicate => Ok(Billed::Before),
    }
}

/// The caller the grant names, as of the hit: a key revoked before the hit was served is not
/// billed for it (the edge served it within its documented bound; the operator bears it).
async fn principal(state: &AppState, grant: &Grant, at_ms: u64) -> Result<Principal, Rejected> {
    let Some(public_id) = &grant.key_public_id else {
        return Ok(Principal {
            tenant_id: Some(grant.tenant_id.clone()),
            role: Role::Member,
            credential: Credential::Jwt {
                subject: "edge".into(),
                issuer: "edge".into(),
            },
            model_allowlist: None,
            key_policy: KeyPolicy::default(),
        });
    };
    let key = state
        .store
        .find_key(public_id)
        .await?
        .filter(|key| key.tenant_id.as_deref() == Some(grant.tenant_id.as_str()))
        .ok_or(Rejected::Permanently("unknown_key"))?;
    if key
        .revoked_at
        .is_some_and(|revoked| revoked.saturating_mul(1000) <= at_ms)
    {
        return Err(Rejected::Permanently("key_revoked"));
    }
    Ok(Principal {
        tenant_id: key.tenant_id,
        role: key.role,
        credential: Credential::ApiKey { key_id: key.id },
        model_allowlist: key.models,
        key_policy: KeyPolicy {
            limits: key.limits,
            budgets: key.budgets,
            credit_cap: key.credit_cap,
        },
    })
}

fn refusal_code(error: &ApiError) -> &'static str {
    match error.kind {
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::InsufficientCredit => "insufficient_credit",
        _ => "refused",
    }
}
