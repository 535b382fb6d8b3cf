//! The double-entry ledger: every movement of money is a transaction whose entries sum to zero,
//! and every balance is the sum of its account's entries.
//!
//! Accounts, per tenant: `available` (credit the tenant may spend), `held` (credit set aside for
//! calls in flight) and `revenue` (what the tenant's calls earned the operator). Money enters
//! from `external:funding` (top-ups) and `external:adjustments` (corrections). A prepaid call
//! moves its worst case from `available` to `held`, then settles: the cost to `revenue`, the
//! rest back to `available`; a cost beyond the hold is drawn from `available` too, as far as it
//! goes. What a prepaid balance cannot cover is the operator's loss: a posting of its own from
//! `external:write_offs` to the tenant's `losses`, so it is never hidden in a smaller charge.
//! A postpaid call charges `available` directly, which goes negative: that is what the tenant
//! owes.

use serde::{Deserialize, Serialize};

use crate::money::Money;

pub const FUNDING: &str = "external:funding";
pub const ADJUSTMENTS: &str = "external:adjustments";
/// Where the operator's losses come from: calls served beyond what a prepaid tenant could pay.
pub const WRITE_OFFS: &str = "external:write_offs";

pub fn available(tenant_id: &str) -> String {
    format!("tenant:{tenant_id}:available")
}

pub fn held(tenant_id: &str) -> String {
    format!("tenant:{tenant_id}:held")
}

pub fn revenue(tenant_id: &str) -> String {
    format!("tenant:{tenant_id}:revenue")
}

