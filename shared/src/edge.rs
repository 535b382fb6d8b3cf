//! The edge's contract with the origin: grants and hit reports.
//!
//! The edge cannot bill: it has no store and cannot tell a tenant from an API key. So when the
//! origin answers a call it has kept in its cache, it also hands out a **grant**: who was
//! served, by which model and deployment, with how many tokens, until when, signed with a
//! secret only the origin holds (an edge can read a grant but not make one). The edge keeps the
//! grant beside the answer; every time it answers from that entry it records a hit (a fresh id,
//! the time, the grant) and later sends its hits to the origin in a **report**, signed with the
//! secret the origin shares with the operator's edges.
//! The origin bills each hit at the cache-hit price under the request id `edge_<hit id>`, so a
//! report sent twice (a retry, a lost reply) bills each hit once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The response header carrying a grant, on an answer the edge may keep.
pub const GRANT_HEADER: &str = "x-ferry-edge-grant";
/// The request header carrying a report's signature.
pub const SIGNATURE_HEADER: &str = "x-ferry-signature";
/// Where the edge sends its reports.
pub const HITS_PATH: &str = "/v1/edge/hits";
/// The longest an edge may keep an answer: a key revoked, a model re-deployed or a price
/// changed reaches every edge within this.
pub const MAX_EDGE_TTL_MS: u64 = 300_000;
/// How long after its grant expired a hit may still be reported (and billed).
pub const MAX_REPORT_DELAY_MS: u64 = 24 * 3_600_000;
/// The most hits one report may carry.
pub const MAX_HITS_PER_REPORT: usize = 500;
/// The prefix of a hit's request id in the origin's books.
pub const HIT_REQUEST_PREFIX: &str = "edge_";

type HmacSha256 = Hmac<Sha256>;

/// Who was served an answer and what it cost to make: what the origin needs to bill a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub tenant_id: String,
    /// The API key's public id, or `None` for a caller with an OIDC token.
    pub key_public_id: Option<String>,
    /// A caller with an OIDC token: its caller id (`sub_…`), whose usage its hits are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_caller: Option<String>,
    pub model: String,
    pub deployment: String,
    /// The endpoint's name (`chat.completions`, …).
    pub endpoint: String,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// Unix milliseconds after which the edge must not answer from this entry.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the grant is malformed")]
    Malformed,
    #[error("the grant's signature does not match")]
    BadSignature,
}

impl Grant {
    /// `<base64url JSON>.<base64url HMAC-SHA256>`.
    pub fn sign(&self, secret: &[u8]) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default());
        let tag = URL_SAFE_NO_PAD.encode(mac(secret, b"ferry-edge-grant-v1", body.as_bytes()));
        format!("{body}.{tag}")
    }

    /// What a grant says, unchecked: for the edge, which cannot check it (only the origin
    /// holds its key) and needs only its expiry.
    pub fn peek(token: &str) -> Result<Grant, GrantError> {
        let (body, _) = token.split_once('.').ok_or(GrantError::Malformed)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| GrantError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| GrantError::Malformed)
    }

    pub fn verify(token: &str, secret: &[u8]) -> Result<Grant, GrantError> {
        let (body, tag) = token.split_once('.').ok_or(GrantError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| GrantError::Malformed)?;
        if !verify_mac(secret, b"ferry-edge-grant-v1", body.as_bytes(), &tag) {
            return Err(GrantError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| GrantError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| GrantError::Malformed)
    }
}

/// One answer the edge served from its cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    /// Unique per hit (the edge makes it from fresh randomness): the idempotency key.
    pub id: String,
    /// Unix milliseconds when it was served.
    pub at_ms: u64,
    pub grant: String,
}

impl Hit {
    /// Ids are 16 to 64 characters of `[A-Za-z0-9_-]`: enough randomness to be unique, and
    /// safe inside a request id.
    pub fn has_valid_id(&self) -> bool {
        (16..=64).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    }

    /// The request id the hit is billed under.
    pub fn request_id(&self) -> String {
        format!("{HIT_REQUEST_PREFIX}{}", self.id)
    }
}

/// A batch of hits from one edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HitReport {
    /// Which edge sent it (for the logs).
    pub edge: String,
    pub hits: Vec<Hit>,
}

/// What the origin did with each hit of a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportOutcome {
    /// Billed now.
    pub billed: Vec<String>,
    /// Billed by an earlier report.
    pub duplicate: Vec<String>,
    /// Not billed, with why (a bad grant, a hit after its grant expired, a refused
    /// admission): never worth sending again.
    pub rejected: Vec<RejectedHit>,
    /// Not billed yet (the store failed): send again.
    #[serde(default)]
    pub retry: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedHit {
    pub id: String,
    pub code: String,
}

