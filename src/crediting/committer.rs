//! Group commit: a writer thread applies the notifications that arrived together in one
//! transaction and answers every one of them after that single commit.
//!
//! A commit is the costly part of crediting: it waits for the disk (SQLite's WAL fsync,
//! PostgreSQL's WAL flush) and, on SQLite, for the one write lock. Spending it once per batch
//! instead of once per notification is what lets one instance keep up with a flood.
//!
//! The guarantees are those of [`apply_alone`](super::apply_alone), batch or not:
//!
//! - No answer leaves before the commit that holds its notification. When a batch's commit fails,
//!   its notifications are applied again one transaction each, and each is answered for its own.
//! - One notification's failure is its own. It fails the batch's transaction, which is rolled
//!   back; the batch runs again without that notification, which is answered "retry". (A savepoint
//!   per notification would cost two round trips on PostgreSQL and MySQL, and on SQLite a copy
//!   of every page it touches.)
//! - A transient conflict (deadlock, serialization failure, a racing insert) rolls the whole batch
//!   back and runs it again from the start, a bounded number of times; if it persists, each
//!   notification is applied in a transaction of its own.
//! - Row locks are taken in one order. On PostgreSQL a batch locks, in key order, every account
//!   its orders may credit (and those orders) before it writes: first, or in the statement that
//!   writes its first payments when they are all it writes. Two writers, of this instance or
//!   another, wait for each other instead of deadlocking. (On SQLite the database lock serialises
//!   writers anyway.)

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::r2d2::R2D2Connection;
use diesel::result::Error as DieselError;
use tokio::sync::oneshot;

use std::sync::{Arc, Mutex};

use super::apply::{self, Applied};
use super::batch::{apply_batch_in, count_all, BatchError};
pub use super::batch::{ApplyJob, CountJob};
use super::error::{CreditError, Failure};
use super::held::{lock, Held};
use super::settled::{Fingerprint, Settled, SETTLED_CAPACITY};
use crate::books::inbox::{Evidence, Source};
use crate::db::{self, DbConnection, Pool, Retry};
use crate::domain::notification::Notification;
use crate::store;
use crate::telemetry;

/// How many notifications wait for the writers, per writer, before new ones wait to be queued.
const QUEUE_CAPACITY: usize = 4096;

/// How often a batch that met a transient conflict runs again whole before its notifications are
/// applied one transaction each.
const BATCH_ATTEMPTS: u32 = 3;

/// Work for a writer.
enum Job {
    /// A notification to apply; its caller waits for the commit.
    Apply(Box<ApplyJob>),
    /// One more delivery of a notification whose credit is committed: nobody waits for it.
    Count(CountJob),
}

impl Job {
    fn order_no(&self) -> Option<&crate::domain::ids::OrderNo> {
        match self {
            Job::Apply(job) => job.notification.order_no.as_ref(),
            Job::Count(_) => None,
        }
    }
}

/// Why a notification was not applied; every one of them is answered "retry".
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{0}")]
    Failed(Failure),
    #[error("the writer has stopped")]
    Stopped,
    #[error("no commit within {0:?}")]
    TimedOut(Duration),
}

/// The handle that request handlers hold; the writer threads stop when the last one is dropped.
#[derive(Clone)]
pub struct Committer {
    queue: async_channel::Sender<Job>,
    timeout: Duration,
    settled: Arc<Settled>,
}

impl Committer {
    /// Starts `writers` writer threads, each with its own connection while it is busy (see
    /// [`KEEP_CONNECTION_FOR`]), all taking their batches from one queue: a writer that is free
    /// takes whatever is queued, so no notification waits behind a busy writer while another is
    /// idle (see ARCHITECTURE.md for what queues of their own cost). Two deliveries of one order
    /// in two writers' batches meet on its row lock: the later one waits, then finds it paid.
    /// `max_batch` bounds how many notifications share a transaction; `timeout` bounds how long a
    /// caller waits for its commit before it answers "retry".
    pub fn start(
        pool: Pool,
        writers: usize,
        max_batch: usize,
        timeout: Duration,
    ) -> std::io::Result<Committer> {
        let settled = Arc::new(Settled::new(SETTLED_CAPACITY));
        let held = Arc::new(Mutex::new(Held::default()));
        let (queue, receiver) = async_channel::bounded(QUEUE_CAPACITY * writers.max(1));
        for writer in 0..writers.max(1) {
            let (pool, receiver) = (pool.clone(), receiver.clone());
            let (settled, held) = (settled.clone(), held.clone());
            std::thread::Builder::new()
                .name(format!("payhook-writer-{writer}"))
                .spawn(move || run(pool, receiver, max_batch.max(1), &settled, &held))?;
        }
        Ok(Committer {
            queue,
            timeout,
            settled,
        })
    }

