//! SQLite's batch-wide credit: the first payments of a batch in four statements, whatever their
//! number, instead of four each. SQLite has no data-modifying `WITH`, so they cannot be one
//! statement as on PostgreSQL; each writes every row of its table at once, from a `VALUES` list.
//!
//! Each list holds at most [`CHUNK`] payments. The two `UPDATE`s pad theirs to a power of two by
//! repeating the last row, which changes nothing (a row of the target table is updated once
//! however many rows of the list it matches). The two `INSERT`s cannot pad: they write in runs of
//! power-of-two sizes instead. Either way each statement has one of a few texts, and diesel keeps
//! each prepared.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Text};
use diesel::RunQueryDsl;

use super::delivery::{
    delivery_values, distinct_payments, on_repeat_delivery_sql, Credit, CreditWrite, FirstPayment,
    Verdict, INSERT_DELIVERY,
};
use super::statement::{padded, Statement};
use crate::books::accounts::LedgerKind;
use crate::books::inbox::InboxRow;
use crate::books::orders::OrderStatus;
use crate::db::DbConnection;
use crate::domain::outcome::Outcome;

/// The most payments one statement writes: 15 values a row for the inbox, well under the 999
/// variables a statement could bind in SQLite's older builds.
const CHUNK: usize = 32;

/// [`pay_and_credit_together`](super::pay_and_credit_together) on SQLite: the compare-and-set of
/// every order, one balance update per account (its credits summed, checked against its bound
/// together), the ledger rows with their running balances in the batch's order, and the inbox
/// rows. One result per payment, in order; the caller fails the transaction on
/// [`CreditWrite::NotCredited`].
pub(super) fn pay_and_credit_together(
    conn: &mut DbConnection,
    payments: &[FirstPayment<'_>],
) -> Result<Vec<CreditWrite>, DieselError> {
    distinct_payments(payments)?;
    let paid = mark_paid(conn, payments)?;

    // Per account, in the order the batch first credits it: the sum of its credits, and the time
    // of the last one.
    let mut accounts: Vec<Account<'_>> = Vec::new();
    // Per payment, the order it paid and that order's account.
    let mut account_of: Vec<Option<(&Paid, usize)>> = Vec::with_capacity(payments.len());
    for p in payments {
        let order_no = p.notification.order_no.as_ref().map(|o| o.as_str());
        let Some(order) = order_no.and_then(|o| paid.get(o)) else {
            account_of.push(None);
            continue;
        };
        let at = match accounts
            .iter()
            .position(|a| a.user_id == order.user_id && a.currency == order.currency)
        {
            Some(at) => at,
            None => {
                accounts.push(Account {
                    user_id: &order.user_id,
                    currency: &order.currency,
                    total: Some(0),
                    last: p.now,
                });
                accounts.len() - 1
            }
        };
        let account = &mut accounts[at];
        account.total = account
            .total
            .and_then(|t| t.checked_add(order.amount_minor));
        account.last = account.last.max(p.now);
        account_of.push(Some((order, at)));
    }
    let mut balance_before = credit_accounts(conn, &accounts)?;

    // The ledger rows, each with the balance right after it, and the inbox rows, of the payments
    // whose order was pending and whose account took the credits.
    let mut writes = Vec::with_capacity(payments.len());
    let mut booked = Vec::new();
    for (p, of) in payments.iter().zip(&account_of) {
        let write = of.and_then(|(order, at)| {
            let balance = balance_before.get_mut(&at)?;
            *balance += order.amount_minor;
            booked.push((p, order, *balance));
            Some(*balance)
        });
        writes.push(write);
    }
    let mut recorded = HashMap::new();
    for run in runs(&booked) {
        book_credits(conn, run)?;
        recorded.extend(record_deliveries(conn, run)?);
    }

    payments
        .iter()
        .zip(&account_of)
        .zip(writes)
        .map(|((p, of), write)| {
            if of.is_none() {
                return Ok(CreditWrite::NotPending);
            }
            let Some(balance_after) = write else {
                return Ok(CreditWrite::NotCredited);
            };
            let key = (
                p.notification.channel.as_str(),
                &*p.notification.notification_id,
            );
            let delivery = recorded.get(&key).copied().ok_or_else(|| {
                DieselError::DeserializationError(
                    format!("no inbox row came back for notification {}", key.1).into(),
                )
            })?;
            Ok(CreditWrite::Credited(Credit {
                balance_after,
                delivery: Some(delivery),
            }))
        })
        .collect()
}

/// An order the compare-and-set moved from pending to paid.
struct Paid {
    user_id: String,
    currency: String,
    amount_minor: i64,
}

/// An account that the batch credits.
struct Account<'a> {
    user_id: &'a str,
    currency: &'a str,
    /// `None` when its credits add up past `i64::MAX`.
    total: Option<i64>,
    last: NaiveDateTime,
}

