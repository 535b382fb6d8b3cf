//! API keys: `fy_<public id>_<secret>`.
//!
//! The public id finds the key in the store without revealing anything; only a hash of the
//! secret is stored. Secrets carry 160 random bits, so one round of SHA-256 is enough (a slow
//! password hash protects low-entropy secrets; these are not), and lookups stay cheap.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "fy_";
pub const PUBLIC_ID_LEN: usize = 12;
pub const SECRET_LEN: usize = 32;
/// Lower-case base32: every byte masked to five bits picks one symbol with no bias.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A key as the customer holds it. Shown once at creation, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    public_id: String,
    secret: String,
}

/// Never print a secret, even in debug logs.
impl std::fmt::Debug for ApiKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ApiKey({PREFIX}{}_…)", self.public_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("API key is not of the form fy_<id>_<secret>")]
    Malformed,
}

fn encode(random: &[u8]) -> String {
    random
        .iter()
        .map(|byte| char::from(ALPHABET[usize::from(byte & 31)]))
        .collect()
}

fn is_encoded(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|byte| ALPHABET.contains(&byte))
}

impl ApiKey {
    /// A new key from caller-supplied randomness (the core does no I/O).
    pub fn generate(public_random: [u8; PUBLIC_ID_LEN], secret_random: [u8; SECRET_LEN]) -> ApiKey {
        ApiKey {
            public_id: encode(&public_random),
            secret: encode(&secret_random),
        }
    }

    pub fn parse(text: &str) -> Result<ApiKey, ApiKeyError> {
        let rest = text.strip_prefix(PREFIX).ok_or(ApiKeyError::Malformed)?;
        let (public_id, secret) = rest.split_once('_').ok_or(ApiKeyError::Malformed)?;
        if !is_encoded(public_id, PUBLIC_ID_LEN) || !is_encoded(secret, SECRET_LEN) {
            return Err(ApiKeyError::Malformed);
        }
        Ok(ApiKey {
            public_id: public_id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub fn public_id(&self) -> &str {
        &self.public_id
    }

    /// The id under which the key is administered (`key_<public id>`).
    pub fn key_id(&self) -> String {
        key_id(&self.public_id)
    }

    /// The full secret text, for showing once.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}_{}", self.public_id, self.secret)
    }

    /// What the store keeps: hex SHA-256 over a versioned, public-id-bound message, so a hash
    /// copied to another key id does not verify.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"ferry-api-key-v1\0");
        hasher.update(self.public_id.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.secret.as_bytes());
        hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// Compares against a stored hash in constant time.
    pub fn verify(&self, stored_hash: &str) -> bool {
        self.hash().as_bytes().ct_eq(stored_hash.as_bytes()).into()
    }
}

pub fn key_id(public_id: &str) -> String {
    format!("key_{public_id}")
}

/// The public id inside a `key_<public id>` administrative id.
pub fn public_id_of(key_id: &str) -> Option<&str> {
    key_id
        .strip_prefix("key_")
        .filter(|public_id| is_encoded(public_id, PUBLIC_ID_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ApiKey {
        ApiKey::generate([3; PUBLIC_ID_LEN], [200; SECRET_LEN])
    }

    #[test]
    fn generated_keys_parse_back() {
        let key = sample();
        let text = key.expose();
        assert!(text.starts_with("fy_dddddddddddd_"), "{text}");
        assert_eq!(ApiKey::parse(&text), Ok(key));
    }

    #[test]
    fn rejects_malformed_keys() {
        let good = sample().expose();
        let cases = [
            "",
            "fy_",
            "sk-abcdef",
            &good[..good.len() - 1],
            &good.replace("fy_", "fz_"),
            &format!("{good}a"),
            &good.to_uppercase(),
            "fy_dddddddddddd-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "fy_dddddddddddd_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
        ];
        for text in cases {
            assert_eq!(ApiKey::parse(text), Err(ApiKeyError::Malformed), "{text:?}");
        }
    }

    #[test]
    fn hash_verifies_only_its_own_key() {
        let key = sample();
        let other_secret = ApiKey::generate([3; PUBLIC_ID_LEN], [201; SECRET_LEN]);
        let other_id = ApiKey::generate([4; PUBLIC_ID_LEN], [200; SECRET_LEN]);
        let stored = key.hash();
        assert_eq!(stored.len(), 64);
        assert!(key.verify(&stored));
        assert!(!other_secret.verify(&stored));
        assert!(!other_id.verify(&stored));
        assert!(!key.verify(""));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = sample();
        assert!(!format!("{key:?}").contains(&key.secret));
    }

    #[test]
    fn key_ids_round_trip() {
        let key = sample();
        assert_eq!(public_id_of(&key.key_id()), Some(key.public_id()));
        assert_eq!(public_id_of("key_short"), None);
        assert_eq!(public_id_of("tnt_dddddddddddd"), None);
    }
}
