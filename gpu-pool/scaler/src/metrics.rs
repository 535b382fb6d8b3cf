//! The pool's metrics, read at each scrape: replicas by state, calls queued and in flight, and
//! replica starts (cold ones apart: a call waited for them). `ferry serve` exports them with
//! the gateway's; `ferry scaler` at its activator's `GET /metrics`.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::control::Pool;
use crate::deployment::{ReplicaState, Starts};

/// A series' name, its help, and how to read it from a deployment.
type Series<From, Value> = (&'static str, &'static str, fn(&From) -> Value);

#[derive(Debug)]
pub struct PoolCollector(pub Arc<Pool>);

const STATES: [(ReplicaState, &str); 4] = [
    (ReplicaState::Starting, "starting"),
    (ReplicaState::Ready, "ready"),
    (ReplicaState::Draining, "draining"),
    (ReplicaState::Lost, "lost"),
];

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut deployments: Vec<_> = self.0.deployments().collect();
        deployments.sort_by(|a, b| a.config().name.cmp(&b.config().name));
        {
            let mut family = encoder.encode_descriptor(
                "ferry_pool_replicas",
                "Replicas by deployment and state",
                None,
                MetricType::Gauge,
            )?;
            for deployment in &deployments {
                let replicas = deployment.replicas();
                for (state, label) in STATES {
                    let count = replicas
                        .iter()
                        .filter(|replica| replica.state == state)
                        .count();
                    let labels = [
                        ("deployment", deployment.config().name.as_str()),
                        ("state", label),
                    ];
                    ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let gauges: [Series<crate::Deployment, u64>; 2] = [
            (
                "ferry_pool_queue_depth",
                "Calls waiting for a replica",
                |deployment| deployment.queued() as u64,
            ),
            (
                "ferry_pool_calls_in_flight",
                "Calls the activator has sent to replicas that have not finished",
                |deployment| {
                    deployment
                        .replicas()
                        .iter()
                        .map(|replica| u64::from(replica.in_flight))
                        .sum()
                },
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for deployment in &deployments {
                let labels = [("deployment", deployment.config().name.as_str())];
                ConstGauge::new(i64::try_from(read(deployment)).unwrap_or(i64::MAX))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let counters: [Series<Starts, f64>; 3] = [
            (
                "ferry_pool_replica_starts",
                "Replicas that became ready",
                |starts| starts.ready as f64,
            ),
            (
                "ferry_pool_cold_starts",
                "Replicas that became ready while none other was (calls waited for them)",
                |starts| starts.cold as f64,
            ),
            (
                "ferry_pool_cold_start_seconds",
                "Time the cold starts took, in all",
                |starts| starts.cold_ms as f64 / 1000.0,
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for deployment in &deployments {
                let labels = [("deployment", deployment.config().name.as_str())];
                ConstCounter::new(read(&deployment.starts()))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The pool's metrics alone, as OpenMetrics text (`ferry scaler`'s `GET /metrics`).
pub fn encode(pool: &Arc<Pool>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(PoolCollector(Arc::clone(pool))));
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}
