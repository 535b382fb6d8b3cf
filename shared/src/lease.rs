//! Credit leases: room for many calls, taken from the store in one atomic write and spent in
//! memory.
//!
//! A replica asks for a lease the way a call asks for admission: one [`Admission`] whose hold
//! is many calls' worst case and whose draws are many calls' draws, decided by the same rules
//! ([`crate::admission::decide`]) in the same atomic store operation, and kept by the store as
//! a hold. So all replicas' leases together can never pass the balance, a hard budget or a
//! rate limit. The replica admits calls against its lease ([`Lease::take`]), settles them
//! ([`Lease::settle`]) without the store, and writes their usage in batches, each batch
//! charging the lease's hold ([`batch_posting`]). A lease admits for [`ADMITS_FOR_MS`]; once
//! its calls are settled it is given back ([`release`]): its unspent credit returns to the
//! balance and its unused draws to their buckets. One never given back (its replica died)
//! expires like any hold, and the store returns what is left of it.
//!
//! Limits too small to share are not leased ([`calls`] says none) and calls are admitted one
//! at a time, as without leases: a tenant with credit for three calls gets exactly three, and
//! a 60-a-minute key gets 60 a minute across any number of replicas.

use crate::admission::{
    Admission, AdmissionState, Draw, Enforcement, Hold, RateStatus, SpendCounter,
};
use crate::ledger::Posting;
use crate::money::Money;
use crate::ports::Billing;
use crate::ratelimit::{self, Remaining, Unit};

/// A lease takes room for at most this many calls.
pub const MOST_CALLS: u64 = 256;
/// Below room for this many calls, a limit is too small to lease: calls are admitted one by one.
pub const FEWEST_CALLS: u64 = 16;
/// A lease takes at most this share (1/`SHARE`) of what is left under any limit, so another
/// replica, or the next lease, always finds room while much is left.
pub const SHARE: u64 = 8;
/// How long a lease admits calls after it is taken. Short: a lease's unused room is out of
/// other replicas' reach until it is given back.
pub const ADMITS_FOR_MS: u64 = 1_000;

/// A scope is leased for once it makes this many calls in a window ([`Demand`]).
pub const BUSY_CALLS: u64 = 16;
/// A scope is leased for, too, once this many of its tenant's calls are being admitted or
/// settled by the store at once: one by one they race each other for the same items (the
/// tenant's balance), and on a store with optimistic transactions (DynamoDB) each race lost is
/// another round trip.
pub const BUSY_AT_STORE: u64 = 4;
/// The window calls are counted over.
pub const DEMAND_WINDOW_MS: u64 = 1_000;

/// A scope leased for stays leased while it makes this share of the calls that made it busy
/// (a quarter): a little less traffic than the threshold does not send every call back to the
/// store, to race the others there, and a lease taken and given back every window.
pub const STAYS_BUSY_DIVISOR: u64 = 4;

/// How often a scope is called, counted per window: leases are for scopes called often enough
/// to share a store write among many calls. One called now and then is admitted call by call,
/// as without leases: a lease would only keep credit from other replicas for a while, and its
/// calls' charges would reach the store a little after their answers instead of before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    window_start_ms: u64,
    calls: u64,
    previous_window_calls: u64,
    /// A lease was taken for the scope, and it has stayed busy enough since.
    leased: bool,
}

impl Demand {
    /// Counts a call at `now_ms`: whether the scope made `busy_calls` calls (usually
    /// [`BUSY_CALLS`]) this window or the last, or, once leased for, a [`STAYS_BUSY_DIVISOR`]th
    /// of them.
    pub fn note(&mut self, now_ms: u64, busy_calls: u64) -> bool {
        let stays_busy = (busy_calls / STAYS_BUSY_DIVISOR).max(1);
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed >= DEMAND_WINDOW_MS {
            let previous_window_calls = if elapsed < 2 * DEMAND_WINDOW_MS {
                self.calls
            } else {
                0
            };
            *self = Demand {
                window_start_ms: now_ms,
                calls: 0,
                previous_window_calls,
                leased: self.leased && previous_window_calls >= stays_busy,
            };
        }
        self.calls += 1;
        let threshold = if self.leased { stays_busy } else { busy_calls };
        self.calls.max(self.previous_window_calls) >= threshold
    }

