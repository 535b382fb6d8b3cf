//! One deployment's replicas and waiting calls: which replica a call goes to, who waits, and
//! what a scaling decision changes. Plain state behind a lock; the I/O is in `control` and
//! `proxy`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// `/stats` calls that failed in a row; a replica that stops answering is lost.
    #[serde(skip)]
    stats_failures: u32,
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
    /// Replicas keep failing to start; retry after the backoff.
    StartFailing {
        retry_after_seconds: u64,
    },
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
            Refusal::StartFailing {
                retry_after_seconds,
            } => {
                return ApiError::new(
                    ErrorKind::NoCapacity,
                    format!("replicas of `{deployment}` are failing to start; retry later"),
                )
                .with_code("replica_start_failed")
                .retry_after(retry_after_seconds.max(1));
            }
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
    waiters: VecDeque<oneshot::Sender<Result<Lease, Refusal>>>,
    closed: bool,
    /// Starts that failed in a row, and when the next may be tried.
    start_failures: u32,
    retry_start_at: Option<tokio::time::Instant>,
    /// A pre-warm hint not yet handed to the autoscaler: (replicas, for how long).
    prewarm: Option<(u32, Duration)>,
}

#[derive(Debug)]
pub struct Deployment {
    config: DeploymentConfig,
    /// Shared by every deployment of a pool: a provider keys its replicas by id alone.
    ids: Arc<AtomicU64>,
    inner: Mutex<Inner>,
    /// Wakes the autoscaler loop before its tick: a call waits, or a drained replica emptied.
    pub(crate) wake: Notify,
    starts: StartCounters,
}

/// Replicas that became ready, for metrics.
#[derive(Debug, Default)]
struct StartCounters {
    ready: AtomicU64,
    /// Ready while no other replica was: calls (if any) waited for this one.
    cold: AtomicU64,
    cold_ms: AtomicU64,
}

/// What [`Deployment::starts`] reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Starts {
    pub ready: u64,
    pub cold: u64,
    pub cold_ms: u64,
}

impl Deployment {
    /// `ids` numbers replicas across the pool (see `Pool::new`).
    pub fn new(config: DeploymentConfig, ids: Arc<AtomicU64>) -> Arc<Deployment> {
        Arc::new(Deployment {
            config,
            ids,
            inner: Mutex::new(Inner {
                replicas: Vec::new(),
                waiters: VecDeque::new(),
                closed: false,
                start_failures: 0,
                retry_start_at: None,
                prewarm: None,
            }),
            wake: Notify::new(),
            starts: StartCounters::default(),
        })
    }

