//! The billing function's scheduled jobs, whoever triggers them: EventBridge on Lambda (the
//! event is the job's JSON), a Knative PingSource (`POST /jobs`), or `ferry billing`.
//! Each is safe to run twice or at once on several replicas: every change it makes is
//! idempotent in the store.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use ferry_core::billing::{self, Invoice};
use ferry_core::calendar::Month;
use ferry_core::ports::{Accounts, ObjectStore, Store};
use ferry_core::{ApiError, ErrorKind, Money};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ErrorResponse;
use crate::extract::JsonBody;

/// How many times reconciliation looks before it reports a difference, and how long apart.
const RECONCILE_LOOKS: u32 = 3;
const RECONCILE_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// A job, as its trigger sends it: `{"job": "expire_holds"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "job", rename_all = "snake_case", deny_unknown_fields)]
pub enum Job {
    /// Releases holds whose calls never settled.
    ExpireHolds,
    /// Closes the month before the current one (a no-op once closed): run daily, it closes
    /// each month early on the first.
    ClosePreviousMonth,
    /// Closes a given month (`YYYY-MM`).
    ClosePeriod { period: String },
    /// Checks that the books agree; fails (so alarms fire) when they do not.
    Reconcile,
}

/// What the jobs work on.
#[derive(Clone)]
pub struct Books {
    pub store: Arc<dyn Store>,
    pub accounts: Arc<dyn Accounts>,
    pub objects: Arc<dyn ObjectStore>,
}

/// One tenant's invoice as a close left it.
#[derive(Debug, Clone, Serialize)]
pub struct ClosedInvoice {
    pub invoice: Invoice,
    /// False when it had been made before, unchanged.
    pub created: bool,
    pub usage_events: usize,
    /// Where the month's usage events went (JSON lines of CloudEvents).
    pub usage_export: String,
    pub invoice_export: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Expired {
        expired_holds: u64,
    },
    Closed {
        period: String,
        invoices: Vec<ClosedInvoice>,
    },
    Reconciled {
        tenants: usize,
        discrepancies: Vec<String>,
        /// What calls cost beyond what prepaid tenants could pay, written off (all tenants).
        written_off_usd: Money,
    },
}

impl Outcome {
    /// True when the job found something wrong (differences in the books).
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Reconciled { discrepancies, .. } if !discrepancies.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Close(#[from] ferry_core::ports::CloseError),
    #[error(transparent)]
    Store(#[from] ferry_core::ports::StoreError),
}

impl Books {
    pub async fn run(&self, job: &Job, now_ms: u64) -> Result<Outcome, JobError> {
        let now = now_ms / 1000;
        match job {
            Job::ExpireHolds => Ok(Outcome::Expired {
                expired_holds: self.accounts.expire_holds(now_ms).await?,
            }),
            Job::ClosePreviousMonth => {
                let this_month = Month::of_unix(now);
                let previous = Month::of_unix(this_month.bounds_unix().0.saturating_sub(1));
                self.close(previous, now).await
            }
            Job::ClosePeriod { period } => {
                let month: Month = period.parse().map_err(|_| {
                    JobError::Invalid(format!("period must be a month as YYYY-MM, not {period:?}"))
                })?;
                self.close(month, now).await
            }
            Job::Reconcile => {
                // A store without snapshots (DynamoDB's scan) can catch a settlement half
                // read: only a difference that is still there on a later look is reported.
                let mut looks = 0;
                loop {
                    let (ledger, tenants) = self.accounts.figures().await?;
                    let discrepancies = billing::discrepancies(&ledger, &tenants);
                    looks += 1;
                    if discrepancies.is_empty() || looks == RECONCILE_LOOKS {
                        let written_off = tenants
                            .iter()
                            .map(|tenant| tenant.written_off.nanos())
                            .sum();
                        return Ok(Outcome::Reconciled {
                            tenants: tenants.len(),
                            discrepancies,
                            written_off_usd: Money::from_nanos(written_off),
                        });
                    }
                    tokio::time::sleep(RECONCILE_PAUSE).await;
                }
            }
        }
    }

    /// Makes each tenant's invoice for `month` and exports it with the month's usage events.
    pub async fn close(&self, month: Month, now: u64) -> Result<Outcome, JobError> {
        let closed = self.accounts.close_period(month, now).await?;
        let (start, end) = month.bounds_unix();
        let mut invoices = Vec::new();
        for outcome in closed {
            let invoice = outcome.invoice;
            let events = self
                .accounts
                .usage_events(&invoice.tenant_id, None, start, end, u32::MAX)
                .await?;
            let mut lines = String::new();
            for event in &events {
                lines.push_str(&billing::cloud_event(event).to_string());
                lines.push('\n');
            }
            let usage_key = format!("usage/period={month}/tenant={}.jsonl", invoice.tenant_id);
            self.objects.put(&usage_key, Bytes::from(lines)).await?;
            let invoice_key = format!("invoices/period={month}/{}.json", invoice.id);
            let body = serde_json::to_vec_pretty(&invoice)
                .map_err(|error| JobError::Invalid(error.to_string()))?;
            self.objects.put(&invoice_key, Bytes::from(body)).await?;
            invoices.push(ClosedInvoice {
                invoice,
                created: outcome.created,
                usage_events: events.len(),
                usage_export: self.objects.locate(&usage_key),
                invoice_export: self.objects.locate(&invoice_key),
            });
        }
        Ok(Outcome::Closed {
            period: month.to_string(),
            invoices,
        })
    }

    /// Runs a job as the billing function does, logging what it did; an `Err` is the
    /// function's failure (retried by its trigger, counted by alarms).
    pub async fn run_logged(&self, job: &Job, now_ms: u64) -> Result<Outcome, JobError> {
        let outcome = self.run(job, now_ms).await;
        match &outcome {
            Ok(outcome) if outcome.is_failure() => {
                tracing::error!(?job, outcome = %json!(outcome), "job found a problem")
            }
            Ok(outcome) => tracing::info!(?job, outcome = %json!(outcome), "job done"),
            Err(error) => tracing::error!(?job, %error, "job failed"),
        }
        outcome
    }
}

/// The billing function's HTTP surface (for triggers that speak HTTP, like a PingSource):
/// `POST /jobs` with the job's JSON; health and readiness like the other functions.
pub fn router(books: Books) -> Router {
    Router::new()
        .route("/jobs", post(run_job))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(books)
}

async fn run_job(State(books): State<Books>, body: JsonBody<Job>) -> Response {
    let job = body.typed;
    match books.run_logged(&job, crate::clock::unix_millis()).await {
        Ok(outcome) if outcome.is_failure() => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!(outcome)),
        )
            .into_response(),
        Ok(outcome) => Json(json!(outcome)).into_response(),
        Err(JobError::Invalid(message)) => {
            ErrorResponse::from(ApiError::new(ErrorKind::InvalidRequest, message)).into_response()
        }
        Err(
            JobError::Close(ferry_core::ports::CloseError::Store(error)) | JobError::Store(error),
        ) => ErrorResponse::from(ApiError::from(error)).into_response(),
        Err(JobError::Close(error)) => ErrorResponse::from(
            ApiError::new(ErrorKind::Conflict, error.to_string()).retry_after(60),
        )
        .into_response(),
    }
}

async fn readyz(State(books): State<Books>) -> Response {
    crate::app::store_readiness(books.store.as_ref()).await
}
