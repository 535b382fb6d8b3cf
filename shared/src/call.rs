//! A model call's plan, decided before any I/O: what it may generate, what that may cost at
//! the dearest deployment it can reach (the hold), whether the response cache may serve or keep
//! it, and what admission must take for it (the rate-limit buckets and the spend caps).
//!
//! The gateway asks the store only for what the plan needs (the model, its prices, the
//! tenant), then runs it: `plan → admit → answer from cache | forward → settle`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::admission::{Admission, Draw, TYPICAL_OUTPUT_TOKENS, TokenEstimate, spend_caps};
use crate::cache::{self, Decision, Directives};
use crate::error::ApiError;
use crate::model::{ModelSpec, Price};
use crate::money::Money;
use crate::ports::{Endpoint, Tenant};
use crate::principal::{Credential, Principal};
use crate::ratelimit::{Bucket, Unit};

/// What a call asks to generate, as its endpoint reads the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputAsk {
    /// `max_tokens` as the caller set it, if they did.
    pub requested: Option<u32>,
    /// The field they set it in, for errors.
    pub param: &'static str,
    /// `n`: each choice may generate the maximum.
    pub choices: u32,
    /// Prompts in one call (legacy completions take a batch).
    pub prompts: u64,
    /// What the endpoint generates when `max_tokens` is absent; none: up to the model's cap.
    pub default: Option<u32>,
}

/// A validated call's shape: everything the plan needs from the request but its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallShape {
    pub endpoint: Endpoint,
    pub stream: bool,
    /// The caller asked for a usage chunk at the end of its stream.
    pub include_usage: bool,
    /// What the call may generate; none for embeddings.
    pub output: Option<OutputAsk>,
    pub body_bytes: usize,
    /// Non-text content parts, each bounded apart from the body's bytes.
    pub media_parts: u64,
    /// What the caller asked of the response cache.
    pub directives: Directives,
    /// A request of a batch (the Batch API): priced at the batch discount.
    pub batch: bool,
}

/// What a call may do, before it is admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct CallPlan {
    /// What it may consume: its hold and its token draws are taken from this.
    pub estimate: TokenEstimate,
    /// `max_tokens` to set on the body: the endpoint's own default made explicit, so every
    /// backend stops where the hold assumes.
    pub set_max_tokens: Option<u32>,
    pub cache: Decision,
    /// Whom the caller says the call is for, recorded on its usage.
    pub attribution: Attribution,
}

/// Whom a call is for below its tenant, as the caller says: its own end user (OpenAI's `user`;
/// Anthropic's `metadata.user_id` arrives as it) and the call's `metadata`, so an operator's
/// customer can bill its own users. Bounded as OpenAI bounds them; recorded on usage events and
/// grouped by in reports, never a metric label.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    pub user: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

pub const MAX_USER_CHARS: usize = 256;
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;

impl Attribution {
    /// The attribution a request's body carries; a field out of bounds is a 400 naming it.
    pub fn of(body: &Value) -> Result<Attribution, ApiError> {
        let user = match body.get("user") {
            None | Some(Value::Null) => None,
            Some(Value::String(user)) if user.chars().count() <= MAX_USER_CHARS => {
                Some(user.clone())
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "user",
                    format!("user must be a string of at most {MAX_USER_CHARS} characters"),
                ));
            }
        };
        let metadata = match body.get("metadata") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(pairs)) if pairs.len() <= MAX_METADATA_PAIRS => {
                let mut metadata = BTreeMap::new();
                for (key, value) in pairs {
                    match value {
                        Value::String(value)
                            if key.chars().count() <= MAX_METADATA_KEY_CHARS
                                && value.chars().count() <= MAX_METADATA_VALUE_CHARS =>
                        {
                            metadata.insert(key.clone(), value.clone());
                        }
                        _ => return Err(metadata_error()),
                    }
                }
                metadata
            }
            Some(_) => return Err(metadata_error()),
        };
        Ok(Attribution { user, metadata })
    }
}

fn metadata_error() -> ApiError {
    ApiError::invalid(
        "metadata",
        format!(
            "metadata must be an object of at most {MAX_METADATA_PAIRS} string values, keys of at most {MAX_METADATA_KEY_CHARS} characters and values of at most {MAX_METADATA_VALUE_CHARS}"
        ),
    )
}

