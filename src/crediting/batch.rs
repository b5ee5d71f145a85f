//! What one batch's transaction does: lock, read up front, apply each notification in order
//! (first payments together, where the backend writes them in one statement), count the
//! deliveries. [`super::committer`] opens, retries and commits it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::NaiveDateTime;
use diesel::result::Error as DieselError;
use tokio::sync::oneshot;

use super::apply::{self, Applied, Durability};
use super::error::{CreditError, Failure};
use super::read;
use super::settled::Fingerprint;
use crate::books::inbox::{Evidence, Source};
use crate::db::{self, DbConnection};
use crate::domain::notification::{Notification, NotificationKind};
use crate::store::{self, Credit, CreditWrite};

/// A notification waiting for the writer, with everything it must store.
pub struct ApplyJob {
    pub notification: Notification,
    pub headers_json: String,
    pub body: bytes::Bytes,
    pub source: Source,
    pub now: NaiveDateTime,
    /// What the settled memory knows it by ([`Fingerprint::of`]), taken once, off the writer.
    pub(super) fingerprint: Option<Fingerprint>,
    pub(super) reply: Option<oneshot::Sender<Result<Applied, Failure>>>,
}

impl ApplyJob {
    /// A job for a notification, whose result only [`commit_batch`](super::commit_batch)'s return value carries.
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
            source: Source::Notify,
            now,
            fingerprint: None,
            reply: None,
        }
    }

    pub(super) fn evidence(&self) -> Evidence<'_> {
        Evidence {
            headers_json: &self.headers_json,
            body: &self.body,
            source: self.source,
        }
    }
}

/// One more delivery to count on an inbox row.
#[derive(Debug, Clone)]
pub struct CountJob {
    pub inbox_id: i64,
    pub now: NaiveDateTime,
}

/// What a batch's transaction did: one result per notification, and the delivery counts it left
/// for later because their rows were held.
pub(super) type BatchDone = (Vec<Result<Applied, Failure>>, Vec<CountJob>);

/// Why a batch's transaction failed, and which notification failed it, if one did.
pub(super) struct BatchError {
    pub(super) at: Option<usize>,
    pub(super) error: CreditError,
}

impl From<DieselError> for BatchError {
    fn from(error: DieselError) -> BatchError {
        BatchError {
            at: None,
            error: error.into(),
        }
    }
}

/// Applies every notification inside the open transaction (except those that `failed` before),
/// then writes the delivery counts.
///
/// Where the backend writes many first payments at once (PostgreSQL in one statement, SQLite in
/// one per table), the first payments read up front are held back and written together just
/// before the next notification that may write something else, and at the end: the order in
/// which notifications change orders and accounts stays the batch's order. A repeat, which writes
/// only its count, does not hold them up.
pub(super) fn apply_batch_in(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    failed: &[Option<Failure>],
    counts: &[CountJob],
) -> Result<BatchDone, BatchError> {
    let mut done = Done {
        results: vec![None; applies.len()],
        flush: false,
        repeats: Vec::new(),
    };
    // No savepoint per notification: a failing notification fails the batch, and
    // [`commit_batch`](super::commit_batch) runs it again without that one. A savepoint costs two
    // round trips on PostgreSQL and MySQL, and on SQLite it copied each page a notification
    // touched once more, a fifth of the writer's work.
    let together = store::pays_together(conn);
    let mut read_already = if store::reads_then_locks(conn) {
        read_then_lock(conn, applies, failed)?
    } else {
        let order_nos: Vec<&str> = applies
            .iter()
            .zip(failed)
            .filter(|(_, failed)| failed.is_none())
            .filter_map(|(job, _)| job.notification.order_no.as_ref().map(|o| o.as_str()))
            .collect();
        store::lock_for_credits(conn, &order_nos)?;
        // The batch's orders and inbox rows are read together instead of once per
        // notification: on MySQL each statement is a round trip, and on SQLite, where the
        // writer does all of the database's work, a read per notification was a sixth of it.
        read_batch(conn, applies, failed, false)?
    };
    let mut first_payments = Vec::new();
    for (i, (job, failed)) in applies.iter().zip(failed).enumerate() {
        if let Some(error) = failed {
            done.results[i] = Some(Err(error.clone()));
            continue;
        }
        let n = &job.notification;
        let found = read_already[i].take();
        if together {
            match &found {
                Some(f) if apply::is_first_payment(n, f) => {
                    first_payments.push((i, f.clone()));
                    continue;
                }
                Some(f) if apply::repeats_a_credit(n, f) => {}
                _ => pay_together(conn, applies, &mut first_payments, &mut done)?,
            }
        }
        let applied = apply::apply_found_in(conn, n, job.evidence(), job.now, found);
        done.record(i, job, applied)?;
    }
    pay_together(conn, applies, &mut first_payments, &mut done)?;
    let held = count_all(conn, counts.iter().chain(&done.repeats))?;
    if !done.flush {
        db::commit_without_waiting_for_flush(conn)?;
    }
    let results = done
        .results
        .into_iter()
        .map(|result| result.unwrap_or_else(|| Err(Arc::new(CreditError::Unapplied))))
        .collect();
    Ok((results, held))
}