    /// Notes that a lease was taken for the scope.
    pub fn leased(&mut self) {
        self.leased = true;
    }

    /// Whether nothing was counted in the last two windows: the count may be forgotten.
    pub fn is_stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.window_start_ms) >= 2 * DEMAND_WINDOW_MS
    }
}

/// Lease ids begin so, and no call's request id does.
pub const ID_PREFIX: &str = "lease:";

/// Whether a hold's or a transaction's request id is a lease's.
pub fn is_lease_id(id: &str) -> bool {
    id.starts_with(ID_PREFIX)
}

/// What leases are shared by: calls of one tenant and key, billed alike, drawing from the same
/// buckets and counting against the same caps. A call may use a lease of its own scope only.
pub fn scope(call: &Admission) -> String {
    let mut scope = format!(
        "{}|{}|{:?}",
        call.tenant_id,
        call.key_id.as_deref().unwrap_or(""),
        call.billing
    );
    for draw in &call.draws {
        scope.push_str(&format!("|{}/{}", draw.bucket.id, draw.bucket.per_minute));
    }
    for cap in &call.caps {
        scope.push_str(&format!(
            "|{}<={}:{:?}",
            cap.counter,
            cap.cap.nanos(),
            cap.enforcement
        ));
    }
    scope
}

/// How many calls like `call` a lease may take room for, given the state the store read; none
/// when a limit is too small to share.
pub fn calls(call: &Admission, state: &AdmissionState) -> Option<u64> {
    let now = call.now_nanos();
    let mut most = MOST_CALLS;
    for (draw, tat) in call.draws.iter().zip(&state.tats) {
        let room = ratelimit::room(&draw.bucket, *tat, now);
        if let Some(calls) = (room / SHARE).checked_div(draw.amount) {
            most = most.min(calls);
        }
    }
    let hold = u64::try_from(call.hold.nanos()).unwrap_or(0);
    if hold > 0 {
        let share_of = |room: i64| u64::try_from(room).unwrap_or(0) / SHARE / hold;
        for (cap, counter) in call.caps.iter().zip(&state.counters) {
            if cap.enforcement == Enforcement::Hard {
                let room = cap.cap.nanos() - counter.settled.nanos() - counter.held.nanos();
                most = most.min(share_of(room));
            }
        }
        if call.billing == Billing::Prepaid {
            most = most.min(share_of(state.available.nanos()));
        }
    }
    (most >= FEWEST_CALLS).then_some(most)
}

/// The admission that takes a lease `lease_id` with room for `calls` calls like `call`: it
/// lasts as long as the last call it may admit.
pub fn admission(call: &Admission, lease_id: &str, calls: u64) -> Admission {
    let times = |amount: u64| amount.saturating_mul(calls);
    Admission {
        request_id: lease_id.to_owned(),
        hold: Money::from_nanos(
            call.hold
                .nanos()
                .saturating_mul(i64::try_from(calls).unwrap_or(i64::MAX)),
        ),
        draws: call
            .draws
            .iter()
            .map(|draw| Draw {
                bucket: draw.bucket.clone(),
                amount: times(draw.amount),
            })
            .collect(),
        expires_at_ms: call.expires_at_ms.saturating_add(ADMITS_FOR_MS),
        ..call.clone()
    }
}

/// The hold a store keeps for a lease.
pub fn hold(lease: &Admission) -> Hold {
    Hold {
        token_draws: Vec::new(),
        lease_draws: Some(lease.draws.clone()),
        ..Hold::of(lease)
    }
}

/// What one call took from a lease, given back when it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub hold: Money,
    pub draws: Vec<u64>,
    /// The buckets as this replica sees them, for the `x-ratelimit-*` headers.
    pub rate: RateStatus,
}

/// What settling a call against its lease charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasedCharge {
    /// Charged from the lease.
    pub charged: Money,
    /// The cost beyond what the lease had left: to be drawn from the balance, if it can pay,
    /// and written off if not.
    pub short: Money,
}

