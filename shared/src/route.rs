//! Routing past failures: which deployment a call tries first, what happens after an attempt
//! fails, and each deployment's circuit breaker. All of it is pure: the caller brings the
//! time, the random rolls and the breakers' verdicts, so every rule has a table test.
//!
//! The model, as the README states it:
//! - A call's first attempt goes to a deployment chosen by weight among those taking traffic
//!   (weight above 0, breaker not open). If the pick's breaker is open, the weighted choice is
//!   made again among the rest (a *detour*); with none left, the first fallback whose breaker
//!   is not open takes the call.
//! - After a retryable failure (the backend could not be reached, did not produce a first byte
//!   within the attempt's time, answered 429 or 5xx), the call is tried again, up to
//!   `retries` more times in all. Each retry goes to the first deployment of the route (the
//!   fallbacks, in order) that is not open and not yet tried, at once; with every one tried,
//!   it goes round again after a jittered exponential backoff, and never before a 429's
//!   `Retry-After`. A wait longer than `backoff_max_ms`, or past the call's deadline, is not
//!   taken. A failure of the deployment itself that waiting would not mend (it refused
//!   Ferry's credentials, does not know the model, broke the protocol) is tried elsewhere,
//!   never on that deployment again.
//! - Nothing is retried once a byte of the answer has reached the caller.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::model::{Deployment, ModelSpec};

/// How a model's calls survive failing deployments. Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoutePolicy {
    /// Deployment ids tried in this order after the weighted choice fails. A fallback with
    /// weight 0 takes no traffic of its own: a standby.
    pub fallbacks: Vec<String>,
    /// Attempts after the first, fallbacks included (default 2, at most 10).
    pub retries: u32,
    /// How long one attempt may take to produce its first byte (the whole answer, when not
    /// streamed) before the next is tried; none: the call's own limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub try_timeout_ms: Option<u64>,
    /// The first backoff before a deployment is tried again; doubled each time (default 100).
    pub backoff_base_ms: u64,
    /// The longest wait before a retry, `Retry-After` included (default 2000).
    pub backoff_max_ms: u64,
    pub breaker: BreakerPolicy,
}

impl Default for RoutePolicy {
    fn default() -> RoutePolicy {
        RoutePolicy {
            fallbacks: Vec::new(),
            retries: 2,
            try_timeout_ms: None,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            breaker: BreakerPolicy::default(),
        }
    }
}

/// When a deployment's breaker opens, and how it closes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BreakerPolicy {
    /// Opens when at least this share of the window's attempts failed (default 50).
    pub error_percent: u8,
    /// The sliding window the share is taken over (default 60000).
    pub window_ms: u64,
    /// Fewer attempts than this in the window never open it (default 10).
    pub min_calls: u32,
    /// How long it stays open before letting probes through (default 30000).
    pub open_ms: u64,
    /// Calls let through at once while half-open; one success closes it, one failure opens
    /// it again (default 1).
    pub probes: u32,
}

impl Default for BreakerPolicy {
    fn default() -> BreakerPolicy {
        BreakerPolicy {
            error_percent: 50,
            window_ms: 60_000,
            min_calls: 10,
            open_ms: 30_000,
            probes: 1,
        }
    }
}

pub const MAX_RETRIES: u32 = 10;