/// What a batch has applied so far.
struct Done {
    /// One per notification, filled in as each is applied.
    results: Vec<Option<Result<Applied, Failure>>>,
    /// Whether the commit must wait for the disk.
    flush: bool,
    /// The delivery counts of repeats, to add before the commit.
    repeats: Vec<CountJob>,
}

impl Done {
    fn record(
        &mut self,
        i: usize,
        job: &ApplyJob,
        applied: Result<(Applied, Durability), CreditError>,
    ) -> Result<(), BatchError> {
        // Any error fails the batch, whose transaction may hold part of this notification's
        // writes: a conflict is about timing and the batch runs again whole; otherwise it runs
        // again without this notification.
        let (applied, durability) = applied.map_err(|error| BatchError { at: Some(i), error })?;
        match durability {
            Durability::Flush => self.flush = true,
            Durability::CountOnly { inbox_id } => self.repeats.push(CountJob {
                inbox_id,
                now: job.now,
            }),
        }
        self.results[i] = Some(Ok(applied));
        Ok(())
    }
}

/// Writes the first payments held back so far ([`apply::is_first_payment`], as read up front):
/// in one statement when there are two or more, as any notification is applied when there is one.
/// A payment whose order the statement found no longer pending is applied on its own, reading
/// what is there now. One whose account could not take the credit fails the batch: the batch runs
/// again without it when it was its account's only credit here, as it would alone; otherwise
/// each notification of the batch is applied alone, so that the one to blame is found.
fn pay_together(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    first_payments: &mut Vec<(usize, read::Found)>,
    done: &mut Done,
) -> Result<(), BatchError> {
    let held = std::mem::take(first_payments);
    let writes = match held.as_slice() {
        [] => return Ok(()),
        [_] => None,
        _ => {
            let payments: Vec<store::FirstPayment<'_>> = held
                .iter()
                .map(|(i, _)| store::FirstPayment {
                    notification: &applies[*i].notification,
                    evidence: applies[*i].evidence(),
                    now: applies[*i].now,
                })
                .collect();
            store::pay_and_credit_together(conn, &payments)?
        }
    };
    let Some(writes) = writes else {
        for (i, found) in held {
            let job = &applies[i];
            let n = &job.notification;
            let applied = apply::apply_found_in(conn, n, job.evidence(), job.now, Some(found));
            done.record(i, job, applied)?;
        }
        return Ok(());
    };
    let account = |found: &read::Found| {
        let order = found.order.as_ref();
        order.map(|o| (o.user_id.clone(), o.currency))
    };
    let mut per_account: HashMap<_, usize> = HashMap::new();
    for (_, found) in &held {
        *per_account.entry(account(found)).or_default() += 1;
    }
    for ((i, found), write) in held.into_iter().zip(writes) {
        let job = &applies[i];
        let applied = match write {
            CreditWrite::Credited(Credit {
                balance_after,
                delivery: Some(delivery),
            }) => Ok((apply::credited(balance_after, delivery), Durability::Flush)),
            CreditWrite::NotPending => {
                apply::apply_found_in(conn, &job.notification, job.evidence(), job.now, None)
            }
            CreditWrite::Credited(_) | CreditWrite::NotCredited => {
                let error = match &found.order {
                    Some(order) => CreditError::not_credited(order),
                    None => CreditError::Database(DieselError::NotFound),
                };
                // The account's bound was checked against the sum of its credits held here: this
                // one is to blame only if it is the account's only one. Otherwise an earlier one
                // may have fitted alone, so every notification is applied alone instead.
                let alone = per_account.get(&account(&found)) == Some(&1);
                return Err(BatchError {
                    at: alone.then_some(i),
                    error,
                });
            }
        };
        done.record(i, job, applied)?;
    }
    Ok(())
}

