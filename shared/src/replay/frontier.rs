//! Comparing scaling policies honestly: each policy's main knobs swept over the same grid,
//! every setting replayed, and the settings no other setting beats on both GPU-seconds and
//! p99 queueing delay kept as the policy's frontier. One policy is better on a trace when its
//! frontier lies below the other's: fewer GPU-seconds at every p99 both reach. A single
//! setting against a single setting says only which trade-off each happened to pick.

use super::{ActivatorLimits, Capacity, Outcome, TraceRequest, replay};
use crate::autoscale::ScalingConfig;

/// The knobs a sweep turns, the two both policies have: the share of a replica's sequences
/// aimed for and the window scale-in decisions look back over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Knobs {
    pub target_utilization: f64,
    pub stable_window_ms: u64,
}

impl Knobs {
    /// The grid every policy is swept over, the same for all: utilisation from 50 % to 100 %
    /// and windows from 15 s to 4 min (Knative allows 6 s to an hour; 60 s is its default).
    pub fn grid() -> Vec<Knobs> {
        let mut grid = Vec::new();
        for utilization in [0.5, 0.6, 0.7, 0.8, 0.9, 1.0] {
            for window_s in [15, 30, 60, 120, 240] {
                grid.push(Knobs {
                    target_utilization: utilization,
                    stable_window_ms: window_s * 1_000,
                });
            }
        }
        grid
    }

