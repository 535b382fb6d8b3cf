//! Admission: a call takes from every rate-limit bucket that applies (its key's, its tenant's,
//! its model's) and holds its worst case, in one atomic store operation, or is refused with 429
//! or 402. What it takes is the core's rule (`ferry_core::call::admission`); shared by the
//! gateway's calls and the billing of edge hits.

use ferry_core::admission::{RateStatus, Refusal};
use ferry_core::call::{self, AdmissionAsk};
use ferry_core::ports::Tenant;
use ferry_core::ratelimit::Unit;
use ferry_core::{ApiError, ErrorKind};

use crate::app::AppState;
use crate::error::HandlerResult;
use crate::metrics::ResultLabels;

/// An admitted call: its rate-limit status, and the tenant as admission read it.
pub(crate) struct Admitted {
    pub rate: RateStatus,
    pub tenant: Tenant,
}

pub(crate) async fn admit(state: &AppState, call: AdmissionAsk<'_>) -> HandlerResult<Admitted> {
    let tenant = state
        .store
        .get_tenant(call.tenant_id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "This key's tenant no longer exists.",
            )
        })?;
    let admission = call::admission(&call, &tenant, state.money.hold_ttl_ms());
    let decided = state.accounts.admit(&admission).await?;
    let result = match &decided {
        Ok(_) => "admitted",
        Err(Refusal::RateLimited {
            unit: Unit::Requests,
            ..
        }) => "rate_limited_requests",
        Err(Refusal::RateLimited {
            unit: Unit::Tokens, ..
        }) => "rate_limited_tokens",
        Err(Refusal::Credit { source, .. }) => source.as_str(),
    };
    state
        .metrics
        .admissions
        .get_or_create(&ResultLabels { result })
        .inc();
    match decided {
        Ok(grant) => {
            if let Ok(held) = u64::try_from(call.hold.nanos()) {
                state.metrics.held_nanodollars.inc_by(held);
            }
            Ok(Admitted {
                rate: grant.rate,
                tenant,
            })
        }
        Err(refusal) => Err(refusal.to_api_error().into()),
    }
}