    /// Applies `notification` in the next batch and returns what it came to once that batch has
    /// committed.
    ///
    /// A repeat of a paid notification that this instance has already seen committed is answered
    /// at once, without the database: a paid order never leaves `paid`, so that fact stays true.
    /// Its delivery is counted by a coming batch, and nobody waits for that.
    pub async fn submit(
        &self,
        notification: Notification,
        headers_json: String,
        body: bytes::Bytes,
        source: Source,
        now: NaiveDateTime,
    ) -> Result<Applied, CommitError> {
        let fingerprint = Fingerprint::of(&notification);
        if let Some(applied) = fingerprint.and_then(|f| self.settled.repeat(&f)) {
            self.count_delivery(applied.inbox_id, now);
            return Ok(applied);
        }
        // The writer remembers what it commits (see [`run`]), by the fingerprint taken here.
        let mut job = ApplyJob::new(notification, headers_json, body, now);
        job.source = source;
        job.fingerprint = fingerprint;
        self.commit(job).await
    }

    async fn commit(&self, mut job: ApplyJob) -> Result<Applied, CommitError> {
        let (reply, answer) = oneshot::channel();
        job.reply = Some(reply);
        let waited = async {
            self.queue
                .send(Job::Apply(Box::new(job)))
                .await
                .map_err(|_| CommitError::Stopped)?;
            match answer.await {
                Ok(Ok(applied)) => Ok(applied),
                Ok(Err(error)) => Err(CommitError::Failed(error)),
                Err(_) => Err(CommitError::Stopped),
            }
        };
        // A caller that gives up answers "retry"; if its notification commits after all, the
        // provider's next delivery finds it done and is acked as a duplicate.
        actix_web::rt::time::timeout(self.timeout, waited)
            .await
            .unwrap_or(Err(CommitError::TimedOut(self.timeout)))
    }

    /// Counts one more delivery of a notification whose credit is committed in a coming batch,
    /// without waiting for it, not even for room in the queue. The count is bookkeeping: a crash,
    /// or a queue full of notifications, may lose it, never money.
    fn count_delivery(&self, inbox_id: i64, now: NaiveDateTime) {
        if let Err(e) = self.queue.try_send(Job::Count(CountJob { inbox_id, now })) {
            log::debug!("a delivery count was not written: {e}");
        }
    }
}

