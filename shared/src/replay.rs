//! Replays a request trace through an autoscaling policy on a simulated clock: what the pool
//! would have cost (GPU-seconds, cold starts) and what callers would have waited (queueing
//! delay, drops). The policy is the real `autoscale::Autoscaler`; the replicas are a capacity
//! model: each serves up to `max_batch` sequences at once, a sequence takes its prompt at
//! `prefill_tokens_per_s` and generates at `decode_tokens_per_s`, and a new replica is ready
//! `cold_start_ms` after it is asked for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::autoscale::{Autoscaler, Load, ScalingConfig};

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
}

fn service_ms(request: &TraceRequest, capacity: &Capacity) -> u64 {
    let seconds = request.prompt_tokens as f64 / capacity.prefill_tokens_per_s.max(f64::EPSILON)
        + request.output_tokens as f64 / capacity.decode_tokens_per_s.max(f64::EPSILON);
    (seconds * 1000.0).ceil() as u64
}

/// Runs `trace` (sorted by arrival) to completion under `config`.
pub fn replay(
    trace: &[TraceRequest],
    config: ScalingConfig,
    capacity: Capacity,
    limits: ActivatorLimits,
) -> Outcome {
    let mut scaler = Autoscaler::new(config);
    let mut replicas: Vec<Replica> = Vec::new();
    let mut retired_gpu_ms: u64 = 0;
    let mut cold_starts = 0u32;
    let mut most_replicas = 0u32;
    let mut queue: VecDeque<&TraceRequest> = VecDeque::new();
    let mut waits: Vec<u64> = Vec::new();
    let mut dropped = 0usize;
    let mut next_arrival = 0usize;
    let mut now_ms = 0u64;
    // Sequence completions, soonest first, so the clock can jump to the next event.
    let mut completions: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
    for _ in 0..config.min_replicas {
        replicas.push(Replica {
            started_ms: 0,
            ready_at_ms: 0,
            running: Vec::new(),
            draining: false,
        });
    }
    let mut next_tick = 0u64;
    loop {
        let done = next_arrival >= trace.len()
            && queue.is_empty()
            && replicas.iter().all(|replica| replica.running.is_empty());
        // Run on after the trace until the policy has scaled in as far as it will.
        if done && replicas.len() as u32 <= config.min_replicas {
            break;
        }
        // The next event: an arrival, a completion, a replica becoming ready, or a tick.
        let mut next = next_tick;
        if let Some(request) = trace.get(next_arrival) {
            next = next.min(request.arrival_ms);
        }
        if let Some(Reverse(at)) = completions.peek() {
            next = next.min(*at);
        }
        for replica in &replicas {
            if replica.ready_at_ms > now_ms {
                next = next.min(replica.ready_at_ms);
            }
        }
        now_ms = next.max(now_ms);
        while completions.peek().is_some_and(|Reverse(at)| *at <= now_ms) {
            completions.pop();
        }
        for replica in &mut replicas {
            replica.running.retain(|(finish, _)| *finish > now_ms);
        }
        // Drained replicas go; their GPU time is counted.
        replicas.retain(|replica| {
            let gone = replica.draining && replica.running.is_empty();
            if gone {
                retired_gpu_ms += now_ms - replica.started_ms;
            }
            !gone
        });
        while trace
            .get(next_arrival)
            .is_some_and(|request| request.arrival_ms <= now_ms)
        {
            if queue.len() >= limits.max_queue {
                dropped += 1;
            } else {
                queue.push_back(&trace[next_arrival]);
            }
            next_arrival += 1;
        }
        // Deadlines pass in the queue.
        while queue
            .front()
            .is_some_and(|request| now_ms - request.arrival_ms >= limits.deadline_ms)
        {
            queue.pop_front();
            dropped += 1;
        }
        // Fill free slots, least-loaded ready replica first.
        while let Some(request) = queue.front() {
            let Some(replica) = replicas
                .iter_mut()
                .filter(|replica| {
                    replica.ready(now_ms) && replica.running.len() < capacity.max_batch as usize
                })
                .min_by_key(|replica| replica.running.len())
            else {
                break;
            };
            let finish = now_ms + service_ms(request, &capacity);
            replica
                .running
                .push((finish, request.prompt_tokens + request.output_tokens));
            completions.push(Reverse(finish));
            waits.push(now_ms - request.arrival_ms);
            queue.pop_front();
        }
        if now_ms >= next_tick {
            next_tick = now_ms + TICK_MS;
            let ready = replicas.iter().filter(|r| r.ready(now_ms)).count() as u32;
            let load = Load {
                queued: queue.len() as u32,
                running: replicas.iter().map(|r| r.running.len() as u32).sum(),
                kv_use: replicas
                    .iter()
                    .filter(|r| r.ready(now_ms))
                    .map(|r| {
                        r.running.iter().map(|(_, tokens)| *tokens).sum::<u64>() as f64
                            / capacity.kv_tokens.max(1) as f64
                    })
                    .fold(0.0, f64::max),
            };
            let desired = scaler.observe(now_ms, ready, load).replicas;
            let live = replicas.iter().filter(|r| !r.draining).count() as u32;
            for _ in live..desired {
                cold_starts += 1;
                replicas.push(Replica {
                    started_ms: now_ms,
                    ready_at_ms: now_ms + capacity.cold_start_ms,
                    running: Vec::new(),
                    draining: false,
                });
            }
            // Scale in: the emptiest first; a replica with streams drains before it goes.
            let mut surplus = live.saturating_sub(desired);
            while surplus > 0 {
                let Some(replica) = replicas
                    .iter_mut()
                    .filter(|r| !r.draining)
                    .min_by_key(|r| (r.running.len(), Reverse(r.ready_at_ms)))
                else {
                    break;
                };
                replica.draining = true;
                surplus -= 1;
            }
            most_replicas = most_replicas.max(replicas.len() as u32);
        }
    }
    let gpu_ms = retired_gpu_ms
        + replicas
            .iter()
            .map(|replica| now_ms - replica.started_ms)
            .sum::<u64>();
    waits.sort_unstable();
    let percentile = |p: f64| -> u64 {
        if waits.is_empty() {
            return 0;
        }
        waits[((p / 100.0) * (waits.len() - 1) as f64).round() as usize]
    };
    Outcome {
        gpu_seconds: gpu_ms as f64 / 1000.0,
        cold_starts,
        most_replicas,
        served: waits.len(),
        dropped,
        queue_p50_ms: percentile(50.0),
        queue_p99_ms: percentile(99.0),
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
