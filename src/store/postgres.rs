//! PostgreSQL's SQL: one round trip where SQLite takes several statements, and row locks taken in
//! one order.

use chrono::NaiveDateTime;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Nullable};

use super::delivery::{
    delivery_values, on_repeat_delivery, Credit, CreditWrite, Verdict, INSERT_DELIVERY,
};
use super::statement::Statement;
use crate::books::accounts::LedgerKind;
use crate::books::inbox::{Evidence, InboxRow};
use crate::books::orders::{Order, OrderStatus};
use crate::db::schema::{accounts, notifications, orders};
use crate::db::DbConnection;
use crate::domain::notification::Notification;
use crate::domain::outcome::Outcome;

/// The compare-and-set, the credit, the ledger row and the inbox record of the delivery, as one
/// statement of data-modifying CTEs.
///
/// It takes the multi-backend connection its statement is prepared for; the caller has checked
/// that it is PostgreSQL.
pub(super) fn pay_and_credit(
    conn: &mut DbConnection,
    order: &Order,
    n: &Notification,
    evidence: Evidence<'_>,
    now: NaiveDateTime,
) -> Result<CreditWrite, DieselError> {
    type Row = (BigInt, Nullable<BigInt>, Nullable<BigInt>, Nullable<BigInt>);
    let statement = Statement::<Row>::new("WITH paid AS (UPDATE orders SET status = ")
        .text(OrderStatus::Paid.as_str())
        .sql(", provider_trade_no = ")
        .nullable_text(n.provider_trade_no.as_deref())
        .sql(", version = version + 1, paid_at = ")
        .timestamp(now)
        .sql(" WHERE order_no = ")
        .text(order.order_no.as_str())
        .sql(" AND status = ")
        .text(OrderStatus::Pending.as_str())
        .sql(
            " RETURNING order_no, user_id, currency, amount_minor), \
             credited AS ( \
             UPDATE accounts AS a SET balance_minor = a.balance_minor + paid.amount_minor, \
                 version = a.version + 1, updated_at = ",
        )
        .timestamp(now)
        .sql(
            " FROM paid WHERE a.user_id = paid.user_id AND a.currency = paid.currency \
                 AND a.balance_minor <= 9223372036854775807 - paid.amount_minor \
             RETURNING a.user_id, a.currency, a.balance_minor, paid.order_no, \
                 paid.amount_minor), \
             booked AS ( \
             INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, \
                 balance_after, created_at, entry_key) \
             SELECT user_id, currency, order_no, ",
        )
        .text(LedgerKind::Credit.as_str())
        .sql(", amount_minor, balance_minor, ")
        .timestamp(now)
        .sql(", order_no FROM credited RETURNING balance_after), recorded AS (")
        .sql(INSERT_DELIVERY)
        .sql("SELECT ");
    let credited = Verdict {
        outcome: Outcome::Credited,
        detail: None,
        anomaly: false,
    };
    let statement = delivery_values(statement, n, evidence, credited, now).sql(" FROM booked");
    let (paid, balance_after, inbox_id, deliveries): (i64, Option<i64>, Option<i64>, Option<i64>) =
        on_repeat_delivery(statement)
            .sql(
                ") \
                 SELECT (SELECT count(*) FROM paid), (SELECT balance_after FROM booked), \
                     (SELECT id FROM recorded), (SELECT delivery_count FROM recorded)",
            )
            .get_result(conn)?;
    Ok(match (paid, balance_after, inbox_id.zip(deliveries)) {
        (0, _, _) => CreditWrite::NotPending,
        (_, Some(balance_after), Some((id, delivery_count))) => CreditWrite::Credited(Credit {
            balance_after,
            delivery: Some(InboxRow { id, delivery_count }),
        }),
        _ => CreditWrite::NotCredited,
    })
}

/// `SELECT ... FOR UPDATE` over the accounts the orders may credit and the orders, in key order.
pub(super) fn lock_for_credits(pg: &mut PgConnection, order_nos: &[&str]) -> QueryResult<()> {
    if order_nos.is_empty() {
        return Ok(());
    }
    accounts::table
        .inner_join(
            orders::table.on(orders::user_id
                .eq(accounts::user_id)
                .and(orders::currency.eq(accounts::currency))),
        )
        .filter(orders::order_no.eq_any(order_nos))
        .order((accounts::user_id, accounts::currency, orders::order_no))
        .select(accounts::user_id)
        .for_update()
        .load::<String>(pg)?;
    Ok(())
}

/// `SELECT ... ORDER BY id FOR UPDATE SKIP LOCKED`: the rows no other transaction holds, locked.
pub(super) fn lock_inbox_rows(pg: &mut PgConnection, ids: &[i64]) -> QueryResult<Vec<i64>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    notifications::table
        .filter(notifications::id.eq_any(ids))
        .order(notifications::id)
        .select(notifications::id)
        .for_update()
        .skip_locked()
        .load::<i64>(pg)
}