    /// Replicas started so far, cold starts among them and how long those took in all.
    pub fn starts(&self) -> Starts {
        Starts {
            ready: self.starts.ready.load(Ordering::Relaxed),
            cold: self.starts.cold.load(Ordering::Relaxed),
            cold_ms: self.starts.cold_ms.load(Ordering::Relaxed),
        }
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
            Ok(Ok(answer)) => answer,
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
            if let Err(Ok(mut lease)) = waiter.send(Ok(lease)) {
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
        inner.start_failures = 0;
        inner.retry_start_at = None;
        let cold = !inner
            .replicas
            .iter()
            .any(|replica| replica.state == ReplicaState::Ready);
        let replica = inner.replica_mut(id)?;
        if replica.state != ReplicaState::Starting {
            return None;
        }
        replica.state = ReplicaState::Ready;
        let took_ms = u64::try_from(replica.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.starts.ready.fetch_add(1, Ordering::Relaxed);
        if cold {
            self.starts.cold.fetch_add(1, Ordering::Relaxed);
            self.starts.cold_ms.fetch_add(took_ms, Ordering::Relaxed);
        }
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

    /// What a replica's `/stats` said, or `None` when it did not answer.
    pub(crate) fn record_load(&self, id: ReplicaId, load: Option<WorkerLoad>) {
        let mut inner = self.lock();
        let Some(replica) = inner.replica_mut(id) else {
            return;
        };
        match load {
            Some(load) => {
                replica.load = load;
                replica.stats_failures = 0;
            }
            None => {
                replica.stats_failures += 1;
                if replica.stats_failures >= STATS_FAILURES_LOST
                    && replica.state == ReplicaState::Ready
                {
                    tracing::warn!(deployment = %self.config.name, replica = %id, "replica stopped answering /stats; routing no more calls to it");
                    replica.state = ReplicaState::Lost;
                }
            }
        }
    }

    /// A replica failed to start: back off before the next try, and if none is coming, turn
    /// the waiting calls away now rather than at their deadline.
    pub(crate) fn start_failed(&self) -> Duration {
        let mut inner = self.lock();
        inner.start_failures = inner.start_failures.saturating_add(1);
        let backoff = Duration::from_secs(1 << inner.start_failures.min(6)).min(MAX_START_BACKOFF);
        inner.retry_start_at = Some(tokio::time::Instant::now() + backoff);
        let coming = inner
            .replicas
            .iter()
            .any(|replica| matches!(replica.state, ReplicaState::Starting | ReplicaState::Ready));
        if !coming {
            let refusal = Refusal::StartFailing {
                retry_after_seconds: backoff.as_secs(),
            };
            for waiter in inner.waiters.drain(..) {
                let _ = waiter.send(Err(refusal));
            }
        }
        backoff
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
        let backing_off = inner
            .retry_start_at
            .is_some_and(|at| tokio::time::Instant::now() < at);
        while active(&inner) < wanted {
            let revived = inner
                .replicas
                .iter_mut()
                .filter(|replica| replica.state == ReplicaState::Draining)
                .max_by_key(|replica| replica.in_flight);
            match revived {
                Some(replica) => replica.state = ReplicaState::Ready,
                None if backing_off => break,
                None => {
                    let id = ReplicaId(self.ids.fetch_add(1, Ordering::Relaxed));
                    inner.replicas.push(Replica {
                        id,
                        state: ReplicaState::Starting,
                        url: None,
                        in_flight: 0,
                        load: WorkerLoad::default(),
                        stats_failures: 0,
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
            // A lost replica may still be streaming to callers (it was only slow to answer):
            // it is stopped, like a drained one, once nothing is in flight on it.
            let done = matches!(replica.state, ReplicaState::Lost | ReplicaState::Draining)
                && replica.in_flight == 0;
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

/// `/stats` calls failed in a row before a replica counts as lost.
const STATS_FAILURES_LOST: u32 = 3;
const MAX_START_BACKOFF: Duration = Duration::from_secs(60);

fn count(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(max_queue: usize, deadline_ms: u64) -> Arc<Deployment> {
        deployment_in(max_queue, deadline_ms, Arc::new(AtomicU64::new(1)))
    }

    fn deployment_in(max_queue: usize, deadline_ms: u64, ids: Arc<AtomicU64>) -> Arc<Deployment> {
        Deployment::new(
            DeploymentConfig {
                name: "d".into(),
                scaling: ScalingConfig::llm_aware(2.0, 2),
                replica_concurrency: 2,
                max_queue,
                queue_deadline: Duration::from_millis(deadline_ms),
                tick: Duration::from_millis(100),
                start_timeout: Duration::from_secs(10),
            },
            ids,
        )
    }

    /// A call that waits for a replica, spawned and given the chance to queue.
    async fn waiting_call(
        deployment: &Arc<Deployment>,
    ) -> tokio::task::JoinHandle<Result<ReplicaId, Refusal>> {
        let call = tokio::spawn({
            let deployment = deployment.clone();
            async move { deployment.acquire().await.map(|lease| lease.replica()) }
        });
        tokio::task::yield_now().await;
        call
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
        let first = waiting_call(&deployment).await;
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
        let fifth = waiting_call(&deployment).await;
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
        let next = waiting_call(&deployment).await;
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
    async fn a_lost_replica_is_replaced_at_once_and_stopped_once_its_other_calls_end() {
        let deployment = deployment(8, 60_000);
        start_all(&deployment, &deployment.plan(1));
        let streaming = deployment.acquire().await.unwrap();
        deployment.acquire().await.unwrap().lost();
        let plan = deployment.plan(1);
        assert_eq!(plan.start, vec![ReplicaId(2)], "replaced at once");
        assert!(plan.stop.is_empty(), "a stream is still in flight on it");
        drop(streaming);
        assert_eq!(deployment.plan(1).stop, vec![ReplicaId(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_are_numbered_across_the_pool() {
        let ids = Arc::new(AtomicU64::new(1));
        let (first, second) = (
            deployment_in(8, 60_000, ids.clone()),
            deployment_in(8, 60_000, ids),
        );
        assert_eq!(first.plan(1).start, vec![ReplicaId(1)]);
        assert_eq!(second.plan(1).start, vec![ReplicaId(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn room_offered_to_a_call_that_stopped_waiting_is_not_lost() {
        let deployment = deployment(8, 1_000);
        let plan = deployment.plan(1);
        assert_eq!(
            deployment.acquire().await.map(|_| ()),
            Err(Refusal::Deadline)
        );
        start_all(&deployment, &plan);
        assert_eq!(deployment.replicas()[0].in_flight, 0);
        let (one, two) = (deployment.acquire().await, deployment.acquire().await);
        assert!(one.is_ok() && two.is_ok(), "both slots are free");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_starts_back_off_and_turn_waiting_calls_away() {
        let deployment = deployment(8, 60_000);
        let waiting = waiting_call(&deployment).await;
        let [id] = deployment.plan(1).start[..] else {
            unreachable!()
        };
        deployment.remove(id);
        let backoff = deployment.start_failed();
        assert_eq!(
            waiting.await.unwrap(),
            Err(Refusal::StartFailing {
                retry_after_seconds: backoff.as_secs()
            })
        );
        assert!(
            deployment.plan(1).start.is_empty(),
            "not again before the backoff"
        );
        tokio::time::advance(backoff).await;
        assert_eq!(deployment.plan(1).start.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_stops_answering_stats_is_lost() {
        let deployment = deployment(8, 60_000);
        start_all(&deployment, &deployment.plan(1));
        for _ in 0..STATS_FAILURES_LOST {
            deployment.record_load(ReplicaId(1), None);
        }
        assert_eq!(deployment.plan(1).stop, vec![ReplicaId(1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_refuses_waiting_and_new_calls() {
        let deployment = deployment(8, 60_000);
        let waiting = waiting_call(&deployment).await;
        deployment.close();
        assert_eq!(waiting.await.unwrap(), Err(Refusal::Closed));
        assert_eq!(deployment.acquire().await.map(|_| ()), Err(Refusal::Closed));
    }
}
