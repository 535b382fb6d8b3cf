//! Replays a request trace through an autoscaling policy on a simulated clock: what the pool
//! would have cost (GPU-seconds, cold starts) and what callers would have waited (queueing
//! delay, drops). The policy is the real `autoscale::Autoscaler`; the replicas are a capacity
//! model: each serves up to `max_batch` sequences at once whose contexts (prompt and output)
//! fit its KV cache together, as a paged-attention engine admits them (a request longer than
//! the cache runs alone); a sequence takes its prompt at `prefill_tokens_per_s` and generates
//! at `decode_tokens_per_s`, and a new replica is ready `cold_start_ms` after it is asked for.

mod frontier;
mod trace;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::autoscale::{Autoscaler, Load, ScalingConfig};

pub use frontier::{Comparison, Knobs, SweepPoint, compare, frontier, sweep};
pub use trace::{TimeUnit, TraceError, parse_trace};

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRequest {
    /// Milliseconds from the start of the trace.
    pub arrival_ms: u64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub max_batch: u32,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// Tokens of context one replica's KV cache holds.
    pub kv_tokens: u64,
    pub cold_start_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivatorLimits {
    /// Requests that may wait for a replica; more are dropped (503).
    pub max_queue: usize,
    /// A request that waited this long is dropped (503).
    pub deadline_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub gpu_seconds: f64,
    pub cold_starts: u32,
    pub most_replicas: u32,
    pub served: usize,
    pub dropped: usize,
    pub queue_p50_ms: u64,
    pub queue_p99_ms: u64,
}

/// How often the autoscaler looks.
const TICK_MS: u64 = 1_000;

struct Replica {
    started_ms: u64,
    ready_at_ms: u64,
    /// Per running sequence: (finish time, its context tokens).
    running: Vec<(u64, u64)>,
    draining: bool,
}

impl Replica {
    fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.ready_at_ms && !self.draining
    }

    fn kv_tokens(&self) -> u64 {
        self.running.iter().map(|(_, tokens)| *tokens).sum()
    }

    /// Whether a sequence of `context` tokens can start here now.
    fn admits(&self, context: u64, capacity: &Capacity) -> bool {
        self.running.is_empty()
            || (self.running.len() < capacity.max_batch as usize
                && self.kv_tokens() + context <= capacity.kv_tokens)
    }
}

fn service_ms(request: &TraceRequest, capacity: &Capacity) -> u64 {
    let seconds = request.prompt_tokens as f64 / capacity.prefill_tokens_per_s.max(f64::EPSILON)
        + request.output_tokens as f64 / capacity.decode_tokens_per_s.max(f64::EPSILON);
    (seconds * 1000.0).ceil() as u64
}

/// The fewest GPU-seconds any policy could spend on `trace`: its work perfectly packed, with no
/// replica ever idle and none starting cold. A replica's batch slots and its KV cache are each
/// a budget every running sequence draws on (a sequence longer than the cache has a replica to
/// itself), so the pool's GPU-seconds are at least each budget's total draw. How far a
/// policy's frontier sits above this says how much any policy could still save.
pub fn work_bound_gpu_seconds(trace: &[TraceRequest], capacity: &Capacity) -> f64 {
    let (mut slot_ms, mut kv_ms) = (0.0, 0.0);
    for request in trace {
        let service = service_ms(request, capacity) as f64;
        let context = request.prompt_tokens + request.output_tokens;
        slot_ms += service / f64::from(capacity.max_batch.max(1));
        kv_ms += if context > capacity.kv_tokens {
            service
        } else {
            service * context as f64 / capacity.kv_tokens.max(1) as f64
        };
    }
    f64::max(slot_ms, kv_ms) / 1000.0
}

/// Runs `trace` (sorted by arrival) to completion under `config`.
pub fn replay(
    trace: &[TraceRequest],
    config: ScalingConfig,
    capacity: Capacity,
    limits: ActivatorLimits,
) -> Outcome {
    let mut run = Simulation::new(trace, config, capacity, limits);
    loop {
        // Run on after the trace until the policy has scaled in as far as it will.
        if run.is_over() {
            break;
        }
        run.now_ms = run.next_event().max(run.now_ms);
        run.finish_due();
        run.arrive();
        run.expire_waiting();
        run.dispatch();
        if run.now_ms >= run.next_tick {
            run.tick();
        }
    }
    run.outcome()
}

/// The simulated pool, its queue and clock, and what has happened so far.
struct Simulation<'t> {
    trace: &'t [TraceRequest],
    config: ScalingConfig,
    capacity: Capacity,
    limits: ActivatorLimits,
    scaler: Autoscaler,
    replicas: Vec<Replica>,
    retired_gpu_ms: u64,
    cold_starts: u32,
    most_replicas: u32,
    queue: VecDeque<&'t TraceRequest>,
    waits: Vec<u64>,
    dropped: usize,
    next_arrival: usize,
    now_ms: u64,
    next_tick: u64,
    /// Sequence completions, soonest first, so the clock can jump to the next event.
    completions: BinaryHeap<Reverse<u64>>,
}

