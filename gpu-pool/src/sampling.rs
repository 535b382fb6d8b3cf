//! Token sampling: temperature, top-k, top-p and a seeded generator, on plain logits.
//!
//! The generator is SplitMix64, written here so that a seed gives the same text on every
//! platform and with every version of every dependency.

/// How to pick the next token. `temperature` 0 means greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: Option<usize>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let state = params.seed;
        Sampler { params, state }
    }

    fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^= mixed >> 31;
        // 53 random bits make a uniform double in [0, 1).
        (mixed >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks a token id from `logits` (one per vocabulary entry).
    ///
    /// Only plausible tokens are considered: those within `PLAUSIBLE` of the best logit
    /// (after temperature) carry all but a vanishing share of the probability, so the sort
    /// that top-k and top-p need runs over a few candidates, not the whole vocabulary.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 1e-6 || self.params.top_k == Some(1) {
            return argmax(logits);
        }
        let temperature = self.params.temperature;
        let best = logits
            .iter()
            .copied()
            .filter(|logit| logit.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if !best.is_finite() {
            return argmax(logits);
        }
        let floor = f64::from(best) / temperature - PLAUSIBLE;
        let mut candidates: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, logit)| logit.is_finite())
            .map(|(id, logit)| (id as u32, f64::from(*logit) / temperature))
            .filter(|(_, scaled)| *scaled >= floor)
            .collect();
        let needs_order = self
            .params
            .top_k
            .is_some_and(|k| k > 0 && k < candidates.len())
            || self.params.top_p < 1.0;
        if needs_order {
            candidates.sort_unstable_by(|left, right| {
                right.1.total_cmp(&left.1).then(left.0.cmp(&right.0))
            });
        }
        if let Some(top_k) = self.params.top_k.filter(|k| *k > 0) {
            candidates.truncate(top_k);
        }
        let max = f64::from(best) / temperature;
        let mut total = 0.0;
        for candidate in &mut candidates {
            candidate.1 = (candidate.1 - max).exp();
            total += candidate.1;
        }
        if self.params.top_p < 1.0 {
            // Keep the smallest head of the sorted list whose probability reaches top_p.
            let mut cumulative = 0.0;
            let mut keep = candidates.len();
            for (index, candidate) in candidates.iter().enumerate() {
                cumulative += candidate.1 / total;
                if cumulative >= self.params.top_p {
                    keep = index + 1;
                    break;
                }
            }
            candidates.truncate(keep);
            total = candidates.iter().map(|candidate| candidate.1).sum();
        }
        let mut point = self.next_unit() * total;
        for (id, weight) in &candidates {
            if point < *weight {
                return *id;
            }
            point -= weight;
        }
        candidates.last().map_or(0, |candidate| candidate.0)
    }
}

/// Tokens whose scaled logit is more than this below the best have probability under e^-30
/// (about 1e-13) of the best one's: together, even over a 250k vocabulary, under 1e-7.
const PLAUSIBLE: f64 = 30.0;

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (index, logit) in logits.iter().enumerate() {
        if *logit > logits[best] {
            best = index;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_p: f64, top_k: Option<usize>, seed: u64) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
        })
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(sampler(0.0, 1.0, None, 1).sample(&logits), 1);
        assert_eq!(sampler(1.0, 1.0, Some(1), 1).sample(&logits), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draws = |seed| {
            let mut sampler = sampler(1.0, 1.0, None, seed);
            (0..20).map(|_| sampler.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [5.0, 4.0, 0.0, -2.0, -3.0];
        for seed in 0..200 {
            assert!(sampler(1.0, 1.0, Some(2), seed).sample(&logits) < 2);
            // Token 0 alone holds ~73% of the mass: top_p 0.5 keeps only it.
            assert_eq!(sampler(1.0, 0.5, None, seed).sample(&logits), 0);
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        // Two tokens with probabilities 1/(1+e) and e/(1+e) ≈ 0.27 and 0.73.
        let logits = [0.0, 1.0];
        let mut sampler = sampler(1.0, 1.0, None, 7);
        let ones = (0..10_000).filter(|_| sampler.sample(&logits) == 1).count();
        assert!((7_000..7_600).contains(&ones), "{ones}");
    }

    #[test]
    fn non_finite_logits_are_never_drawn() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NAN];
        for seed in 0..50 {
            assert_eq!(sampler(1.0, 1.0, None, seed).sample(&logits), 1);
        }
    }
}
