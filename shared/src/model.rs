//! Models, their deployments and prices, and how a call picks a deployment.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::money::Money;
use crate::ratelimit::RateLimits;
use crate::route::RoutePolicy;

/// An OpenAI-compatible server a deployment forwards to (vLLM, TGI, a hosted API…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpstreamTarget {
    /// Base URL up to and including `/v1`, e.g. `http://127.0.0.1:8000/v1`.
    pub url: String,
    /// The model name the upstream knows.
    pub model: String,
    /// Sent as `Authorization: Bearer …` to the upstream; never shown back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    pub id: String,
    pub upstream: UpstreamTarget,
    /// Share of traffic relative to the other deployments; 0 takes none (a drained deployment).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Prices per million tokens and per call, in exact USD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Price {
    pub input_per_mtok_usd: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok_usd: Option<Money>,
    pub output_per_mtok_usd: Money,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_call_usd: Option<Money>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit_usd: Option<Money>,
    /// What a batch request (the Batch API) saves on every amount above, in percent (0 to
    /// 100); [`DEFAULT_BATCH_DISCOUNT_PERCENT`] when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_discount_percent: Option<u8>,
}

/// Batch requests cost half, as OpenAI's and Anthropic's do, unless a price says otherwise.
pub const DEFAULT_BATCH_DISCOUNT_PERCENT: u8 = 50;

/// `POST /admin/v1/models`, and a model as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelSpec {
    pub id: String,
    pub deployments: Vec<Deployment>,
    /// The price in effect from now on; its history is kept apart (`/models/{id}/prices`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// The most tokens one call may generate; `max_tokens` above it is refused, and a call
    /// without `max_tokens` is held (and capped) at it. Default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Requests and tokens per minute for the model across all callers.
    #[serde(default, skip_serializing_if = "RateLimits::is_unlimited")]
    pub limits: RateLimits,
    /// Fallbacks, retries, per-attempt timeouts and circuit breakers; defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RoutePolicy>,
}

/// A model id is what callers type in `model`: keep it to a URL- and log-safe alphabet.
fn is_valid_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-_.:/@".contains(&byte))
}

impl ModelSpec {
    pub fn validate(&self) -> Result<(), ApiError> {
        if !is_valid_model_id(&self.id) {
            return Err(ApiError::invalid(
                "id",
                "id must be 1-128 characters of letters, digits and -_.:/@",
            ));
        }
        if self.deployments.is_empty() {
            return Err(ApiError::invalid(
                "deployments",
                "a model needs at least one deployment",
            ));
        }
        for (index, deployment) in self.deployments.iter().enumerate() {
            let param = |field: &str| format!("deployments[{index}].{field}");
            if deployment.id.trim().is_empty() {
                return Err(ApiError::invalid(
                    param("id"),
                    "deployment id must not be empty",
                ));
            }
            if self.deployments[..index]
                .iter()
                .any(|earlier| earlier.id == deployment.id)
            {
                return Err(ApiError::invalid(
                    param("id"),
                    "deployment ids must be unique within a model",
                ));
            }
            let url = &deployment.upstream.url;
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.len() < "http://x".len()
            {
                return Err(ApiError::invalid(
                    param("upstream.url"),
                    "upstream url must be an http:// or https:// URL",
                ));
            }
            if deployment.upstream.model.trim().is_empty() {
                return Err(ApiError::invalid(
                    param("upstream.model"),
                    "upstream model must not be empty",
                ));
            }
        }
        if self
            .deployments
            .iter()
            .all(|deployment| deployment.weight == 0)
        {
            return Err(ApiError::invalid(
                "deployments",
                "at least one deployment needs a weight above 0",
            ));
        }
        if self.max_output_tokens == Some(0) {
            return Err(ApiError::invalid(
                "max_output_tokens",
                "max_output_tokens must be at least 1",
            ));
        }
        if let Some(price) = &self.price {
            price.validate("price.")?;
        }
        if let Some(route) = &self.route {
            route.validate(&self.deployments, "route.")?;
        }
        Ok(())
    }
}

impl Price {
    /// Every amount must be zero or more; `prefix` is the path to this price in the request.
    pub fn validate(&self, prefix: &str) -> Result<(), ApiError> {
        let amounts = [
            ("input_per_mtok_usd", Some(self.input_per_mtok_usd)),
            ("cached_input_per_mtok_usd", self.cached_input_per_mtok_usd),
            ("output_per_mtok_usd", Some(self.output_per_mtok_usd)),
            ("per_call_usd", self.per_call_usd),
            ("cache_hit_usd", self.cache_hit_usd),
        ];
        match amounts
            .iter()
            .find(|(_, amount)| amount.is_some_and(Money::is_negative))
        {
            Some((param, _)) => Err(ApiError::invalid(
                format!("{prefix}{param}"),
                "prices must not be negative",
            )),
            None if self
                .batch_discount_percent
                .is_some_and(|percent| percent > 100) =>
            {
                Err(ApiError::invalid(
                    format!("{prefix}batch_discount_percent"),
                    "batch_discount_percent must be between 0 and 100",
                ))
            }
            None => Ok(()),
        }
    }