/// Plans a call of `shape` (whose JSON is `body`) to `model`. A `max_tokens` above the
/// model's cap is refused. A chat call without one is held at the cap and left as the caller
/// sent it: backends reject a `max_tokens` the prompt leaves no room for, and the charge never
/// silently exceeds what the caller is told whatever the backend does.
pub fn plan(model: &ModelSpec, shape: &CallShape, body: &Value) -> Result<CallPlan, ApiError> {
    let (output_max, output_likely, set_max_tokens) = match &shape.output {
        None => (0, 0, None),
        Some(output) => {
            let cap = model.output_cap();
            let each = u64::from(output.choices).saturating_mul(output.prompts);
            let (most, likely, set) = match (output.requested, output.default) {
                (Some(requested), _) if requested > cap => {
                    return Err(ApiError::invalid(
                        output.param,
                        format!(
                            "{} is {requested}, above this model's limit of {cap}",
                            output.param
                        ),
                    ));
                }
                (Some(requested), _) => (u64::from(requested), u64::from(requested), None),
                (None, Some(default)) => {
                    let limit = default.min(cap);
                    (u64::from(limit), u64::from(limit), Some(limit))
                }
                (None, None) => (u64::from(cap), TYPICAL_OUTPUT_TOKENS, None),
            };
            (most.saturating_mul(each), likely.saturating_mul(each), set)
        }
    };
    Ok(CallPlan {
        estimate: TokenEstimate::new(
            shape.body_bytes,
            shape.media_parts,
            output_max,
            output_likely,
        ),
        set_max_tokens,
        cache: cache::decide(shape.endpoint, body, &shape.directives),
        attribution: Attribution::of(body)?,
    })
}

/// The hold: the worst case at the dearest price among the deployments the call may reach (a
/// fallback may answer); nothing when none is priced.
pub fn hold(estimate: &TokenEstimate, prices: &[Option<Price>]) -> Money {
    prices
        .iter()
        .flatten()
        .map(|price| estimate.worst_case_cost(price))
        .max()
        .unwrap_or(Money::ZERO)
}

/// A call to admit, as the gateway (or the billing of an edge hit) knows it.
#[derive(Debug, Clone)]
pub struct AdmissionAsk<'a> {
    pub request_id: &'a str,
    pub principal: &'a Principal,
    /// Whom the call's usage is attributed to ([`Credential::caller_id`]).
    pub caller: &'a str,
    pub tenant_id: &'a str,
    pub model: &'a ModelSpec,
    pub deployment: &'a str,
    pub endpoint: Endpoint,
    pub estimate: TokenEstimate,
    pub hold: Money,
    pub now_ms: u64,
    /// False for calls already served (edge hits, reported after the fact): billed, but no
    /// rate limit can refuse what was delivered.
    pub rate_limited: bool,
}

