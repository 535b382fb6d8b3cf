//! Billing from metered usage: invoices per tenant and month (a line per model), spend
//! reports, usage events as CloudEvents; and in [`books`], closing a month and the
//! reconciliation invariant usage = settled ledger debits = invoice lines, to the nanodollar.

use serde::{Deserialize, Serialize};

mod books;

pub use books::{
    FINAL_AFTER_SECONDS, LedgerBooks, LedgerFigures, TenantBooks, TenantFigures, close_invoice,
    discrepancies, may_close,
};

use crate::calendar::{self, Month};
use crate::money::Money;
use crate::ports::UsageRecord;

/// Calls and tokens summed over some group of usage events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Totals {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Money,
}

impl Totals {
    /// Sums another group's totals into this one.
    pub fn merge(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.cached_tokens += other.cached_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost_usd =
            Money::from_nanos(self.cost_usd.nanos().saturating_add(other.cost_usd.nanos()));
    }

    pub fn add(&mut self, usage: &UsageRecord) {
        self.requests += 1;
        self.prompt_tokens += usage.prompt_tokens;
        self.cached_tokens += usage.cached_tokens;
        self.completion_tokens += usage.completion_tokens;
        self.cost_usd = Money::from_nanos(self.cost_usd.nanos().saturating_add(usage.cost.nanos()));
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvoiceLine {
    pub model: String,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invoice {
    /// `inv_<tenant>_<YYYYMM>`: one invoice per tenant and month, so closing twice finds it.
    pub id: String,
    pub object: String,
    pub tenant_id: String,
    /// `YYYY-MM` (UTC).
    pub period: String,
    pub lines: Vec<InvoiceLine>,
    pub total_usd: Money,
    /// Unix seconds when the period was closed.
    pub created_at: u64,
}

impl Invoice {
    pub fn id_for(tenant_id: &str, month: Month) -> String {
        format!("inv_{tenant_id}_{:04}{:02}", month.year, month.month)
    }

    /// The invoice for `usage` (one tenant's events in `month`): a line per model, by model id.
    pub fn from_usage(tenant_id: &str, month: Month, usage: &[UsageRecord], now: u64) -> Invoice {
        let mut lines: Vec<InvoiceLine> = Vec::new();
        for record in usage {
            match lines.iter_mut().find(|line| line.model == record.model) {
                Some(line) => line.totals.add(record),
                None => {
                    let mut totals = Totals::default();
                    totals.add(record);
                    lines.push(InvoiceLine {
                        model: record.model.clone(),
                        totals,
                    });
                }
            }
        }
        lines.sort_by(|left, right| left.model.cmp(&right.model));
        let total = lines
            .iter()
            .map(|line| line.totals.cost_usd.nanos())
            .fold(0i64, i64::saturating_add);
        Invoice {
            id: Invoice::id_for(tenant_id, month),
            object: "invoice".into(),
            tenant_id: tenant_id.to_owned(),
            period: month.to_string(),
            lines,
            total_usd: Money::from_nanos(total),
            created_at: now,
        }
    }

    /// Same lines and total (the time it was made aside).
    pub fn same_charges(&self, other: &Invoice) -> bool {
        self.lines == other.lines && self.total_usd == other.total_usd
    }
}

/// How a spend report groups usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupBy {
    pub day: bool,
    pub model: bool,
    pub key: bool,
    /// The caller's own end user (`UsageRecord::user`); read from the events, as the rollups
    /// do not keep it.
    pub user: bool,
}

impl GroupBy {
    /// `day,model,key,user` in any order and subset.
    pub fn parse(text: &str) -> Result<GroupBy, String> {
        let mut group = GroupBy::default();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            match part {
                "day" => group.day = true,
                "model" => group.model = true,
                "key" => group.key = true,
                "user" => group.user = true,
                other => {
                    return Err(format!(
                        "cannot group by `{other}`; use day, model, key or user"
                    ));
                }
            }
        }
        Ok(group)
    }
}

/// One row of a spend report: the group's keys (absent when not grouped by them) and totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Grouped by user: the end user the caller named (absent: calls that named none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub totals: Totals,
}

