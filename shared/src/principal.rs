//! Who is calling and what they may do: roles, principals and the access rules between them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::admission::Budget;
use crate::money::Money;
use crate::ratelimit::RateLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Runs the platform: every tenant, every model.
    Operator,
    /// Administers one tenant: its keys and usage.
    TenantAdmin,
    /// Calls models and sees their own usage.
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::TenantAdmin => "tenant-admin",
            Role::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "operator" => Some(Role::Operator),
            "tenant-admin" => Some(Role::TenantAdmin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credential {
    ApiKey { key_id: String },
    Jwt { subject: String, issuer: String },
}

/// The prefix of a token caller's id (see [`Credential::caller_id`]).
pub const TOKEN_CALLER_PREFIX: &str = "sub_";
/// Hex characters of a token caller's id after its prefix (96 bits of SHA-256).
const TOKEN_CALLER_HEX: usize = 24;

impl Credential {
    /// Who a call is attributed to in its usage (`key_id`): the key's id, or for a token its
    /// subject at its issuer, hashed (`sub_…`: a subject may be an email address, which usage
    /// records and reports should not carry). A member's "own" usage is its caller id's.
    pub fn caller_id(&self) -> String {
        match self {
            Credential::ApiKey { key_id } => key_id.clone(),
            Credential::Jwt { subject, issuer } => {
                let mut hash = Sha256::new();
                // Length-prefixed, so no issuer/subject split can collide with another.
                hash.update((issuer.len() as u64).to_be_bytes());
                hash.update(issuer.as_bytes());
                hash.update(subject.as_bytes());
                let hex: String = hash
                    .finalize()
                    .iter()
                    .take(TOKEN_CALLER_HEX / 2)
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                format!("{TOKEN_CALLER_PREFIX}{hex}")
            }
        }
    }
}

/// Whether `text` is a caller id a usage query may name: a key's id or a token caller's.
pub fn is_caller_id(text: &str) -> bool {
    crate::api_key::public_id_of(text).is_some()
        || text.strip_prefix(TOKEN_CALLER_PREFIX).is_some_and(|hex| {
            hex.len() == TOKEN_CALLER_HEX
                && hex
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        })
}

/// An authenticated caller. Serializable so work done later on its behalf (a batch) runs as
/// it was admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// `None` only for operators, who belong to no tenant.
    pub tenant_id: Option<String>,
    pub role: Role,
    pub credential: Credential,
    /// The models this caller may use; `None` means every model.
    pub model_allowlist: Option<Vec<String>>,
    /// The key's own rate limits, budgets and lifetime credit cap (none for tokens).
    pub key_policy: KeyPolicy,
}

/// What an API key adds to its tenant's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPolicy {
    pub limits: RateLimits,
    pub budgets: Vec<Budget>,
    pub credit_cap: Option<Money>,
}

impl Principal {
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    pub fn may_use_model(&self, model_id: &str) -> bool {
        match &self.model_allowlist {
            None => true,
            Some(allowed) => allowed.iter().any(|allowed| allowed == model_id),
        }
    }

    /// Operators administer everything; tenant admins only their own tenant; members nothing.
    pub fn may_administer_tenant(&self, tenant_id: &str) -> bool {
        match self.role {
            Role::Operator => true,
            Role::TenantAdmin => self.tenant_id.as_deref() == Some(tenant_id),
            Role::Member => false,
        }
    }

    /// Whether this caller may mint a key with `role`: nobody grants more than they hold, and
    /// only operators make operators.
    pub fn may_grant(&self, role: Role) -> bool {
        match self.role {
            Role::Operator => true,
            Role::TenantAdmin => role != Role::Operator,
            Role::Member => false,
        }
    }

    /// The id usage is attributed to; operators' own calls are recorded under `operator`.
    /// Whether this caller may see a tenant object made by `owner` (a caller id): a member sees
    /// only its own, as with usage; administrators see all of their tenant's.
    pub fn may_see_owned(&self, owner: Option<&str>) -> bool {
        self.role != Role::Member || owner.is_none_or(|owner| owner == self.credential.caller_id())
    }

    pub fn billing_subject(&self) -> &str {
        self.tenant_id.as_deref().unwrap_or("operator")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, tenant: Option<&str>, models: Option<&[&str]>) -> Principal {
        Principal {
            tenant_id: tenant.map(str::to_owned),
            role,
            credential: Credential::ApiKey {
                key_id: "key_x".into(),
            },
            model_allowlist: models.map(|models| models.iter().map(|m| m.to_string()).collect()),
            key_policy: KeyPolicy::default(),
        }
    }

    #[test]
    fn tenant_administration_rules() {
        let cases = [
            (Role::Operator, None, "tnt_a", true),
            (Role::TenantAdmin, Some("tnt_a"), "tnt_a", true),
            (Role::TenantAdmin, Some("tnt_a"), "tnt_b", false),
            (Role::Member, Some("tnt_a"), "tnt_a", false),
        ];
        for (role, own, target, expected) in cases {
            assert_eq!(
                principal(role, own, None).may_administer_tenant(target),
                expected,
                "{role:?} {target}"
            );
        }
    }

    #[test]
    fn model_allowlist_rules() {
        let open = principal(Role::Member, Some("t"), None);
        let narrow = principal(Role::Member, Some("t"), Some(&["small"]));
        assert!(open.may_use_model("anything"));
        assert!(narrow.may_use_model("small"));
        assert!(!narrow.may_use_model("large"));
        assert!(!principal(Role::Member, Some("t"), Some(&[])).may_use_model("small"));
    }

    #[test]
    fn grant_rules() {
        let admin = principal(Role::TenantAdmin, Some("t"), None);
        assert!(admin.may_grant(Role::Member));
        assert!(admin.may_grant(Role::TenantAdmin));
        assert!(!admin.may_grant(Role::Operator));
        assert!(!principal(Role::Member, Some("t"), None).may_grant(Role::Member));
    }

    #[test]
    fn roles_round_trip_as_text() {
        for role in [Role::Operator, Role::TenantAdmin, Role::Member] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn a_token_callers_id_is_its_subject_at_its_issuer_hashed() {
        let token = |subject: &str, issuer: &str| Credential::Jwt {
            subject: subject.into(),
            issuer: issuer.into(),
        };
        let alice = token("alice@example.com", "https://idp.example/");
        let id = alice.caller_id();
        assert!(id.starts_with("sub_") && id.len() == 28, "{id}");
        assert!(!id.contains("alice"), "the subject itself is not recorded");
        assert!(is_caller_id(&id));
        assert_eq!(id, alice.caller_id(), "stable");
        assert_ne!(
            id,
            token("bob@example.com", "https://idp.example/").caller_id()
        );
        assert_ne!(
            id,
            token("alice@example.com", "https://other.example/").caller_id()
        );
        // No split of the same characters between issuer and subject collides.
        assert_ne!(token("ab", "c").caller_id(), token("b", "ca").caller_id());
        let key = Credential::ApiKey {
            key_id: "key_abcdefghijkl".into(),
        };
        assert_eq!(key.caller_id(), "key_abcdefghijkl");
        for not_an_id in [
            "sub_",
            "sub_XYZ",
            "sub_0123456789abcdef01234567x",
            "alice",
            "key_",
        ] {
            assert!(!is_caller_id(not_an_id), "{not_an_id}");
        }
    }
}