/// The `x-ferry-signature` value of a report body: `v1=<hex HMAC-SHA256>`.
pub fn sign_report(secret: &[u8], body: &[u8]) -> String {
    let tag = mac(secret, b"ferry-edge-report-v1", body);
    let mut text = String::with_capacity(3 + tag.len() * 2);
    text.push_str("v1=");
    for byte in tag {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Whether `signature` is `body`'s, compared in constant time.
pub fn verify_report(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("v1=") else {
        return false;
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return false;
    }
    let tag: Option<Vec<u8>> = (0..32)
        .map(|index| u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).ok())
        .collect();
    tag.is_some_and(|tag| verify_mac(secret, b"ferry-edge-report-v1", body, &tag))
}

/// Each use of the secret is bound to its purpose, so a grant's tag can never pass as a
/// report's.
fn mac(secret: &[u8], purpose: &[u8], message: &[u8]) -> Vec<u8> {
    keyed(secret, purpose, message)
        .map(|mac| mac.finalize().into_bytes().to_vec())
        .unwrap_or_default()
}

fn verify_mac(secret: &[u8], purpose: &[u8], message: &[u8], tag: &[u8]) -> bool {
    keyed(secret, purpose, message).is_some_and(|mac| mac.verify_slice(tag).is_ok())
}

fn keyed(secret: &[u8], purpose: &[u8], message: &[u8]) -> Option<HmacSha256> {
    // HMAC takes keys of any length; an empty secret is refused by whoever configures one.
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(purpose);
    mac.update(b"\n");
    mac.update(message);
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            tenant_id: "ten_1".into(),
            key_public_id: Some("abc".into()),
            token_caller: None,
            model: "m".into(),
            deployment: "d".into(),
            endpoint: "chat.completions".into(),
            prompt_tokens: 10,
            cached_tokens: 0,
            completion_tokens: 5,
            expires_at_ms: 1_000,
        }
    }

    #[test]
    fn a_grant_round_trips_under_its_secret_only() {
        let token = grant().sign(b"secret");
        assert_eq!(Grant::verify(&token, b"secret"), Ok(grant()));
        assert_eq!(
            Grant::verify(&token, b"other"),
            Err(GrantError::BadSignature)
        );
        assert_eq!(
            Grant::verify("nonsense", b"secret"),
            Err(GrantError::Malformed)
        );
    }

    #[test]
    fn a_changed_grant_fails() {
        let token = grant().sign(b"secret");
        let (_, tag) = token.split_once('.').unwrap_or_default();
        let forged = Grant {
            tenant_id: "ten_2".into(),
            ..grant()
        }
        .sign(b"guess");
        let (body, _) = forged.split_once('.').unwrap_or_default();
        assert_eq!(
            Grant::verify(&format!("{body}.{tag}"), b"secret"),
            Err(GrantError::BadSignature)
        );
    }

    #[test]
    fn a_report_signature_binds_the_body_and_the_purpose() {
        let signature = sign_report(b"secret", b"{\"hits\":[]}");
        assert!(signature.starts_with("v1=") && signature.len() == 67);
        assert!(verify_report(b"secret", b"{\"hits\":[]}", &signature));
        assert!(!verify_report(b"secret", b"{\"hits\":[1]}", &signature));
        assert!(!verify_report(b"other", b"{\"hits\":[]}", &signature));
        assert!(!verify_report(b"secret", b"{\"hits\":[]}", "v1=zz"));
        // A grant's tag over the same bytes is not a report signature.
        let grant_tag = mac(b"secret", b"ferry-edge-grant-v1", b"{\"hits\":[]}");
        let as_hex: String = grant_tag.iter().map(|byte| format!("{byte:02x}")).collect();
        assert!(!verify_report(
            b"secret",
            b"{\"hits\":[]}",
            &format!("v1={as_hex}")
        ));
    }

    #[test]
    fn hit_ids_are_checked() {
        let hit = |id: &str| Hit {
            id: id.into(),
            at_ms: 1,
            grant: String::new(),
        };
        assert!(hit("0123456789abcdef").has_valid_id());
        assert!(!hit("short").has_valid_id());
        assert!(!hit("0123456789abcdef/..").has_valid_id());
        assert_eq!(
            hit("0123456789abcdef").request_id(),
            "edge_0123456789abcdef"
        );
    }
}