/// A usage record as a CloudEvent (structured JSON mode), as exported.
pub fn cloud_event(usage: &UsageRecord) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0",
        "id": usage.request_id,
        "source": "ferry/gateway",
        "type": "dev.ferry.usage.v1",
        "subject": usage.tenant_id,
        "time": calendar::rfc3339_millis(usage.created_at.saturating_mul(1000)),
        "datacontenttype": "application/json",
        "data": usage,
    })
}

/// How a spend report over `[from, to)` is read without scanning every event: whole UTC days
/// from the usage rollups (a row per tenant, day, model and key, kept as usage is settled),
/// and only the ends that cut a day in two from the events themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportPlan {
    /// Whole days `[first, end)`, from the rollups.
    pub rollup_days: Option<(calendar::Date, calendar::Date)>,
    /// Unix-second ranges `[from, to)` read from the events.
    pub event_ranges: Vec<(u64, u64)>,
}

const DAY: u64 = 86_400;

/// The plan for `[from, to)` at `now`, grouped by `group`. A range reaching past `now` reads
/// its last day from the rollups whole: no event after `now` exists yet, so the day's rollup is
/// exact. Grouped by user, every event of the range is read (the rollups have no user).
pub fn plan_report(group: GroupBy, from: u64, to: u64, now: u64) -> ReportPlan {
    if from >= to {
        return ReportPlan::default();
    }
    if group.user {
        return ReportPlan {
            rollup_days: None,
            event_ranges: vec![(from, to)],
        };
    }
    let first_whole = from.div_ceil(DAY) * DAY;
    let end_whole = if to >= now {
        to.div_ceil(DAY) * DAY
    } else {
        to / DAY * DAY
    };
    if first_whole >= end_whole {
        return ReportPlan {
            rollup_days: None,
            event_ranges: vec![(from, to)],
        };
    }
    let mut event_ranges = Vec::new();
    if from < first_whole {
        event_ranges.push((from, first_whole));
    }
    if end_whole < to {
        event_ranges.push((end_whole, to));
    }
    ReportPlan {
        rollup_days: Some((
            calendar::Date::of_unix(first_whole),
            calendar::Date::of_unix(end_whole),
        )),
        event_ranges,
    }
}

/// One rollup row: a tenant's usage of one model by one key (or none) on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRow {
    pub day: calendar::Date,
    pub model: String,
    pub key_id: Option<String>,
    pub totals: Totals,
}

/// Sums rows into a report's groups: the dimensions `group` leaves out are dropped, rows that
/// then agree are added up. Ordered by day, model and key.
#[derive(Debug, Default)]
pub struct ReportBuilder {
    group: GroupBy,
    rows: std::collections::BTreeMap<ReportGroup, Totals>,
}

