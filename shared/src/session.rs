//! Console sessions: what a signed-in browser holds instead of a credential.
//!
//! Signing in (with an API key, or through OIDC) creates a session: the browser keeps only
//! its random token, in an `HttpOnly` cookie; the store keeps a hash of the token and who
//! signed in. A session lives until its absolute expiry or until it has been idle too long,
//! whichever comes first, and is deleted on sign-out. A key's session asks the key's record on
//! every use, so revoking the key ends its sessions too.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::principal::Role;

/// The cookie that carries the session's token.
pub const COOKIE: &str = "ferry_session";
/// The header every state-changing call of a cookie session must carry, holding the session's
/// CSRF token (a cross-site form can neither read the token nor set a header).
pub const CSRF_HEADER: &str = "x-ferry-csrf";
/// Random bytes in a session token and in its CSRF token.
pub const TOKEN_BYTES: usize = 32;

/// How long sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Seconds from sign-in after which the session ends, however busy.
    pub absolute: u64,
    /// Seconds without a request after which the session ends.
    pub idle: u64,
    /// A use this long after the last recorded one is recorded (a write); closer uses are not.
    pub touch_every: u64,
}

impl Default for Lifetime {
    fn default() -> Lifetime {
        Lifetime {
            absolute: 12 * 3600,
            idle: 3600,
            touch_every: 60,
        }
    }
}

/// Who signed in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SessionSubject {
    /// With an API key: its role, tenant and limits are read from the key at every use.
    Key { public_id: String },
    /// Through the OpenID provider: what the ID token's claims said at sign-in.
    Oidc {
        subject: String,
        issuer: String,
        role: Role,
        tenant_id: Option<String>,
    },
}

/// A session as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// [`token_hash`] of the cookie's token.
    pub id_hash: String,
    pub subject: SessionSubject,
    pub csrf_token: String,
    /// Unix seconds.
    pub created_at: u64,
    pub last_seen_at: u64,
    /// Unix seconds: `created_at` plus the absolute lifetime.
    pub expires_at: u64,
}

impl SessionRecord {
    pub fn new(
        id_hash: String,
        subject: SessionSubject,
        csrf_token: String,
        now: u64,
        lifetime: Lifetime,
    ) -> SessionRecord {
        SessionRecord {
            id_hash,
            subject,
            csrf_token,
            created_at: now,
            last_seen_at: now,
            expires_at: now.saturating_add(lifetime.absolute),
        }
    }

    /// Neither past its absolute expiry nor idle for too long.
    pub fn is_live(&self, now: u64, lifetime: Lifetime) -> bool {
        now < self.expires_at && now < self.last_seen_at.saturating_add(lifetime.idle)
    }

    /// Whether a use at `now` should be recorded, to keep the session from idling out.
    pub fn needs_touch(&self, now: u64, lifetime: Lifetime) -> bool {
        now >= self.last_seen_at.saturating_add(lifetime.touch_every)
    }

    /// When the session ends if it is not used again.
    pub fn ends_at(&self, lifetime: Lifetime) -> u64 {
        self.expires_at
            .min(self.last_seen_at.saturating_add(lifetime.idle))
    }
}

/// Lower-case hex of random bytes: a token for a cookie or a header.
pub fn encode_token(random: &[u8; TOKEN_BYTES]) -> String {
    random.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What the store keys a session by: a leaked table does not give anyone a session.
/// Tokens carry 256 random bits, so one round of SHA-256 suffices (as for API keys).
pub fn token_hash(token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"ferry-session-v1\0");
    hasher.update(token.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A well-formed token: what a cookie must hold before the store is asked about it.
pub fn is_token(text: &str) -> bool {
    text.len() == TOKEN_BYTES * 2
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(now: u64) -> SessionRecord {
        SessionRecord::new(
            token_hash("t"),
            SessionSubject::Key {
                public_id: "p".into(),
            },
            "c".into(),
            now,
            Lifetime::default(),
        )
    }

    #[test]
    fn a_session_ends_at_its_absolute_expiry_or_when_idle() {
        let lifetime = Lifetime {
            absolute: 100,
            idle: 30,
            touch_every: 10,
        };
        let mut session = SessionRecord::new(
            "h".into(),
            SessionSubject::Key {
                public_id: "p".into(),
            },
            "c".into(),
            1000,
            lifetime,
        );
        assert!(session.is_live(1029, lifetime));
        assert!(!session.is_live(1030, lifetime), "idle for 30 s");
        assert_eq!(session.ends_at(lifetime), 1030);
        assert!(!session.needs_touch(1009, lifetime));
        assert!(session.needs_touch(1010, lifetime));
        // Kept busy, it still ends at its absolute expiry.
        session.last_seen_at = 1090;
        assert!(session.is_live(1099, lifetime));
        assert!(!session.is_live(1100, lifetime));
        assert_eq!(session.ends_at(lifetime), 1100);
    }

    #[test]
    fn tokens_are_hashed_and_checked_for_shape() {
        let token = encode_token(&[0xab; TOKEN_BYTES]);
        assert!(is_token(&token));
        assert!(!is_token(&token[1..]));
        assert!(!is_token(&token.to_uppercase()));
        assert_ne!(token_hash(&token), token);
        assert_eq!(token_hash(&token).len(), 64);
        assert_eq!(session(5).expires_at, 5 + 12 * 3600);
    }

    #[test]
    fn a_record_round_trips_as_json() {
        let record = SessionRecord::new(
            "h".into(),
            SessionSubject::Oidc {
                subject: "s".into(),
                issuer: "https://id".into(),
                role: Role::TenantAdmin,
                tenant_id: Some("ten_1".into()),
            },
            "c".into(),
            7,
            Lifetime::default(),
        );
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<SessionRecord>(&text).unwrap(),
            record
        );
    }
}