    /// The price of a batch request: every amount less the batch discount, rounded down to the
    /// nanodollar (in the caller's favour).
    pub fn for_batch(&self) -> Price {
        let percent = i128::from(
            100 - self
                .batch_discount_percent
                .unwrap_or(DEFAULT_BATCH_DISCOUNT_PERCENT)
                .min(100),
        );
        let discounted = |amount: Money| {
            let nanos = i128::from(amount.nanos()) * percent / 100;
            Money::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
        };
        Price {
            input_per_mtok_usd: discounted(self.input_per_mtok_usd),
            cached_input_per_mtok_usd: self.cached_input_per_mtok_usd.map(discounted),
            output_per_mtok_usd: discounted(self.output_per_mtok_usd),
            per_call_usd: self.per_call_usd.map(discounted),
            cache_hit_usd: self.cache_hit_usd.map(discounted),
            batch_discount_percent: self.batch_discount_percent,
        }
    }
}

impl ModelSpec {
    pub fn output_cap(&self) -> u32 {
        self.max_output_tokens
            .unwrap_or(crate::admission::DEFAULT_MAX_OUTPUT_TOKENS)
    }

    /// The model as shown back to administrators: upstream keys are replaced by a marker.
    pub fn redacted(&self) -> ModelSpec {
        let mut shown = self.clone();
        for deployment in &mut shown.deployments {
            if deployment.upstream.api_key.is_some() {
                deployment.upstream.api_key = Some("(set)".to_owned());
            }
        }
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_price_is_discounted_and_rounded_down() {
        let usd = |text: &str| text.parse::<Money>().unwrap();
        let price = Price {
            input_per_mtok_usd: usd("0.15"),
            output_per_mtok_usd: usd("0.000000003"),
            per_call_usd: Some(usd("0.001")),
            ..Price::default()
        };
        let half = price.for_batch();
        assert_eq!(half.input_per_mtok_usd, usd("0.075"));
        assert_eq!(half.output_per_mtok_usd, usd("0.000000001"));
        assert_eq!(half.per_call_usd, Some(usd("0.0005")));
        let none = Price {
            batch_discount_percent: Some(0),
            ..price.clone()
        };
        assert_eq!(none.for_batch().input_per_mtok_usd, usd("0.15"));
        let free = Price {
            batch_discount_percent: Some(100),
            ..price.clone()
        };
        assert_eq!(free.for_batch().per_call_usd, Some(Money::ZERO));
        let too_much = Price {
            batch_discount_percent: Some(101),
            ..price
        };
        assert_eq!(
            too_much.validate("price.").unwrap_err().param.as_deref(),
            Some("price.batch_discount_percent")
        );
    }
    use serde_json::json;

    fn spec(value: serde_json::Value) -> ModelSpec {
        serde_json::from_value(value).unwrap()
    }

    fn deployment(id: &str, weight: u32) -> serde_json::Value {
        json!({"id": id, "upstream": {"url": "http://127.0.0.1:1/v1", "model": "m"}, "weight": weight})
    }

    #[test]
    fn validation_names_the_bad_field() {
        let cases: &[(serde_json::Value, Option<&str>)] = &[
            (
                json!({"id": "ok-model_1.2:latest", "deployments": [deployment("a", 1)]}),
                None,
            ),
            (
                json!({"id": "", "deployments": [deployment("a", 1)]}),
                Some("id"),
            ),
            (
                json!({"id": "bad id", "deployments": [deployment("a", 1)]}),
                Some("id"),
            ),
            (json!({"id": "m", "deployments": []}), Some("deployments")),
            (
                json!({"id": "m", "deployments": [deployment("a", 0)]}),
                Some("deployments"),
            ),
            (
                json!({"id": "m", "deployments": [deployment("a", 1), deployment("a", 1)]}),
                Some("deployments[1].id"),
            ),
            (
                json!({"id": "m", "deployments": [{"id": "a", "upstream": {"url": "ftp://x", "model": "m"}}]}),
                Some("deployments[0].upstream.url"),
            ),
            (
                json!({"id": "m", "deployments": [deployment("a", 1)], "price": {"input_per_mtok_usd": "-1", "output_per_mtok_usd": "1"}}),
                Some("price.input_per_mtok_usd"),
            ),
            (
                json!({"id": "m", "deployments": [deployment("a", 1)], "route": {"fallbacks": ["b"]}}),
                Some("route.fallbacks[0]"),
            ),
        ];
        for (value, expected) in cases {
            let result = spec(value.clone()).validate();
            assert_eq!(
                result.err().and_then(|error| error.param).as_deref(),
                *expected,
                "{value}"
            );
        }
    }

    #[test]
    fn redaction_hides_upstream_keys() {
        let model = spec(
            json!({"id": "m", "deployments": [{"id": "a", "upstream": {"url": "https://x/v1", "model": "m", "api_key": "sk-secret"}}]}),
        );
        let shown = serde_json::to_string(&model.redacted()).unwrap();
        assert!(!shown.contains("sk-secret"));
        assert!(shown.contains("(set)"));
    }
}
