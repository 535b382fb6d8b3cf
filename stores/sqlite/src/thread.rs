//! The store's connection lives on one thread of its own, fed by a queue. Callers await a
//! reply instead of blocking a thread each on a lock, and the hot path's writes (admissions
//! and settlements) are group-committed: the thread runs every such write already waiting in
//! the queue inside one transaction, each in a savepoint of its own, commits once, and only
//! then answers them all. A write is answered after its commit, never before, so grouping
//! changes what a commit costs, not what an answer promises.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use ferry_core::ports::{StoreError, StoreResult};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{from_sql_int, unavailable};

/// Writes committed together at most; bounds the latency a group adds to its first member.
const MAX_GROUP: usize = 128;

enum Job {
    /// Runs alone, managing its own transaction if it needs one.
    Exclusive(Box<dyn FnOnce(&mut Connection) + Send>),
    /// Runs inside the current group's transaction.
    Grouped(Box<dyn GroupedWork>),
}

trait GroupedWork: Send {
    /// Runs the work in a savepoint: a failed work leaves no writes behind.
    fn run(&mut self, connection: &Connection);
    /// Answers the caller once the group's commit is known.
    fn finish(self: Box<Self>, commit: StoreResult<()>);
}

struct Grouped<T, F> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> GroupedWork for Grouped<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
{
    fn run(&mut self, connection: &Connection) {
        let Some(work) = self.work.take() else {
            return;
        };
        let result = connection
            .execute_batch("SAVEPOINT grouped")
            .map_err(unavailable)
            .and_then(|()| {
                let result = work(connection);
                let end = if result.is_ok() {
                    "RELEASE grouped"
                } else {
                    "ROLLBACK TO grouped; RELEASE grouped"
                };
                connection.execute_batch(end).map_err(unavailable)?;
                result
            });
        self.result = Some(result);
    }

    fn finish(self: Box<Self>, commit: StoreResult<()>) {
        let answer = match (commit, self.result) {
            (Err(error), _) => Err(error),
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(unavailable("the write never ran")),
        };
        // The caller may have gone; its write stands either way.
        let _ = self.reply.send(answer);
    }
}

/// A handle on the store thread; cloning it shares the thread.
#[derive(Clone)]
pub(super) struct StoreThread {
    jobs: Sender<Job>,
    /// Jobs sent and not yet taken off the queue.
    queued: Arc<AtomicUsize>,
    /// Dropped with the last handle; the checkpointer stops when it can no longer upgrade it.
    alive: Arc<()>,
}

/// How often the checkpointer copies the log back into the database. Often, so each
/// checkpoint's fsync has little to write back (measured: fewer slow calls at 100 ms than at
/// 500 ms or 2 s).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// The queue and how many grouped writes may share a commit.
struct Queue {
    jobs: Receiver<Job>,
    queued: Arc<AtomicUsize>,
    max_group: usize,
}

impl Queue {
    fn next(&self) -> Option<Job> {
        let job = self.jobs.recv().ok()?;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Some(job)
    }

    fn try_next(&self) -> Option<Job> {
        let job = self.jobs.try_recv().ok()?;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Some(job)
    }
}

impl StoreThread {
    pub(super) fn spawn(connection: Connection, group_commit: bool) -> StoreResult<StoreThread> {
        let (jobs, receiver) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let queue = Queue {
            jobs: receiver,
            queued: queued.clone(),
            max_group: if group_commit { MAX_GROUP } else { 1 },
        };
        std::thread::Builder::new()
            .name("ferry-sqlite".into())
            .spawn(move || serve(connection, queue))
            .map_err(unavailable)?;
        Ok(StoreThread {
            jobs,
            queued,
            alive: Arc::new(()),
        })
    }

    /// Runs `work` alone on the store thread.
    pub(super) async fn exclusive<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job::Exclusive(Box::new(move |connection| {
            let _ = reply.send(work(connection));
        }));
        self.submit(job, answer).await
    }

    /// Runs `work` in the next group commit; answers once that commit is durable.
    pub(super) async fn grouped<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Job::Grouped(Box::new(Grouped {
            work: Some(work),
            result: None,
            reply,
        }));
        self.submit(job, answer).await
    }

    /// As `grouped`, unless `limit` jobs or more are already queued: then it is refused at
    /// once, so an overload turns new work away instead of queueing it past every deadline.
    pub(super) async fn grouped_unless_busy<T, F>(&self, limit: usize, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let queued = self.queued.load(Ordering::Relaxed);
        if queued >= limit {
            return Err(StoreError::Busy(format!("{queued} jobs queued")));
        }
        self.grouped(work).await
    }

    async fn submit<T>(
        &self,
        job: Job,
        answer: oneshot::Receiver<StoreResult<T>>,
    ) -> StoreResult<T> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.jobs
            .send(job)
            .map_err(|_| unavailable("the store thread has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the store thread dropped a request"))?
    }
}