impl<'t> Simulation<'t> {
    fn new(
        trace: &'t [TraceRequest],
        config: ScalingConfig,
        capacity: Capacity,
        limits: ActivatorLimits,
    ) -> Simulation<'t> {
        let replicas = (0..config.min_replicas)
            .map(|_| Replica {
                started_ms: 0,
                ready_at_ms: 0,
                running: Vec::new(),
                draining: false,
            })
            .collect();
        Simulation {
            trace,
            config,
            capacity,
            limits,
            scaler: Autoscaler::new(config),
            replicas,
            retired_gpu_ms: 0,
            cold_starts: 0,
            most_replicas: 0,
            queue: VecDeque::new(),
            waits: Vec::new(),
            dropped: 0,
            next_arrival: 0,
            now_ms: 0,
            next_tick: 0,
            completions: BinaryHeap::new(),
        }
    }

    /// Every request is done and the pool is as small as the policy keeps it.
    fn is_over(&self) -> bool {
        let done = self.next_arrival >= self.trace.len()
            && self.queue.is_empty()
            && self
                .replicas
                .iter()
                .all(|replica| replica.running.is_empty());
        done && self.replicas.len() as u32 <= self.config.min_replicas
    }

    /// The next event: an arrival, a completion, a replica becoming ready, or a tick.
    fn next_event(&self) -> u64 {
        let mut next = self.next_tick;
        if let Some(request) = self.trace.get(self.next_arrival) {
            next = next.min(request.arrival_ms);
        }
        if let Some(Reverse(at)) = self.completions.peek() {
            next = next.min(*at);
        }
        for replica in &self.replicas {
            if replica.ready_at_ms > self.now_ms {
                next = next.min(replica.ready_at_ms);
            }
        }
        next
    }

    /// Sequences end; drained replicas go, their GPU time counted.
    fn finish_due(&mut self) {
        let now_ms = self.now_ms;
        while self
            .completions
            .peek()
            .is_some_and(|Reverse(at)| *at <= now_ms)
        {
            self.completions.pop();
        }
        for replica in &mut self.replicas {
            replica.running.retain(|(finish, _)| *finish > now_ms);
        }
        let retired = &mut self.retired_gpu_ms;
        self.replicas.retain(|replica| {
            let gone = replica.draining && replica.running.is_empty();
            if gone {
                *retired += now_ms - replica.started_ms;
            }
            !gone
        });
    }

    /// Requests arrive: queued, or dropped when the queue is full.
    fn arrive(&mut self) {
        while self
            .trace
            .get(self.next_arrival)
            .is_some_and(|request| request.arrival_ms <= self.now_ms)
        {
            if self.queue.len() >= self.limits.max_queue {
                self.dropped += 1;
            } else {
                self.queue.push_back(&self.trace[self.next_arrival]);
            }
            self.next_arrival += 1;
        }
    }

    /// Deadlines pass in the queue.
    fn expire_waiting(&mut self) {
        while self
            .queue
            .front()
            .is_some_and(|request| self.now_ms - request.arrival_ms >= self.limits.deadline_ms)
        {
            self.queue.pop_front();
            self.dropped += 1;
        }
    }

    /// Fills free slots in arrival order (the head waits for room rather than be passed),
    /// least-loaded ready replica first.
    fn dispatch(&mut self) {
        let now_ms = self.now_ms;
        let capacity = self.capacity;
        while let Some(request) = self.queue.front() {
            let context = request.prompt_tokens + request.output_tokens;
            let Some(replica) = self
                .replicas
                .iter_mut()
                .filter(|replica| replica.ready(now_ms) && replica.admits(context, &capacity))
                .min_by_key(|replica| (replica.running.len(), replica.kv_tokens()))
            else {
                break;
            };
            let finish = now_ms + service_ms(request, &capacity);
            replica.running.push((finish, context));
            self.completions.push(Reverse(finish));
            self.waits.push(now_ms - request.arrival_ms);
            self.queue.pop_front();
        }
    }

    /// The autoscaler looks at the load and the pool follows: replicas start (cold) or drain.
    fn tick(&mut self) {
        let now_ms = self.now_ms;
        self.next_tick = now_ms + TICK_MS;
        let ready = self.replicas.iter().filter(|r| r.ready(now_ms)).count() as u32;
        let load = Load {
            queued: self.queue.len() as u32,
            running: self.replicas.iter().map(|r| r.running.len() as u32).sum(),
        };
        let desired = self.scaler.observe(now_ms, ready, load).replicas;
        let live = self.replicas.iter().filter(|r| !r.draining).count() as u32;
        for _ in live..desired {
            self.cold_starts += 1;
            self.replicas.push(Replica {
                started_ms: now_ms,
                ready_at_ms: now_ms + self.capacity.cold_start_ms,
                running: Vec::new(),
                draining: false,
            });
        }
        // Scale in: the emptiest first; a replica with streams drains before it goes.
        let mut surplus = live.saturating_sub(desired);
        while surplus > 0 {
            let Some(replica) = self
                .replicas
                .iter_mut()
                .filter(|r| !r.draining)
                .min_by_key(|r| (r.running.len(), Reverse(r.ready_at_ms)))
            else {
                break;
            };
            replica.draining = true;
            surplus -= 1;
        }
        self.most_replicas = self.most_replicas.max(self.replicas.len() as u32);
    }

    fn outcome(mut self) -> Outcome {
        let now_ms = self.now_ms;
        let gpu_ms = self.retired_gpu_ms
            + self
                .replicas
                .iter()
                .map(|replica| now_ms - replica.started_ms)
                .sum::<u64>();
        self.waits.sort_unstable();
        let waits = &self.waits;
        let percentile = |p: f64| -> u64 {
            if waits.is_empty() {
                return 0;
            }
            waits[((p / 100.0) * (waits.len() - 1) as f64).round() as usize]
        };
        Outcome {
            gpu_seconds: gpu_ms as f64 / 1000.0,
            cold_starts: self.cold_starts,
            most_replicas: self.most_replicas,
            served: self.waits.len(),
            dropped: self.dropped,
            queue_p50_ms: percentile(50.0),
            queue_p99_ms: percentile(99.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPACITY: Capacity = Capacity {
        max_batch: 4,
        prefill_tokens_per_s: 10_000.0,
        decode_tokens_per_s: 100.0,
        kv_tokens: 100_000,
        cold_start_ms: 5_000,
    };
    const LIMITS: ActivatorLimits = ActivatorLimits {
        max_queue: 1_000,
        deadline_ms: 120_000,
    };

    fn every(period_ms: u64, count: u64, output_tokens: u64) -> Vec<TraceRequest> {
        (0..count)
            .map(|index| TraceRequest {
                arrival_ms: index * period_ms,
                prompt_tokens: 100,
                output_tokens,
            })
            .collect()
    }

    #[test]
    fn no_policy_spends_less_than_the_work_bound() {
        // Four 1,000-token sequences of 1 s each on replicas of 4 slots and 2,000 KV
        // tokens: the KV cache binds (two at a time), so 2 GPU-seconds at the least.
        let trace = every(10, 4, 0)
            .into_iter()
            .map(|request| TraceRequest {
                prompt_tokens: 10_000,
                output_tokens: 0,
                ..request
            })
            .collect::<Vec<_>>();
        let capacity = Capacity {
            kv_tokens: 20_000,
            ..CAPACITY
        };
        assert_eq!(work_bound_gpu_seconds(&trace, &capacity), 2.0);
        // A sequence longer than the cache has a replica to itself.
        let long = Capacity {
            kv_tokens: 5_000,
            ..CAPACITY
        };
        assert_eq!(work_bound_gpu_seconds(&trace, &long), 4.0);
        for config in [
            ScalingConfig::llm_aware(4.0, 4),
            ScalingConfig::kpa(4.0, 4),
            ScalingConfig::always_on(4),
        ] {
            let outcome = replay(&trace, config, capacity, LIMITS);
            assert!(outcome.gpu_seconds >= 2.0, "{config:?}: {outcome:?}");
        }
    }

    #[test]
    fn from_zero_the_first_request_waits_one_cold_start_and_none_is_lost() {
        let trace = every(1_000, 30, 100);
        let outcome = replay(&trace, ScalingConfig::llm_aware(4.0, 4), CAPACITY, LIMITS);
        assert_eq!(outcome.served, 30);
        assert_eq!(outcome.dropped, 0);
        assert!(outcome.cold_starts >= 1);
        // The first request waited for the cold start; later ones found a replica.
        assert!(outcome.queue_p99_ms >= 5_000, "{outcome:?}");
        assert!(outcome.queue_p50_ms < 1_000, "{outcome:?}");
    }

    #[test]
    fn always_on_pays_for_idle_replicas_and_never_cold_starts() {
        let trace = every(10_000, 10, 50);
        let always = replay(&trace, ScalingConfig::always_on(2), CAPACITY, LIMITS);
        let ferry = replay(&trace, ScalingConfig::llm_aware(4.0, 2), CAPACITY, LIMITS);
        assert_eq!(always.cold_starts, 0);
        assert_eq!(always.queue_p99_ms, 0);
        assert!(
            ferry.gpu_seconds < always.gpu_seconds,
            "{ferry:?} vs {always:?}"
        );
    }

    #[test]
    fn a_full_queue_and_an_expired_deadline_drop_requests() {
        let burst: Vec<TraceRequest> = (0..50)
            .map(|_| TraceRequest {
                arrival_ms: 0,
                prompt_tokens: 10,
                output_tokens: 1_000,
            })
            .collect();
        let tight = ActivatorLimits {
            max_queue: 10,
            deadline_ms: 3_000,
        };
        let outcome = replay(&burst, ScalingConfig::llm_aware(4.0, 1), CAPACITY, tight);
        // 10 queue, 40 overflow; the cold start (5 s) outlasts the deadline (3 s).
        assert_eq!(outcome.dropped, 50, "{outcome:?}");
        assert_eq!(outcome.served, 0);
    }
}
