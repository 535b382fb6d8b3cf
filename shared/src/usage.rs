//! Token usage and what it costs.

use crate::model::Price;
use crate::money::Money;
use crate::openai::Usage;
use crate::ports::UsageRecord;

/// What usage events add to a usage rollup (a day's per model and key, a key's month): the
/// sums reports read instead of the events. A batch of events sums these per rollup first, so
/// each rollup is written once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupTotals {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub completion_tokens: i64,
    pub cost_nanos: i64,
}

impl RollupTotals {
    /// One event's part.
    pub fn of(usage: &UsageRecord) -> RollupTotals {
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        RollupTotals {
            requests: 1,
            prompt_tokens: signed(usage.prompt_tokens),
            cached_tokens: signed(usage.cached_tokens),
            completion_tokens: signed(usage.completion_tokens),
            cost_nanos: usage.cost.nanos(),
        }
    }

    pub fn add(&mut self, other: RollupTotals) {
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
    }

    /// Each total by its column's (or attribute's) name in the stores.
    pub fn named(&self) -> [(&'static str, i64); 5] {
        [
            ("requests", self.requests),
            ("prompt_tokens", self.prompt_tokens),
            ("cached_tokens", self.cached_tokens),
            ("completion_tokens", self.completion_tokens),
            ("cost_nanos", self.cost_nanos),
        ]
    }
}

const TOKENS_PER_MTOK: i128 = 1_000_000;

/// The cost of one call at `price`: tokens times per-million prices, plus the per-call fee.
///
/// Token charges are summed exactly in nanodollars × tokens and rounded up once to a whole
/// nanodollar, so the rounding never depends on how a bill is split. Cached prompt tokens are
/// billed at the cached price when there is one, else at the input price.
pub fn cost(price: &Price, usage: &Usage) -> Money {
    let cached = usage.cached_tokens().min(usage.prompt_tokens);
    let uncached = usage.prompt_tokens - cached;
    let cached_price = price
        .cached_input_per_mtok_usd
        .unwrap_or(price.input_per_mtok_usd);
    let scaled = i128::from(uncached) * i128::from(price.input_per_mtok_usd.nanos())
        + i128::from(cached) * i128::from(cached_price.nanos())
        + i128::from(usage.completion_tokens) * i128::from(price.output_per_mtok_usd.nanos());
    let tokens_nanos = (scaled + TOKENS_PER_MTOK - 1).div_euclid(TOKENS_PER_MTOK);
    let per_call = price.per_call_usd.unwrap_or(Money::ZERO).nanos();
    let total = tokens_nanos.saturating_add(i128::from(per_call));
    Money::from_nanos(i64::try_from(total).unwrap_or(i64::MAX))
}

/// What a call answered from the response cache costs: the model's cache-hit price if it has
/// one, else what the call would have cost (without a hit price, caching saves latency, not
/// money).
pub fn hit_cost(price: &Price, usage: &Usage) -> Money {
    price.cache_hit_usd.unwrap_or_else(|| cost(price, usage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::PromptTokensDetails;

    fn usage(prompt: u64, cached: u64, completion: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: cached,
            }),
            cost: None,
        }
    }

    fn price(input: &str, cached: Option<&str>, output: &str, per_call: Option<&str>) -> Price {
        Price {
            input_per_mtok_usd: input.parse().unwrap(),
            cached_input_per_mtok_usd: cached.map(|text| text.parse().unwrap()),
            output_per_mtok_usd: output.parse().unwrap(),
            per_call_usd: per_call.map(|text| text.parse().unwrap()),
            cache_hit_usd: None,
            batch_discount_percent: None,
        }
    }

    #[test]
    fn costs_are_exact_and_round_up_once() {
        let cases = [
            (
                price("1", None, "2", None),
                usage(1_000_000, 0, 1_000_000),
                "3.00",
            ),
            (
                price("0.15", None, "0.60", None),
                usage(10, 0, 20),
                "0.0000135",
            ),
            (
                price("0.15", Some("0.075"), "0.60", None),
                usage(10, 10, 0),
                "0.00000075",
            ),
            (
                price("0.000001", None, "0", None),
                usage(1, 0, 0),
                "0.000000001",
            ),
            (price("0", None, "0", Some("0.01")), usage(5, 0, 5), "0.01"),
            (
                price("3", Some("1"), "15", Some("0.001")),
                usage(100, 40, 50),
                "0.00197",
            ),
            (price("1", None, "1", None), usage(0, 0, 0), "0.00"),
            (
                price("1", Some("0.5"), "1", None),
                usage(2, 5, 0),
                "0.000001",
            ),
        ];
        for (price, usage, expected) in cases {
            assert_eq!(
                cost(&price, &usage).to_string(),
                expected,
                "{price:?} {usage:?}"
            );
        }
    }

    #[test]
    fn a_cache_hit_costs_the_hit_price_or_else_the_full_price() {
        let mut priced = price("1", None, "2", Some("0.001"));
        let used = usage(1000, 0, 500);
        assert_eq!(hit_cost(&priced, &used), cost(&priced, &used));
        priced.cache_hit_usd = Some("0.0001".parse().unwrap());
        assert_eq!(hit_cost(&priced, &used), "0.0001".parse().unwrap());
    }
}