/// A lease as the replica holding it spends it.
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: String,
    pub tenant_id: String,
    pub billing: Billing,
    pub admits_until_ms: u64,
    pub expires_at_ms: u64,
    /// Credit not promised to a call; none when nothing bounds it (postpaid, no hard cap).
    free: Option<Money>,
    draws: Vec<Draw>,
    /// Per draw: what calls took (estimates until they settle, then what they used).
    used: Vec<u64>,
    in_flight: u64,
    rate: RateStatus,
}

impl Lease {
    /// The lease `admission` took; `rate` is the buckets' state its grant reported.
    pub fn new(admission: &Admission, rate: RateStatus) -> Lease {
        let bounded = admission.billing == Billing::Prepaid
            || admission
                .caps
                .iter()
                .any(|cap| cap.enforcement == Enforcement::Hard);
        Lease {
            id: admission.request_id.clone(),
            tenant_id: admission.tenant_id.clone(),
            billing: admission.billing,
            admits_until_ms: admission.now_ms.saturating_add(ADMITS_FOR_MS),
            expires_at_ms: admission.expires_at_ms,
            free: bounded.then_some(admission.hold),
            draws: admission.draws.clone(),
            used: vec![0; admission.draws.len()],
            in_flight: 0,
            rate,
        }
    }

    /// Takes room for `call`, or nothing when the lease no longer admits or lacks the room.
    pub fn take(&mut self, call: &Admission) -> Option<Taken> {
        if call.now_ms >= self.admits_until_ms
            || call.expires_at_ms > self.expires_at_ms
            || call.draws.len() != self.draws.len()
        {
            return None;
        }
        if self.free.is_some_and(|free| free < call.hold) {
            return None;
        }
        let fits =
            self.draws
                .iter()
                .zip(&self.used)
                .zip(&call.draws)
                .all(|((leased, used), wanted)| {
                    leased.bucket.id == wanted.bucket.id
                        && used.saturating_add(wanted.amount) <= leased.amount
                });
        if !fits {
            return None;
        }
        if let Some(free) = &mut self.free {
            *free = Money::from_nanos(free.nanos() - call.hold.nanos());
        }
        for (used, wanted) in self.used.iter_mut().zip(&call.draws) {
            *used += wanted.amount;
        }
        self.in_flight += 1;
        Some(Taken {
            hold: call.hold,
            draws: call.draws.iter().map(|draw| draw.amount).collect(),
            rate: self.rate_now(),
        })
    }

    /// The buckets' state when the lease was taken, plus what of it this replica has not yet
    /// used: what a caller of this replica may still count on.
    fn rate_now(&self) -> RateStatus {
        let mut rate = self.rate;
        for (unit, slot) in [
            (Unit::Requests, &mut rate.requests),
            (Unit::Tokens, &mut rate.tokens),
        ] {
            let unused = self
                .draws
                .iter()
                .zip(&self.used)
                .filter(|(draw, _)| draw.bucket.unit == unit)
                .map(|(draw, used)| draw.amount.saturating_sub(*used))
                .min();
            if let (Some(remaining), Some(unused)) = (slot.as_mut(), unused) {
                *remaining = Remaining {
                    remaining: remaining.remaining.saturating_add(unused),
                    ..*remaining
                };
            }
        }
        rate
    }

    /// Settles a call that took `taken`: at `cost` with `actual_tokens` used, or, with no cost,
    /// for nothing (the call never ran). Token draws are corrected to what was used.
    pub fn settle(
        &mut self,
        taken: &Taken,
        cost: Option<Money>,
        actual_tokens: u64,
    ) -> LeasedCharge {
        self.in_flight = self.in_flight.saturating_sub(1);
        let cost = cost.map_or(Money::ZERO, |cost| cost.max(Money::ZERO));
        let charged = match &mut self.free {
            None => cost,
            Some(free) => {
                let room = free.nanos() + taken.hold.nanos();
                let charged = cost.nanos().min(room);
                *free = Money::from_nanos(room - charged);
                Money::from_nanos(charged)
            }
        };
        for ((used, took), draw) in self.used.iter_mut().zip(&taken.draws).zip(&self.draws) {
            if draw.bucket.unit == Unit::Tokens {
                *used = used.saturating_sub(*took).saturating_add(actual_tokens);
            }
        }
        LeasedCharge {
            charged,
            short: Money::from_nanos(cost.nanos() - charged.nanos()),
        }
    }