/// Where every statement sees the latest commits (PostgreSQL's READ COMMITTED), the batch's
/// reads come first, and only then its row locks, on the orders and accounts of the notifications
/// that may write: a repeat of a committed credit writes only its count, and a paid order never
/// leaves `paid`, so it is answered from the read alone and locks nothing. A first payment keeps
/// its read too: its compare-and-set finds out if the order was paid since. Every other
/// notification reads again, under its locks, when its turn comes.
fn read_then_lock(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    failed: &[Option<Failure>],
) -> Result<Vec<Option<read::Found>>, BatchError> {
    let mut read_already = read_batch(conn, applies, failed, true)?;
    let mut order_nos = Vec::new();
    let mut only_first_payments = true;
    for ((job, failed), found) in applies.iter().zip(failed).zip(&mut read_already) {
        let n = &job.notification;
        match found {
            _ if failed.is_some() => continue,
            Some(f) if apply::repeats_a_credit(n, f) => continue,
            Some(f) if apply::is_first_payment(n, f) => {}
            _ => {
                *found = None;
                only_first_payments = false;
            }
        }
        order_nos.extend(n.order_no.as_ref().map(|o| o.as_str()));
    }
    // First payments and nothing else that writes: the statement that writes them takes these
    // locks first, a round trip fewer. A batch of one is the commonest at low concurrency: its
    // read, its write and the commit are all its round trips.
    let locked_when_written = only_first_payments
        && !order_nos.is_empty()
        && store::pays_together(conn)
        && store::locks_together(conn);
    if !locked_when_written {
        store::lock_for_credits(conn, &order_nos)?;
    }
    Ok(read_already)
}

/// What [`read::find_for_batch`] reads for the notifications of a batch that may use it (see
/// [`read::read_up_front`]), in one go, when there are two or more of them, or (with
/// `lone_payment_too`) one payment; `None` for the others, which read for themselves when their
/// turn comes.
fn read_batch(
    conn: &mut DbConnection,
    applies: &[ApplyJob],
    failed: &[Option<Failure>],
    lone_payment_too: bool,
) -> Result<Vec<Option<read::Found>>, DieselError> {
    let batch = applies
        .iter()
        .zip(failed)
        .map(|(job, failed)| failed.is_none().then_some(&job.notification));
    let mut keys = Vec::new();
    let mut at = Vec::new();
    for (i, (job, up_front)) in applies.iter().zip(read::read_up_front(batch)).enumerate() {
        let n = &job.notification;
        if let (true, Some(order_no)) = (up_front, &n.order_no) {
            keys.push(read::Key {
                order_no,
                channel: &n.channel,
                notification_id: &n.notification_id,
                trade_no: n.provider_trade_no.as_deref(),
            });
            at.push(i);
        }
    }
    let mut found = vec![None; applies.len()];
    // One alone is read up front only if it is a payment, which the read may answer (a repeat) or
    // let write without locking first (a first payment); anything else reads again under its locks.
    let lone_payment = || {
        at.first()
            .is_some_and(|&i| applies[i].notification.kind == NotificationKind::Paid)
    };
    if keys.len() > 1 || (lone_payment_too && keys.len() == 1 && lone_payment()) {
        for (i, f) in at.into_iter().zip(read::find_for_batch(conn, &keys)?) {
            found[i] = Some(f);
        }
    }
    Ok(found)
}

/// Adds the counted deliveries to their inbox rows: one statement for all the rows counted the
/// same number of times (usually once each). Returns the counts it left for later: those of rows
/// another transaction holds (see [`store::lock_inbox_rows`]), which are not waited for.
pub(super) fn count_all<'a>(
    conn: &mut DbConnection,
    counts: impl Iterator<Item = &'a CountJob> + Clone,
) -> Result<Vec<CountJob>, DieselError> {
    let Some(now) = counts.clone().map(|job| job.now).max() else {
        return Ok(Vec::new());
    };
    let mut per_row: BTreeMap<i64, i64> = BTreeMap::new();
    for job in counts.clone() {
        *per_row.entry(job.inbox_id).or_default() += 1;
    }
    let rows: Vec<i64> = per_row.keys().copied().collect();
    let locked: std::collections::HashSet<i64> =
        store::lock_inbox_rows(conn, &rows)?.into_iter().collect();
    let mut per_increment: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (inbox_id, increment) in per_row {
        if locked.contains(&inbox_id) {
            per_increment.entry(increment).or_default().push(inbox_id);
        }
    }
    for (increment, rows) in per_increment {
        store::count_deliveries(conn, &rows, increment, now)?;
    }
    Ok(counts
        .filter(|job| !locked.contains(&job.inbox_id))
        .cloned()
        .collect())
}
