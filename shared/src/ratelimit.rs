//! Rate limits as GCRA (the generic cell rate algorithm): each bucket is one number, its
//! theoretical arrival time (TAT), so a store can check and update many buckets in one atomic
//! step. A limit of `L` per minute admits a burst of `L` and refills at `L` per minute.

use serde::{Deserialize, Serialize};

const WINDOW_NANOS: i128 = 60_000_000_000;

/// Requests and tokens per minute; absent means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
}

impl RateLimits {
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Requests,
    Tokens,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
        }
    }
}

/// One bucket a call draws from: `rl:<scope>:<unit>`, e.g. `rl:key:key_ab12:tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub id: String,
    pub unit: Unit,
    pub per_minute: u64,
}

impl Bucket {
    pub fn new(scope: &str, unit: Unit, per_minute: u32) -> Bucket {
        Bucket {
            id: format!("rl:{scope}:{}", unit.as_str()),
            unit,
            per_minute: u64::from(per_minute.max(1)),
        }
    }

    /// The buckets `limits` set for `scope` (`key:…`, `tenant:…`, `model:…`).
    pub fn all_for(scope: &str, limits: RateLimits) -> Vec<Bucket> {
        let mut buckets = Vec::new();
        if let Some(rpm) = limits.rpm {
            buckets.push(Bucket::new(scope, Unit::Requests, rpm));
        }
        if let Some(tpm) = limits.tpm {
            buckets.push(Bucket::new(scope, Unit::Tokens, tpm));
        }
        buckets
    }

    fn nanos_for(&self, amount: u64) -> i128 {
        // Rounded up, so a bucket never admits more than its limit.
        let per_minute = i128::from(self.per_minute);
        (i128::from(amount) * WINDOW_NANOS + per_minute - 1) / per_minute
    }
}

/// What taking from a bucket leaves: for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_nanos: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Allowed {
        tat: i64,
        remaining: Remaining,
    },
    /// Not enough in the bucket; retry after this long (never, if the amount exceeds the limit).
    Denied {
        retry_after_nanos: Option<u64>,
    },
}

/// Unix milliseconds as the unix nanoseconds buckets count in.
pub fn nanos_from_millis(millis: u64) -> i64 {
    clamp_i64(i128::from(millis) * 1_000_000)
}

fn clamp_i64(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

fn clamp_u64(value: i128) -> u64 {
    u64::try_from(value.max(0)).unwrap_or(u64::MAX)
}

/// Takes `amount` from `bucket`, whose stored TAT is `tat` (none when never used), at `now`
/// (unix nanoseconds).
pub fn take(bucket: &Bucket, tat: Option<i64>, amount: u64, now: i64) -> Taken {
    let now = i128::from(now);
    let start = i128::from(tat.unwrap_or(i64::MIN)).max(now);
    let new_tat = start + bucket.nanos_for(amount);
    if new_tat - now > WINDOW_NANOS {
        let retry_after_nanos =
            (amount <= bucket.per_minute).then(|| clamp_u64(new_tat - now - WINDOW_NANOS));
        return Taken::Denied { retry_after_nanos };
    }
    Taken::Allowed {
        tat: clamp_i64(new_tat),
        remaining: Remaining {
            limit: bucket.per_minute,
            remaining: clamp_u64(
                (now + WINDOW_NANOS - new_tat) * i128::from(bucket.per_minute) / WINDOW_NANOS,
            ),
            reset_nanos: clamp_u64(new_tat - now),
        },
    }
}

/// How much `bucket` could give at `now` before it refuses: what is left of its window.
pub fn room(bucket: &Bucket, tat: Option<i64>, now: i64) -> u64 {
    let now = i128::from(now);
    let start = i128::from(tat.unwrap_or(i64::MIN)).max(now);
    clamp_u64((now + WINDOW_NANOS - start) * i128::from(bucket.per_minute) / WINDOW_NANOS)
}

/// Corrects a bucket once the real amount is known (`delta` = actual − estimated). A refund
/// never pushes the TAT before `now`; an overrun may push it past the window, so the next calls
/// wait it out.
pub fn adjust(bucket: &Bucket, tat: Option<i64>, delta: i64, now: i64) -> i64 {
    let base = i128::from(tat.unwrap_or(now));
    let shift = bucket.nanos_for(delta.unsigned_abs());
    let shifted = if delta >= 0 {
        base + shift
    } else {
        base - shift
    };
    clamp_i64(shifted.max(i128::from(now)))
}

/// A duration as the `x-ratelimit-reset-*` headers write it (`1s`, `6m0s`, `20ms`).
pub fn format_reset(nanos: u64) -> String {
    let millis = nanos.div_ceil(1_000_000);
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = millis.div_ceil(1000);
    if seconds < 60 {
        format!("{seconds}s")
    } else {
        format!("{}m{}s", seconds / 60, seconds % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    fn allowed(taken: Taken) -> (i64, Remaining) {
        match taken {
            Taken::Allowed { tat, remaining } => (tat, remaining),
            Taken::Denied { .. } => panic!("denied"),
        }
    }

    #[test]
    fn a_limit_admits_its_burst_then_refills_at_its_rate() {
        let bucket = Bucket::new("key:k", Unit::Requests, 60);
        let now = 1_000 * SECOND;
        let mut tat = None;
        for expected_remaining in (0..60).rev() {
            let (next, remaining) = allowed(take(&bucket, tat, 1, now));
            assert_eq!(remaining.remaining, expected_remaining);
            tat = Some(next);
        }
        assert_eq!(
            take(&bucket, tat, 1, now),
            Taken::Denied {
                retry_after_nanos: Some(SECOND as u64)
            }
        );
        // One request per second comes back.
        assert!(matches!(
            take(&bucket, tat, 1, now + SECOND),
            Taken::Allowed { .. }
        ));
        let (_, remaining) = allowed(take(&bucket, None, 1, now));
        assert_eq!(remaining.reset_nanos, SECOND as u64);
    }

    #[test]
    fn an_amount_over_the_limit_never_fits() {
        let bucket = Bucket::new("key:k", Unit::Tokens, 100);
        assert_eq!(
            take(&bucket, None, 101, 0),
            Taken::Denied {
                retry_after_nanos: None
            }
        );
        assert!(matches!(take(&bucket, None, 100, 0), Taken::Allowed { .. }));
    }

    #[test]
    fn adjustments_move_the_bucket_by_the_difference() {
        let bucket = Bucket::new("key:k", Unit::Tokens, 600);
        let now = 50 * SECOND;
        let (tat, _) = allowed(take(&bucket, None, 300, now));
        assert_eq!(tat, now + 30 * SECOND);
        assert_eq!(adjust(&bucket, Some(tat), -100, now), now + 20 * SECOND);
        assert_eq!(adjust(&bucket, Some(tat), 600, now), now + 90 * SECOND);
        assert_eq!(adjust(&bucket, Some(tat), -1000, now), now);
    }

    #[test]
    fn resets_read_like_durations() {
        assert_eq!(format_reset(20_000_000), "20ms");
        assert_eq!(format_reset(1_000_000_000), "1s");
        assert_eq!(format_reset(1_200_000_000), "2s");
        assert_eq!(format_reset(360_000_000_000), "6m0s");
    }
}