impl RoutePolicy {
    /// Checks the policy against the model's deployments; `prefix` is its path in the request.
    pub fn validate(&self, deployments: &[Deployment], prefix: &str) -> Result<(), ApiError> {
        for (index, fallback) in self.fallbacks.iter().enumerate() {
            let param = format!("{prefix}fallbacks[{index}]");
            if !deployments
                .iter()
                .any(|deployment| &deployment.id == fallback)
            {
                return Err(ApiError::invalid(
                    param,
                    format!("`{fallback}` is not a deployment of this model"),
                ));
            }
            if self.fallbacks[..index].contains(fallback) {
                return Err(ApiError::invalid(param, "fallbacks must not repeat"));
            }
        }
        if self.retries > MAX_RETRIES {
            return Err(ApiError::invalid(
                format!("{prefix}retries"),
                format!("retries must be at most {MAX_RETRIES}"),
            ));
        }
        if self.try_timeout_ms == Some(0) {
            return Err(ApiError::invalid(
                format!("{prefix}try_timeout_ms"),
                "try_timeout_ms must be above 0",
            ));
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err(ApiError::invalid(
                format!("{prefix}backoff_max_ms"),
                "backoff_max_ms must not be below backoff_base_ms",
            ));
        }
        let breaker = &self.breaker;
        let checks = [
            (
                "error_percent",
                (1..=100).contains(&breaker.error_percent),
                "from 1 to 100",
            ),
            ("window_ms", breaker.window_ms >= 10, "at least 10"),
            ("min_calls", breaker.min_calls >= 1, "at least 1"),
            ("open_ms", breaker.open_ms >= 1, "at least 1"),
            ("probes", breaker.probes >= 1, "at least 1"),
        ];
        match checks.iter().find(|(_, ok, _)| !ok) {
            Some((field, _, range)) => Err(ApiError::invalid(
                format!("{prefix}breaker.{field}"),
                format!("breaker.{field} must be {range}"),
            )),
            None => Ok(()),
        }
    }

    /// The wait before deployment's `tries`-th retry: exponential from `backoff_base_ms`,
    /// capped at `backoff_max_ms`, with the upper half jittered by `roll` ("equal jitter"), so
    /// callers that failed together do not come back together.
    pub fn backoff_ms(&self, tries: u32, roll: u64) -> u64 {
        let doubling = tries.saturating_sub(1).min(32);
        let full = self
            .backoff_base_ms
            .saturating_mul(1u64 << doubling)
            .min(self.backoff_max_ms);
        let half = full / 2;
        half + roll % (full - half + 1)
    }
}

/// Why an attempt went to its deployment; recorded on the call's usage event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Chosen by weight.
    Weighted,
    /// Chosen by weight among the rest, the first pick's breaker being open.
    Detour,
    /// A fallback, after a failure or with every weighted deployment open.
    Fallback,
    /// A deployment tried before, tried again.
    Retry,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Weighted => "weighted",
            Reason::Detour => "detour",
            Reason::Fallback => "fallback",
            Reason::Retry => "retry",
        }
    }
}

/// No deployment of the model may take a call now: every one is drained or its breaker open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    /// When the first breaker lets a probe through; none: nothing takes traffic at all.
    pub retry_after_ms: Option<u64>,
}

/// A deployment's breaker verdict, as the planner needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Open (or half-open with every probe taken) for at least this long.
    OpenFor(u64),
}

/// The deployments a call may try, in order: its first pick, then the fallbacks.
#[derive(Debug, Clone)]
pub struct Route<'a> {
    candidates: Vec<&'a Deployment>,
    first_reason: Reason,
    policy: RoutePolicy,
    tries: Vec<u32>,
    not_before_ms: Vec<u64>,
    /// Deployments this call will not try again.
    given_up: Vec<bool>,
    current: usize,
    attempts: u32,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next<'a> {
    Try {
        deployment: &'a Deployment,
        reason: Reason,
        wait_ms: u64,
    },
    GiveUp,
}

/// What may recover a failed attempt, as the retry rule sees it: another try, a try elsewhere,
/// or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Worth another attempt; a 429 may say how long this deployment wants left alone.
    Retryable { retry_after_ms: Option<u64> },
    /// Worth an attempt at another deployment, never this one again.
    Elsewhere,
    /// The request itself is at fault, or the answer had begun: no retry.
    Final,
}

