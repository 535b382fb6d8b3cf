//! Who is calling and what they may do: roles, principals and the access rules between them.

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey { key_id: String },
    Jwt { subject: String, issuer: String },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
}