/// What the tenant's calls cost beyond what it could pay: served, never charged.
pub fn losses(tenant_id: &str) -> String {
    format!("tenant:{tenant_id}:losses")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TransactionKind {
    TopUp,
    Hold,
    /// A prepaid call's hold, settled to its cost.
    Settle,
    /// A postpaid call's cost.
    Charge,
    /// A hold that never settled, released in full.
    Expire,
    Refund,
    Adjustment,
    /// The part of a prepaid call's cost its balance could not cover, written off.
    Loss,
}

impl TransactionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransactionKind::TopUp => "top_up",
            TransactionKind::Hold => "hold",
            TransactionKind::Settle => "settle",
            TransactionKind::Charge => "charge",
            TransactionKind::Expire => "expire",
            TransactionKind::Refund => "refund",
            TransactionKind::Adjustment => "adjustment",
            TransactionKind::Loss => "loss",
        }
    }

    pub fn parse(text: &str) -> Option<TransactionKind> {
        [
            TransactionKind::TopUp,
            TransactionKind::Hold,
            TransactionKind::Settle,
            TransactionKind::Charge,
            TransactionKind::Expire,
            TransactionKind::Refund,
            TransactionKind::Adjustment,
            TransactionKind::Loss,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entry {
    pub account: String,
    pub amount_usd: Money,
}

fn entry(account: impl Into<String>, nanos: i64) -> Entry {
    Entry {
        account: account.into(),
        amount_usd: Money::from_nanos(nanos),
    }
}

/// The entries of one transaction, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub kind: TransactionKind,
    pub tenant_id: String,
    pub entries: Vec<Entry>,
}

impl Posting {
    pub fn is_balanced(&self) -> bool {
        self.entries
            .iter()
            .try_fold(0i64, |sum, entry| sum.checked_add(entry.amount_usd.nanos()))
            == Some(0)
    }

    /// What the tenant's calls earned in this posting: its `revenue` entries.
    pub fn revenue(&self) -> Money {
        self.moved(&revenue(&self.tenant_id))
    }

    /// What this posting moves into (or, negative, out of) `account`.
    pub fn moved(&self, account: &str) -> Money {
        Money::from_nanos(
            self.entries
                .iter()
                .filter(|entry| entry.account == account)
                .map(|entry| entry.amount_usd.nanos())
                .sum(),
        )
    }

    fn new(kind: TransactionKind, tenant_id: &str, entries: Vec<Entry>) -> Posting {
        Posting {
            kind,
            tenant_id: tenant_id.to_owned(),
            entries: entries
                .into_iter()
                .filter(|entry| entry.amount_usd != Money::ZERO)
                .collect(),
        }
    }

    pub fn top_up(tenant_id: &str, amount: Money) -> Posting {
        let nanos = amount.nanos();
        Posting::new(
            TransactionKind::TopUp,
            tenant_id,
            vec![entry(FUNDING, -nanos), entry(available(tenant_id), nanos)],
        )
    }

    /// A signed correction: positive credits the tenant, negative debits it.
    pub fn adjustment(tenant_id: &str, amount: Money) -> Posting {
        let nanos = amount.nanos();
        Posting::new(
            TransactionKind::Adjustment,
            tenant_id,
            vec![
                entry(ADJUSTMENTS, -nanos),
                entry(available(tenant_id), nanos),
            ],
        )
    }

    /// Gives back part of what calls earned.
    pub fn refund(tenant_id: &str, amount: Money) -> Posting {
        let nanos = amount.nanos();
        Posting::new(
            TransactionKind::Refund,
            tenant_id,
            vec![
                entry(revenue(tenant_id), -nanos),
                entry(available(tenant_id), nanos),
            ],
        )
    }

    pub fn hold(tenant_id: &str, amount: Money) -> Posting {
        let nanos = amount.nanos();
        Posting::new(
            TransactionKind::Hold,
            tenant_id,
            vec![
                entry(available(tenant_id), -nanos),
                entry(held(tenant_id), nanos),
            ],
        )
    }

    /// Settles a hold of `held_amount` to `charged`: what the hold does not cover is drawn from
    /// `available`, which the caller has checked can pay it.
    pub fn settle(tenant_id: &str, held_amount: Money, charged: Money) -> Posting {
        let (held_nanos, cost_nanos) = (held_amount.nanos(), charged.nanos());
        Posting::new(
            TransactionKind::Settle,
            tenant_id,
            vec![
                entry(held(tenant_id), -held_nanos),
                entry(available(tenant_id), held_nanos - cost_nanos),
                entry(revenue(tenant_id), cost_nanos),
            ],
        )
    }

    pub fn expire(tenant_id: &str, held_amount: Money) -> Posting {
        let nanos = held_amount.nanos();
        Posting::new(
            TransactionKind::Expire,
            tenant_id,
            vec![
                entry(held(tenant_id), -nanos),
                entry(available(tenant_id), nanos),
            ],
        )
    }

    /// Writes off what a call cost beyond what its tenant could pay.
    pub fn loss(tenant_id: &str, amount: Money) -> Posting {
        let nanos = amount.nanos();
        Posting::new(
            TransactionKind::Loss,
            tenant_id,
            vec![entry(WRITE_OFFS, -nanos), entry(losses(tenant_id), nanos)],
        )
    }

    pub fn charge(tenant_id: &str, cost: Money) -> Posting {
        let nanos = cost.nanos();
        Posting::new(
            TransactionKind::Charge,
            tenant_id,
            vec![
                entry(available(tenant_id), -nanos),
                entry(revenue(tenant_id), nanos),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> Money {
        text.parse().unwrap()
    }

    #[test]
    fn every_posting_balances() {
        let postings = [
            Posting::top_up("t", usd("10")),
            Posting::adjustment("t", usd("-2.5")),
            Posting::refund("t", usd("0.01")),
            Posting::hold("t", usd("1")),
            Posting::settle("t", usd("1"), usd("0.25")),
            Posting::settle("t", usd("1"), usd("1")),
            Posting::settle("t", usd("1"), usd("1.5")),
            Posting::loss("t", usd("0.5")),
            Posting::expire("t", usd("1")),
            Posting::charge("t", usd("0.000000001")),
        ];
        for posting in postings {
            assert!(posting.is_balanced(), "{posting:?}");
            assert!(
                posting
                    .entries
                    .iter()
                    .all(|entry| entry.amount_usd != Money::ZERO)
            );
        }
        let unbalanced = Posting {
            kind: TransactionKind::Adjustment,
            tenant_id: "t".into(),
            entries: vec![entry(available("t"), 1)],
        };
        assert!(!unbalanced.is_balanced());
    }

    #[test]
    fn a_settlement_earns_its_cost_and_returns_the_rest() {
        let posting = Posting::settle("t", usd("1"), usd("0.25"));
        assert_eq!(posting.revenue(), usd("0.25"));
        let back: i64 = posting
            .entries
            .iter()
            .filter(|entry| entry.account == available("t"))
            .map(|entry| entry.amount_usd.nanos())
            .sum();
        assert_eq!(back, usd("0.75").nanos());
        assert_eq!(Posting::charge("t", usd("2")).revenue(), usd("2"));
        assert_eq!(Posting::refund("t", usd("2")).revenue(), usd("-2"));
        assert_eq!(
            TransactionKind::parse("top_up"),
            Some(TransactionKind::TopUp)
        );
    }
}