impl<'a> Route<'a> {
    /// Plans a call over `spec`'s deployments. `roll` is any random number (the same roll
    /// gives the same plan); `availability` is each deployment's breaker.
    pub fn plan(
        spec: &'a ModelSpec,
        roll: u64,
        availability: impl Fn(&Deployment) -> Availability,
    ) -> Result<Route<'a>, Unavailable> {
        let policy = spec.route.clone().unwrap_or_default();
        let open_for = |deployment: &Deployment| match availability(deployment) {
            Availability::Available => None,
            Availability::OpenFor(ms) => Some(ms),
        };
        let weighted = |allowed: &dyn Fn(&Deployment) -> bool| {
            let total: u64 = spec
                .deployments
                .iter()
                .filter(|deployment| allowed(deployment))
                .map(|deployment| u64::from(deployment.weight))
                .sum();
            if total == 0 {
                return None;
            }
            let mut point = roll % total;
            spec.deployments
                .iter()
                .filter(|deployment| allowed(deployment))
                .find(|deployment| {
                    let weight = u64::from(deployment.weight);
                    if point < weight {
                        return true;
                    }
                    point -= weight;
                    false
                })
        };
        let first_pick = weighted(&|_| true);
        let (first, first_reason) = match first_pick {
            Some(pick) if open_for(pick).is_none() => (pick, Reason::Weighted),
            _ => match weighted(&|deployment| open_for(deployment).is_none()) {
                Some(pick) => (pick, Reason::Detour),
                None => {
                    let fallback = policy.fallbacks.iter().find_map(|id| {
                        spec.deployments
                            .iter()
                            .find(|deployment| &deployment.id == id)
                            .filter(|deployment| open_for(deployment).is_none())
                    });
                    match fallback {
                        Some(fallback) => (fallback, Reason::Fallback),
                        None => {
                            let taking = spec.deployments.iter().filter(|deployment| {
                                deployment.weight > 0 || policy.fallbacks.contains(&deployment.id)
                            });
                            return Err(Unavailable {
                                retry_after_ms: taking.filter_map(open_for).min(),
                            });
                        }
                    }
                }
            },
        };
        let mut candidates = vec![first];
        for id in &policy.fallbacks {
            if let Some(deployment) = spec.deployments.iter().find(|d| &d.id == id)
                && deployment.id != first.id
            {
                candidates.push(deployment);
            }
        }
        let count = candidates.len();
        Ok(Route {
            candidates,
            first_reason,
            policy,
            tries: vec![0; count],
            not_before_ms: vec![0; count],
            given_up: vec![false; count],
            current: 0,
            attempts: 0,
        })
    }

    /// The route of a call that a kept answer of `deployment` will serve while none of the
    /// model's deployments takes calls: planned as if that one alone were taking them, so it
    /// is recorded as routed there. No backend is called on it.
    pub fn onto(
        spec: &'a ModelSpec,
        deployment: &str,
        roll: u64,
    ) -> Result<Route<'a>, Unavailable> {
        Route::plan(spec, roll, |candidate| {
            if candidate.id == deployment {
                Availability::Available
            } else {
                Availability::OpenFor(1)
            }
        })
    }

    pub fn policy(&self) -> &RoutePolicy {
        &self.policy
    }

    /// Every deployment the call may end up on, the first pick first.
    pub fn candidates(&self) -> &[&'a Deployment] {
        &self.candidates
    }

    /// The first attempt.
    pub fn first(&mut self) -> (&'a Deployment, Reason) {
        self.attempts = 1;
        self.current = 0;
        self.tries[0] = 1;
        (self.candidates[0], self.first_reason)
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// After the current attempt failed at `now_ms`: the next attempt, or give up. `roll` jitters
    /// the backoff; `available` says whether a deployment's breaker lets a call through now;
    /// `deadline_ms` is when the whole call must be over.
    pub fn after_failure(
        &mut self,
        failure: Recovery,
        now_ms: u64,
        deadline_ms: u64,
        roll: u64,
        available: impl Fn(&Deployment) -> bool,
    ) -> Next<'a> {
        match failure {
            Recovery::Final => return Next::GiveUp,
            Recovery::Elsewhere => self.given_up[self.current] = true,
            Recovery::Retryable {
                retry_after_ms: Some(wait),
            } => self.not_before_ms[self.current] = now_ms.saturating_add(wait),
            Recovery::Retryable {
                retry_after_ms: None,
            } => {}
        }
        if self.attempts > self.policy.retries {
            return Next::GiveUp;
        }
        let count = self.candidates.len();
        // Deployments not yet tried come first, in the route's order; then round again from
        // the one after the current.
        let untried = (0..count).filter(|&index| self.tries[index] == 0);
        let tried = (1..=count)
            .map(|step| (self.current + step) % count)
            .filter(|&index| self.tries[index] > 0);
        for index in untried.chain(tried) {
            let deployment = self.candidates[index];
            if self.given_up[index] || !available(deployment) {
                continue;
            }
            let tries = self.tries[index];
            let backoff = if tries == 0 {
                0
            } else {
                self.policy.backoff_ms(tries, roll)
            };
            let wait_ms = backoff.max(self.not_before_ms[index].saturating_sub(now_ms));
            if wait_ms > self.policy.backoff_max_ms || now_ms.saturating_add(wait_ms) >= deadline_ms
            {
                continue;
            }
            self.current = index;
            self.tries[index] += 1;
            self.attempts += 1;
            let reason = if tries == 0 {
                Reason::Fallback
            } else {
                Reason::Retry
            };
            return Next::Try {
                deployment,
                reason,
                wait_ms,
            };
        }
        Next::GiveUp
    }
}

