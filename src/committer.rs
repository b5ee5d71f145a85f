//! Group commit: one writer thread applies the notifications that arrived together in one
//! transaction, each under its own savepoint, and answers every one of them after that single
//! commit.
//!
//! A commit is the costly part of crediting: it waits for the disk (SQLite's WAL fsync,
//! PostgreSQL's WAL flush) and, on SQLite, for the one write lock. Spending it once per batch
//! instead of once per notification is what lets one instance keep up with a flood.
//!
//! The guarantees are those of [`apply`](crate::apply::apply), batch or not:
//!
//! - No answer leaves before the commit that holds its notification. A failed commit fails every
//!   notification of the batch, and each is answered "retry".
//! - One notification's failure is its own: its savepoint is rolled back and the rest of the
//!   batch commits without it.
//! - A transient conflict (deadlock, serialization failure, a racing insert) rolls the whole batch
//!   back and runs it again from the start, a bounded number of times.
//! - Within a batch, notifications are applied in order of their order number, so two instances'
//!   batches touching the same orders take their row locks in the same order.

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::connection::Connection;
use diesel::result::Error as DieselError;
use tokio::sync::{mpsc, oneshot};

use crate::apply::{self, Applied, Durability};
use crate::db::{self, DbConnection, DbError, Pool};
use crate::inbox::{self, Evidence};
use crate::notify::Notification;
use crate::telemetry;

/// How many notifications wait for the writer before new ones wait to be queued.
const QUEUE_CAPACITY: usize = 4096;

/// How often a batch that met a transient conflict runs again whole before its notifications are
/// applied one transaction each.
const BATCH_ATTEMPTS: u32 = 3;

/// Work for a writer.
enum Job {
    /// A notification to apply; its caller waits for the commit.
    Apply(ApplyJob),
    /// One more delivery of a notification whose credit is committed: nobody waits for it.
    Count(CountJob),
}

/// A notification waiting for the writer, with everything it must store.
pub struct ApplyJob {
    pub notification: Notification,
    pub headers_json: String,
    pub body: bytes::Bytes,
    pub now: NaiveDateTime,
    reply: Option<oneshot::Sender<Result<Applied, String>>>,
}

impl ApplyJob {
    /// A job whose result only [`commit_batch`]'s return value carries.
    pub fn new(
        notification: Notification,
        headers_json: String,
        body: bytes::Bytes,
        now: NaiveDateTime,
    ) -> ApplyJob {
        ApplyJob {
            notification,
            headers_json,
            body,
            now,
            reply: None,
        }
    }
}

/// One more delivery to count on a notification's inbox row.
pub struct CountJob {
    pub notification: Notification,
    pub now: NaiveDateTime,
}

impl Job {
    fn order_no(&self) -> Option<&crate::ids::OrderNo> {
        match self {
            Job::Apply(job) => job.notification.order_no.as_ref(),
            Job::Count(job) => job.notification.order_no.as_ref(),
        }
    }
}

/// Why a notification was not applied; every one of them is answered "retry".
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{0}")]
    Failed(String),
    #[error("the writer has stopped")]
    Stopped,
    #[error("no commit within {0:?}")]
    TimedOut(Duration),
}

/// The handle that request handlers hold; the writer threads stop when the last one is dropped.
#[derive(Clone)]
pub struct Committer {
    lanes: Vec<mpsc::Sender<Job>>,
    timeout: Duration,
}

impl Committer {
    /// Starts `writers` writer threads, each with its own queue and, per batch, its own
    /// connection. A notification goes to the writer its order number hashes to, so every
    /// delivery of one order meets the same writer and writers do not wait on each other's row
    /// locks. `max_batch` bounds how many notifications share a transaction; `timeout` bounds how
    /// long a caller waits for its commit before it answers "retry".
    pub fn start(
        pool: Pool,
        writers: usize,
        max_batch: usize,
        timeout: Duration,
    ) -> std::io::Result<Committer> {
        let mut lanes = Vec::with_capacity(writers.max(1));
        for lane in 0..writers.max(1) {
            let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
            let pool = pool.clone();
            std::thread::Builder::new()
                .name(format!("payhook-writer-{lane}"))
                .spawn(move || run(pool, receiver, max_batch.max(1)))?;
            lanes.push(queue);
        }
        Ok(Committer { lanes, timeout })
    }