/// The compare-and-set of every payment's order: the orders it paid, by number.
fn mark_paid(
    conn: &mut DbConnection,
    payments: &[FirstPayment<'_>],
) -> Result<HashMap<String, Paid>, DieselError> {
    let mut paid = HashMap::with_capacity(payments.len());
    for chunk in payments.chunks(CHUNK) {
        let mut statement = Statement::<(Text, Text, Text, BigInt)>::new(
            "WITH v (order_no, trade_no, now) AS (VALUES ",
        );
        for (i, p) in padded(chunk).enumerate() {
            let n = p.notification;
            statement = statement
                .sql(if i == 0 { "(" } else { ", (" })
                .nullable_text(n.order_no.as_ref().map(|o| o.as_str()))
                .sql(", ")
                .nullable_text(n.provider_trade_no.as_deref())
                .sql(", ")
                .timestamp(p.now)
                .sql(")");
        }
        let rows: Vec<(String, String, String, i64)> = statement
            .sql(") UPDATE orders SET status = ")
            .text(OrderStatus::Paid.as_str())
            .sql(
                ", provider_trade_no = v.trade_no, version = version + 1, paid_at = v.now \
                 FROM v WHERE orders.order_no = v.order_no AND orders.status = ",
            )
            .text(OrderStatus::Pending.as_str())
            .sql(" RETURNING orders.order_no, orders.user_id, orders.currency, orders.amount_minor")
            .load(conn)?;
        for (order_no, user_id, currency, amount_minor) in rows {
            let order = Paid {
                user_id,
                currency,
                amount_minor,
            };
            paid.insert(order_no, order);
        }
    }
    Ok(paid)
}

/// Adds each account's credits to its balance, where the sum fits under `i64::MAX`. Returns, per
/// account that took them, its balance before them; an account missing from the result took
/// none.
fn credit_accounts(
    conn: &mut DbConnection,
    accounts: &[Account<'_>],
) -> Result<HashMap<usize, i64>, DieselError> {
    let mut before = HashMap::with_capacity(accounts.len());
    let fits: Vec<(usize, &Account<'_>, i64)> = accounts
        .iter()
        .enumerate()
        .filter_map(|(at, a)| a.total.map(|total| (at, a, total)))
        .collect();
    for chunk in fits.chunks(CHUNK) {
        let mut statement = Statement::<(Text, Text, BigInt)>::new(
            "WITH v (user_id, currency, total, now) AS (VALUES ",
        );
        for (i, (_, account, total)) in padded(chunk).enumerate() {
            statement = statement
                .sql(if i == 0 { "(" } else { ", (" })
                .text(account.user_id)
                .sql(", ")
                .text(account.currency)
                .sql(", ")
                .bigint(*total)
                .sql(", ")
                .timestamp(account.last)
                .sql(")");
        }
        // `balance + total <= i64::MAX`, written so that the bound itself cannot overflow (SQLite
        // would turn an overflow into a float).
        let rows: Vec<(String, String, i64)> = statement
            .sql(
                ") UPDATE accounts SET balance_minor = balance_minor + v.total, \
                 version = version + 1, updated_at = v.now FROM v \
                 WHERE accounts.user_id = v.user_id AND accounts.currency = v.currency \
                 AND accounts.balance_minor <= 9223372036854775807 - v.total \
                 RETURNING accounts.user_id, accounts.currency, accounts.balance_minor",
            )
            .load(conn)?;
        for (user_id, currency, balance) in rows {
            let found = chunk
                .iter()
                .find(|(_, a, _)| a.user_id == user_id && a.currency == currency);
            if let Some(&(at, _, total)) = found {
                before.insert(at, balance - total);
            }
        }
    }
    Ok(before)
}

/// A payment to book, its order as paid, and the balance right after its credit.
type Booked<'p, 'a> = (&'p FirstPayment<'a>, &'p Paid, i64);

/// The ledger rows of credited payments, one `INSERT` for the run.
fn book_credits(conn: &mut DbConnection, run: &[Booked<'_, '_>]) -> Result<(), DieselError> {
    let mut statement = Statement::<()>::new(
        "INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, balance_after, \
         created_at, entry_key) VALUES ",
    );
    for (i, (p, order, balance_after)) in run.iter().enumerate() {
        let order_no = p.notification.order_no.as_ref().map(|o| o.as_str());
        statement = statement
            .sql(if i == 0 { "(" } else { ", (" })
            .text(&order.user_id)
            .sql(", ")
            .text(&order.currency)
            .sql(", ")
            .nullable_text(order_no)
            .sql(", ")
            .text(LedgerKind::Credit.as_str())
            .sql(", ")
            .bigint(order.amount_minor)
            .sql(", ")
            .bigint(*balance_after)
            .sql(", ")
            .timestamp(p.now)
            .sql(", ")
            .nullable_text(order_no)
            .sql(")");
    }
    let booked = statement.execute(conn)?;
    if booked != run.len() {
        return Err(DieselError::DeserializationError(
            format!("booked {booked} ledger rows for {} credits", run.len()).into(),
        ));
    }
    Ok(())
}

/// A notification's inbox row, by its channel and notification id.
type Recorded<'a> = ((&'a str, &'a str), InboxRow);

/// The inbox rows of credited payments, one `INSERT` for the run.
fn record_deliveries<'a>(
    conn: &mut DbConnection,
    run: &[Booked<'_, 'a>],
) -> Result<Vec<Recorded<'a>>, DieselError> {
    let credited = Verdict {
        outcome: Outcome::Credited,
        detail: None,
        anomaly: false,
    };
    let mut statement =
        Statement::<(Text, Text, BigInt, BigInt)>::new(INSERT_DELIVERY).sql("VALUES ");
    for (i, (p, _, _)) in run.iter().enumerate() {
        statement = statement.sql(if i == 0 { "(" } else { ", (" });
        statement =
            delivery_values(statement, p.notification, p.evidence, credited, p.now).sql(")");
    }
    let rows: Vec<(String, String, i64, i64)> = statement
        .sql(concat!(
            on_repeat_delivery_sql!(),
            " RETURNING channel, notification_id, id, delivery_count"
        ))
        .load(conn)?;
    rows.into_iter()
        .map(|(channel, notification_id, id, delivery_count)| {
            let (p, _, _) = run
                .iter()
                .find(|(p, _, _)| {
                    p.notification.channel.as_str() == channel
                        && p.notification.notification_id == notification_id
                })
                .ok_or_else(|| {
                    DieselError::DeserializationError(
                        format!(
                            "an inbox row came back for another notification: {notification_id}"
                        )
                        .into(),
                    )
                })?;
            let n = p.notification;
            Ok((
                (n.channel.as_str(), &*n.notification_id),
                InboxRow { id, delivery_count },
            ))
        })
        .collect()
}

/// `items` in runs of power-of-two lengths, the longest first, none longer than [`CHUNK`]:
/// 23 items are runs of 16, 4, 2 and 1.
fn runs<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let len = CHUNK.min(1 << items.len().ilog2());
        let (run, rest) = items.split_at(len);
        items = rest;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_powers_of_two_longest_first_and_cover_every_item() {
        let lengths = |n: usize| {
            let items: Vec<usize> = (0..n).collect();
            let runs: Vec<&[usize]> = runs(&items).collect();
            assert_eq!(runs.concat(), items);
            runs.iter().map(|r| r.len()).collect::<Vec<_>>()
        };
        assert_eq!(lengths(0), Vec::<usize>::new());
        assert_eq!(lengths(1), [1]);
        assert_eq!(lengths(23), [16, 4, 2, 1]);
        assert_eq!(lengths(32), [32]);
        assert_eq!(lengths(70), [32, 32, 4, 2]);
    }
}