/// A report row's day, model, key and user, each `None` when not grouped by.
type ReportGroup = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl ReportBuilder {
    pub fn new(group: GroupBy) -> ReportBuilder {
        ReportBuilder {
            group,
            rows: Default::default(),
        }
    }

    pub fn add_rollup(&mut self, row: &RollupRow) {
        let key = (
            self.group.day.then(|| row.day.to_string()),
            self.group.model.then(|| row.model.clone()),
            if self.group.key {
                row.key_id.clone()
            } else {
                None
            },
            None,
        );
        self.rows.entry(key).or_default().merge(&row.totals);
    }

    pub fn add_event(&mut self, usage: &UsageRecord) {
        let key = (
            self.group
                .day
                .then(|| calendar::Date::of_unix(usage.created_at).to_string()),
            self.group.model.then(|| usage.model.clone()),
            if self.group.key {
                usage.key_id.clone()
            } else {
                None
            },
            if self.group.user {
                usage.user.clone()
            } else {
                None
            },
        );
        self.rows.entry(key).or_default().add(usage);
    }

    pub fn finish(self) -> Vec<UsageRow> {
        self.rows
            .into_iter()
            .map(|((day, model, key_id, user), totals)| UsageRow {
                day,
                model,
                key_id,
                user,
                totals,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(request_id: &str, model: &str, cost: i64) -> UsageRecord {
        UsageRecord {
            request_id: request_id.into(),
            tenant_id: "t".into(),
            key_id: None,
            model: model.into(),
            deployment: "d".into(),
            endpoint: "chat.completions".into(),
            prompt_tokens: 10,
            cached_tokens: 2,
            completion_tokens: 5,
            cost: Money::from_nanos(cost),
            status: 200,
            latency_ms: 3,
            ttft_ms: None,
            cache_status: "none".into(),
            route: crate::ports::NO_ROUTE.into(),
            attempts: 0,
            created_at: 1_795_600_000,
            user: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn invoices_have_a_line_per_model_in_order() {
        let month: Month = "2026-11".parse().unwrap();
        let events = [
            usage("a", "m2", 5),
            usage("b", "m1", 7),
            usage("c", "m2", 11),
        ];
        let invoice = Invoice::from_usage("t", month, &events, 9);
        assert_eq!(invoice.id, "inv_t_202611");
        let models: Vec<_> = invoice
            .lines
            .iter()
            .map(|line| line.model.as_str())
            .collect();
        assert_eq!(models, ["m1", "m2"]);
        assert_eq!(invoice.lines[1].totals.requests, 2);
        assert_eq!(invoice.lines[1].totals.cost_usd, Money::from_nanos(16));
        assert_eq!(invoice.total_usd, Money::from_nanos(23));
        let again = Invoice::from_usage("t", month, &events, 99);
        assert!(invoice.same_charges(&again));
    }

    #[test]
    fn group_by_accepts_any_subset() {
        assert_eq!(
            GroupBy::parse("model, day").unwrap(),
            GroupBy {
                day: true,
                model: true,
                ..GroupBy::default()
            }
        );
        assert!(GroupBy::parse("user,model").unwrap().user);
        assert_eq!(GroupBy::parse("").unwrap(), GroupBy::default());
        assert!(GroupBy::parse("tenant").is_err());
    }

    #[test]
    fn usage_exports_as_a_cloud_event() {
        let event = cloud_event(&usage("req_1", "m", 5));
        assert_eq!(event["id"], "req_1");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["data"]["cost"], "0.000000005");
        assert!(event["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_report_reads_whole_days_from_rollups_and_cut_days_from_events() {
        let day = 86_400;
        let d = |n: u64| calendar::Date::of_unix(n * day);
        // Whole days, in the past: rollups only.
        assert_eq!(
            plan_report(GroupBy::default(), 10 * day, 12 * day, 20 * day),
            ReportPlan {
                rollup_days: Some((d(10), d(12))),
                event_ranges: vec![]
            }
        );
        // Cut at both ends, in the past.
        assert_eq!(
            plan_report(GroupBy::default(), 10 * day + 5, 12 * day + 7, 20 * day),
            ReportPlan {
                rollup_days: Some((d(11), d(12))),
                event_ranges: vec![(10 * day + 5, 11 * day), (12 * day, 12 * day + 7)],
            }
        );
        // Up to now: today's rollup is whole.
        assert_eq!(
            plan_report(GroupBy::default(), 10 * day, 12 * day + 7, 12 * day + 7),
            ReportPlan {
                rollup_days: Some((d(10), d(13))),
                event_ranges: vec![]
            }
        );
        // Inside one day: events only.
        assert_eq!(
            plan_report(GroupBy::default(), 10 * day + 5, 10 * day + 9, 20 * day),
            ReportPlan {
                rollup_days: None,
                event_ranges: vec![(10 * day + 5, 10 * day + 9)]
            }
        );
        assert_eq!(
            plan_report(GroupBy::default(), 5, 5, 9),
            ReportPlan::default()
        );
    }

    #[test]
    fn rollups_and_events_sum_into_the_same_groups() {
        let mut report = ReportBuilder::new(GroupBy {
            model: true,
            ..GroupBy::default()
        });
        let totals = |requests, cost| Totals {
            requests,
            prompt_tokens: requests * 10,
            cached_tokens: 0,
            completion_tokens: requests,
            cost_usd: Money::from_nanos(cost),
        };
        report.add_rollup(&RollupRow {
            day: calendar::Date::of_unix(0),
            model: "m".into(),
            key_id: Some("key_a".into()),
            totals: totals(2, 30),
        });
        report.add_rollup(&RollupRow {
            day: calendar::Date::of_unix(86_400),
            model: "m".into(),
            key_id: None,
            totals: totals(1, 5),
        });
        let rows = report.finish();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].model.as_deref(), Some("m"));
        assert_eq!(rows[0].totals, totals(3, 35));
    }
}
