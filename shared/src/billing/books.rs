//! The books as a whole: when a month's invoice is final and what closing it again does, and
//! the figures reconciliation compares. Each store reads its records and hands them here one by
//! one ([`TenantBooks`], [`LedgerBooks`]); what the figures mean is decided only here.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::Invoice;
use crate::calendar::Month;
use crate::ledger::{self, TransactionKind};
use crate::money::Money;
use crate::ports::{Billing, CloseError, Closed, Transaction, UsageRecord};

/// How long after its month ends an invoice may still be brought up to date. Calls admitted in
/// the month settle into it for as long as their holds live (15 minutes by default), and a
/// store's index may show a settlement a moment late (DynamoDB's); so the scheduled close just
/// after midnight is provisional, and an invoice closed after this margin is never rewritten.
pub const FINAL_AFTER_SECONDS: u64 = 3600;

/// A month may be closed only once no call admitted in it is still in flight.
pub fn may_close(in_flight_holds: u64) -> Result<(), CloseError> {
    match in_flight_holds {
        0 => Ok(()),
        count => Err(CloseError::InFlight(count)),
    }
}

/// What closing `month` again does with one tenant's invoice: `fresh` is made from its usage
/// now, `stored` the one closed before. A new or changed provisional invoice is written
/// (`created`); an unchanged one is kept; a final one that no longer matches is refused.
pub fn close_invoice(
    fresh: Invoice,
    stored: Option<Invoice>,
    month: Month,
) -> Result<Closed, CloseError> {
    match stored {
        None => Ok(Closed {
            invoice: fresh,
            created: true,
        }),
        Some(stored) if stored.same_charges(&fresh) => Ok(Closed {
            invoice: stored,
            created: false,
        }),
        Some(stored) if stored.created_at >= month.bounds_unix().1 + FINAL_AFTER_SECONDS => {
            Err(CloseError::Changed(stored.id))
        }
        Some(_) => Ok(Closed {
            invoice: fresh,
            created: true,
        }),
    }
}

/// One tenant's money, as read from each place it is recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantFigures {
    pub tenant_id: String,
    /// Sum of usage event costs.
    pub usage: Money,
    /// Sum of settle and charge transactions' revenue entries.
    pub settled: Money,
    /// What calls cost beyond what the tenant could pay: the loss transactions, written off
    /// by the operator (not a discrepancy: served and reported, never charged).
    #[serde(default)]
    pub written_off: Money,
    /// Per closed month: (period, usage events in it, invoice total).
    pub invoiced: Vec<(String, Money, Money)>,
    /// Usage events without a settlement, and settlements without a usage event.
    pub unsettled_events: u64,
    pub orphan_settlements: u64,
    /// The tenant's spendable balance, if prepaid (must never be negative).
    pub prepaid_available: Option<Money>,
}

/// The ledger as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerFigures {
    pub unbalanced_transactions: u64,
    /// Accounts whose stored balance differs from the sum of their entries.
    pub drifted_accounts: u64,
}

/// Every way the books disagree with themselves; empty when they reconcile.
pub fn discrepancies(ledger: &LedgerFigures, tenants: &[TenantFigures]) -> Vec<String> {
    let mut found = Vec::new();
    if ledger.unbalanced_transactions > 0 {
        found.push(format!(
            "{} ledger transactions do not sum to zero",
            ledger.unbalanced_transactions
        ));
    }
    if ledger.drifted_accounts > 0 {
        found.push(format!(
            "{} account balances differ from the sum of their entries",
            ledger.drifted_accounts
        ));
    }
    for tenant in tenants {
        let id = &tenant.tenant_id;
        if tenant.usage != tenant.settled {
            found.push(format!(
                "tenant {id}: usage events total {} but settled debits total {} (difference {})",
                tenant.usage,
                tenant.settled,
                Money::from_nanos(tenant.usage.nanos() - tenant.settled.nanos())
            ));
        }
        for (period, usage, invoiced) in &tenant.invoiced {
            if usage != invoiced {
                found.push(format!(
                    "tenant {id}: {period} usage totals {usage} but its invoice totals {invoiced}"
                ));
            }
        }
        if tenant.unsettled_events > 0 {
            found.push(format!(
                "tenant {id}: {} usage events have no settlement",
                tenant.unsettled_events
            ));
        }
        if tenant.written_off.is_negative() {
            found.push(format!("tenant {id}: its write-offs total below zero"));
        }
        if tenant.orphan_settlements > 0 {
            found.push(format!(
                "tenant {id}: {} settlements have no usage event",
                tenant.orphan_settlements
            ));
        }
        if tenant.prepaid_available.is_some_and(Money::is_negative) {
            found.push(format!("tenant {id}: prepaid balance is negative"));
        }
    }
    found
}