/// The writer: takes what is queued (waiting only when nothing is), commits it as one batch,
/// answers, and goes round again. While a batch commits, the next one gathers.
///
/// What it commits goes into the settled memory before anyone is answered, so repeats queued
/// behind the first delivery (a provider's burst, a thousand copies at once) are answered from
/// memory when their turn comes, their deliveries counted, instead of each taking a place in a
/// transaction.
///
/// A writer keeps its connection from one batch to the next while they come close together (see
/// [`KEEP_CONNECTION_FOR`]).
fn run(
    pool: Pool,
    receiver: async_channel::Receiver<Job>,
    max_batch: usize,
    settled: &Settled,
    held: &Mutex<Held>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut kept: Option<(db::PooledConnection, Instant)> = None;
    // What waits for the next job while a connection is kept, so that it goes back on time.
    let waiter = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| log::warn!("writer: connections go back after each batch: {e}"))
        .ok();
    // Delivery counts whose rows another transaction held: written by the next batch, or alone
    // once the writer has been idle for `retry_after` (see [`LATER_AFTER`]).
    let mut later: Vec<CountJob> = Vec::new();
    let mut retry_after = LATER_AFTER;
    loop {
        let retry = (!later.is_empty()).then_some(retry_after);
        let Some(next) = next_job(waiter.as_ref(), &receiver, &mut kept, retry) else {
            break;
        };
        // `RetryLater`: no job came, and the counts left for later are tried alone.
        let retrying = matches!(next, Next::RetryLater);
        if let Next::Job(first) = next {
            batch.push(first);
            while batch.len() < max_batch {
                match receiver.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        // Lock rows in one order, so that two instances' batches do not deadlock on each other.
        batch.sort_by(|a, b| a.order_no().cmp(&b.order_no()));
        let mut applies = Vec::with_capacity(batch.len());
        let mut aside = Vec::new();
        let mut counts = std::mem::take(&mut later);
        let now = Instant::now();
        // The orders of this batch, claimed until it is answered: another writer sets aside a
        // delivery of one of them, so that one order never holds up two writers.
        let mut claimed = Vec::new();
        for job in batch.drain(..) {
            match job {
                // A caller that timed out has answered "retry"; its provider will send again.
                Job::Apply(job) if job.reply.as_ref().is_some_and(|r| r.is_closed()) => {}
                Job::Apply(mut job) => {
                    if answered_from_memory(&mut job, settled, &mut counts) {
                        continue;
                    }
                    if lock(held).claim(&job.notification, now, &mut claimed) {
                        applies.push(*job);
                    } else {
                        aside.push(*job);
                    }
                }
                Job::Count(job) => counts.push(job),
            }
        }
        let started = Instant::now();
        let total = applies.len() + aside.len() + counts.len();
        // A connection kept too long goes back first: the pool may have no other to give.
        let kept_conn = kept
            .take()
            .filter(|(_, used)| used.elapsed() < KEEP_CONNECTION_FOR);
        let unchecked = kept_conn.is_some();
        match kept_conn.map_or_else(|| pool.get(), |(conn, _)| Ok(conn)) {
            Ok(conn) => {
                let batch = Batch {
                    applies: &mut applies,
                    aside: &mut aside,
                    counts: &counts,
                };
                kept = commit_and_answer(
                    &pool, conn, unchecked, batch, &mut later, settled, held, now,
                )
                .map(|conn| (conn, Instant::now()));
            }
            Err(e) => {
                // The database is unreachable: what is queued would fail the same way now.
                let error = Arc::new(CreditError::Pool(e));
                while let Ok(job) = receiver.try_recv() {
                    match job {
                        Job::Apply(job) => applies.push(*job),
                        Job::Count(job) => counts.push(job),
                    }
                }
                fail(&mut applies, &error);
                fail(&mut aside, &error);
                // The counts wait for the database too.
                later = counts;
                let over = later.len().saturating_sub(LATER_CAPACITY);
                later.drain(..over);
            }
        }
        lock(held).release(&claimed);
        telemetry::record_batch(total, started.elapsed().as_secs_f64());
        // Rows held still after a try alone are tried less often, up to [`LATER_AFTER_MAX`].
        retry_after = match (later.is_empty(), retrying) {
            (true, _) => LATER_AFTER,
            (false, true) => (retry_after * 2).min(LATER_AFTER_MAX),
            (false, false) => retry_after,
        };
    }
}

/// What a writer's wait for work ends with.
enum Next {
    /// A job, with whatever is queued behind it to come.
    Job(Job),
    /// No job came in time, and delivery counts left for later are to be tried again.
    RetryLater,
}

/// The next job, waiting for it if none is queued; `None` once the queue has closed.
///
/// A kept connection goes back to the pool once it has been unused for [`KEEP_CONNECTION_FOR`],
/// while the wait goes on. With delivery counts left for later, `retry` bounds the wait: once it
/// is over with no job, [`Next::RetryLater`], so that they are written even when no more
/// notifications come.
fn next_job(
    waiter: Option<&tokio::runtime::Runtime>,
    receiver: &async_channel::Receiver<Job>,
    kept: &mut Option<(db::PooledConnection, Instant)>,
    retry: Option<Duration>,
) -> Option<Next> {
    if let Ok(job) = receiver.try_recv() {
        return Some(Next::Job(job));
    }
    let keep_for = kept
        .as_ref()
        .map(|(_, used)| KEEP_CONNECTION_FOR.saturating_sub(used.elapsed()));
    let wait = match (keep_for, retry) {
        (Some(keep_for), Some(retry)) => Some(keep_for.min(retry)),
        (keep_for, retry) => keep_for.or(retry),
    };
    if let (Some(waiter), Some(wait)) = (waiter, wait) {
        // The timer belongs to the waiter's runtime: it is made inside it.
        let next = async { tokio::time::timeout(wait, receiver.recv()).await };
        match waiter.block_on(next) {
            Ok(job) => return job.ok().map(Next::Job),
            Err(_) if retry.is_some() => return Some(Next::RetryLater),
            Err(_) => {}
        }
    }
    *kept = None;
    receiver.recv_blocking().ok().map(Next::Job)
}

/// One batch's work, sorted out: what to apply, what to apply after it with short lock waits,
/// and the delivery counts.
struct Batch<'a> {
    applies: &'a mut Vec<ApplyJob>,
    aside: &'a mut Vec<ApplyJob>,
    counts: &'a [CountJob],
}