/// The admission a call asks of the store: a draw from every rate-limit bucket that applies
/// (the tenant's, the key's, the model's), its hold (waiting `hold_ttl_ms` for its
/// settlement), and every spend cap it counts against. `tenant` is the call's, as read now.
pub fn admission(ask: &AdmissionAsk<'_>, tenant: &Tenant, hold_ttl_ms: u64) -> Admission {
    let key_id = match &ask.principal.credential {
        Credential::ApiKey { key_id } => Some(key_id.as_str()),
        Credential::Jwt { .. } => None,
    };
    let policy = &ask.principal.key_policy;
    let mut scopes = vec![(format!("tenant:{}", tenant.id), tenant.limits)];
    if let Some(key_id) = key_id {
        scopes.push((format!("key:{key_id}"), policy.limits));
    }
    scopes.push((format!("model:{}", ask.model.id), ask.model.limits));
    if !ask.rate_limited {
        scopes.clear();
    }
    let draws = scopes
        .iter()
        .flat_map(|(scope, limits)| Bucket::all_for(scope, *limits))
        .map(|bucket| {
            let amount = match bucket.unit {
                Unit::Requests => 1,
                Unit::Tokens => ask.estimate.rate_tokens(),
            };
            Draw { bucket, amount }
        })
        .collect();
    let caps = spend_caps(
        &tenant.id,
        &tenant.budgets,
        key_id.map(|key_id| (key_id, policy.budgets.as_slice(), policy.credit_cap)),
        ask.now_ms / 1000,
    );
    Admission {
        request_id: ask.request_id.to_owned(),
        tenant_id: tenant.id.clone(),
        key_id: Some(ask.caller.to_owned()),
        model: ask.model.id.clone(),
        deployment: ask.deployment.to_owned(),
        endpoint: ask.endpoint.name().to_owned(),
        billing: tenant.billing,
        hold: ask.hold,
        draws,
        caps,
        now_ms: ask.now_ms,
        expires_at_ms: ask.now_ms.saturating_add(hold_ttl_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribution_is_read_from_the_body_within_bounds() {
        let body = serde_json::json!({"user": "u-1", "metadata": {"project": "apollo"}});
        let attribution = Attribution::of(&body).unwrap();
        assert_eq!(attribution.user.as_deref(), Some("u-1"));
        assert_eq!(attribution.metadata["project"], "apollo");
        assert_eq!(
            Attribution::of(&serde_json::json!({})).unwrap(),
            Attribution::default()
        );
        let refused = |body: Value| Attribution::of(&body).unwrap_err().param;
        let long = "x".repeat(MAX_USER_CHARS + 1);
        assert_eq!(
            refused(serde_json::json!({"user": long})).as_deref(),
            Some("user")
        );
        assert_eq!(
            refused(serde_json::json!({"user": 7})).as_deref(),
            Some("user")
        );
        assert_eq!(
            refused(serde_json::json!({"metadata": {"n": 1}})).as_deref(),
            Some("metadata")
        );
        let many: serde_json::Map<String, Value> = (0..=MAX_METADATA_PAIRS)
            .map(|index| (index.to_string(), Value::from("v")))
            .collect();
        assert_eq!(
            refused(serde_json::json!({ "metadata": many })).as_deref(),
            Some("metadata")
        );
    }
    use crate::admission::{Budget, BudgetPeriod, Enforcement};
    use crate::ports::Billing;
    use crate::principal::{KeyPolicy, Role};
    use crate::ratelimit::RateLimits;

    fn model(max_output_tokens: Option<u32>) -> ModelSpec {
        serde_json::from_value(serde_json::json!({
            "id": "m",
            "deployments": [{"id": "d", "upstream": {"url": "http://x.invalid/v1", "model": "up"}}],
            "max_output_tokens": max_output_tokens,
            "limits": {"rpm": 60},
        }))
        .unwrap()
    }

    fn shape(endpoint: Endpoint, output: Option<OutputAsk>) -> CallShape {
        CallShape {
            endpoint,
            stream: false,
            include_usage: false,
            output,
            body_bytes: 100,
            media_parts: 0,
            directives: Directives::default(),
            batch: false,
        }
    }

    fn ask(requested: Option<u32>, choices: u32, prompts: u64, default: Option<u32>) -> OutputAsk {
        OutputAsk {
            requested,
            param: "max_tokens",
            choices,
            prompts,
            default,
        }
    }

    #[test]
    fn the_output_bound_follows_the_request_the_endpoint_and_the_cap() {
        let body = serde_json::json!({"temperature": 0});
        // (max_output_tokens, ask) → (output_max, output_likely, set_max_tokens)
        let cases = [
            (None, ask(Some(100), 1, 1, None), (100, 100, None)),
            (None, ask(Some(100), 2, 3, None), (600, 600, None)),
            // A chat call without max_tokens: held at the cap, likely a typical answer.
            (
                None,
                ask(None, 1, 1, None),
                (4096, TYPICAL_OUTPUT_TOKENS, None),
            ),
            (Some(50), ask(None, 1, 1, None), (50, 50, None)),
            // Legacy completions: their default of 16 is made explicit, under the cap.
            (None, ask(None, 1, 2, Some(16)), (32, 32, Some(16))),
            (Some(8), ask(None, 1, 1, Some(16)), (8, 8, Some(8))),
        ];
        for (cap, output, (most, likely, set)) in cases {
            let planned = plan(
                &model(cap),
                &shape(Endpoint::Completions, Some(output)),
                &body,
            )
            .unwrap();
            assert_eq!(
                (
                    planned.estimate.output_max,
                    planned.estimate.output_likely,
                    planned.set_max_tokens
                ),
                (most, likely, set),
                "{cap:?} {output:?}"
            );
            assert!(matches!(planned.cache, Decision::Use { .. }));
        }
        let embeddings = plan(&model(None), &shape(Endpoint::Embeddings, None), &body).unwrap();
        assert_eq!(embeddings.estimate.output_max, 0);
        let refused = plan(
            &model(Some(10)),
            &shape(Endpoint::ChatCompletions, Some(ask(Some(11), 1, 1, None))),
            &body,
        )
        .unwrap_err();
        assert_eq!(refused.param.as_deref(), Some("max_tokens"));
        let sampled = plan(
            &model(None),
            &shape(Endpoint::ChatCompletions, None),
            &serde_json::json!({}),
        )
        .unwrap();
        assert!(matches!(sampled.cache, Decision::Bypass(_)));
    }

    #[test]
    fn the_hold_is_the_worst_case_at_the_dearest_reachable_price() {
        let estimate = TokenEstimate::new(936, 0, 100, 100);
        let price = |output: &str| Price {
            input_per_mtok_usd: "1".parse().unwrap(),
            cached_input_per_mtok_usd: None,
            output_per_mtok_usd: output.parse().unwrap(),
            per_call_usd: None,
            cache_hit_usd: None,
            batch_discount_percent: None,
        };
        let dear = estimate.worst_case_cost(&price("4"));
        assert_eq!(
            hold(&estimate, &[Some(price("2")), None, Some(price("4"))]),
            dear
        );
        assert_eq!(hold(&estimate, &[None]), Money::ZERO);
    }

    #[test]
    fn admission_draws_from_every_bucket_that_applies_and_counts_every_cap() {
        let tenant = Tenant {
            id: "t".into(),
            name: "T".into(),
            billing: Billing::Prepaid,
            created_at: 1,
            limits: RateLimits {
                rpm: Some(10),
                tpm: Some(1000),
            },
            budgets: vec![Budget {
                period: BudgetPeriod::Day,
                amount_usd: "5".parse().unwrap(),
                enforcement: Enforcement::Hard,
            }],
            log_prompts: false,
        };
        let key = Principal {
            tenant_id: Some("t".into()),
            role: Role::Member,
            credential: Credential::ApiKey {
                key_id: "key_abc".into(),
            },
            model_allowlist: None,
            key_policy: KeyPolicy {
                limits: RateLimits {
                    rpm: Some(5),
                    tpm: None,
                },
                budgets: Vec::new(),
                credit_cap: Some("1".parse().unwrap()),
            },
        };
        let token = Principal {
            credential: Credential::Jwt {
                subject: "alice".into(),
                issuer: "idp".into(),
            },
            key_policy: KeyPolicy::default(),
            ..key.clone()
        };
        let spec = model(None);
        fn ask<'a>(
            principal: &'a Principal,
            spec: &'a ModelSpec,
            rate_limited: bool,
        ) -> AdmissionAsk<'a> {
            AdmissionAsk {
                request_id: "r",
                principal,
                caller: "caller",
                tenant_id: "t",
                model: spec,
                deployment: "d",
                endpoint: Endpoint::ChatCompletions,
                estimate: TokenEstimate::new(400, 0, 100, 50),
                hold: "0.5".parse().unwrap(),
                now_ms: 1_795_600_000_000,
                rate_limited,
            }
        }
        let scopes = |admission: &Admission| -> Vec<String> {
            admission
                .draws
                .iter()
                .map(|draw| draw.bucket.id.clone())
                .collect()
        };
        let by_key = admission(&ask(&key, &spec, true), &tenant, 900_000);
        assert_eq!(
            by_key.draws.len(),
            4,
            "tenant rpm and tpm, key rpm, model rpm"
        );
        assert!(scopes(&by_key).iter().any(|id| id.contains("key:key_abc")));
        assert_eq!(
            by_key.caps.len(),
            2,
            "the tenant's budget and the key's credit cap"
        );
        assert_eq!(by_key.key_id.as_deref(), Some("caller"));
        assert_eq!(by_key.expires_at_ms, 1_795_600_900_000);
        let by_token = admission(&ask(&token, &spec, true), &tenant, 900_000);
        assert_eq!(by_token.draws.len(), 3, "a token has no key buckets");
        assert_eq!(by_token.caps.len(), 1);
        let already_served = admission(&ask(&key, &spec, false), &tenant, 900_000);
        assert!(
            already_served.draws.is_empty(),
            "no rate limit refuses an edge hit"
        );
        assert_eq!(already_served.caps.len(), 2, "but every cap counts it");
    }
}
