//! `LeasedAccounts`: the store's `Accounts`, with calls admitted and settled in memory against
//! credit leases (`ferry_core::lease`) where their limits are large enough to share.
//!
//! A call's admission takes from this replica's lease for its scope (tenant, key, buckets,
//! caps), taking a new lease from the store when that one is spent or gone and the scope is
//! busy (`lease::Demand`); where the scope is quiet or the store leases nothing (small balances
//! and limits, or a store without leases) the call is admitted by the store alone, as without
//! leases. A leased call's settlement is decided here; its usage
//! is appended to the journal (group-committed) before the answer is final, and a drain task
//! writes the journal to the store in batches, idempotently by request id. Without a journal
//! (no disk outlives the process), each leased call's usage is written to the store before its
//! answer is final, the same idempotence; calls finishing together share one write (the
//! store's group commit: while one batch is written the next gathers), so a busy replica's
//! calls do not race each other for the lease's item.
//!
//! At start the journal is replayed: its usage written again (a duplicate changes nothing) and
//! the leases it took and never gave back released, their draws all counted as used.
//! Every other `Accounts` operation goes to the store as it is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_core::Money;
use ferry_core::admission::{Admission, Grant, Refusal};
use ferry_core::lease::{self, Demand, Lease, LeasedCharge, Taken};
use ferry_core::model::Price;
use ferry_core::ports::{
    Accounts, LeasedUsage, PriceRecord, Settled, StoreError, StoreResult, UsageRecord,
};
use ferry_journal::{Durability, Journal, Owned};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::clock;

/// Leased calls written to the store in one batch at most.
const MOST_PER_BATCH: usize = 1024;
/// How often spent leases are looked for and given back.
const REAP_EVERY: Duration = Duration::from_millis(200);
/// How often the journals of replicas that died are looked for, and written to the store.
const ADOPT_EVERY: Duration = Duration::from_secs(5);

/// What the journal keeps.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Record {
    /// A lease taken, and what it drew from each bucket.
    Lease { id: String, draws: Vec<u64> },
    /// A leased call's usage, as charged.
    Usage(Box<LeasedUsage>),
    /// A lease given back.
    Released { id: String },
}

/// The leases this replica holds and the calls admitted against them.
struct Book {
    /// The lease each scope's calls take from now.
    current: HashMap<String, String>,
    leases: HashMap<String, Lease>,
    /// Per lease: its calls settled here and not yet written to the store.
    undrained: HashMap<String, u64>,
    calls: HashMap<String, (String, Taken)>,
    /// How often each scope is called: only busy ones are leased for.
    demand: HashMap<String, Demand>,
    /// Calls a window that make a scope busy (`lease::BUSY_CALLS` unless set).
    busy_calls: u64,
    /// Per tenant: its calls being admitted or settled by the store now (none: no entry).
    at_store: HashMap<String, u64>,
}

impl Book {
    /// Counts `call` against its scope's demand: whether the scope is busy enough to lease
    /// (called often, or with its tenant's calls crowding the store already).
    fn busy(&mut self, scope: &str, call: &Admission) -> bool {
        let at_store = self.at_store.get(&call.tenant_id).copied().unwrap_or(0);
        let crowded = at_store >= lease::BUSY_AT_STORE;
        if let Some(demand) = self.demand.get_mut(scope) {
            return demand.note(call.now_ms, self.busy_calls) || crowded;
        }
        let mut demand = Demand::default();
        let busy = demand.note(call.now_ms, self.busy_calls);
        self.demand.insert(scope.to_owned(), demand);
        busy || crowded
    }

    /// Admits `call` from its scope's current lease, if that has room.
    fn take(&mut self, scope: &str, call: &Admission) -> Option<Taken> {
        let lease_id = self.current.get(scope)?.clone();
        let taken = self.leases.get_mut(&lease_id)?.take(call)?;
        self.calls
            .insert(call.request_id.clone(), (lease_id, taken.clone()));
        Some(taken)
    }

    /// Settles a call this replica admitted from a lease: the lease, and what the call is
    /// charged from it; none for a call the store admitted. (A lease is given back only once
    /// every call it admitted is settled, so a call's lease is always here.)
    fn settle(&mut self, usage: &UsageRecord) -> Option<(String, LeasedCharge)> {
        let (lease_id, taken) = self.calls.remove(&usage.request_id)?;
        let actual = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        let charge = self
            .leases
            .get_mut(&lease_id)?
            .settle(&taken, Some(usage.cost), actual);
        *self.undrained.entry(lease_id.clone()).or_default() += 1;
        Some((lease_id, charge))
    }
}