/// Commits `batch` on `conn` and answers its callers; returns the connection when it may be kept
/// for the next batch: when every notification of a batch that had some went through, nothing
/// was set aside, and diesel does not count the connection broken.
///
/// A kept connection (`unchecked`: not pinged by the pool) that the server has ended since (a
/// restart, a failover) fails its batch where the pool's check would have caught it: a batch with
/// notifications to apply runs once more on a checked connection. (One with only delivery counts,
/// or notifications set aside, is not run again: the counts are lost, bookkeeping, and those set
/// aside are answered "retry".) A connection that broke mid-commit may have committed; the
/// second run then finds its credits done (its compare-and-set), answers them as repeats and
/// counts their deliveries once more: bookkeeping, never money.
#[allow(clippy::too_many_arguments)]
fn commit_and_answer(
    pool: &Pool,
    mut conn: db::PooledConnection,
    unchecked: bool,
    batch: Batch<'_>,
    later: &mut Vec<CountJob>,
    settled: &Settled,
    held: &Mutex<Held>,
    now: Instant,
) -> Option<db::PooledConnection> {
    let Batch {
        applies,
        aside,
        counts,
    } = batch;
    let total = applies.len() + aside.len() + counts.len();
    let keepable = !applies.is_empty() && aside.is_empty();
    // A bug that panics fails this batch (answered retry), not the writer.
    let attempt = |conn: &mut db::PooledConnection, later: &mut Vec<CountJob>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit_batch_counting_later(conn, applies, counts, later)
        }))
    };
    let all_ok = |results: &[Result<Applied, Failure>]| results.iter().all(Result::is_ok);
    let later_before = later.len();
    let mut results = attempt(&mut conn, later);
    if unchecked && matches!(&results, Ok(r) if !all_ok(r)) && conn.ping().is_err() {
        // The dead connection goes first: the pool may have no other to give.
        drop(conn);
        match pool.get() {
            Ok(checked) => {
                log::info!("writer: its connection had ended; the batch runs again");
                conn = checked;
                later.truncate(later_before);
                results = attempt(&mut conn, later);
            }
            Err(e) => {
                if let Ok(results) = results {
                    answer(applies, results, settled, held, now);
                }
                let error = Arc::new(CreditError::Pool(e));
                fail(applies, &error);
                fail(aside, &error);
                // The counts wait for the database, as when no connection is there at all.
                later.truncate(later_before);
                later.extend(counts.iter().cloned());
                return None;
            }
        }
    }
    let results = match results {
        Ok(results) => results,
        Err(_) => {
            log::error!("writer: a batch of {total} panicked");
            let error = Arc::new(CreditError::Panicked);
            fail(applies, &error);
            fail(aside, &error);
            return None;
        }
    };
    let went_through = keepable && all_ok(&results) && !conn.is_broken();
    if later.len() > LATER_CAPACITY {
        log::debug!(
            "{} delivery counts not written: their rows stay held",
            later.len() - LATER_CAPACITY
        );
        later.drain(..later.len() - LATER_CAPACITY);
    }
    // The batch's callers are answered as soon as it commits, before those held aside take
    // their turns.
    answer(applies, results, settled, held, now);
    // Those set aside because another writer had their order may have been settled by it since:
    // repeats answered from memory, as when they are queued, their counts written later.
    aside.retain_mut(|job| !answered_from_memory(job, settled, later));
    if !aside.is_empty() {
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tried = vec![None; aside.len()];
            let mut hurried = store::Hurried::new(&mut conn);
            let results = one_by_one(hurried.conn(), aside, tried, apply::apply_hurried);
            answer(aside, results, settled, held, now);
        }));
        if finished.is_err() {
            log::error!("writer: {} notifications held aside panicked", aside.len());
            fail(aside, &Arc::new(CreditError::Panicked));
        }
    }
    went_through.then_some(conn)
}