    /// `config` with these knobs. KPA's panic window stays at a tenth of its stable window
    /// (Knative's `panic-window-percentage`).
    pub fn apply(self, config: ScalingConfig) -> ScalingConfig {
        ScalingConfig {
            target_utilization: self.target_utilization,
            stable_window_ms: self.stable_window_ms,
            panic_window_ms: (self.stable_window_ms / 10).max(1_000),
            ..config
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub knobs: Knobs,
    pub outcome: Outcome,
}

/// `base` replayed once per setting of `grid`.
pub fn sweep(
    trace: &[TraceRequest],
    base: ScalingConfig,
    grid: &[Knobs],
    capacity: Capacity,
    limits: ActivatorLimits,
) -> Vec<SweepPoint> {
    grid.iter()
        .map(|knobs| SweepPoint {
            knobs: *knobs,
            outcome: replay(trace, knobs.apply(base), capacity, limits),
        })
        .collect()
}

/// The settings no other beats on both p99 and GPU-seconds, by rising p99 (and so falling
/// GPU-seconds). A setting that dropped requests is not on it.
pub fn frontier(points: &[SweepPoint]) -> Vec<SweepPoint> {
    let mut candidates: Vec<&SweepPoint> = points
        .iter()
        .filter(|point| point.outcome.dropped == 0)
        .collect();
    candidates.sort_by(|a, b| {
        (a.outcome.queue_p99_ms, a.outcome.gpu_seconds)
            .partial_cmp(&(b.outcome.queue_p99_ms, b.outcome.gpu_seconds))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut kept: Vec<SweepPoint> = Vec::new();
    for point in candidates {
        if kept
            .last()
            .is_none_or(|last| point.outcome.gpu_seconds < last.outcome.gpu_seconds)
        {
            kept.push(point.clone());
        }
    }
    kept
}

/// The least GPU-seconds a frontier spends for a p99 of `p99_ms` or better.
fn cheapest_within(frontier: &[SweepPoint], p99_ms: u64) -> Option<f64> {
    frontier
        .iter()
        .take_while(|point| point.outcome.queue_p99_ms <= p99_ms)
        .last()
        .map(|point| point.outcome.gpu_seconds)
}

/// Two frontiers side by side over the p99 range both reach.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// (p99 ms, our GPU-seconds, their GPU-seconds) wherever either frontier steps, from the
    /// lowest p99 both reach.
    pub matched: Vec<(u64, f64, f64)>,
}

impl Comparison {
    /// Our GPU-seconds over theirs where we do worst (at most 1: at or below theirs).
    pub fn worst_ratio(&self) -> f64 {
        self.ratios().fold(f64::MIN, f64::max)
    }

    /// Where we do best.
    pub fn best_ratio(&self) -> f64 {
        self.ratios().fold(f64::MAX, f64::min)
    }

    fn ratios(&self) -> impl Iterator<Item = f64> + '_ {
        self.matched
            .iter()
            .map(|(_, ours, theirs)| ours / theirs.max(f64::EPSILON))
    }
}

/// `ours` against `theirs` (both from `frontier`); `None` when either is empty.
pub fn compare(ours: &[SweepPoint], theirs: &[SweepPoint]) -> Option<Comparison> {
    let lowest = ours
        .first()?
        .outcome
        .queue_p99_ms
        .max(theirs.first()?.outcome.queue_p99_ms);
    let mut steps: Vec<u64> = ours
        .iter()
        .chain(theirs)
        .map(|point| point.outcome.queue_p99_ms)
        .filter(|p99| *p99 >= lowest)
        .collect();
    steps.push(lowest);
    steps.sort_unstable();
    steps.dedup();
    let matched = steps
        .into_iter()
        .filter_map(|p99| {
            Some((
                p99,
                cheapest_within(ours, p99)?,
                cheapest_within(theirs, p99)?,
            ))
        })
        .collect();
    Some(Comparison { matched })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(p99_ms: u64, gpu_seconds: f64, dropped: usize) -> SweepPoint {
        SweepPoint {
            knobs: Knobs {
                target_utilization: 0.7,
                stable_window_ms: 60_000,
            },
            outcome: Outcome {
                gpu_seconds,
                cold_starts: 0,
                most_replicas: 1,
                served: 10,
                dropped,
                queue_p50_ms: 0,
                queue_p99_ms: p99_ms,
            },
        }
    }

    fn shape(frontier: &[SweepPoint]) -> Vec<(u64, f64)> {
        frontier
            .iter()
            .map(|p| (p.outcome.queue_p99_ms, p.outcome.gpu_seconds))
            .collect()
    }

    #[test]
    fn a_frontier_keeps_what_nothing_beats_and_nothing_that_dropped() {
        let points = [
            point(100, 50.0, 0),
            point(200, 60.0, 0), // worse on both than the first
            point(300, 40.0, 0),
            point(50, 10.0, 3), // cheap and fast, but it dropped requests
            point(300, 45.0, 0),
            point(1_000, 40.0, 0), // no cheaper for a worse p99
        ];
        assert_eq!(shape(&frontier(&points)), vec![(100, 50.0), (300, 40.0)]);
    }

    #[test]
    fn frontiers_are_compared_where_both_reach() {
        let ours = frontier(&[point(100, 50.0, 0), point(300, 30.0, 0)]);
        let theirs = frontier(&[point(50, 80.0, 0), point(200, 60.0, 0), point(400, 40.0, 0)]);
        let comparison = compare(&ours, &theirs).unwrap();
        assert_eq!(
            comparison.matched,
            vec![
                (100, 50.0, 80.0),
                (200, 50.0, 60.0),
                (300, 30.0, 60.0),
                (400, 30.0, 40.0)
            ]
        );
        assert_eq!(comparison.worst_ratio(), 50.0 / 60.0);
        assert_eq!(comparison.best_ratio(), 0.5);
        assert_eq!(compare(&[], &theirs), None);
    }

    #[test]
    fn the_grid_is_the_same_for_every_policy() {
        let grid = Knobs::grid();
        assert_eq!(grid.len(), 30);
        let kpa = grid[0].apply(ScalingConfig::kpa(16.0, 4));
        assert_eq!(kpa.panic_window_ms, 1_500);
        let ferry = grid[0].apply(ScalingConfig::llm_aware(16.0, 4));
        assert_eq!(
            (ferry.target_utilization, ferry.stable_window_ms),
            (0.5, 15_000)
        );
    }
}
