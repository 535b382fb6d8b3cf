//! How many replicas a deployment should have: the scaling policy as a pure function of what
//! its replicas and its activator report over time. No clock and no I/O, so the same code
//! drives the live pool and a replay of a recorded trace on a simulated clock.
//!
//! Two policies share the machinery. `Kpa` is Knative's default autoscaler (average
//! concurrency over a 60 s stable and a 6 s panic window, 70 % of target, scale to zero 30 s
//! after the stable window empties). `LlmAware` is Ferry's: it sizes the pool on the average
//! of what the load asked for over its window, like KPA, but goes up at once, to what the
//! moment asks for, only when requests are actually waiting for a slot. An engine admits a
//! sequence only when its batch and its KV cache both have room, so "waiting" already counts
//! long prompts a replica cannot hold, and it does not count a burst that the running replicas
//! absorb. KPA's panic mode instead scales on the short window's concurrency, waiting or not,
//! and then holds those replicas for a whole stable window: on LLM traces, where one request
//! runs for seconds and a cold start takes tens of them, that is where its GPU-seconds go.
//! Measured as frontiers (GPU-seconds against p99 queueing delay) in BENCHMARKS.md.

use std::collections::VecDeque;

/// What a deployment reports at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Requests waiting for a replica: in the activator and in the workers' queues.
    pub queued: u32,
    /// Sequences being decoded.
    pub running: u32,
}

impl Load {
    fn concurrency(self) -> f64 {
        f64::from(self.queued) + f64::from(self.running)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// Knative's KPA: windowed average concurrency.
    Kpa,
    /// Ferry's: the window's average, and up at once while requests wait for a slot.
    LlmAware,
    /// As many replicas as allowed, always: the baseline a replay compares against.
    AlwaysOn,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalingConfig {
    pub kind: PolicyKind,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Sequences one replica is meant to serve at once (its batch, or KPA's concurrency
    /// target).
    pub target_per_replica: f64,
    /// The share of the target the policy aims for, leaving headroom for bursts.
    pub target_utilization: f64,
    /// The window scale-down decisions look back over.
    pub stable_window_ms: u64,
    /// KPA: the short window whose average triggers panic mode.
    pub panic_window_ms: u64,
    /// KPA: panic when the panic window wants this many times the ready replicas.
    pub panic_threshold: f64,
    /// How long the last replica stays after the deployment went idle.
    pub scale_to_zero_grace_ms: u64,
}

impl ScalingConfig {
    /// Knative's defaults around a concurrency target.
    pub fn kpa(target_per_replica: f64, max_replicas: u32) -> ScalingConfig {
        ScalingConfig {
            kind: PolicyKind::Kpa,
            min_replicas: 0,
            max_replicas,
            target_per_replica,
            target_utilization: 0.7,
            stable_window_ms: 60_000,
            panic_window_ms: 6_000,
            panic_threshold: 2.0,
            scale_to_zero_grace_ms: 30_000,
        }
    }

    /// Ferry's defaults: 80 % of the target and a 60 s window, the setting nearest its
    /// frontier on the traces it was tuned on with a p99 near a second on the conversation
    /// trace (`ferry pool replay --sweep`; see BENCHMARKS.md).
    pub fn llm_aware(target_per_replica: f64, max_replicas: u32) -> ScalingConfig {
        ScalingConfig {
            kind: PolicyKind::LlmAware,
            // Less headroom than KPA's 70 %: a waiting request brings replicas at once instead.
            target_utilization: 0.8,
            ..ScalingConfig::kpa(target_per_replica, max_replicas)
        }
    }

    pub fn always_on(replicas: u32) -> ScalingConfig {
        ScalingConfig {
            kind: PolicyKind::AlwaysOn,
            min_replicas: replicas,
            ..ScalingConfig::kpa(1.0, replicas)
        }
    }

    fn replicas_for(&self, concurrency: f64) -> u32 {
        let per_replica = (self.target_per_replica * self.target_utilization).max(f64::EPSILON);
        // Saturating float-to-int cast: a huge load asks for the most replicas, never wraps.
        (concurrency / per_replica).ceil() as u32
    }
}

/// Why the last decision came out as it did, for logs and replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// What the windowed load asks for.
    Load,
    /// Requests wait and there is no replica: start one now.
    ColdStart,
    /// KPA's panic mode: the short window wants far more than is ready; no scale-down.
    Panic,
    /// LLM-aware: requests wait for a slot; as many replicas as the moment asks for.
    Waiting,
    /// Idle, but within the grace period: the last replica stays.
    Grace,
    /// Held at the minimum or maximum.
    Bounds,
    /// A pre-warm hint asks for at least this many until it runs out.
    Prewarm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: Reason,
}

/// One deployment's autoscaler: feed it a `Load` every tick, in time order.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    config: ScalingConfig,
    /// (time, concurrency, replicas that load asked for), newest last, within the stable window.
    samples: VecDeque<(u64, f64, u32)>,
    panic_until_ms: Option<u64>,
    last_busy_ms: Option<u64>,
    desired: u32,
    /// (replicas, until): a pre-warm hint in force.
    prewarm: Option<(u32, u64)>,
}

impl Autoscaler {
    pub fn new(config: ScalingConfig) -> Autoscaler {
        Autoscaler {
            config,
            samples: VecDeque::new(),
            panic_until_ms: None,
            last_busy_ms: None,
            desired: config.min_replicas,
            prewarm: None,
        }
    }