/// A tenant's call being admitted or settled by the store, counted while it waits (and not
/// after, even if its caller gives up).
struct AtTheStore<'a> {
    book: &'a Mutex<Book>,
    tenant_id: &'a str,
}

impl<'a> AtTheStore<'a> {
    fn new(book: &'a Mutex<Book>, tenant_id: &'a str) -> AtTheStore<'a> {
        *lock(book).at_store.entry(tenant_id.to_owned()).or_default() += 1;
        AtTheStore { book, tenant_id }
    }
}

impl Drop for AtTheStore<'_> {
    fn drop(&mut self) {
        let mut book = lock(self.book);
        if let Some(waiting) = book.at_store.get_mut(self.tenant_id) {
            *waiting -= 1;
            if *waiting == 0 {
                book.at_store.remove(self.tenant_id);
            }
        }
    }
}

/// A journaled call's usage on its way to the store, with its journal sequence number.
struct Pending {
    usage: LeasedUsage,
    sequence: u64,
}

/// Why leases could not start: the journal could not be opened, or its replay written.
#[derive(Debug, thiserror::Error)]
pub enum LeaseSetupError {
    #[error(transparent)]
    Journal(#[from] ferry_journal::JournalError),
    #[error("the usage journal's directory: {0}")]
    Directory(#[from] std::io::Error),
    #[error("replaying the usage journal: {0}")]
    Replay(#[from] ferry_core::ports::StoreError),
}

pub struct LeasedAccounts {
    inner: Arc<dyn Accounts>,
    book: Arc<Mutex<Book>>,
    /// One lease is taken at a time: a burst of calls finding none takes one, not one each.
    taking: tokio::sync::Mutex<()>,
    journal: Option<Journal>,
    /// The journal directory shared with the other replicas over the same data directory, and
    /// this replica's own in it (locked while this process lives).
    journals: Option<(PathBuf, Mutex<Option<Owned>>)>,
    pending: mpsc::UnboundedSender<Pending>,
    /// Without a journal: leased calls' usage waiting for the next write to the store, each
    /// with its caller waiting for the write's outcome.
    unwritten: Mutex<Vec<(LeasedUsage, oneshot::Sender<StoreResult<()>>)>>,
    /// Held while a batch of `unwritten` is being written.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Makes lease ids unique to this replica.
    replica: String,
    next_lease: AtomicU64,
}

/// Notes that `count` of a lease's settled calls are in the store.
fn drained(book: &Mutex<Book>, lease_id: &str, count: u64) {
    let mut book = lock(book);
    if let Some(undrained) = book.undrained.get_mut(lease_id) {
        *undrained = undrained.saturating_sub(count);
    }
}

fn lock<T>(guarded: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    guarded.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LeasedAccounts {
    /// Leases over `inner`, journaled in `journal` (none: each leased call written to the
    /// store before its answer). Replays what a previous process left in the journal first.
    pub async fn open(
        inner: Arc<dyn Accounts>,
        journal: Option<(&Path, Durability)>,
    ) -> Result<Arc<LeasedAccounts>, LeaseSetupError> {
        let (leased, receiver) = LeasedAccounts::open_quiet(inner, journal).await?;
        tokio::spawn(drain(Arc::downgrade(&leased), receiver));
        Ok(leased)
    }

    /// As [`LeasedAccounts::open`], but its drain never runs: a replica that dies right after
    /// answering, its calls' usage only in the journal and its leases never given back. For
    /// crash tests.
    #[cfg(feature = "test-util")]
    pub async fn open_without_drain(
        inner: Arc<dyn Accounts>,
        journal: Option<(&Path, Durability)>,
    ) -> Result<Arc<LeasedAccounts>, LeaseSetupError> {
        Ok(LeasedAccounts::open_quiet(inner, journal).await?.0)
    }

    async fn open_quiet(
        inner: Arc<dyn Accounts>,
        journal: Option<(&Path, Durability)>,
    ) -> Result<(Arc<LeasedAccounts>, mpsc::UnboundedReceiver<Pending>), LeaseSetupError> {
        let random: [u8; 6] = ferry_clock::random_bytes();
        let replica: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
        let (journal, journals) = match journal {
            Some((root, durability)) => {
                let owned = ferry_journal::claim(root, &replica)?;
                let (journal, _) = Journal::open(owned.directory(), durability)?;
                adopt_orphans(inner.as_ref(), root, &owned).await?;
                (
                    Some(journal),
                    Some((root.to_owned(), Mutex::new(Some(owned)))),
                )
            }
            None => (None, None),
        };
        let (pending, receiver) = mpsc::unbounded_channel();
        let leased = Arc::new(LeasedAccounts {
            inner,
            book: Arc::new(Mutex::new(Book {
                current: HashMap::new(),
                leases: HashMap::new(),
                undrained: HashMap::new(),
                calls: HashMap::new(),
                demand: HashMap::new(),
                busy_calls: lease::BUSY_CALLS,
                at_store: HashMap::new(),
            })),
            taking: tokio::sync::Mutex::new(()),
            journal,
            journals,
            pending,
            unwritten: Mutex::new(Vec::new()),
            writing: Arc::new(tokio::sync::Mutex::new(())),
            replica,
            next_lease: AtomicU64::new(1),
        });
        Ok((leased, receiver))
    }

    /// Writes to the store what replicas that died left in their journals.
    async fn adopt_orphans(&self) {
        let Some((root, owned)) = &self.journals else {
            return;
        };
        let held = owned.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(held) = held else {
            return;
        };
        if let Err(error) = adopt_orphans(self.inner.as_ref(), root, &held).await {
            tracing::warn!(%error, "a dead replica's journal could not be written to the store yet");
        }
        *owned.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
    }

    async fn append(&self, record: &Record) -> Option<u64> {
        let journal = self.journal.as_ref()?;
        let bytes = serde_json::to_vec(record).ok()?;
        match journal.append(bytes).await {
            Ok(sequence) => Some(sequence),
            Err(error) => {
                tracing::error!(%error, "the usage journal could not be written");
                None
            }
        }
    }

    /// Takes a lease for `call`'s scope and admits `call` from it, or says the store leases
    /// none.
    async fn lease_for(&self, scope: &str, call: &Admission) -> StoreResult<Option<Taken>> {
        let _one_at_a_time = self.taking.lock().await;
        if let Some(taken) = lock(&self.book).take(scope, call) {
            return Ok(Some(taken));
        }
        let number = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let lease_id = format!("{}{}:{number}", lease::ID_PREFIX, self.replica);
        let Some((leased, grant)) = self.inner.lease(call, &lease_id).await? else {
            tracing::debug!(scope, "the store leased nothing: calls admitted one by one");
            return Ok(None);
        };
        tracing::debug!(scope, lease_id, hold = %leased.hold, "lease taken");
        if let Some(demand) = lock(&self.book).demand.get_mut(scope) {
            demand.leased();
        }
        let draws = leased.draws.iter().map(|draw| draw.amount).collect();
        if self.journal.is_some()
            && self
                .append(&Record::Lease {
                    id: lease_id.clone(),
                    draws,
                })
                .await
                .is_none()
        {
            // Unjournaled, a crash would leave it to expiry; give it back now instead.
            let used: Vec<u64> = leased.draws.iter().map(|draw| draw.amount).collect();
            self.inner.release_lease(&lease_id, &used).await?;
            return Ok(None);
        }
        let mut book = lock(&self.book);
        book.leases
            .insert(lease_id.clone(), Lease::new(&leased, grant.rate));
        book.current.insert(scope.to_owned(), lease_id);
        Ok(book.take(scope, call))
    }

    /// Writes a leased call's usage: journaled and drained, or straight to the store.
    async fn persist(&self, usage: LeasedUsage) -> StoreResult<()> {
        if self.journal.is_some() {
            let journaled = self.append(&Record::Usage(Box::new(usage.clone()))).await;
            if let Some(sequence) = journaled {
                let _ = self.pending.send(Pending { usage, sequence });
                return Ok(());
            }
        }
        self.write_now(usage).await
    }

    /// Writes `usage` to the store with whatever other calls' usage is waiting: the first
    /// caller to take `writing` starts a write of the batch, the others find theirs written.
    /// The write runs as a task of its own, so a caller that gives up (its client left) does
    /// not abandon the others' usage halfway through a write that may have committed.
    async fn write_now(&self, usage: LeasedUsage) -> StoreResult<()> {
        let (sender, mut written) = oneshot::channel();
        lock(&self.unwritten).push((usage, sender));
        loop {
            let writer = self.writing.clone().lock_owned().await;
            match written.try_recv() {
                Ok(outcome) => return outcome,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(StoreError::Unavailable(
                        "the write of this call's usage was abandoned".into(),
                    ));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<_> = {
                let mut unwritten = lock(&self.unwritten);
                let count = unwritten.len().min(MOST_PER_BATCH);
                unwritten.drain(..count).collect()
            };
            let (inner, book) = (self.inner.clone(), self.book.clone());
            let write = tokio::spawn(async move {
                let _writer = writer;
                let (usage, callers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let outcome = inner.settle_leased(&usage).await.map(|_| ());
                for written in &usage {
                    drained(&book, &written.lease_id, 1);
                }
                for caller in callers {
                    let _ = caller.send(outcome.clone());
                }
            });
            // Its outcome arrives through `written` (this caller's usage may be in a later
            // batch, past `MOST_PER_BATCH`).
            let _ = write.await;
        }
    }

    /// Leases for a scope once it makes `calls` calls a window (a benchmark that must see a
    /// slow local store's calls leased sets 1).
    pub fn set_busy_calls(&self, calls: u64) {
        lock(&self.book).busy_calls = calls.max(1);
    }

    /// Stops leasing and gives every lease back once its calls are settled and in the store,
    /// waiting at most `grace`: for a replica shutting down, after its calls in flight ended.
    /// (What is not given back by then expires, or is given back by the next process over
    /// the same journal.)
    pub async fn close(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        {
            let mut book = lock(&self.book);
            book.current.clear();
            book.demand.clear();
            for lease in book.leases.values_mut() {
                lease.admits_until_ms = 0;
            }
        }
        while !lock(&self.book).leases.is_empty() && tokio::time::Instant::now() < deadline {
            self.reap().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let drained = {
            let book = lock(&self.book);
            book.leases.is_empty() && book.undrained.values().all(|count| *count == 0)
        };
        if drained && let Some((_, owned)) = &self.journals {
            // Every record is in the store: this replica's journal goes with it.
            let held = owned.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(Err(error)) = held.map(Owned::remove) {
                tracing::warn!(%error, "the usage journal could not be removed");
            }
        }
    }

    /// Gives back every lease that admits no more and whose calls are all in the store.
    async fn reap(&self) {
        let now_ms = clock::unix_millis();
        let spent: Vec<(String, Vec<u64>)> = {
            let mut book = lock(&self.book);
            let spent: Vec<String> = book
                .leases
                .iter()
                .filter(|(id, lease)| {
                    lease.is_spent(now_ms)
                        && book.undrained.get(*id).is_none_or(|count| *count == 0)
                })
                .map(|(id, _)| id.clone())
                .collect();
            book.current.retain(|_, id| !spent.contains(id));
            book.demand.retain(|_, demand| !demand.is_stale(now_ms));
            spent
                .into_iter()
                .filter_map(|id| {
                    book.undrained.remove(&id);
                    let lease = book.leases.remove(&id)?;
                    Some((id, lease.used().to_vec()))
                })
                .collect()
        };
        for (lease_id, used) in spent {
            match self.inner.release_lease(&lease_id, &used).await {
                Ok(()) => {
                    self.append(&Record::Released { id: lease_id }).await;
                }
                Err(error) => {
                    // Its hold expires and the store returns it then.
                    tracing::warn!(lease = %lease_id, %error, "a lease could not be given back");
                }
            }
        }
    }
}

/// Writes to the store the journals under `root` whose replicas are gone (a crash, a
/// `kill -9`): their calls' usage (a duplicate changes nothing) and the leases they never
/// gave back, all they drew counted as used. Then removes them.
async fn adopt_orphans(
    inner: &dyn Accounts,
    root: &Path,
    own: &Owned,
) -> Result<(), LeaseSetupError> {
    for orphan in ferry_journal::orphans(root, own)? {
        replay(inner, &orphan.records()?).await?;
        orphan.remove()?;
    }
    Ok(())
}

/// Writes replayed usage to the store and gives back the leases it names that were never
/// given back, counting all they drew as used.
async fn replay(inner: &dyn Accounts, records: &[Vec<u8>]) -> Result<(), LeaseSetupError> {
    let mut usage = Vec::new();
    let mut leases: Vec<(String, Vec<u64>)> = Vec::new();
    for record in records {
        match serde_json::from_slice::<Record>(record) {
            Ok(Record::Usage(leased)) => usage.push(*leased),
            Ok(Record::Lease { id, draws }) => leases.push((id, draws)),
            Ok(Record::Released { id }) => leases.retain(|(lease_id, _)| *lease_id != id),
            Err(error) => tracing::error!(%error, "a journal record could not be read"),
        }
    }
    for batch in usage.chunks(MOST_PER_BATCH) {
        inner.settle_leased(batch).await?;
    }
    for (lease_id, used) in leases {
        inner.release_lease(&lease_id, &used).await?;
    }
    if !usage.is_empty() {
        tracing::info!(
            calls = usage.len(),
            "a journal left by a replica that died was written to the store"
        );
    }
    Ok(())
}

/// Writes journaled usage to the store in batches, retrying until it is written (it is safe
/// in the journal meanwhile), and gives back spent leases.
async fn drain(
    leased: std::sync::Weak<LeasedAccounts>,
    mut pending: mpsc::UnboundedReceiver<Pending>,
) {
    let mut reap = tokio::time::interval(REAP_EVERY);
    let mut adopt = tokio::time::interval(ADOPT_EVERY);
    loop {
        let (first, adopting) = tokio::select! {
            first = pending.recv() => match first {
                Some(first) => (Some(first), false),
                None => return,
            },
            _ = reap.tick() => (None, false),
            _ = adopt.tick() => (None, true),
        };
        let Some(accounts) = leased.upgrade() else {
            return;
        };
        if adopting {
            accounts.adopt_orphans().await;
            continue;
        }
        let Some(first) = first else {
            accounts.reap().await;
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < MOST_PER_BATCH {
            match pending.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let (usage, sequences): (Vec<LeasedUsage>, Vec<u64>) = batch
            .into_iter()
            .map(|pending| (pending.usage, pending.sequence))
            .unzip();
        let mut backoff = Duration::from_millis(20);
        while let Err(error) = accounts.inner.settle_leased(&usage).await {
            tracing::warn!(%error, calls = usage.len(), "leased usage not written; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        for written in &usage {
            drained(&accounts.book, &written.lease_id, 1);
        }
        if let (Some(journal), Some(last)) = (&accounts.journal, sequences.into_iter().max())
            && let Err(error) = journal.drained(last)
        {
            tracing::warn!(%error, "drained journal segments could not be deleted");
        }
        // A lease waiting only on these calls' usage may go back now, not at the next tick.
        accounts.reap().await;
    }
}

super::accounts_passing_to!(LeasedAccounts, inner, {
    async fn admit(&self, admission: &Admission) -> StoreResult<Result<Grant, Refusal>> {
        let scope = lease::scope(admission);
        let (from_current, busy) = {
            let mut book = lock(&self.book);
            let busy = book.busy(&scope, admission);
            (book.take(&scope, admission), busy)
        };
        let taken = match from_current {
            Some(taken) => Some(taken),
            None if busy => self.lease_for(&scope, admission).await?,
            None => None,
        };
        match taken {
            Some(taken) => Ok(Ok(Grant {
                tats: Vec::new(),
                rate: taken.rate,
                hold_posting: None,
            })),
            None => {
                let _crowd = AtTheStore::new(&self.book, &admission.tenant_id);
                self.inner.admit(admission).await
            }
        }
    }

    async fn settle(&self, usage: &UsageRecord) -> StoreResult<Settled> {
        let charge = lock(&self.book).settle(usage);
        let Some((lease_id, charge)) = charge else {
            let _crowd = AtTheStore::new(&self.book, &usage.tenant_id);
            return self.inner.settle(usage).await;
        };
        let mut charged = charge.charged;
        let mut loss = charge.short;
        if charge.short > Money::ZERO {
            // It cost more than the lease had left: drawn from the balance as far as it goes.
            let drawn = self
                .inner
                .extend_lease(&lease_id, charge.short)
                .await
                .unwrap_or(Money::ZERO);
            charged = Money::from_nanos(charged.nanos() + drawn.nanos());
            loss = Money::from_nanos(loss.nanos() - drawn.nanos());
        }
        let record = LeasedUsage {
            lease_id,
            usage: UsageRecord {
                cost: charged,
                ..usage.clone()
            },
            loss,
        };
        self.persist(record).await?;
        Ok(Settled::Recorded { charged })
    }

    async fn put_price(&self, price: &PriceRecord) -> StoreResult<()> {
        self.inner.put_price(price).await
    }

    async fn price_at(
        &self,
        model: &str,
        deployment: &str,
        at_ms: u64,
    ) -> StoreResult<Option<Price>> {
        self.inner.price_at(model, deployment, at_ms).await
    }
});

impl std::fmt::Debug for LeasedAccounts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LeasedAccounts")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}
