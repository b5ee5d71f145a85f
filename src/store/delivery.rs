//! What the backends share: the inbox upsert that SQLite and PostgreSQL write alike (and
//! PostgreSQL's credit statement embeds), the credit that SQLite and MySQL write alike as
//! separate statements, and what a credit came to.

use chrono::NaiveDateTime;
use diesel::result::Error as DieselError;
use diesel::sql_types::BigInt;
use diesel::RunQueryDsl;

use super::balance::change_balance;
use super::statement::Statement;
use crate::books::accounts::{self, LedgerKind, NewEntry};
use crate::books::inbox::{Evidence, InboxRow};
use crate::books::orders::{Order, OrderStatus};
use crate::db::DbConnection;
use crate::domain::notification::Notification;
use crate::domain::outcome::Outcome;

/// What the compare-and-set and the credit came to.
#[derive(Debug, Clone)]
pub enum CreditWrite {
    /// The order was no longer pending: another transaction won, or it was closed.
    NotPending,
    /// This transaction paid the order and credited the balance.
    Credited(Credit),
    /// The order was marked paid, but its account is missing or the balance would overflow: the
    /// caller must fail the transaction, so that nothing stays written.
    NotCredited,
}

/// What a credit wrote.
#[derive(Debug, Clone)]
pub struct Credit {
    pub balance_after: i64,
    /// The inbox row of the delivery, when the backend recorded it in the same statement.
    pub delivery: Option<InboxRow>,
}

/// A first payment of a pending order, to be written with others by
/// [`pay_and_credit_together`](super::pay_and_credit_together).
#[derive(Debug, Clone, Copy)]
pub struct FirstPayment<'a> {
    pub notification: &'a Notification,
    pub evidence: Evidence<'a>,
    pub now: NaiveDateTime,
}