    /// Whether the lease admits no more calls and has none in flight: it may be given back.
    pub fn is_spent(&self, now_ms: u64) -> bool {
        now_ms >= self.admits_until_ms && self.in_flight == 0
    }

    /// Calls admitted and not yet settled.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Per draw, what its calls used, for [`release`].
    pub fn used(&self) -> &[u64] {
        &self.used
    }
}

/// What writing a batch of a lease's calls, `charged` in all, posts: the lease's hold is
/// settled by that much (prepaid) or the tenant charged it (postpaid).
pub fn batch_posting(lease: &Hold, charged: Money) -> Option<Posting> {
    if charged <= Money::ZERO {
        return None;
    }
    Some(match lease.billing {
        Billing::Prepaid => Posting::settle(&lease.tenant_id, charged, charged),
        Billing::Postpaid => Posting::charge(&lease.tenant_id, charged),
    })
}

/// The hold call `request_id` of a lease that is already closed (expired, or released before
/// its usage was written) settles against: one of nothing, so it is charged from the balance as
/// far as that and the caps allow, and the rest written off, like any call's overdraw.
pub fn late(lease: &Hold, request_id: &str) -> Hold {
    Hold {
        request_id: request_id.to_owned(),
        amount: Money::ZERO,
        token_draws: Vec::new(),
        lease_draws: None,
        ..lease.clone()
    }
}

/// How much of `amount` an open lease may draw beyond its hold (a call cost more than the
/// lease had left): what the balance (prepaid) and every hard cap still have room for.
pub fn extension(
    lease: &Hold,
    amount: Money,
    available: Money,
    counters: &[SpendCounter],
) -> Money {
    let mut most = amount.nanos().max(0);
    if lease.billing == Billing::Prepaid {
        most = most.min(available.nanos().max(0));
    }
    for (cap, counter) in lease.caps.iter().zip(counters) {
        if cap.enforcement == Enforcement::Hard {
            let room = cap.cap.nanos() - counter.settled.nanos() - counter.held.nanos();
            most = most.min(room.max(0));
        }
    }
    Money::from_nanos(most)
}

/// What giving a lease back does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The unspent hold back to the balance (prepaid).
    pub posting: Option<Posting>,
    /// Per draw: used less taken; a negative amount is given back to the bucket.
    pub corrections: Vec<(Draw, i64)>,
}