/// Copies the write-ahead log back into the database file every so often, for as long as the
/// store lives, on a connection of its own: PASSIVE never waits for the writer, so the store
/// thread keeps committing meanwhile. But a checkpoint racing a busy writer never catches up,
/// so the log never starts over and grows without bound (seen: 600 MB in 8 s at 1,500
/// calls/s, every write extending the file). Once it passes `catch_up_bytes`, the few frames
/// written since are copied on the store thread itself, between two of its transactions, and
/// the log starts over. That step stalls the store thread for a checkpoint's two fsyncs, so
/// it is kept rare.
pub(super) fn spawn_checkpointer(
    path: &Path,
    store: &StoreThread,
    catch_up_bytes: u64,
) -> StoreResult<()> {
    let connection = Connection::open(path).map_err(unavailable)?;
    connection
        .execute_batch("PRAGMA busy_timeout = 5000;")
        .map_err(unavailable)?;
    let page_bytes = from_sql_int(
        connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(unavailable)?,
    );
    let alive = Arc::downgrade(&store.alive);
    let (jobs, queued) = (store.jobs.clone(), store.queued.clone());
    std::thread::Builder::new()
        .name("ferry-sqlite-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(CHECKPOINT_EVERY);
                if alive.upgrade().is_none() {
                    return;
                }
                let log_frames = match checkpoint(&connection) {
                    Ok(frames) => frames,
                    Err(error) => {
                        tracing::warn!(%error, "checkpoint failed; the write-ahead log grows until one succeeds");
                        continue;
                    }
                };
                if log_frames.saturating_mul(page_bytes) < catch_up_bytes {
                    continue;
                }
                let (done, finished) = mpsc::channel();
                let catch_up = Job::Exclusive(Box::new(move |connection: &mut Connection| {
                    if let Err(error) = checkpoint(connection) {
                        tracing::warn!(%error, "checkpoint failed; the write-ahead log grows until one succeeds");
                    }
                    let _ = done.send(());
                }));
                // One at a time: wait for it before sleeping again.
                queued.fetch_add(1, Ordering::Relaxed);
                if jobs.send(catch_up).is_err() || finished.recv().is_err() {
                    return;
                }
            }
        })
        .map_err(unavailable)?;
    Ok(())
}

/// A PASSIVE checkpoint; returns how many frames the log holds.
fn checkpoint(connection: &Connection) -> rusqlite::Result<u64> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok(row.get::<_, i64>(1)?.try_into().unwrap_or(0))
    })
}

fn serve(mut connection: Connection, queue: Queue) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            // Every handle is gone: the store was dropped.
            None => match queue.next() {
                Some(job) => job,
                None => return,
            },
        };
        match job {
            Job::Exclusive(work) => work(&mut connection),
            Job::Grouped(first) => next = commit_group(&connection, first, &queue),
        }
    }
}

/// Runs `first` and every grouped job queued behind it (up to an exclusive one) in one
/// transaction; returns the exclusive job it stopped at, if any.
fn commit_group(
    connection: &Connection,
    first: Box<dyn GroupedWork>,
    queue: &Queue,
) -> Option<Job> {
    let mut group = vec![first];
    let mut stopped_at = None;
    let commit = connection
        .execute_batch("BEGIN IMMEDIATE")
        .map_err(unavailable)
        .and_then(|()| {
            group[0].run(connection);
            while group.len() < queue.max_group && !connection.is_autocommit() {
                match queue.try_next() {
                    Some(Job::Grouped(mut work)) => {
                        work.run(connection);
                        group.push(work);
                    }
                    Some(exclusive) => {
                        stopped_at = Some(exclusive);
                        break;
                    }
                    None => break,
                }
            }
            // Some failures (a full disk, I/O errors) make SQLite roll back the whole
            // transaction; then nothing of this group stands, and none may run outside it.
            if connection.is_autocommit() {
                return Err(unavailable("the group's transaction was rolled back"));
            }
            connection.execute_batch("COMMIT").map_err(|error| {
                let _ = connection.execute_batch("ROLLBACK");
                unavailable(error)
            })
        });
    for work in group {
        work.finish(commit.clone());
    }
    stopped_at
}