/// Refuses payments to be credited together that share an order, a trade or an inbox row: of two
/// about the same order one would be reported credited by the other's credit.
pub(super) fn distinct_payments(payments: &[FirstPayment<'_>]) -> Result<(), DieselError> {
    let mut distinct = std::collections::HashSet::new();
    for p in payments {
        let n = p.notification;
        let channel = n.channel.as_str();
        let keys = [
            ("order", "", n.order_no.as_ref().map(|o| o.as_str())),
            ("trade", channel, n.provider_trade_no.as_deref()),
            ("inbox", channel, Some(n.notification_id.as_str())),
        ];
        if !keys
            .into_iter()
            .all(|key| key.2.is_none() || distinct.insert(key))
        {
            return Err(DieselError::QueryBuilderError(
                "payments credited together must name distinct orders, trades and notifications"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// Records one delivery in one statement, where `INSERT ... ON CONFLICT ... RETURNING` exists
/// (SQLite and PostgreSQL):
/// inserts its row, or (same channel and provider id) counts one more delivery on the row it has.
/// A row that once credited keeps saying so: later duplicates count as deliveries, not as new
/// outcomes.
pub(super) fn record_delivery(
    conn: &mut DbConnection,
    n: &Notification,
    evidence: Evidence<'_>,
    verdict: Verdict<'_>,
    now: NaiveDateTime,
) -> Result<InboxRow, DieselError> {
    let statement = Statement::<(BigInt, BigInt)>::new(INSERT_DELIVERY).sql("VALUES (");
    let values = delivery_values(statement, n, evidence, verdict, now).sql(")");
    let (id, delivery_count): (i64, i64) = on_repeat_delivery(values).get_result(conn)?;
    Ok(InboxRow { id, delivery_count })
}

/// The compare-and-set, then for its winner the credit and the ledger row, as separate
/// statements (SQLite and MySQL); the caller records the delivery.
///
/// The ledger's unique (kind, entry_key) key refuses a second credit for one order even if every
/// check above this line were wrong.
pub(super) fn pay_then_credit(
    conn: &mut DbConnection,
    order: &Order,
    n: &Notification,
    now: NaiveDateTime,
) -> Result<CreditWrite, DieselError> {
    let trade_no = n.provider_trade_no.as_deref();
    if !mark_paid(conn, order.order_no.as_str(), trade_no, now)? {
        return Ok(CreditWrite::NotPending);
    }
    let user = order.user_id.as_str();
    let amount = order.amount.get();
    let Some(balance_after) = change_balance(conn, user, order.currency, amount, i64::MIN, now)?
    else {
        return Ok(CreditWrite::NotCredited);
    };
    book_credit(conn, order, balance_after, now)?;
    Ok(CreditWrite::Credited(Credit {
        balance_after,
        delivery: None,
    }))
}

/// `UPDATE orders SET status = paid ... WHERE order_no = ? AND status = pending`: true when this
/// transaction changed the row. A paid order never leaves `paid`. A [`Statement`], because diesel
/// prepares its own `UPDATE`s anew on every call.
fn mark_paid(
    conn: &mut DbConnection,
    order_no: &str,
    trade_no: Option<&str>,
    now: NaiveDateTime,
) -> Result<bool, DieselError> {
    let changed = Statement::<()>::new("UPDATE orders SET status = ")
        .text(OrderStatus::Paid.as_str())
        .sql(", provider_trade_no = ")
        .nullable_text(trade_no)
        .sql(", version = version + 1, paid_at = ")
        .timestamp(now)
        .sql(" WHERE order_no = ")
        .text(order_no)
        .sql(" AND status = ")
        .text(OrderStatus::Pending.as_str())
        .execute(conn)?;
    Ok(changed == 1)
}

/// [`count_deliveries`](super::count_deliveries) on SQLite and MySQL: one statement, its `IN`
/// list padded so that it stays prepared.
pub(super) fn count_deliveries(
    conn: &mut DbConnection,
    ids: &[i64],
    increment: i64,
    now: NaiveDateTime,
) -> Result<usize, DieselError> {
    if ids.is_empty() {
        return Ok(0);
    }
    Statement::<()>::new("UPDATE notifications SET delivery_count = delivery_count + ")
        .bigint(increment)
        .sql(", last_seen_at = ")
        .timestamp(now)
        .sql(" WHERE id IN (")
        .bigint_list(ids)
        .sql(")")
        .execute(conn)
}

/// The ledger row of a credit, where it is not part of one statement with the credit itself
/// (SQLite and MySQL).
fn book_credit(
    conn: &mut DbConnection,
    order: &Order,
    balance_after: i64,
    now: NaiveDateTime,
) -> Result<(), DieselError> {
    accounts::book(
        conn,
        &NewEntry {
            user_id: order.user_id.as_str(),
            currency: order.currency,
            order_no: Some(order.order_no.as_str()),
            kind: LedgerKind::Credit,
            amount_minor: order.amount.get(),
            balance_after,
            entry_key: order.order_no.as_str(),
            debit_no: None,
            memo: None,
            created_at: now,
        },
    )
}

/// The head of the statement that stores a delivery; [`delivery_values`] and
/// [`on_repeat_delivery`] complete it, after `VALUES (` or a `SELECT`.
pub(super) const INSERT_DELIVERY: &str = "INSERT INTO notifications (channel, notification_id, \
     order_no, provider_trade_no, kind, amount_minor, currency, verified, outcome, detail, \
     anomaly, source, raw_headers, raw_body, delivery_count, first_seen_at, last_seen_at) ";

/// The outcomes that moved money ([`Outcome::moved_money`]) as an SQL list: a row that says one
/// of them keeps it. A macro, so that `concat!` can build statements around it.
macro_rules! moved_money_sql {
    () => {
        "('credited', 'refunded', 'charged_back', 'chargeback_reversed')"
    };
}
pub(super) use moved_money_sql;

/// What a delivery came to, as its inbox row records it.
#[derive(Debug, Clone, Copy)]
pub struct Verdict<'a> {
    pub outcome: Outcome,
    pub detail: Option<&'a str>,
    /// Kept for a human, for the outcome's sake or for its own reason.
    pub anomaly: bool,
}

/// [`on_repeat_delivery`]'s SQL, without its `RETURNING`: for statements that return more.
macro_rules! on_repeat_delivery_sql {
    () => {
        concat!(
            " ON CONFLICT (channel, notification_id) DO UPDATE SET \
             delivery_count = notifications.delivery_count + 1, \
             last_seen_at = excluded.last_seen_at, \
             order_no = COALESCE(notifications.order_no, excluded.order_no), \
             outcome = CASE WHEN notifications.outcome IN ",
            $crate::store::delivery::moved_money_sql!(),
            " THEN notifications.outcome ELSE excluded.outcome END, \
             detail = CASE WHEN notifications.outcome IN ",
            $crate::store::delivery::moved_money_sql!(),
            " THEN notifications.detail ELSE excluded.detail END, \
             anomaly = CASE WHEN notifications.resolution IS NOT NULL OR notifications.outcome IN ",
            $crate::store::delivery::moved_money_sql!(),
            " THEN notifications.anomaly ELSE excluded.anomaly END",
        )
    };
}
pub(super) use on_repeat_delivery_sql;

/// What a repeated delivery does to the row its notification has: counts itself, takes the new
/// outcome unless the row's outcome moved money, and files the row under the order once one is
/// known (a refund that names only its trade finds its order when that trade has paid it).
/// Returns the row's id and delivery count.
pub(super) fn on_repeat_delivery<ST>(statement: Statement<'_, ST>) -> Statement<'_, ST> {
    statement.sql(concat!(
        on_repeat_delivery_sql!(),
        " RETURNING id, delivery_count"
    ))
}

/// The values of a first delivery's row, in [`INSERT_DELIVERY`]'s column order.
pub(super) fn delivery_values<'a, ST>(
    statement: Statement<'a, ST>,
    n: &'a Notification,
    evidence: Evidence<'a>,
    verdict: Verdict<'a>,
    now: NaiveDateTime,
) -> Statement<'a, ST> {
    statement
        .text(n.channel.as_str())
        .sql(", ")
        .text(&n.notification_id)
        .sql(", ")
        .nullable_text(n.order_no.as_ref().map(|o| o.as_str()))
        .sql(", ")
        .nullable_text(n.provider_trade_no.as_deref())
        .sql(", ")
        .text(n.kind.as_str())
        .sql(", ")
        .nullable_bigint(n.amount.map(|a| a.get()))
        .sql(", ")
        .nullable_text(n.currency.map(|c| c.code()))
        .sql(", TRUE, ")
        .text(verdict.outcome.as_str())
        .sql(", ")
        .nullable_text(verdict.detail)
        .sql(", ")
        .bool(verdict.anomaly)
        .sql(", ")
        .text(evidence.source.as_str())
        .sql(", ")
        .text(evidence.headers_json)
        .sql(", ")
        .binary(evidence.body)
        .sql(", 1, ")
        .timestamp(now)
        .sql(", ")
        .timestamp(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_list_of_outcomes_that_moved_money_is_the_enum_s() {
        let listed: Vec<String> = Outcome::MOVED_MONEY
            .iter()
            .map(|o| format!("'{}'", o.as_str()))
            .collect();
        assert_eq!(moved_money_sql!(), format!("({})", listed.join(", ")));
    }
}