/// A deployment's circuit breaker: closed (counting outcomes over a sliding window), open
/// (refusing calls until `open_ms` has passed) or half-open (letting `probes` calls through;
/// one success closes it, one failure opens it again).
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    state: BreakerState,
    window: [WindowSlot; WINDOW_SLOTS],
    /// Counts half-open spells: a probe's verdict counts only in the spell it was let through.
    spell: u64,
}

const WINDOW_SLOTS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct WindowSlot {
    /// Which slot-wide stretch of time (`now / slot width`) the counts are for.
    epoch: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BreakerState {
    #[default]
    Closed,
    Open {
        until_ms: u64,
    },
    HalfOpen {
        probing: u32,
    },
}

impl BreakerState {
    /// For metrics: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen { .. } => 1,
            BreakerState::Open { .. } => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen { .. } => "half_open",
            BreakerState::Open { .. } => "open",
        }
    }
}

/// What a breaker let through; hand it back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Call,
    /// A probe of the given half-open spell.
    Probe(u64),
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call would be let through at `now_ms`, without taking a permit.
    pub fn availability(&self, policy: &BreakerPolicy, now_ms: u64) -> Availability {
        match self.state {
            BreakerState::Open { until_ms } if now_ms < until_ms => {
                Availability::OpenFor(until_ms - now_ms)
            }
            // A probe is out: the next verdict comes with it, within an attempt's time.
            BreakerState::HalfOpen { probing } if probing >= policy.probes => {
                Availability::OpenFor(policy.open_ms.min(1_000))
            }
            _ => Availability::Available,
        }
    }

    /// Lets a call through, or says for how long none will be.
    pub fn acquire(&mut self, policy: &BreakerPolicy, now_ms: u64) -> Result<Permit, u64> {
        if let Availability::OpenFor(ms) = self.availability(policy, now_ms) {
            return Err(ms);
        }
        match &mut self.state {
            BreakerState::Closed => Ok(Permit::Call),
            BreakerState::Open { .. } => {
                self.spell += 1;
                self.state = BreakerState::HalfOpen { probing: 1 };
                Ok(Permit::Probe(self.spell))
            }
            BreakerState::HalfOpen { probing } => {
                *probing += 1;
                Ok(Permit::Probe(self.spell))
            }
        }
    }

    /// The outcome of a call `permit` let through: `ok` unless the deployment failed it.
    pub fn record(&mut self, policy: &BreakerPolicy, now_ms: u64, permit: Permit, ok: bool) {
        match (permit, self.state) {
            (Permit::Probe(spell), BreakerState::HalfOpen { .. }) if spell == self.spell => {
                self.state = if ok {
                    self.window = Default::default();
                    BreakerState::Closed
                } else {
                    BreakerState::Open {
                        until_ms: now_ms.saturating_add(policy.open_ms),
                    }
                };
            }
            (Permit::Call, BreakerState::Closed) => {
                let width = (policy.window_ms / WINDOW_SLOTS as u64).max(1);
                let epoch = now_ms / width;
                let slot = &mut self.window[(epoch % WINDOW_SLOTS as u64) as usize];
                if slot.epoch != epoch {
                    *slot = WindowSlot {
                        epoch,
                        calls: 0,
                        failures: 0,
                    };
                }
                slot.calls += 1;
                slot.failures += u32::from(!ok);
                let recent = self
                    .window
                    .iter()
                    .filter(|slot| slot.epoch + WINDOW_SLOTS as u64 > epoch && slot.calls > 0);
                let (calls, failures) = recent.fold((0u64, 0u64), |(calls, failures), slot| {
                    (
                        calls + u64::from(slot.calls),
                        failures + u64::from(slot.failures),
                    )
                });
                if calls >= u64::from(policy.min_calls)
                    && failures * 100 >= u64::from(policy.error_percent) * calls
                {
                    self.window = Default::default();
                    self.state = BreakerState::Open {
                        until_ms: now_ms.saturating_add(policy.open_ms),
                    };
                }
            }
            // Calls let through before the breaker changed state: their verdict is stale.
            _ => {}
        }
    }

    /// A permit given back without a verdict (the caller left first).
    pub fn release(&mut self, permit: Permit) {
        if let (Permit::Probe(spell), BreakerState::HalfOpen { probing }) =
            (permit, &mut self.state)
            && spell == self.spell
        {
            *probing = probing.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(id: &str, weight: u32) -> serde_json::Value {
        json!({"id": id, "upstream": {"url": "http://127.0.0.1:1/v1", "model": "m"}, "weight": weight})
    }

    fn spec(deployments: Vec<serde_json::Value>, route: serde_json::Value) -> ModelSpec {
        serde_json::from_value(json!({"id": "m", "deployments": deployments, "route": route}))
            .unwrap()
    }

    fn all_available(_: &Deployment) -> Availability {
        Availability::Available
    }

    fn ids(route: &Route<'_>) -> Vec<String> {
        route.candidates().iter().map(|d| d.id.clone()).collect()
    }

    const RETRYABLE: Recovery = Recovery::Retryable {
        retry_after_ms: None,
    };

    #[test]
    fn the_first_pick_is_weighted_and_the_fallbacks_follow_in_order() {
        let model = spec(
            vec![
                deployment("a", 1),
                deployment("b", 3),
                deployment("standby", 0),
            ],
            json!({"fallbacks": ["standby", "a"]}),
        );
        let firsts: Vec<&str> = (0..4)
            .map(|roll| {
                let mut route = Route::plan(&model, roll, all_available).unwrap();
                route.first().0.id.as_str()
            })
            .collect();
        assert_eq!(firsts, ["a", "b", "b", "b"]);
        assert_eq!(
            ids(&Route::plan(&model, 1, all_available).unwrap()),
            ["b", "standby", "a"]
        );
        // The first pick is not tried twice in a row as its own fallback.
        assert_eq!(
            ids(&Route::plan(&model, 0, all_available).unwrap()),
            ["a", "standby"]
        );
    }

    #[test]
    fn an_open_breaker_detours_to_the_rest_then_to_the_fallbacks_then_refuses() {
        let model = spec(
            vec![
                deployment("a", 1),
                deployment("b", 1),
                deployment("standby", 0),
            ],
            json!({"fallbacks": ["standby"]}),
        );
        let open = |closed: &'static [&'static str]| {
            move |deployment: &Deployment| {
                if closed.contains(&deployment.id.as_str()) {
                    Availability::Available
                } else {
                    Availability::OpenFor(if deployment.id == "a" { 700 } else { 300 })
                }
            }
        };
        let mut route = Route::plan(&model, 0, open(&["b", "standby"])).unwrap();
        assert_eq!(route.first(), (route.candidates()[0], Reason::Detour));
        assert_eq!(route.candidates()[0].id, "b");
        let mut route = Route::plan(&model, 0, open(&["standby"])).unwrap();
        assert_eq!(route.first().1, Reason::Fallback);
        assert_eq!(ids(&route), ["standby"]);
        assert_eq!(
            Route::plan(&model, 0, open(&[])).unwrap_err(),
            Unavailable {
                retry_after_ms: Some(300)
            }
        );
    }

    #[test]
    fn retries_walk_the_fallbacks_then_come_back_after_a_backoff() {
        let model = spec(
            vec![deployment("a", 1), deployment("b", 0)],
            json!({"fallbacks": ["b"], "retries": 3, "backoff_base_ms": 100, "backoff_max_ms": 1000}),
        );
        let mut route = Route::plan(&model, 0, all_available).unwrap();
        assert_eq!(route.first().0.id, "a");
        let mut steps = Vec::new();
        for _ in 0..4 {
            match route.after_failure(RETRYABLE, 0, 60_000, 0, |_| true) {
                Next::Try {
                    deployment,
                    reason,
                    wait_ms,
                } => steps.push((deployment.id.clone(), reason, wait_ms)),
                Next::GiveUp => steps.push(("give up".into(), Reason::Retry, 0)),
            }
        }
        assert_eq!(
            steps,
            [
                ("b".to_owned(), Reason::Fallback, 0),
                // Jitter 0 waits half the exponential step: 100 ms, then 100 ms for b.
                ("a".to_owned(), Reason::Retry, 50),
                ("b".to_owned(), Reason::Retry, 50),
                ("give up".to_owned(), Reason::Retry, 0),
            ]
        );
        assert_eq!(route.attempts(), 4);
    }

    #[test]
    fn a_deployment_that_failed_itself_is_tried_elsewhere_never_again() {
        let model = spec(
            vec![deployment("a", 1), deployment("b", 0)],
            json!({"fallbacks": ["b"], "retries": 5}),
        );
        let mut route = Route::plan(&model, 0, all_available).unwrap();
        route.first();
        let next = route.after_failure(Recovery::Elsewhere, 0, 60_000, 0, |_| true);
        assert!(matches!(next, Next::Try { deployment, .. } if deployment.id == "b"));
        // b fails too (retryably): it is retried, a never again.
        for _ in 0..4 {
            let next = route.after_failure(RETRYABLE, 0, 60_000, 0, |_| true);
            assert!(
                matches!(next, Next::Try { deployment, reason: Reason::Retry, .. } if deployment.id == "b")
            );
        }
        assert_eq!(
            route.after_failure(RETRYABLE, 0, 60_000, 0, |_| true),
            Next::GiveUp
        );
    }

    #[test]
    fn a_fallback_skipped_while_open_is_tried_before_going_round_again() {
        let model = spec(
            vec![deployment("p", 1), deployment("f1", 0), deployment("f2", 0)],
            json!({"fallbacks": ["f1", "f2"], "retries": 3}),
        );
        let mut route = Route::plan(&model, 0, all_available).unwrap();
        route.first();
        let next = route.after_failure(RETRYABLE, 0, 60_000, 0, |d| d.id != "f1");
        assert!(matches!(next, Next::Try { deployment, .. } if deployment.id == "f2"));
        // f1's breaker has closed again: untried, it comes before p's retry.
        let next = route.after_failure(RETRYABLE, 0, 60_000, 0, |_| true);
        assert!(
            matches!(next, Next::Try { deployment, reason: Reason::Fallback, wait_ms: 0 } if deployment.id == "f1")
        );
    }

    #[test]
    fn a_final_failure_is_never_retried() {
        let model = spec(vec![deployment("a", 1)], json!({"retries": 5}));
        let mut route = Route::plan(&model, 0, all_available).unwrap();
        route.first();
        assert_eq!(
            route.after_failure(Recovery::Final, 0, 60_000, 0, |_| true),
            Next::GiveUp
        );
    }

    #[test]
    fn retry_after_is_honoured_within_the_longest_backoff_and_the_deadline() {
        let model = spec(
            vec![deployment("a", 1)],
            json!({"retries": 2, "backoff_base_ms": 100, "backoff_max_ms": 2000}),
        );
        let after = |retry_after_ms: u64, deadline_ms: u64| {
            let mut route = Route::plan(&model, 0, all_available).unwrap();
            route.first();
            route.after_failure(
                Recovery::Retryable {
                    retry_after_ms: Some(retry_after_ms),
                },
                1_000,
                deadline_ms,
                0,
                |_| true,
            )
        };
        assert!(matches!(
            after(1_000, 60_000),
            Next::Try { wait_ms: 1_000, .. }
        ));
        assert_eq!(
            after(5_000, 60_000),
            Next::GiveUp,
            "longer than backoff_max_ms"
        );
        assert_eq!(
            after(1_000, 1_500),
            Next::GiveUp,
            "past the call's deadline"
        );
        assert!(
            matches!(after(10, 60_000), Next::Try { wait_ms: 50, .. }),
            "backoff still applies"
        );
    }

    #[test]
    fn a_retry_skips_a_deployment_whose_breaker_opened() {
        let model = spec(
            vec![deployment("a", 1), deployment("b", 0), deployment("c", 0)],
            json!({"fallbacks": ["b", "c"]}),
        );
        let mut route = Route::plan(&model, 0, all_available).unwrap();
        route.first();
        let next = route.after_failure(RETRYABLE, 0, 60_000, 0, |d| d.id != "b");
        assert!(
            matches!(next, Next::Try { deployment, reason: Reason::Fallback, wait_ms: 0 } if deployment.id == "c")
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_in_its_upper_half() {
        let policy = RoutePolicy {
            backoff_base_ms: 100,
            backoff_max_ms: 1_000,
            ..RoutePolicy::default()
        };
        for roll in [0, 7, 99, u64::MAX] {
            for (tries, full) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (4, 800),
                (5, 1_000),
                (60, 1_000),
            ] {
                let wait = policy.backoff_ms(tries, roll);
                assert!((full / 2..=full).contains(&wait), "{tries} {roll} {wait}");
            }
        }
        assert_ne!(policy.backoff_ms(3, 1), policy.backoff_ms(3, 2));
    }

    #[test]
    fn validation_names_the_bad_route_field() {
        let deployments: Vec<Deployment> =
            serde_json::from_value(json!([deployment("a", 1), deployment("b", 0)])).unwrap();
        let cases = [
            (json!({}), None),
            (json!({"fallbacks": ["b"]}), None),
            (json!({"fallbacks": ["z"]}), Some("route.fallbacks[0]")),
            (json!({"fallbacks": ["b", "b"]}), Some("route.fallbacks[1]")),
            (json!({"retries": 11}), Some("route.retries")),
            (json!({"try_timeout_ms": 0}), Some("route.try_timeout_ms")),
            (
                json!({"backoff_base_ms": 10, "backoff_max_ms": 5}),
                Some("route.backoff_max_ms"),
            ),
            (
                json!({"breaker": {"error_percent": 0}}),
                Some("route.breaker.error_percent"),
            ),
            (
                json!({"breaker": {"probes": 0}}),
                Some("route.breaker.probes"),
            ),
        ];
        for (value, expected) in cases {
            let policy: RoutePolicy = serde_json::from_value(value.clone()).unwrap();
            let result = policy.validate(&deployments, "route.");
            assert_eq!(
                result.err().and_then(|e| e.param).as_deref(),
                expected,
                "{value}"
            );
        }
    }

    fn breaker_policy() -> BreakerPolicy {
        BreakerPolicy {
            error_percent: 50,
            window_ms: 1_000,
            min_calls: 4,
            open_ms: 500,
            probes: 1,
        }
    }

    #[test]
    fn the_breaker_opens_at_the_error_share_once_enough_calls_were_seen() {
        let policy = breaker_policy();
        let mut breaker = Breaker::default();
        for (at, ok) in [(0, false), (10, false), (20, false)] {
            let permit = breaker.acquire(&policy, at).unwrap();
            breaker.record(&policy, at, permit, ok);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "3 calls: too few to judge"
        );
        let permit = breaker.acquire(&policy, 30).unwrap();
        breaker.record(&policy, 30, permit, true);
        assert_eq!(
            breaker.state(),
            BreakerState::Open { until_ms: 530 },
            "3 of 4 failed"
        );
        assert_eq!(breaker.acquire(&policy, 100), Err(430));
        assert_eq!(
            breaker.availability(&policy, 100),
            Availability::OpenFor(430)
        );
    }

    #[test]
    fn failures_outside_the_window_are_forgotten() {
        let policy = breaker_policy();
        let mut breaker = Breaker::default();
        for at in [0, 10, 20] {
            breaker.record(&policy, at, Permit::Call, false);
        }
        // A full window later, the old failures no longer count.
        for at in [1_100, 1_110, 1_120, 1_130] {
            breaker.record(&policy, at, Permit::Call, at != 1_100);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_lets_one_probe_through_which_closes_or_reopens_it() {
        let policy = breaker_policy();
        let open = || {
            let mut breaker = Breaker::default();
            for at in 0..4 {
                breaker.record(&policy, at, Permit::Call, false);
            }
            breaker
        };
        let mut breaker = open();
        assert_eq!(breaker.acquire(&policy, 503), Ok(Permit::Probe(1)));
        assert!(
            breaker.acquire(&policy, 504).is_err(),
            "one probe at a time"
        );
        breaker.record(&policy, 600, Permit::Probe(1), true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.acquire(&policy, 601), Ok(Permit::Call));

        let mut breaker = open();
        let probe = breaker.acquire(&policy, 503).unwrap();
        breaker.record(&policy, 700, probe, false);
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 1_200 });

        // A probe given back without a verdict frees its place.
        let mut breaker = open();
        let probe = breaker.acquire(&policy, 503).unwrap();
        breaker.release(probe);
        assert_eq!(breaker.acquire(&policy, 504), Ok(Permit::Probe(1)));
    }

    #[test]
    fn a_probe_from_an_earlier_half_open_spell_has_no_say() {
        let policy = BreakerPolicy {
            probes: 2,
            ..breaker_policy()
        };
        let mut breaker = Breaker::default();
        for at in 0..4 {
            breaker.record(&policy, at, Permit::Call, false);
        }
        let slow = breaker.acquire(&policy, 503).unwrap();
        let fast = breaker.acquire(&policy, 503).unwrap();
        breaker.record(&policy, 510, fast, false);
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 1_010 });
        let probe = breaker.acquire(&policy, 1_010).unwrap();
        assert_eq!(probe, Permit::Probe(2));
        // The first spell's slow probe ends now: it neither closes the breaker nor frees a
        // place among this spell's probes.
        breaker.record(&policy, 1_020, slow, true);
        breaker.release(slow);
        assert_eq!(breaker.state(), BreakerState::HalfOpen { probing: 1 });
    }

    #[test]
    fn verdicts_of_calls_from_before_a_state_change_are_ignored() {
        let policy = breaker_policy();
        let mut breaker = Breaker::default();
        for at in 0..4 {
            breaker.record(&policy, at, Permit::Call, false);
        }
        // A call let through while closed ends after the breaker opened: it neither closes
        // nor re-opens it.
        breaker.record(&policy, 10, Permit::Call, true);
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 503 });
    }
}