/// One tenant's books, fed its records in any order, then summed into [`TenantFigures`].
#[derive(Debug, Default)]
pub struct TenantBooks {
    figures: TenantFigures,
    usage_by_month: BTreeMap<Month, i64>,
    invoices: Vec<Invoice>,
    /// Request ids with a usage event; those whose event cost something.
    events: HashSet<String>,
    charged_events: Vec<String>,
    /// Request ids with a settlement or charge; and every request id a closing transaction
    /// (settle, charge, expire, loss) names, `None` for one that names none.
    settled: HashSet<String>,
    closings: Vec<Option<String>>,
}

impl TenantBooks {
    /// `billing`: the tenant's, if known (a prepaid balance must never be negative).
    pub fn new(tenant_id: &str, billing: Option<Billing>) -> TenantBooks {
        let mut books = TenantBooks::default();
        books.figures.tenant_id = tenant_id.to_owned();
        if billing == Some(Billing::Prepaid) {
            books.figures.prepaid_available = Some(Money::ZERO);
        }
        books
    }

    pub fn usage(&mut self, usage: &UsageRecord) {
        let cost = usage.cost.nanos();
        self.figures.usage = add(self.figures.usage, cost);
        *self
            .usage_by_month
            .entry(Month::of_unix(usage.created_at))
            .or_default() += cost;
        if cost != 0 {
            self.charged_events.push(usage.request_id.clone());
        }
        self.events.insert(usage.request_id.clone());
    }

    pub fn transaction(&mut self, transaction: &Transaction) {
        let moved = |account: &str| -> i64 {
            transaction
                .entries
                .iter()
                .filter(|entry| entry.account == account)
                .map(|entry| entry.amount_usd.nanos())
                .sum()
        };
        let tenant = &self.figures.tenant_id;
        match transaction.kind {
            TransactionKind::Settle | TransactionKind::Charge => {
                let revenue = moved(&ledger::revenue(tenant));
                self.figures.settled = add(self.figures.settled, revenue);
                if let Some(request_id) = &transaction.request_id {
                    self.settled.insert(request_id.clone());
                }
            }
            TransactionKind::Loss => {
                let lost = moved(&ledger::losses(tenant));
                self.figures.written_off = add(self.figures.written_off, lost);
            }
            _ => {}
        }
        if matches!(
            transaction.kind,
            TransactionKind::Settle
                | TransactionKind::Charge
                | TransactionKind::Expire
                | TransactionKind::Loss
        ) && !transaction
            .request_id
            .as_deref()
            .is_some_and(crate::lease::is_lease_id)
        {
            // A lease's own closings (the unspent part returned) close no call.
            self.closings.push(transaction.request_id.clone());
        }
    }

    pub fn invoice(&mut self, invoice: &Invoice) {
        self.invoices.push(invoice.clone());
    }

    /// The tenant's available balance as stored.
    pub fn available(&mut self, balance: Money) {
        if self.figures.prepaid_available.is_some() {
            self.figures.prepaid_available = Some(balance);
        }
    }

    pub fn figures(mut self) -> TenantFigures {
        self.invoices.sort_by(|a, b| a.period.cmp(&b.period));
        self.figures.invoiced = self
            .invoices
            .iter()
            .filter_map(|invoice| {
                let month = invoice.period.parse::<Month>().ok()?;
                let usage = self.usage_by_month.get(&month).copied().unwrap_or(0);
                Some((
                    invoice.period.clone(),
                    Money::from_nanos(usage),
                    invoice.total_usd,
                ))
            })
            .collect();
        self.figures.unsettled_events = self
            .charged_events
            .iter()
            .filter(|request_id| !self.settled.contains(*request_id))
            .count() as u64;
        self.figures.orphan_settlements = self
            .closings
            .iter()
            .filter(|request_id| {
                request_id
                    .as_ref()
                    .is_none_or(|request_id| !self.events.contains(request_id))
            })
            .count() as u64;
        self.figures
    }
}

