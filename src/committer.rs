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
use crate::inbox::Evidence;
use crate::notify::Notification;
use crate::telemetry;

/// How many notifications wait for the writer before new ones wait to be queued.
const QUEUE_CAPACITY: usize = 4096;

/// A notification waiting for the writer, with everything it must store.
struct Job {
    notification: Notification,
    headers_json: String,
    body: bytes::Bytes,
    now: NaiveDateTime,
    reply: oneshot::Sender<Result<Applied, String>>,
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
        let job = Job {
            notification,
            headers_json,
            body,
            now,
            reply,
        };
        let waited = async {
            self.lane(&job.notification)
                .send(job)
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
        // Callers that timed out have answered "retry" already; their provider will send again.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        batch.sort_by(|a, b| a.notification.order_no.cmp(&b.notification.order_no));
        let started = Instant::now();
        let results = match pool.get() {
            Ok(mut conn) => commit(&mut conn, &batch),
            Err(e) => {
                // The database is unreachable: everything queued would fail the same way.
                while batch.len() < QUEUE_CAPACITY {
                    match receiver.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let error = DbError::Pool(e).to_string();
                batch.iter().map(|_| Err(error.clone())).collect()
            }
        };
        telemetry::record_batch(batch.len(), started.elapsed().as_secs_f64());
        for (job, result) in batch.drain(..).zip(results) {
            // The caller may have gone; its provider will send again.
            let _ = job.reply.send(result);
        }
    }
}

/// Commits one batch, running it again from the start on a transient conflict. Returns one
/// result per job, in order.
fn commit(conn: &mut DbConnection, batch: &[Job]) -> Vec<Result<Applied, String>> {
    let mut attempt = 1;
    loop {
        match db::write_transaction(conn, |conn| apply_all(conn, batch)) {
            Ok(results) => return results,
            Err(e) if attempt < db::MAX_ATTEMPTS && db::is_transient(&e) => {
                log::debug!(
                    "batch of {}: transient conflict, attempt {attempt}: {e}",
                    batch.len()
                );
                std::thread::sleep(db::backoff(attempt));
                attempt += 1;
            }
            Err(e) => {
                let error = DbError::Query(e).to_string();
                return batch.iter().map(|_| Err(error.clone())).collect();
            }
        }
    }
}

/// Applies every job under its own savepoint inside the open transaction.
fn apply_all(
    conn: &mut DbConnection,
    batch: &[Job],
) -> Result<Vec<Result<Applied, String>>, DieselError> {
    let mut results = Vec::with_capacity(batch.len());
    let mut durability = Durability::NoWait;
    for job in batch {
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
            // The whole batch is tried again: a conflict is about timing, not this notification.
            Err(e) if db::is_transient(&e) => return Err(e),
            Err(e) => results.push(Err(DbError::Query(e).to_string())),
        }
    }
    if durability == Durability::NoWait {
        db::commit_without_waiting_for_flush(conn)?;
    }
    Ok(results)
}