    fn lane(&self, notification: &Notification) -> &mpsc::Sender<Job> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        notification.order_no.hash(&mut hasher);
        // The modulo is below `lanes.len()`, which is a `usize`.
        &self.lanes[(hasher.finish() % self.lanes.len() as u64) as usize]
    }

    /// Applies `notification` in the next batch and returns what it came to once that batch has
    /// committed.
    pub async fn apply(
        &self,
        notification: Notification,
        headers_json: String,
        body: bytes::Bytes,
        now: NaiveDateTime,
    ) -> Result<Applied, CommitError> {
        let (reply, answer) = oneshot::channel();
        let mut job = ApplyJob::new(notification, headers_json, body, now);
        job.reply = Some(reply);
        let waited = async {
            self.lane(&job.notification)
                .send(Job::Apply(job))
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

    /// Counts one more delivery of a notification whose credit is committed (see
    /// [`apply::find_repeat`]) in a coming batch, without waiting for it. The count is
    /// bookkeeping: a crash may lose it, never money.
    pub async fn count_delivery(&self, notification: Notification, now: NaiveDateTime) {
        let lane = self.lane(&notification);
        if lane
            .send(Job::Count(CountJob { notification, now }))
            .await
            .is_err()
        {
            log::debug!("writer stopped; a delivery count was not written");
        }
    }
}

/// The writer: takes what is queued (waiting only when nothing is), commits it as one batch,
/// answers, and goes round again. While a batch commits, the next one gathers.
fn run(pool: Pool, mut receiver: mpsc::Receiver<Job>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Lock rows in one order, so that two instances' batches do not deadlock on each other.
        batch.sort_by(|a, b| a.order_no().cmp(&b.order_no()));
        let mut applies = Vec::with_capacity(batch.len());
        let mut counts = Vec::new();
        for job in batch.drain(..) {
            match job {
                // A caller that timed out has answered "retry"; its provider will send again.
                Job::Apply(job) if job.reply.as_ref().is_some_and(|r| r.is_closed()) => {}
                Job::Apply(job) => applies.push(job),
                Job::Count(job) => counts.push(job),
            }
        }
        let started = Instant::now();
        let results = match pool.get() {
            Ok(mut conn) => commit_batch(&mut conn, &applies, &counts),
            Err(e) => {
                // The database is unreachable: what is queued would fail the same way now.
                let error = DbError::Pool(e).to_string();
                while let Ok(job) = receiver.try_recv() {
                    if let Job::Apply(job) = job {
                        applies.push(job);
                    }
                }
                applies.iter().map(|_| Err(error.clone())).collect()
            }
        };
        telemetry::record_batch(
            applies.len() + counts.len(),
            started.elapsed().as_secs_f64(),
        );
        for (job, result) in applies.into_iter().zip(results) {
            if let Some(reply) = job.reply {
                // The caller may have gone; its provider will send again.
                let _ = reply.send(result);
            }
        }
    }
}

/// Commits one batch: the notifications to apply, each under its own savepoint, and the delivery
/// counts, in one transaction. Returns one result per notification, in order.
///
/// A transient conflict runs the whole batch again; when conflicts persist, or the commit itself
/// fails, each notification is applied in a transaction of its own, so that one notification's
/// trouble is never another's.
pub fn commit_batch(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    counts: &[CountJob],
) -> Vec<Result<Applied, String>> {
    let mut attempt = 1;
    let failure = loop {
        match db::write_transaction(conn, |conn| apply_all(conn, applies, counts)) {
            Ok(results) => return results,
            Err(e) if attempt < BATCH_ATTEMPTS && db::is_transient(&e) => {
                log::debug!(
                    "batch of {}: transient conflict, attempt {attempt}: {e}",
                    applies.len() + counts.len()
                );
                std::thread::sleep(db::backoff(attempt));
                attempt += 1;
            }
            Err(e) => break e,
        }
    };
    if applies.len() + counts.len() > 1 {
        log::warn!(
            "batch of {} failed ({failure}); applying its notifications one by one",
            applies.len() + counts.len()
        );
        let results = applies
            .iter()
            .map(|job| {
                let evidence = Evidence {
                    headers_json: &job.headers_json,
                    body: &job.body,
                };
                apply::apply(conn, &job.notification, evidence, job.now).map_err(|e| e.to_string())
            })
            .collect();
        if !counts.is_empty() {
            let counted = db::transact(conn, |conn| count_all(conn, counts));
            if let Err(e) = counted {
                log::warn!("{} delivery counts not written: {e}", counts.len());
            }
        }
        return results;
    }
    let error = DbError::Query(failure).to_string();
    applies.iter().map(|_| Err(error.clone())).collect()
}

/// Applies every notification under its own savepoint inside the open transaction, then writes
/// the delivery counts.
fn apply_all(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    counts: &[CountJob],
) -> Result<Vec<Result<Applied, String>>, DieselError> {
    let mut results = Vec::with_capacity(applies.len());
    let mut durability = Durability::NoWait;
    for job in applies {
        let evidence = Evidence {
            headers_json: &job.headers_json,
            body: &job.body,
        };
        let applied =
            conn.transaction(|conn| apply::apply_in(conn, &job.notification, evidence, job.now));
        match applied {
            Ok((applied, needs)) => {
                if needs == Durability::Flush {
                    durability = Durability::Flush;
                }
                results.push(Ok(applied));
            }
            // The whole batch runs again: a conflict is about timing, not this notification.
            Err(e) if db::is_transient(&e) => return Err(e),
            Err(e) => results.push(Err(DbError::Query(e).to_string())),
        }
    }
    count_all(conn, counts)?;
    if durability == Durability::NoWait {
        db::commit_without_waiting_for_flush(conn)?;
    }
    Ok(results)
}

/// Adds the counted deliveries to their inbox rows.
fn count_all(conn: &mut DbConnection, counts: &[CountJob]) -> Result<(), DieselError> {
    for job in counts {
        inbox::bump(conn, &job.notification, job.now)?;
    }
    Ok(())
}