/// The whole ledger, fed every transaction and every account's stored balance.
#[derive(Debug, Default)]
pub struct LedgerBooks {
    unbalanced: u64,
    entry_totals: HashMap<String, i64>,
    stored: Vec<(String, i64)>,
}

impl LedgerBooks {
    pub fn transaction(&mut self, transaction: &Transaction) {
        let mut sum = 0i64;
        for entry in &transaction.entries {
            let nanos = entry.amount_usd.nanos();
            sum = sum.saturating_add(nanos);
            *self.entry_totals.entry(entry.account.clone()).or_default() += nanos;
        }
        if sum != 0 {
            self.unbalanced += 1;
        }
    }

    pub fn account(&mut self, account: &str, stored_balance: i64) {
        self.stored.push((account.to_owned(), stored_balance));
    }

    pub fn figures(self) -> LedgerFigures {
        LedgerFigures {
            unbalanced_transactions: self.unbalanced,
            drifted_accounts: self
                .stored
                .iter()
                .filter(|(account, balance)| {
                    self.entry_totals.get(account).copied().unwrap_or(0) != *balance
                })
                .count() as u64,
        }
    }
}

fn add(money: Money, nanos: i64) -> Money {
    Money::from_nanos(money.nanos().saturating_add(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Entry, Posting};

    fn usd(text: &str) -> Money {
        text.parse().unwrap()
    }

    #[test]
    fn reconciliation_names_every_difference() {
        let good = TenantFigures {
            tenant_id: "t".into(),
            usage: Money::from_nanos(10),
            settled: Money::from_nanos(10),
            invoiced: vec![(
                "2026-11".into(),
                Money::from_nanos(10),
                Money::from_nanos(10),
            )],
            prepaid_available: Some(Money::ZERO),
            // Served beyond the balance and written off: reported, not a difference.
            written_off: Money::from_nanos(3),
            ..TenantFigures::default()
        };
        assert!(discrepancies(&LedgerFigures::default(), std::slice::from_ref(&good)).is_empty());
        let bad = TenantFigures {
            settled: Money::from_nanos(9),
            invoiced: vec![(
                "2026-11".into(),
                Money::from_nanos(10),
                Money::from_nanos(8),
            )],
            prepaid_available: Some(Money::from_nanos(-1)),
            written_off: Money::from_nanos(-1),
            ..good
        };
        let found = discrepancies(
            &LedgerFigures {
                unbalanced_transactions: 1,
                drifted_accounts: 0,
            },
            &[bad],
        );
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found[1].contains("difference 0.000000001"));
    }

    fn usage(request_id: &str, cost: &str, at: u64) -> UsageRecord {
        UsageRecord {
            request_id: request_id.into(),
            tenant_id: "t".into(),
            key_id: None,
            model: "m".into(),
            deployment: "d".into(),
            endpoint: "chat.completions".into(),
            prompt_tokens: 1,
            cached_tokens: 0,
            completion_tokens: 1,
            cost: usd(cost),
            status: 200,
            latency_ms: 1,
            ttft_ms: None,
            cache_status: "none".into(),
            route: "first".into(),
            attempts: 1,
            created_at: at,
            user: None,
            metadata: Default::default(),
        }
    }

    fn transaction(posting: Posting, request_id: Option<&str>) -> Transaction {
        Transaction {
            id: format!("{}:{}", posting.kind.as_str(), request_id.unwrap_or("-")),
            kind: posting.kind,
            tenant_id: posting.tenant_id,
            request_id: request_id.map(str::to_owned),
            memo: None,
            entries: posting.entries,
            created_at_ms: 0,
        }
    }

    const NOV: u64 = 1_793_491_200; // 2026-11-01T00:00:00Z

    #[test]
    fn a_tenants_books_sum_what_each_record_says() {
        let mut books = TenantBooks::new("t", Some(Billing::Prepaid));
        books.transaction(&transaction(Posting::top_up("t", usd("5")), None));
        books.usage(&usage("r1", "0.5", NOV + 10));
        books.transaction(&transaction(
            Posting::settle("t", usd("1"), usd("0.5")),
            Some("r1"),
        ));
        books.usage(&usage("r2", "1.5", NOV + 20));
        books.transaction(&transaction(
            Posting::settle("t", usd("1"), usd("1.5")),
            Some("r2"),
        ));
        books.transaction(&transaction(Posting::loss("t", usd("0.25")), Some("r2")));
        // An expired hold: an event that cost nothing, and its release.
        books.usage(&usage("r3", "0", NOV + 30));
        books.transaction(&transaction(Posting::expire("t", usd("1")), Some("r3")));
        books.invoice(&Invoice::from_usage(
            "t",
            "2026-11".parse().unwrap(),
            &[usage("r1", "0.5", NOV), usage("r2", "1.5", NOV)],
            NOV,
        ));
        books.available(usd("3"));
        let figures = books.figures();
        assert_eq!(
            (figures.usage, figures.settled, figures.written_off),
            (usd("2"), usd("2"), usd("0.25"))
        );
        assert_eq!(
            figures.invoiced,
            vec![("2026-11".into(), usd("2"), usd("2"))]
        );
        assert_eq!(
            (figures.unsettled_events, figures.orphan_settlements),
            (0, 0)
        );
        assert_eq!(figures.prepaid_available, Some(usd("3")));
        assert!(discrepancies(&LedgerFigures::default(), &[figures]).is_empty());
    }

    #[test]
    fn events_without_settlements_and_settlements_without_events_are_counted() {
        let mut books = TenantBooks::new("t", Some(Billing::Postpaid));
        books.usage(&usage("unsettled", "0.1", NOV));
        books.usage(&usage("free", "0", NOV));
        books.transaction(&transaction(
            Posting::charge("t", usd("0.2")),
            Some("orphan"),
        ));
        books.transaction(&transaction(Posting::expire("t", usd("0.2")), None));
        books.available(usd("-9"));
        let figures = books.figures();
        assert_eq!(
            (figures.unsettled_events, figures.orphan_settlements),
            (1, 2)
        );
        assert_eq!(
            figures.prepaid_available, None,
            "a postpaid balance may be negative"
        );
        assert_eq!(
            discrepancies(&LedgerFigures::default(), &[figures]).len(),
            3
        );
    }

    #[test]
    fn the_ledger_finds_unbalanced_transactions_and_drifted_accounts() {
        let mut books = LedgerBooks::default();
        books.transaction(&transaction(Posting::top_up("t", usd("5")), None));
        let mut lopsided = transaction(Posting::top_up("t", usd("1")), None);
        lopsided.entries.push(Entry {
            account: ledger::available("t"),
            amount_usd: usd("0.000000001"),
        });
        books.transaction(&lopsided);
        books.account(&ledger::available("t"), usd("6.000000001").nanos());
        books.account(ledger::FUNDING, usd("-6").nanos());
        books.account("tenant:t:held", 7);
        let figures = books.figures();
        assert_eq!(figures.unbalanced_transactions, 1);
        assert_eq!(
            figures.drifted_accounts, 1,
            "held has no entries but a balance"
        );
    }

    #[test]
    fn an_invoice_is_rewritten_until_it_is_final_and_never_after() {
        let month: Month = "2026-11".parse().unwrap();
        let end = month.bounds_unix().1;
        let made =
            |cost: &str, at: u64| Invoice::from_usage("t", month, &[usage("r", cost, NOV)], at);
        let first = close_invoice(made("1", end - 10), None, month).unwrap();
        assert!(first.created);
        let same = close_invoice(made("1", end + 50), Some(made("1", end - 10)), month).unwrap();
        assert!(!same.created);
        assert_eq!(
            same.invoice.created_at,
            end - 10,
            "the stored invoice is kept"
        );
        let provisional =
            close_invoice(made("2", end + 50), Some(made("1", end + 10)), month).unwrap();
        assert!(provisional.created);
        assert_eq!(provisional.invoice.total_usd, usd("2"));
        let refused = close_invoice(
            made("2", end + 99_999),
            Some(made("1", end + FINAL_AFTER_SECONDS)),
            month,
        );
        assert!(matches!(refused, Err(CloseError::Changed(_))));
        assert!(may_close(0).is_ok());
        assert!(matches!(may_close(2), Err(CloseError::InFlight(2))));
    }
}