/// Answers the callers of `jobs` with `results`, in order, once what they wrote is committed:
/// what went through is remembered as settled first, and the held orders learn from both.
fn answer(
    jobs: &mut Vec<ApplyJob>,
    results: Vec<Result<Applied, Failure>>,
    settled: &Settled,
    held: &Mutex<Held>,
    now: Instant,
) {
    for (job, result) in jobs.drain(..).zip(results) {
        lock(held).learn(&job.notification, &result, now);
        if let (Ok(applied), Some(fingerprint)) = (&result, job.fingerprint) {
            settled.insert(fingerprint, applied);
        }
        if let Some(reply) = job.reply {
            // The caller may have gone; its provider will send again.
            let _ = reply.send(result);
        }
    }
}

/// Whether `job` repeats a credit the settled memory holds: if so its caller is answered from it
/// and its delivery count added to `counts`, for the database to write later.
fn answered_from_memory(job: &mut ApplyJob, settled: &Settled, counts: &mut Vec<CountJob>) -> bool {
    let Some(applied) = job.fingerprint.and_then(|f| settled.repeat(&f)) else {
        return false;
    };
    counts.push(CountJob {
        inbox_id: applied.inbox_id,
        now: job.now,
    });
    if let Some(reply) = job.reply.take() {
        let _ = reply.send(Ok(applied));
    }
    true
}

