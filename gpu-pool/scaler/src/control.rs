//! The autoscaler loop: every tick (or at once when a call waits), read the replicas' load,
//! ask the policy, and apply its answer through the provider.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use ferry_core::autoscale::{Autoscaler, Reason};
use futures_util::future::join_all;
use serde_json::Value;

use crate::deployment::{Deployment, DeploymentConfig, Plan, WorkerLoad};
use crate::provider::{Provider, ProviderError, ReplicaId};

/// The pool: its deployments and the provider that makes their replicas.
pub struct Pool {
    deployments: HashMap<String, Arc<Deployment>>,
    provider: Arc<dyn Provider>,
    http: reqwest::Client,
    pub(crate) proxy_http: reqwest::Client,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Pool")
            .field("deployments", &self.deployments.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(configs: Vec<DeploymentConfig>, provider: Arc<dyn Provider>) -> Arc<Pool> {
        let ids = Arc::new(AtomicU64::new(1));
        let deployments = configs
            .into_iter()
            .map(|config| (config.name.clone(), Deployment::new(config, ids.clone())))
            .collect();
        Arc::new(Pool {
            deployments,
            provider,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            proxy_http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        })
    }

    pub fn deployment(&self, name: &str) -> Option<&Arc<Deployment>> {
        self.deployments.get(name)
    }

    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.deployments.values()
    }

    /// Runs every deployment's autoscaler, and one reaper of replicas that ended on their own.
    pub fn spawn(self: &Arc<Self>) {
        for deployment in self.deployments.values() {
            tokio::spawn(run(self.clone(), deployment.clone()));
        }
        tokio::spawn(reap(self.clone()));
    }

    /// Refuses new and waiting calls and drains every replica; calls in flight go on.
    pub async fn close(self: &Arc<Self>) {
        for deployment in self.deployments.values() {
            apply(self, deployment, deployment.close()).await;
        }
    }

    /// Refuses new and waiting calls, lets the ones in flight finish (up to `grace`), then
    /// stops every replica.
    pub async fn shutdown(self: &Arc<Self>, grace: Duration) {
        let until = Instant::now() + grace;
        self.close().await;
        for deployment in self.deployments.values() {
            while !deployment.replicas().is_empty() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
                apply(self, deployment, deployment.plan(0)).await;
            }
            for replica in deployment.replicas() {
                deployment.remove(replica.id);
                self.provider.stop(replica.id).await;
            }
        }
    }
}

/// Asks the provider which replicas ended on their own (a crash, a Spot interruption), once
/// for the whole pool, and takes each out of its deployment.
async fn reap(pool: Arc<Pool>) {
    let every = pool
        .deployments
        .values()
        .map(|deployment| deployment.config().tick)
        .min()
        .unwrap_or(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        for id in pool.provider.exited().await {
            for deployment in pool.deployments.values() {
                if deployment.remove(id).is_some() {
                    tracing::warn!(deployment = %deployment.config().name, replica = %id, "a replica ended on its own; its calls in flight fail, and the autoscaler replaces it");
                    deployment.wake.notify_one();
                }
            }
        }
    }
}

async fn run(pool: Arc<Pool>, deployment: Arc<Deployment>) {
    let config = deployment.config().clone();
    let mut autoscaler = Autoscaler::new(config.scaling);
    let epoch = Instant::now();
    let mut last = Some(0);
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.tick) => {}
            () = deployment.wake.notified() => {}
        }
        refresh_loads(&pool, &deployment).await;
        let (ready, load) = deployment.observed();
        let at_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some((replicas, lasting)) = deployment.take_prewarm() {
            let lasting_ms = u64::try_from(lasting.as_millis()).unwrap_or(u64::MAX);
            tracing::info!(deployment = %config.name, replicas, seconds = lasting.as_secs(), "pre-warm hint");
            autoscaler.prewarm(replicas, at_ms.saturating_add(lasting_ms));
        }
        let decision = autoscaler.observe(at_ms, ready, load);
        if last != Some(decision.replicas) {
            match decision.reason {
                Reason::ColdStart => tracing::info!(
                    deployment = %config.name,
                    waiting = load.queued,
                    "cold start: calls are waiting and no replica is ready; starting one (they wait until it has loaded)"
                ),
                reason => tracing::info!(
                    deployment = %config.name,
                    from = ?last.unwrap_or(0),
                    to = decision.replicas,
                    ?reason,
                    queued = load.queued,
                    running = load.running,
                    "scaling"
                ),
            }
            last = Some(decision.replicas);
        }
        let plan = deployment.plan(decision.replicas);
        apply(&pool, &deployment, plan).await;
    }
}