/// Gives back `lease` (its hold's amount is what it has not yet charged) once its calls used
/// `used` of each draw.
pub fn release(lease: &Hold, used: &[u64]) -> Release {
    let posting = (lease.billing == Billing::Prepaid && lease.amount > Money::ZERO)
        .then(|| Posting::expire(&lease.tenant_id, lease.amount));
    let corrections = lease
        .lease_draws
        .iter()
        .flatten()
        .zip(used)
        .map(|(draw, used)| {
            let delta = i64::try_from(*used).unwrap_or(i64::MAX)
                - i64::try_from(draw.amount).unwrap_or(i64::MAX);
            (draw.clone(), delta)
        })
        .filter(|(_, delta)| *delta != 0)
        .collect();
    Release {
        posting,
        corrections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{Budget, BudgetPeriod, spend_caps};
    use crate::ratelimit::Bucket;

    fn usd(text: &str) -> Money {
        text.parse().unwrap()
    }

    fn call(billing: Billing, hold: &str, draws: Vec<Draw>, caps_usd: Option<&str>) -> Admission {
        let caps = caps_usd.map_or_else(Vec::new, |amount| {
            spend_caps(
                "t",
                &[Budget {
                    period: BudgetPeriod::Day,
                    amount_usd: usd(amount),
                    enforcement: Enforcement::Hard,
                }],
                None,
                1_795_600_000,
            )
        });
        Admission {
            request_id: "r".into(),
            tenant_id: "t".into(),
            key_id: Some("k".into()),
            model: "m".into(),
            deployment: "d".into(),
            endpoint: "chat.completions".into(),
            billing,
            hold: usd(hold),
            draws,
            caps,
            now_ms: 1_795_600_000_000,
            expires_at_ms: 1_795_600_600_000,
        }
    }

    fn state(available: &str, draws: usize, caps: usize) -> AdmissionState {
        AdmissionState {
            tats: vec![None; draws],
            available: usd(available),
            held: Money::ZERO,
            counters: vec![SpendCounter::default(); caps],
        }
    }

    fn rpm(per_minute: u32, amount: u64) -> Draw {
        Draw {
            bucket: Bucket::new("key:k", Unit::Requests, per_minute),
            amount,
        }
    }

    fn tpm(per_minute: u32, amount: u64) -> Draw {
        Draw {
            bucket: Bucket::new("key:k", Unit::Tokens, per_minute),
            amount,
        }
    }

    #[test]
    fn a_lease_takes_an_eighth_of_the_tightest_limit_or_nothing_below_sixteen_calls() {
        let cases = [
            // (available, hold, rpm, tpm per call, daily cap, calls)
            ("1000", "0.01", None, None, None, Some(256)),
            ("10", "0.01", None, None, None, Some(125)),
            ("1.28", "0.01", None, None, None, Some(16)),
            ("1.27", "0.01", None, None, None, None),
            ("0.03", "0.01", None, None, None, None),
            ("1000", "0.01", Some(6000), None, None, Some(256)),
            ("1000", "0.01", Some(1000), None, None, Some(125)),
            ("1000", "0.01", Some(60), None, None, None),
            ("1000", "0.01", None, Some((80_000, 100)), None, Some(100)),
            ("1000", "0.01", None, None, Some("2"), Some(25)),
            ("1000", "0.01", None, None, Some("1"), None),
        ];
        for (available, hold, rpm_limit, tokens, cap, expected) in cases {
            let mut draws = Vec::new();
            if let Some(limit) = rpm_limit {
                draws.push(rpm(limit, 1));
            }
            if let Some((limit, per_call)) = tokens {
                draws.push(tpm(limit, per_call));
            }
            let admission = call(Billing::Prepaid, hold, draws, cap);
            let read = state(available, admission.draws.len(), admission.caps.len());
            assert_eq!(
                calls(&admission, &read),
                expected,
                "{available} {hold} {rpm_limit:?} {tokens:?} {cap:?}"
            );
        }
    }

    #[test]
    fn a_postpaid_tenant_without_hard_caps_is_bounded_by_its_buckets_only() {
        let admission = call(Billing::Postpaid, "0.01", vec![], None);
        assert_eq!(calls(&admission, &state("-5", 0, 0)), Some(MOST_CALLS));
    }

    #[test]
    fn a_bucket_already_drawn_leases_only_what_is_left() {
        let admission = call(Billing::Prepaid, "0.01", vec![rpm(1000, 1)], None);
        let mut read = state("1000", 1, 0);
        // Half the window is already taken.
        read.tats = vec![Some(admission.now_nanos() + 30_000_000_000)];
        assert_eq!(calls(&admission, &read), Some(62));
    }

    #[test]
    fn the_lease_admission_is_many_calls_at_once() {
        let one = call(
            Billing::Prepaid,
            "0.01",
            vec![rpm(6000, 1), tpm(600_000, 300)],
            None,
        );
        let lease = admission(&one, "lease:a:1", 100);
        assert_eq!(lease.request_id, "lease:a:1");
        assert_eq!(lease.hold, usd("1"));
        assert_eq!(
            lease
                .draws
                .iter()
                .map(|draw| draw.amount)
                .collect::<Vec<_>>(),
            [100, 30_000]
        );
        assert_eq!(lease.expires_at_ms, one.expires_at_ms + ADMITS_FOR_MS);
        assert_eq!(hold(&lease).lease_draws, Some(lease.draws.clone()));
    }

    #[test]
    fn calls_take_and_settle_in_memory_and_never_past_the_lease() {
        let one = call(Billing::Prepaid, "0.01", vec![rpm(6000, 1)], None);
        let mut lease = Lease::new(&admission(&one, "lease:a:1", 3), RateStatus::default());
        let taken: Vec<Taken> = (0..3).map(|_| lease.take(&one).unwrap()).collect();
        assert!(
            lease.take(&one).is_none(),
            "room for three calls admits three"
        );
        assert_eq!(lease.in_flight(), 3);
        // Two cost less than their hold; the third overshoots into what they left.
        let cheap = lease.settle(&taken[0], Some(usd("0.004")), 10);
        assert_eq!(
            cheap,
            LeasedCharge {
                charged: usd("0.004"),
                short: Money::ZERO
            }
        );
        lease.settle(&taken[1], Some(usd("0.004")), 10);
        let dear = lease.settle(&taken[2], Some(usd("0.03")), 10);
        assert_eq!(
            dear,
            LeasedCharge {
                charged: usd("0.022"),
                short: usd("0.008")
            },
            "charged up to what the lease has left, the rest short"
        );
        assert_eq!(lease.in_flight(), 0);
        assert_eq!(lease.used(), [3]);
    }

    #[test]
    fn a_lease_stops_admitting_after_its_window_and_is_then_spent() {
        let one = call(Billing::Prepaid, "0.01", vec![], None);
        let mut lease = Lease::new(&admission(&one, "lease:a:1", 100), RateStatus::default());
        let taken = lease.take(&one).unwrap();
        let later = Admission {
            now_ms: one.now_ms + ADMITS_FOR_MS,
            ..one.clone()
        };
        assert!(lease.take(&later).is_none());
        assert!(!lease.is_spent(later.now_ms), "a call is still in flight");
        lease.settle(&taken, None, 0);
        assert!(lease.is_spent(later.now_ms));
    }

    #[test]
    fn a_call_of_another_shape_or_outliving_the_lease_is_not_admitted() {
        let one = call(Billing::Prepaid, "0.01", vec![rpm(6000, 1)], None);
        let mut lease = Lease::new(&admission(&one, "lease:a:1", 100), RateStatus::default());
        let other_bucket = call(Billing::Prepaid, "0.01", vec![tpm(600_000, 1)], None);
        assert!(lease.take(&other_bucket).is_none());
        let longer = Admission {
            expires_at_ms: one.expires_at_ms + 2 * ADMITS_FOR_MS,
            ..one.clone()
        };
        assert!(lease.take(&longer).is_none());
        assert_ne!(scope(&one), scope(&other_bucket));
    }

    #[test]
    fn token_draws_are_corrected_to_what_calls_used_and_the_rest_goes_back() {
        let one = call(
            Billing::Prepaid,
            "0.01",
            vec![rpm(6000, 1), tpm(600_000, 300)],
            None,
        );
        let lease_admission = admission(&one, "lease:a:1", 10);
        let mut lease = Lease::new(&lease_admission, RateStatus::default());
        let first = lease.take(&one).unwrap();
        let second = lease.take(&one).unwrap();
        lease.settle(&first, Some(usd("0.001")), 120);
        lease.settle(&second, Some(usd("0.001")), 500);
        assert_eq!(lease.used(), [2, 620]);
        let mut stored = hold(&lease_admission);
        stored.amount = usd("0.098");
        let given_back = release(&stored, lease.used());
        assert_eq!(given_back.posting, Some(Posting::expire("t", usd("0.098"))));
        assert_eq!(
            given_back
                .corrections
                .iter()
                .map(|(draw, delta)| (draw.bucket.unit, *delta))
                .collect::<Vec<_>>(),
            [(Unit::Requests, -8), (Unit::Tokens, 620 - 3000)]
        );
    }

    #[test]
    fn a_postpaid_lease_without_caps_charges_the_whole_cost() {
        let one = call(Billing::Postpaid, "0.01", vec![], None);
        let mut lease = Lease::new(&admission(&one, "lease:a:1", 16), RateStatus::default());
        let taken = lease.take(&one).unwrap();
        let charge = lease.settle(&taken, Some(usd("5")), 10);
        assert_eq!(
            charge,
            LeasedCharge {
                charged: usd("5"),
                short: Money::ZERO
            }
        );
        let stored = hold(&admission(&one, "lease:a:1", 16));
        assert_eq!(
            batch_posting(&stored, usd("5")),
            Some(Posting::charge("t", usd("5")))
        );
        assert_eq!(release(&stored, &[]).posting, None);
    }

    #[test]
    fn an_extension_takes_what_the_balance_and_the_hard_caps_have_room_for() {
        let one = call(Billing::Prepaid, "0.01", vec![], Some("2"));
        let stored = hold(&admission(&one, "lease:a:1", 16));
        let counter = |settled: &str, held: &str| SpendCounter {
            settled: usd(settled),
            held: usd(held),
        };
        let cases = [
            ("0.05", "10", ("0", "0.16"), "0.05"),
            ("0.05", "0.02", ("0", "0.16"), "0.02"),
            ("0.05", "-1", ("0", "0.16"), "0"),
            ("0.05", "10", ("1.8", "0.16"), "0.04"),
            ("0.05", "10", ("2", "0.16"), "0"),
        ];
        for (amount, available, (settled, held), expected) in cases {
            assert_eq!(
                extension(
                    &stored,
                    usd(amount),
                    usd(available),
                    &[counter(settled, held)]
                ),
                usd(expected),
                "{amount} {available} {settled} {held}"
            );
        }
    }

    #[test]
    fn a_scope_is_busy_from_its_sixteenth_call_in_a_second_and_stays_so_a_second_more() {
        let mut demand = Demand::default();
        let start = 1_000_000;
        let busy: Vec<bool> = (0..16)
            .map(|call| demand.note(start + call, BUSY_CALLS))
            .collect();
        assert_eq!(busy.iter().filter(|busy| **busy).count(), 1, "{busy:?}");
        assert!(busy[15]);
        // The next window: busy from its first call, on the strength of the last.
        assert!(demand.note(start + DEMAND_WINDOW_MS, BUSY_CALLS));
        // A quiet window later, the count starts over.
        assert!(!demand.note(start + 3 * DEMAND_WINDOW_MS, BUSY_CALLS));
        assert!(!demand.is_stale(start + 3 * DEMAND_WINDOW_MS));
        assert!(demand.is_stale(start + 5 * DEMAND_WINDOW_MS));
    }

    #[test]
    fn a_leased_scope_stays_busy_down_to_a_quarter_of_the_calls_that_made_it_so() {
        let mut demand = Demand::default();
        let start = 1_000_000;
        let quarter = BUSY_CALLS / STAYS_BUSY_DIVISOR;
        // Not leased for: a quarter of the threshold is quiet.
        for call in 0..quarter {
            assert!(!demand.note(start + call, BUSY_CALLS));
        }
        demand.leased();
        assert!(demand.note(start + quarter, BUSY_CALLS));
        // A window later with a quarter of the calls: still busy.
        let next = start + DEMAND_WINDOW_MS;
        let busy: Vec<bool> = (0..quarter)
            .map(|call| demand.note(next + call, BUSY_CALLS))
            .collect();
        assert!(busy.iter().all(|busy| *busy), "{busy:?}");
        // A window with fewer, then one more: no longer leased for, the full threshold again.
        let sparse = next + DEMAND_WINDOW_MS;
        assert!(
            demand.note(sparse, BUSY_CALLS),
            "the last window had a quarter"
        );
        let after = sparse + DEMAND_WINDOW_MS;
        assert!(!demand.note(after, BUSY_CALLS));
        assert!(!demand.note(after + 1, BUSY_CALLS));
    }

    #[test]
    fn a_late_call_settles_against_no_hold() {
        let one = call(Billing::Prepaid, "0.01", vec![], None);
        let stored = hold(&admission(&one, "lease:a:1", 16));
        let late = late(&stored, "r7");
        assert_eq!((late.amount, late.request_id.as_str()), (Money::ZERO, "r7"));
        let plan = crate::admission::settle_plan(&late, Some(usd("0.05")), usd("0.02"), &[]);
        assert_eq!((plan.charged, plan.loss), (usd("0.02"), usd("0.03")));
    }
}
