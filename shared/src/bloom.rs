//! A Bloom filter of API-key public ids: "certainly not a key" without a store read.
//!
//! The gateway keeps one of the live keys' public ids, so a random or forged key is turned away
//! in memory; only an id the filter might hold (a real key, or a rare false positive) costs a
//! store read. The filter never answers "no" for an id it was given.

use sha2::{Digest, Sha256};

/// At this false-positive rate a filter costs ~9.6 bits and 7 probes per id.
pub const FALSE_POSITIVE_RATE: f64 = 0.01;

/// The smallest filter: 128 bytes.
const MIN_BITS: f64 = 1024.0;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloomFilter {
    bits: Vec<u64>,
    probes: u32,
}

impl BloomFilter {
    /// An empty filter sized for `expected` ids at `false_positive_rate` (clamped to a sane
    /// range); it stays correct past `expected`, only less selective.
    pub fn with_capacity(expected: usize, false_positive_rate: f64) -> BloomFilter {
        let rate = false_positive_rate.clamp(1e-9, 0.5);
        let ln2 = std::f64::consts::LN_2;
        // m = -n ln p / (ln 2)^2 bits and k = -log2 p probes: the textbook optimum. The floor on
        // m keeps a small filter's probe patterns (first bit, step) too many to collide.
        let expected = expected.max(1) as f64;
        let bit_count = (-expected * rate.ln() / (ln2 * ln2)).ceil().max(MIN_BITS);
        let probes = (-rate.log2()).ceil().clamp(1.0, 32.0) as u32;
        let words = (bit_count / 64.0).ceil() as usize;
        BloomFilter {
            bits: vec![0; words],
            probes,
        }
    }

    /// A filter holding exactly `ids`, sized for them with room to grow by half.
    pub fn of<'a>(ids: impl ExactSizeIterator<Item = &'a str>) -> BloomFilter {
        let mut filter = BloomFilter::with_capacity(ids.len() + ids.len() / 2, FALSE_POSITIVE_RATE);
        for id in ids {
            filter.insert(id);
        }
        filter
    }

    pub fn insert(&mut self, id: &str) {
        let bit_count = self.bit_count();
        for bit in probes(id, self.probes, bit_count) {
            if let Some(word) = self.bits.get_mut((bit / 64) as usize) {
                *word |= 1 << (bit % 64);
            }
        }
    }

    /// False only when `id` was never inserted.
    pub fn might_contain(&self, id: &str) -> bool {
        let bit_count = self.bit_count();
        probes(id, self.probes, bit_count).all(|bit| {
            self.bits
                .get((bit / 64) as usize)
                .is_some_and(|word| word & (1 << (bit % 64)) != 0)
        })
    }

    pub fn size_bytes(&self) -> usize {
        self.bits.len() * 8
    }

    fn bit_count(&self) -> u64 {
        self.bits.len() as u64 * 64
    }
}

/// Triple hashing: probe i is h1 + i·h2 + i²·h3, three words of one SHA-256 (ids are
/// attacker-chosen, so not a fast hash whose collisions could be aimed). Plain double hashing
/// gives a small filter too few distinct probe patterns: ids would collide as a whole.
fn probes(id: &str, count: u32, bit_count: u64) -> impl Iterator<Item = u64> {
    let digest = Sha256::digest(id.as_bytes());
    let word = |index: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&digest[index * 8..index * 8 + 8]);
        u64::from_le_bytes(bytes)
    };
    let (first, step, curve) = (word(0), word(1) | 1, word(2));
    (0..u64::from(count)).map(move |i| {
        first
            .wrapping_add(i.wrapping_mul(step))
            .wrapping_add((i * i).wrapping_mul(curve))
            % bit_count
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_forgets_an_inserted_id() {
        let ids: Vec<String> = (0..5_000).map(|i| format!("key{i:08}")).collect();
        let filter = BloomFilter::of(ids.iter().map(String::as_str));
        assert!(ids.iter().all(|id| filter.might_contain(id)));
    }

    #[test]
    fn rejects_almost_every_other_id() {
        let ids: Vec<String> = (0..5_000).map(|i| format!("key{i:08}")).collect();
        let filter = BloomFilter::of(ids.iter().map(String::as_str));
        let false_positives = (0..100_000)
            .filter(|i| filter.might_contain(&format!("random{i}")))
            .count();
        // Sized for 1 % at 7,500 ids, so well under 1 % at 5,000.
        assert!(false_positives < 1_000, "{false_positives} false positives");
    }

    #[test]
    fn a_small_filter_is_still_selective() {
        let filter = BloomFilter::of(["abcdefghijklmnop"].into_iter());
        let hits = (0..200_000)
            .filter(|i| filter.might_contain(&format!("random{i}")))
            .count();
        assert_eq!(hits, 0);
    }

    #[test]
    fn an_empty_filter_holds_nothing() {
        let filter = BloomFilter::of(std::iter::empty());
        assert!(!filter.might_contain("anything"));
        assert_eq!(filter.size_bytes(), 128);
    }

    #[test]
    fn sizes_follow_the_textbook_optimum() {
        let filter = BloomFilter::with_capacity(1_000_000, 0.01);
        // ~9.59 bits per id and 7 probes.
        assert_eq!(filter.probes, 7);
        assert!((1_190_000..1_210_000).contains(&filter.size_bytes()));
    }
}
