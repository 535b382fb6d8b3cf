//! One deployment's replicas and waiting calls: which replica a call goes to, who waits, and
//! what a scaling decision changes. Plain state behind a lock; the I/O is in `control` and
//! `proxy`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_core::autoscale::{Load, ScalingConfig};
use ferry_core::{ApiError, ErrorKind};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::provider::ReplicaId;

#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    /// The name in the activator's URL: `/{name}/v1/...`.
    pub name: String,
    pub scaling: ScalingConfig,
    /// Calls one replica is sent at once (its batch); more wait in the activator, where the
    /// autoscaler sees them.
    pub replica_concurrency: u32,
    /// Calls that may wait for a replica; past it, 503 at once.
    pub max_queue: usize,
    /// How long a call may wait for a replica before it gets 503.
    pub queue_deadline: Duration,
    /// How often the autoscaler looks.
    pub tick: Duration,
    /// How long a replica may take to start and answer `/readyz` before it is given up.
    pub start_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Asked of the provider; not ready yet.
    Starting,
    Ready,
    /// Takes no new calls; stopped once the ones in flight end.
    Draining,
    /// Unreachable or gone; removed at the next tick.
    Lost,
}

/// What the last `/stats` of a replica said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WorkerLoad {
    pub queued: u32,
    pub running: u32,
    pub kv_use: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    pub id: ReplicaId,
    pub state: ReplicaState,
    pub url: Option<String>,
    /// Calls the activator has sent it that have not finished.
    pub in_flight: u32,
    pub load: WorkerLoad,
    #[serde(skip)]
    since: Instant,
}

/// Why a call got no replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    QueueFull,
    Deadline,
    /// The pool is shutting down.
    Closed,
}

impl Refusal {
    pub fn to_api_error(self, deployment: &str) -> ApiError {
        let (message, code) = match self {
            Refusal::QueueFull => (
                format!("`{deployment}` has too many calls waiting for a replica; retry shortly"),
                "queue_full",
            ),
            Refusal::Deadline => (
                format!("no replica of `{deployment}` became free in time; retry shortly"),
                "queue_deadline",
            ),
            Refusal::Closed => (format!("`{deployment}` is shutting down"), "shutting_down"),
        };
        ApiError::new(ErrorKind::NoCapacity, message)
            .with_code(code)
            .retry_after(1)
    }
}

/// A call's claim on one replica: it counts as in flight there until dropped.
#[derive(Debug)]
pub struct Lease {
    deployment: Arc<Deployment>,
    replica: ReplicaId,
    url: String,
    armed: bool,
}

impl Lease {
    /// The replica's base URL (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The replica could not be reached: route no more calls to it.
    pub fn lost(mut self) {
        self.armed = false;
        self.deployment.mark_lost(self.replica);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.deployment.release(self.replica);
        }
    }
}

/// What a scaling decision asks of the provider.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Replicas to start (already in the table as `Starting`).
    pub start: Vec<ReplicaId>,
    /// Replicas to stop: drained, or lost (already out of the table).
    pub stop: Vec<ReplicaId>,
    /// Replicas newly set draining.
    pub drain: Vec<ReplicaId>,
}

#[derive(Debug)]
struct Inner {
    replicas: Vec<Replica>,
    waiters: VecDeque<oneshot::Sender<Lease>>,
    next_id: u64,
    closed: bool,
    /// A pre-warm hint not yet handed to the autoscaler: (replicas, for how long).
    prewarm: Option<(u32, Duration)>,
}

#[derive(Debug)]
pub struct Deployment {
    config: DeploymentConfig,
    inner: Mutex<Inner>,
    /// Wakes the autoscaler loop before its tick: a call waits, or a drained replica emptied.
    pub(crate) wake: Notify,
}

impl Deployment {
    pub fn new(config: DeploymentConfig) -> Arc<Deployment> {
        Arc::new(Deployment {
            config,
            inner: Mutex::new(Inner {
                replicas: Vec::new(),
                waiters: VecDeque::new(),
                next_id: 1,
                closed: false,
                prewarm: None,
            }),
            wake: Notify::new(),
        })
    }