/// Starts and stops what a plan says. Starts run on their own (loading takes seconds) and
/// report back to the deployment; stops are drained replicas, quick to end.
async fn apply(pool: &Arc<Pool>, deployment: &Arc<Deployment>, plan: Plan) {
    let name = &deployment.config().name;
    for id in plan.drain {
        tracing::info!(deployment = %name, replica = %id, "draining: no new calls; stopped once its calls in flight end");
    }
    for id in plan.start {
        let pool = pool.clone();
        let deployment = deployment.clone();
        tokio::spawn(async move { start(&pool, &deployment, id).await });
    }
    for id in plan.stop {
        tracing::info!(deployment = %name, replica = %id, "replica stopped");
        // Not awaited: a worker slow to exit must not hold up scaling.
        let provider = pool.provider.clone();
        tokio::spawn(async move { provider.stop(id).await });
    }
}

async fn start(pool: &Pool, deployment: &Arc<Deployment>, id: ReplicaId) {
    let name = &deployment.config().name;
    let timeout = deployment.config().start_timeout;
    let started = tokio::time::timeout(timeout, async {
        let url = pool.provider.start(name, id).await?;
        wait_until_ready(&pool.http, &url).await;
        Ok(url)
    })
    .await
    .unwrap_or(Err(ProviderError::NotReady(timeout)));
    match started {
        Ok(url) => match deployment.ready(id, url.clone()) {
            Some(took) => tracing::info!(
                deployment = %name,
                replica = %id,
                %url,
                cold_start_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                "replica ready"
            ),
            // Removed while it loaded (the pool is shutting down): not needed.
            None => pool.provider.stop(id).await,
        },
        Err(error) => {
            pool.provider.stop(id).await;
            deployment.remove(id);
            let backoff = deployment.start_failed();
            tracing::error!(deployment = %name, replica = %id, %error, retry_in_seconds = backoff.as_secs(), "replica failed to start");
        }
    }
}

/// Polls the replica's `/readyz` until it answers 200 (the caller bounds how long).
async fn wait_until_ready(http: &reqwest::Client, url: &str) {
    let readyz = format!("{url}/readyz");
    loop {
        let answer = http.get(&readyz).send().await;
        if answer.is_ok_and(|response| response.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn refresh_loads(pool: &Pool, deployment: &Deployment) {
    let replicas = deployment.ready_replicas();
    let loads = join_all(replicas.iter().map(|(_, url)| fetch_load(&pool.http, url))).await;
    for ((id, _), load) in replicas.into_iter().zip(loads) {
        deployment.record_load(id, load);
    }
}

/// A worker's `/stats`: its chat engine's queue, running sequences and KV-cache use.
async fn fetch_load(http: &reqwest::Client, url: &str) -> Option<WorkerLoad> {
    let stats: Value = http
        .get(format!("{url}/stats"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(parse_load(&stats))
}

fn parse_load(stats: &Value) -> WorkerLoad {
    let engine = &stats["chat"]["engine"];
    let number = |field: &str| engine[field].as_u64().unwrap_or(0);
    let capacity = number("kv_cache_capacity_tokens");
    WorkerLoad {
        queued: u32::try_from(number("queue_depth")).unwrap_or(u32::MAX),
        running: u32::try_from(number("active_sequences")).unwrap_or(u32::MAX),
        kv_use: if capacity == 0 {
            0.0
        } else {
            number("kv_cache_tokens") as f64 / capacity as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_stats_become_its_load() {
        let stats = serde_json::json!({"chat": {"model": "m", "engine": {
            "queue_depth": 3, "active_sequences": 16, "kv_cache_tokens": 800,
            "kv_cache_capacity_tokens": 1000, "max_batch": 16}}, "embedding": null});
        assert_eq!(
            parse_load(&stats),
            WorkerLoad {
                queued: 3,
                running: 16,
                kv_use: 0.8
            }
        );
        assert_eq!(
            parse_load(&serde_json::json!({"chat": null})),
            WorkerLoad::default()
        );
    }
}