    /// A hint that `replicas` will be needed until `until_ms` (a batch job, a launch, a
    /// known daily peak): they are started now, before any call waits for a cold start, and
    /// kept until then, within the deployment's bounds. A new hint replaces the last one.
    pub fn prewarm(&mut self, replicas: u32, until_ms: u64) {
        self.prewarm = Some((replicas, until_ms));
    }

    pub fn config(&self) -> &ScalingConfig {
        &self.config
    }

    /// The replicas wanted after observing `load` at `at_ms`, with `ready` replicas serving.
    pub fn observe(&mut self, at_ms: u64, ready: u32, load: Load) -> Decision {
        let config = self.config;
        let concurrency = load.concurrency();
        if concurrency > 0.0 {
            self.last_busy_ms = Some(at_ms);
        }
        self.samples
            .push_back((at_ms, concurrency, config.replicas_for(concurrency)));
        while self
            .samples
            .front()
            .is_some_and(|(at, _, _)| at_ms.saturating_sub(*at) > config.stable_window_ms)
        {
            self.samples.pop_front();
        }
        let (replicas, reason) = match config.kind {
            PolicyKind::AlwaysOn => (config.max_replicas, Reason::Bounds),
            PolicyKind::Kpa => self.kpa(at_ms, ready),
            PolicyKind::LlmAware => self.llm_aware(load),
        };
        let (replicas, reason) = self.keep_last_replica(at_ms, replicas, reason);
        let (replicas, reason) = match self.prewarm {
            Some((hinted, until)) if at_ms < until && hinted > replicas => {
                (hinted, Reason::Prewarm)
            }
            Some((_, until)) if at_ms >= until => {
                self.prewarm = None;
                (replicas, reason)
            }
            _ => (replicas, reason),
        };
        let (replicas, reason) = if replicas < config.min_replicas {
            (config.min_replicas, Reason::Bounds)
        } else if replicas > config.max_replicas {
            (config.max_replicas, Reason::Bounds)
        } else {
            (replicas, reason)
        };
        // Whoever waits with no replica ready needs one now, whatever the windows say.
        let (replicas, reason) = if ready == 0 && load.queued > 0 && config.max_replicas > 0 {
            (replicas.max(1), Reason::ColdStart)
        } else {
            (replicas, reason)
        };
        self.desired = replicas;
        Decision { replicas, reason }
    }

    fn average_since(&self, since_ms: u64) -> f64 {
        let recent: Vec<f64> = self
            .samples
            .iter()
            .filter(|(at, _, _)| *at >= since_ms)
            .map(|(_, concurrency, _)| *concurrency)
            .collect();
        if recent.is_empty() {
            return 0.0;
        }
        recent.iter().sum::<f64>() / recent.len() as f64
    }

    fn kpa(&mut self, at_ms: u64, ready: u32) -> (u32, Reason) {
        let config = self.config;
        let stable =
            config.replicas_for(self.average_since(at_ms.saturating_sub(config.stable_window_ms)));
        let panic =
            config.replicas_for(self.average_since(at_ms.saturating_sub(config.panic_window_ms)));
        if ready > 0 && f64::from(panic) / f64::from(ready) >= config.panic_threshold {
            self.panic_until_ms = Some(at_ms + config.stable_window_ms);
        }
        match self.panic_until_ms {
            Some(until) if at_ms < until => (panic.max(self.desired), Reason::Panic),
            _ => {
                self.panic_until_ms = None;
                (stable, Reason::Load)
            }
        }
    }