    pub fn config(&self) -> &DeploymentConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind; carry on with them.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A replica for one call: at once if one has room, else after waiting in the queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, Refusal> {
        let receiver = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(Refusal::Closed);
            }
            if let Some(lease) = self.try_lease(&mut inner) {
                return Ok(lease);
            }
            inner.waiters.retain(|waiter| !waiter.is_closed());
            if inner.waiters.len() >= self.config.max_queue {
                return Err(Refusal::QueueFull);
            }
            let (sender, receiver) = oneshot::channel();
            inner.waiters.push_back(sender);
            receiver
        };
        self.wake.notify_one();
        match tokio::time::timeout(self.config.queue_deadline, receiver).await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(_)) => Err(Refusal::Closed),
            // Dropping the receiver hands any lease sent meanwhile back (see `dispatch`).
            Err(_) => Err(Refusal::Deadline),
        }
    }

    /// The ready replica with the fewest calls in flight, if it has room.
    fn try_lease(self: &Arc<Self>, inner: &mut Inner) -> Option<Lease> {
        let concurrency = self.config.replica_concurrency.max(1);
        let replica = inner
            .replicas
            .iter_mut()
            .filter(|replica| {
                replica.state == ReplicaState::Ready && replica.in_flight < concurrency
            })
            .min_by_key(|replica| replica.in_flight)?;
        replica.in_flight += 1;
        Some(Lease {
            deployment: self.clone(),
            replica: replica.id,
            url: replica.url.clone().unwrap_or_default(),
            armed: true,
        })
    }

    /// Hands free room to waiting calls, oldest first.
    fn dispatch(self: &Arc<Self>, inner: &mut Inner) {
        while let Some(waiter) = inner.waiters.pop_front() {
            if waiter.is_closed() {
                continue;
            }
            let Some(lease) = self.try_lease(inner) else {
                inner.waiters.push_front(waiter);
                return;
            };
            if let Err(mut lease) = waiter.send(lease) {
                // Its deadline passed just now: take the room back here, under the lock.
                lease.armed = false;
                if let Some(replica) = inner.replica_mut(lease.replica) {
                    replica.in_flight = replica.in_flight.saturating_sub(1);
                }
            }
        }
    }

    fn release(self: &Arc<Self>, id: ReplicaId) {
        let mut inner = self.lock();
        let Some(replica) = inner.replica_mut(id) else {
            return;
        };
        replica.in_flight = replica.in_flight.saturating_sub(1);
        let drained = replica.state == ReplicaState::Draining && replica.in_flight == 0;
        self.dispatch(&mut inner);
        drop(inner);
        if drained {
            self.wake.notify_one();
        }
    }

    fn mark_lost(&self, id: ReplicaId) {
        let mut inner = self.lock();
        if let Some(replica) = inner.replica_mut(id) {
            replica.state = ReplicaState::Lost;
            replica.in_flight = replica.in_flight.saturating_sub(1);
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// A started replica answers: route calls to it.
    pub(crate) fn ready(self: &Arc<Self>, id: ReplicaId, url: String) -> Option<Duration> {
        let mut inner = self.lock();
        let replica = inner.replica_mut(id)?;
        if replica.state != ReplicaState::Starting {
            return None;
        }
        replica.state = ReplicaState::Ready;
        replica.url = Some(url.trim_end_matches('/').to_owned());
        let took = replica.since.elapsed();
        replica.since = Instant::now();
        self.dispatch(&mut inner);
        Some(took)
    }

    /// A replica could not be started, or ended on its own.
    pub(crate) fn remove(&self, id: ReplicaId) -> Option<Replica> {
        let mut inner = self.lock();
        let index = inner.replicas.iter().position(|replica| replica.id == id)?;
        Some(inner.replicas.remove(index))
    }

    pub(crate) fn record_load(&self, id: ReplicaId, load: WorkerLoad) {
        if let Some(replica) = self.lock().replica_mut(id) {
            replica.load = load;
        }
    }

    /// Ready replicas and their URLs, to ask for stats.
    pub(crate) fn ready_replicas(&self) -> Vec<(ReplicaId, String)> {
        self.lock()
            .replicas
            .iter()
            .filter(|replica| replica.state == ReplicaState::Ready)
            .filter_map(|replica| Some((replica.id, replica.url.clone()?)))
            .collect()
    }

    /// What the policy sees: ready replicas, and the load on them and waiting for them.
    pub fn observed(&self) -> (u32, Load) {
        let mut inner = self.lock();
        inner.waiters.retain(|waiter| !waiter.is_closed());
        let mut load = Load {
            queued: count(inner.waiters.len()),
            ..Load::default()
        };
        let mut ready = 0;
        for replica in &inner.replicas {
            if replica.state == ReplicaState::Ready {
                ready += 1;
            }
            if matches!(replica.state, ReplicaState::Ready | ReplicaState::Draining) {
                load.queued += replica.load.queued;
                // A call the worker has not reported yet (an embedding, or one just sent)
                // still occupies the replica.
                let unreported = replica.in_flight.saturating_sub(replica.load.queued);
                load.running += replica.load.running.max(unreported);
                load.kv_use = load.kv_use.max(replica.load.kv_use);
            }
        }
        (ready, load)
    }

    /// Moves the table toward `desired` replicas: revives draining ones before starting new
    /// ones; drains the least busy ready ones; hands back what the provider must do.
    pub fn plan(self: &Arc<Self>, desired: u32) -> Plan {
        let mut inner = self.lock();
        let mut plan = Plan::default();
        let active = |inner: &Inner| {
            count(
                inner
                    .replicas
                    .iter()
                    .filter(|replica| {
                        matches!(replica.state, ReplicaState::Starting | ReplicaState::Ready)
                    })
                    .count(),
            )
        };
        let mut wanted = if inner.closed { 0 } else { desired };
        while active(&inner) < wanted {
            let revived = inner
                .replicas
                .iter_mut()
                .filter(|replica| replica.state == ReplicaState::Draining)
                .max_by_key(|replica| replica.in_flight);
            match revived {
                Some(replica) => replica.state = ReplicaState::Ready,
                None => {
                    let id = ReplicaId(inner.next_id);
                    inner.next_id += 1;
                    inner.replicas.push(Replica {
                        id,
                        state: ReplicaState::Starting,
                        url: None,
                        in_flight: 0,
                        load: WorkerLoad::default(),
                        since: Instant::now(),
                    });
                    plan.start.push(id);
                }
            }
        }
        self.dispatch(&mut inner);
        while active(&inner) > wanted {
            let drained = inner
                .replicas
                .iter_mut()
                .filter(|replica| replica.state == ReplicaState::Ready)
                .min_by_key(|replica| replica.in_flight);
            match drained {
                Some(replica) => {
                    replica.state = ReplicaState::Draining;
                    replica.since = Instant::now();
                    plan.drain.push(replica.id);
                }
                // Only starting ones are left: drain them once they are ready.
                None => wanted = active(&inner),
            }
        }
        inner.replicas.retain(|replica| {
            let done = replica.state == ReplicaState::Lost
                || (replica.state == ReplicaState::Draining && replica.in_flight == 0);
            if done {
                plan.stop.push(replica.id);
            }
            !done
        });
        plan
    }

    /// No more calls: the queue is refused and every replica drains.
    pub(crate) fn close(self: &Arc<Self>) -> Plan {
        let mut inner = self.lock();
        inner.closed = true;
        inner.waiters.clear();
        drop(inner);
        self.plan(0)
    }

    /// Asks for `replicas` to be ready for the next `lasting` (see `Autoscaler::prewarm`).
    pub fn prewarm(&self, replicas: u32, lasting: Duration) {
        self.lock().prewarm = Some((replicas, lasting));
        self.wake.notify_one();
    }

    pub(crate) fn take_prewarm(&self) -> Option<(u32, Duration)> {
        self.lock().prewarm.take()
    }

    /// Replicas still in the table (starting, ready, draining).
    pub fn replicas(&self) -> Vec<Replica> {
        self.lock().replicas.clone()
    }

    pub fn queued(&self) -> usize {
        let mut inner = self.lock();
        inner.waiters.retain(|waiter| !waiter.is_closed());
        inner.waiters.len()
    }
}

impl Inner {
    fn replica_mut(&mut self, id: ReplicaId) -> Option<&mut Replica> {
        self.replicas.iter_mut().find(|replica| replica.id == id)
    }
}

fn count(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(max_queue: usize, deadline_ms: u64) -> Arc<Deployment> {
        Deployment::new(DeploymentConfig {
            name: "d".into(),
            scaling: ScalingConfig::llm_aware(2.0, 2),
            replica_concurrency: 2,
            max_queue,
            queue_deadline: Duration::from_millis(deadline_ms),
            tick: Duration::from_millis(100),
            start_timeout: Duration::from_secs(10),
        })
    }

    fn start_all(deployment: &Arc<Deployment>, plan: &Plan) {
        for id in &plan.start {
            deployment.ready(*id, format!("http://replica-{}/", id.0));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gets_the_first_replica_that_becomes_ready() {
        let deployment = deployment(4, 60_000);
        let waiting = tokio::spawn({
            let deployment = deployment.clone();
            async move {
                deployment
                    .acquire()
                    .await
                    .map(|lease| lease.url().to_owned())
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(deployment.observed().1.queued, 1);
        let plan = deployment.plan(1);
        assert_eq!(plan.start.len(), 1);
        start_all(&deployment, &plan);
        assert_eq!(waiting.await.unwrap(), Ok("http://replica-1".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once_and_a_deadline_refuses_later() {
        let deployment = deployment(1, 2_000);
        let first = tokio::spawn({
            let deployment = deployment.clone();
            async move { deployment.acquire().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            deployment.acquire().await.map(|_| ()),
            Err(Refusal::QueueFull)
        );
        assert_eq!(first.await.unwrap(), Err(Refusal::Deadline));
        assert_eq!(deployment.queued(), 0);
        let error = Refusal::Deadline.to_api_error("d");
        assert_eq!(
            (error.kind.status(), error.retry_after_seconds),
            (503, Some(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn calls_spread_over_replicas_and_wait_when_all_are_full() {
        let deployment = deployment(8, 60_000);
        start_all(&deployment, &deployment.plan(2));
        let mut leases = Vec::new();
        for _ in 0..4 {
            leases.push(deployment.acquire().await.unwrap());
        }
        let per_replica = |leases: &[Lease], id: u64| {
            leases
                .iter()
                .filter(|lease| lease.replica() == ReplicaId(id))
                .count()
        };
        assert_eq!((per_replica(&leases, 1), per_replica(&leases, 2)), (2, 2));
        let fifth = tokio::spawn({
            let deployment = deployment.clone();
            async move { deployment.acquire().await.map(|lease| lease.replica()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(deployment.observed().1.queued, 1);
        let freed = leases.remove(3).replica();
        assert_eq!(fifth.await.unwrap(), Ok(freed));
    }

    #[tokio::test(start_paused = true)]
    async fn scaling_down_drains_the_least_busy_and_stops_it_only_when_empty() {
        let deployment = deployment(8, 60_000);
        start_all(&deployment, &deployment.plan(2));
        let busy = deployment.acquire().await.unwrap();
        let plan = deployment.plan(1);
        assert_eq!(
            plan.drain,
            vec![ReplicaId(2)],
            "the idle replica goes first"
        );
        assert_eq!(plan.stop, vec![ReplicaId(2)], "it has nothing in flight");

        let plan = deployment.plan(0);
        assert_eq!(
            (plan.drain.clone(), plan.stop.clone()),
            (vec![busy.replica()], vec![])
        );
        // A draining replica takes no new call: this one waits.
        let next = tokio::spawn({
            let deployment = deployment.clone();
            async move { deployment.acquire().await.map(|lease| lease.replica()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(deployment.queued(), 1);
        drop(busy);
        assert_eq!(deployment.plan(0).stop, vec![ReplicaId(1)]);
        // Load came back: a new replica, and the waiting call gets it.
        let plan = deployment.plan(1);
        start_all(&deployment, &plan);
        assert_eq!(next.await.unwrap(), Ok(plan.start[0]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_replica_is_revived_before_a_new_one_is_started() {
        let deployment = deployment(8, 60_000);
        start_all(&deployment, &deployment.plan(1));
        let busy = deployment.acquire().await.unwrap();
        assert_eq!(deployment.plan(0).drain, vec![busy.replica()]);
        let plan = deployment.plan(1);
        assert!(plan.start.is_empty() && plan.stop.is_empty());
        assert_eq!(deployment.replicas()[0].state, ReplicaState::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_replica_is_stopped_and_its_calls_no_longer_count() {
        let deployment = deployment(8, 60_000);
        start_all(&deployment, &deployment.plan(1));
        deployment.acquire().await.unwrap().lost();
        let plan = deployment.plan(1);
        assert_eq!(plan.stop, vec![ReplicaId(1)]);
        assert_eq!(plan.start, vec![ReplicaId(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_refuses_waiting_and_new_calls() {
        let deployment = deployment(8, 60_000);
        let waiting = tokio::spawn({
            let deployment = deployment.clone();
            async move { deployment.acquire().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        deployment.close();
        assert_eq!(waiting.await.unwrap(), Err(Refusal::Closed));
        assert_eq!(deployment.acquire().await.map(|_| ()), Err(Refusal::Closed));
    }
}