/// Answers every caller of `jobs` with `error`.
fn fail(jobs: &mut Vec<ApplyJob>, error: &Failure) {
    for job in jobs.drain(..) {
        if let Some(reply) = job.reply {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// How long after its last batch a writer uses its connection again as it is. The pool pings a
/// connection as it leaves (`pool.test_on_checkout`), a round trip that a writer busy with batch
/// after batch would pay for each. After a batch in which anything failed (or that had only
/// delivery counts, or notifications set aside), or once it has waited this long for the next
/// batch, the connection goes back to the pool, and the next batch takes one that the pool has
/// checked.
const KEEP_CONNECTION_FOR: Duration = Duration::from_secs(1);

/// How long an idle writer waits before it tries the delivery counts left for later again; twice
/// as long after each try that finds their rows still held, up to [`LATER_AFTER_MAX`].
const LATER_AFTER: Duration = Duration::from_millis(200);

/// The longest an idle writer waits to try held delivery counts again.
const LATER_AFTER_MAX: Duration = Duration::from_secs(5);

/// Most delivery counts a writer keeps for later while their rows are held; beyond it the oldest
/// are dropped (a count is bookkeeping, never money).
const LATER_CAPACITY: usize = 4096;

/// Commits one batch: the notifications to apply and the delivery counts, in one transaction.
/// Returns one result per notification, in order.
///
/// A transient conflict runs the whole batch again; when conflicts persist, or the commit itself
/// fails, each notification is applied in a transaction of its own, so that one notification's
/// trouble is never another's. A lock timeout that is not one notification's own (the batch's
/// up-front locks) goes to that one by one at once: each attempt costs the whole timeout.
pub fn commit_batch(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    counts: &[CountJob],
) -> Vec<Result<Applied, Failure>> {
    let mut later = Vec::new();
    let results = commit_batch_counting_later(conn, applies, counts, &mut later);
    if !later.is_empty() {
        log::debug!(
            "{} delivery counts not written: their rows are held",
            later.len()
        );
    }
    results
}

/// [`commit_batch`], adding to `later` the delivery counts whose rows another transaction held,
/// for the writer to try again (see [`LATER_AFTER`]).
fn commit_batch_counting_later(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    counts: &[CountJob],
    later: &mut Vec<CountJob>,
) -> Vec<Result<Applied, Failure>> {
    if applies.is_empty() && counts.is_empty() {
        return Vec::new();
    }
    // Notifications that failed on their own (PostgreSQL): the batch runs again without them.
    let mut failed: Vec<Option<Failure>> = vec![None; applies.len()];
    let mut attempt = 1;
    let failure = loop {
        match db::write_transaction(conn, |conn| apply_batch_in(conn, applies, &failed, counts)) {
            Ok((results, held)) => {
                later.extend(held);
                return results;
            }
            // A lock timeout of one notification's row: its holder may be frozen, so the batch
            // runs again without it rather than wait for the timeout once more.
            Err(BatchError { at: Some(i), error })
                if !error.is_transient() || error.is_lock_timeout() =>
            {
                failed[i] = Some(Arc::new(error));
            }
            Err(e)
                if attempt < BATCH_ATTEMPTS
                    && e.error.is_transient()
                    && !e.error.is_lock_timeout() =>
            {
                log::debug!(
                    "batch of {}: transient conflict, attempt {attempt}: {}",
                    applies.len() + counts.len(),
                    e.error
                );
                std::thread::sleep(db::backoff(attempt));
                attempt += 1;
            }
            Err(e) => break e.error,
        }
    };
    // Committed but not replicated: one by one would only commit, and wait, again.
    let unreplicated = matches!(&failure, CreditError::Database(e) if db::is_unreplicated(e));
    if applies.len() + counts.len() > 1 && !unreplicated {
        log::warn!(
            "batch of {} failed ({failure}); applying its notifications one by one",
            applies.len() + counts.len()
        );
        let results = if failure.is_lock_timeout() {
            // Something the batch needs is held, maybe by a frozen session: each notification
            // gets a short wait of its own, so those it does not hold are credited now and those
            // it does are answered "retry" without waiting the whole timeout again.
            one_by_one(
                store::Hurried::new(conn).conn(),
                applies,
                failed,
                apply::apply_hurried,
            )
        } else {
            one_by_one(conn, applies, failed, apply::apply_alone)
        };
        if !counts.is_empty() {
            // Bookkeeping: one attempt with short lock waits, so that a row held by a frozen
            // session costs the batch's callers nothing more.
            let mut hurried = store::Hurried::new(conn);
            let counted: Result<Vec<CountJob>, DieselError> =
                db::transact_with(hurried.conn(), 1, |conn| {
                    store::hurry(conn)?;
                    count_all(conn, counts.iter())
                });
            match counted {
                Ok(held) => later.extend(held),
                Err(e) => log::warn!("{} delivery counts not written: {e}", counts.len()),
            }
        }
        return results;
    }
    let error = Arc::new(failure);
    applies.iter().map(|_| Err(error.clone())).collect()
}

/// Applies each notification of a failed batch in a transaction of its own, except those that
/// failed on their own already and those whose caller has stopped waiting.
fn one_by_one(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    failed: Vec<Option<Failure>>,
    apply: fn(
        &mut DbConnection,
        &Notification,
        Evidence<'_>,
        NaiveDateTime,
    ) -> Result<Applied, CreditError>,
) -> Vec<Result<Applied, Failure>> {
    applies
        .iter()
        .zip(failed)
        .map(|(job, failed)| match failed {
            Some(error) => Err(error),
            None if job.reply.as_ref().is_some_and(|r| r.is_closed()) => {
                Err(Arc::new(CreditError::Abandoned))
            }
            None => apply(conn, &job.notification, job.evidence(), job.now).map_err(Arc::new),
        })
        .collect()
}