    fn llm_aware(&self, load: Load) -> (u32, Reason) {
        let asked = |sample: &(u64, f64, u32)| f64::from(sample.2);
        let average =
            self.samples.iter().map(asked).sum::<f64>() / self.samples.len().max(1) as f64;
        // Saturating float-to-int cast, as in `replicas_for`.
        let settled = average.ceil() as u32;
        let now = self.samples.back().map_or(0, |sample| sample.2);
        if load.queued > 0 && now > settled {
            return (now, Reason::Waiting);
        }
        (settled, Reason::Load)
    }

    /// Scale to zero only once the deployment has been idle for the grace period.
    fn keep_last_replica(&self, at_ms: u64, replicas: u32, reason: Reason) -> (u32, Reason) {
        if replicas > 0 || self.desired == 0 {
            return (replicas, reason);
        }
        let idle_since = self.last_busy_ms.unwrap_or(0);
        let window = match self.config.kind {
            // KPA's stable window has to empty first, then the grace runs.
            PolicyKind::Kpa => self.config.stable_window_ms,
            _ => 0,
        };
        if at_ms.saturating_sub(idle_since) < window + self.config.scale_to_zero_grace_ms {
            (1, Reason::Grace)
        } else {
            (0, reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(running: u32) -> Load {
        Load {
            running,
            ..Load::default()
        }
    }

    /// Feeds `load` every second from `from_ms` to `to_ms`; returns the last decision.
    fn hold(scaler: &mut Autoscaler, from_ms: u64, to_ms: u64, ready: u32, load: Load) -> Decision {
        let mut decision = None;
        let mut at = from_ms;
        while at <= to_ms {
            decision = Some(scaler.observe(at, ready, load));
            at += 1_000;
        }
        decision.expect("at least one tick")
    }

    #[test]
    fn kpa_aims_at_seventy_percent_of_the_target() {
        let mut kpa = Autoscaler::new(ScalingConfig::kpa(10.0, 10));
        assert_eq!(hold(&mut kpa, 0, 60_000, 1, busy(7)).replicas, 1);
        let mut kpa = Autoscaler::new(ScalingConfig::kpa(10.0, 10));
        assert_eq!(hold(&mut kpa, 0, 60_000, 2, busy(8)).replicas, 2);
    }

    #[test]
    fn kpa_panics_on_a_burst_and_does_not_scale_down_until_it_ends() {
        let mut kpa = Autoscaler::new(ScalingConfig::kpa(10.0, 20));
        hold(&mut kpa, 0, 60_000, 1, busy(5));
        let burst = hold(&mut kpa, 61_000, 66_000, 1, busy(50));
        assert_eq!(burst.reason, Reason::Panic);
        assert!(burst.replicas >= 7, "{burst:?}");
        // The burst is over, but panic mode holds the replicas for a stable window.
        let after = hold(&mut kpa, 67_000, 90_000, burst.replicas, busy(5));
        assert_eq!(after.replicas, burst.replicas);
        assert_eq!(after.reason, Reason::Panic);
        let settled = hold(&mut kpa, 91_000, 200_000, burst.replicas, busy(5));
        assert_eq!((settled.replicas, settled.reason), (1, Reason::Load));
    }

    #[test]
    fn kpa_scales_to_zero_after_its_window_empties_and_the_grace_runs() {
        let mut kpa = Autoscaler::new(ScalingConfig::kpa(10.0, 10));
        hold(&mut kpa, 0, 10_000, 1, busy(3));
        // Idle from 11 s: the window still averages some load until 70 s, then 30 s grace.
        assert_eq!(hold(&mut kpa, 11_000, 99_000, 1, busy(0)).replicas, 1);
        let zero = hold(&mut kpa, 100_000, 102_000, 1, busy(0));
        assert_eq!((zero.replicas, zero.reason), (0, Reason::Load));
    }

    #[test]
    fn a_request_at_zero_replicas_starts_one_at_once() {
        for config in [
            ScalingConfig::kpa(10.0, 4),
            ScalingConfig::llm_aware(10.0, 4),
        ] {
            let mut scaler = Autoscaler::new(config);
            assert_eq!(scaler.observe(0, 0, Load::default()).replicas, 0);
            let load = Load {
                queued: 1,
                ..Load::default()
            };
            assert_eq!(
                scaler.observe(1_000, 0, load),
                Decision {
                    replicas: 1,
                    reason: Reason::ColdStart
                },
                "{:?}",
                config.kind
            );
        }
    }

    fn waiting(queued: u32, running: u32) -> Load {
        Load { queued, running }
    }

    #[test]
    fn llm_aware_goes_up_at_once_only_while_requests_wait() {
        let mut ferry = Autoscaler::new(ScalingConfig::llm_aware(10.0, 8));
        hold(&mut ferry, 0, 60_000, 1, busy(5));
        // More running than the target, none waiting: the window's average moves, slowly.
        let absorbed = ferry.observe(61_000, 2, busy(17));
        assert_eq!((absorbed.replicas, absorbed.reason), (2, Reason::Load));
        // Requests wait for a slot: as many replicas as the moment asks for (9 a replica).
        let queue = ferry.observe(62_000, 2, waiting(20, 17));
        assert_eq!(
            queue,
            Decision {
                replicas: 5,
                reason: Reason::Waiting
            }
        );
    }

    #[test]
    fn llm_aware_lets_a_burst_go_sooner_than_kpa() {
        let (mut ferry, mut kpa) = (
            Autoscaler::new(ScalingConfig::llm_aware(10.0, 20)),
            Autoscaler::new(ScalingConfig::kpa(10.0, 20)),
        );
        for scaler in [&mut ferry, &mut kpa] {
            hold(scaler, 0, 60_000, 1, busy(5));
            hold(scaler, 61_000, 66_000, 1, waiting(40, 10));
        }
        // KPA's panic mode holds what the burst asked for a whole stable window; Ferry's
        // average lets most of it go as soon as nothing waits.
        let ferry_after = hold(&mut ferry, 67_000, 100_000, 6, busy(5));
        let kpa_after = hold(&mut kpa, 67_000, 100_000, 6, busy(5));
        assert!(ferry_after.replicas <= 2, "{ferry_after:?}");
        assert!(kpa_after.replicas >= 6, "{kpa_after:?}");
        let ferry_later = hold(&mut ferry, 101_000, 130_000, 2, busy(5));
        assert_eq!(ferry_later.replicas, 1, "{ferry_later:?}");
    }

    #[test]
    fn a_prewarm_hint_starts_replicas_before_the_load_and_lapses_after() {
        let mut ferry = Autoscaler::new(ScalingConfig::llm_aware(10.0, 4));
        ferry.prewarm(3, 10_000);
        let warm = ferry.observe(0, 0, Load::default());
        assert_eq!((warm.replicas, warm.reason), (3, Reason::Prewarm));
        let capped = {
            let mut small = Autoscaler::new(ScalingConfig::llm_aware(10.0, 2));
            small.prewarm(9, 10_000);
            small.observe(0, 0, Load::default())
        };
        assert_eq!(capped.replicas, 2, "within the bounds");
        // More load than the hint: the load wins.
        assert_eq!(ferry.observe(1_000, 3, waiting(30, 10)).replicas, 4);
        // The hint lapses; idle after it, the pool returns to zero once the windows allow.
        let after = hold(&mut ferry, 10_000, 200_000, 3, Load::default());
        assert_eq!(after.replicas, 0, "{after:?}");
    }

    #[test]
    fn bounds_and_always_on_hold() {
        let mut capped = Autoscaler::new(ScalingConfig::llm_aware(1.0, 3));
        let decision = capped.observe(0, 1, busy(100));
        assert_eq!((decision.replicas, decision.reason), (3, Reason::Bounds));
        let mut floor = Autoscaler::new(ScalingConfig {
            min_replicas: 2,
            ..ScalingConfig::llm_aware(10.0, 5)
        });
        assert_eq!(floor.observe(0, 2, Load::default()).replicas, 2);
        let mut always = Autoscaler::new(ScalingConfig::always_on(4));
        assert_eq!(always.observe(0, 0, Load::default()).replicas, 4);
    }
}
