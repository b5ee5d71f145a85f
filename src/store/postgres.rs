//! PostgreSQL's SQL: one round trip where SQLite takes several statements, and row locks taken in
//! one order.
use chrono::NaiveDateTime;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::Error as DieselError;
use diesel::sql_types::{Array, BigInt, Binary, Bool, Nullable, Text, Timestamp, Untyped};

use super::delivery::{
    delivery_values, distinct_payments, on_repeat_delivery, on_repeat_delivery_sql, Credit,
    CreditWrite, FirstPayment, Verdict, INSERT_DELIVERY,
};
use super::statement::Statement;
use crate::books::accounts::LedgerKind;
use crate::books::inbox::{Evidence, InboxRow};
use crate::books::orders::{Order, OrderStatus};
use crate::db::schema::notifications;
use crate::db::DbConnection;
use crate::domain::notification::Notification;
use crate::domain::outcome::Outcome;

/// The compare-and-set, the credit, the ledger row and the inbox record of the delivery, as one
/// statement of data-modifying CTEs. It first takes the row locks of [`lock_for_credits`] on the
/// order's account and the order, so that a batch whose only write is this payment need not take
/// them in a round trip of its own; a row the transaction locked already costs a lookup.
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
    // First the locks of `lock_for_credits` on the order's account and the order, in its order,
    // before any row is written: `paid` waits for them, and every other write waits for `paid`.
    // The account is the one the order was read with; an order never changes hands. The order's
    // lookup refers to the account's row, as in `lock_for_credits`.
    let statement = Statement::<Row>::new(
        "WITH locked AS (SELECT 1 FROM (SELECT a.user_id FROM accounts AS a WHERE a.user_id = ",
    )
    .text(order.user_id.as_str())
    .sql(" AND a.currency = ")
    .text(order.currency.code())
    .sql(
        " LIMIT 1 FOR UPDATE) AS la CROSS JOIN LATERAL (SELECT 1 FROM orders AS o \
         WHERE o.order_no = ",
    )
    .text(order.order_no.as_str())
    .sql(" AND la.user_id IS NOT NULL LIMIT 1 FOR UPDATE) AS lo), ")
    .sql("paid AS (UPDATE orders SET status = ")
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
        " AND (SELECT count(*) FROM locked) >= 0 \
             RETURNING order_no, user_id, currency, amount_minor), \
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

/// `SELECT ... FOR UPDATE` over the accounts the orders may credit and the orders, in key order:
/// the orders' keys are read first and sorted, then each account and order is locked in that
/// order, one lookup by key each. Each order's lookup refers to its account's locked row (in a
/// condition no index serves, so the order is still found by its key): no plan can lock the
/// order before the account, whichever join order it would otherwise pick.
///
/// Every row is reached by its key, in a `LATERAL` subquery, whatever plan the statement keeps
/// for the session: as one join sorted for the locks, a plan made on tables analyzed while nearly
/// empty walked every order to save the sort, on every batch.
pub(super) fn lock_for_credits(pg: &mut PgConnection, order_nos: &[&str]) -> QueryResult<()> {
    if order_nos.is_empty() {
        return Ok(());
    }
    ByKeys {
        sql: &LOCK_FOR_CREDITS,
        arrays: [order_nos.to_vec()],
    }
    .execute(pg)?;
    Ok(())
}

/// [`lock_for_credits`]'s statement, before and after its array of order numbers; also the first
/// part of [`Together`]'s.
const LOCK_FOR_CREDITS: [&str; 2] = [
    "SELECT 1 FROM (SELECT o.user_id, o.currency, o.order_no FROM unnest(",
    ") AS k (order_no) CROSS JOIN LATERAL (SELECT user_id, currency, order_no \
     FROM orders AS o WHERE o.order_no = k.order_no LIMIT 1) AS o \
     ORDER BY o.user_id, o.currency, o.order_no) AS w \
     CROSS JOIN LATERAL (SELECT a.user_id FROM accounts AS a WHERE a.user_id = w.user_id \
     AND a.currency = w.currency LIMIT 1 FOR UPDATE) AS la \
     CROSS JOIN LATERAL (SELECT 1 FROM orders AS o WHERE o.order_no = w.order_no \
     AND la.user_id IS NOT NULL LIMIT 1 FOR UPDATE) AS lo",
];

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

/// [`count_deliveries`](super::count_deliveries): one `UPDATE ... WHERE id = ANY($3)`, kept
/// prepared (diesel prepares its own `UPDATE`s anew on every call).
pub(super) fn count_deliveries(
    pg: &mut PgConnection,
    ids: &[i64],
    increment: i64,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    CountDeliveries {
        ids,
        increment,
        now,
    }
    .execute(pg)
}

struct CountDeliveries<'a> {
    ids: &'a [i64],
    increment: i64,
    now: NaiveDateTime,
}

impl QueryFragment<Pg> for CountDeliveries<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("UPDATE notifications SET delivery_count = delivery_count + ");
        out.push_bind_param::<BigInt, _>(&self.increment)?;
        out.push_sql(", last_seen_at = ");
        out.push_bind_param::<Timestamp, _>(&self.now)?;
        out.push_sql(" WHERE id = ANY(");
        out.push_bind_param::<Array<BigInt>, _>(&self.ids)?;
        out.push_sql(")");
        Ok(())
    }
}

/// The one text [`CountDeliveries`] has, as a type the statement cache can key it by.
struct CountDeliveriesId;

impl QueryId for CountDeliveries<'_> {
    type QueryId = CountDeliveriesId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl RunQueryDsl<PgConnection> for CountDeliveries<'_> {}

/// The first payments of pending orders, each with its compare-and-set, credit, ledger row and
/// inbox record as [`pay_and_credit`] writes them, in one statement for all of them: the arrays
/// of their values, unnested. Per account, the credits are summed into one update and each ledger
/// row's `balance_after` is the running balance in the batch's order, so the ledger reads as if
/// they had been written one by one. Returns one result per payment, in order.
///
/// It first takes the row locks of [`lock_for_credits`] on the payments' orders and accounts, in
/// the same order, so that a batch whose only writes are these payments need not take them in a
/// round trip of its own.
///
/// The payments name distinct orders, trades and inbox rows: of two about the same order one
/// would be reported credited by the other's credit, so such a batch is refused whole.
pub(super) fn pay_and_credit_together(
    pg: &mut PgConnection,
    payments: &[FirstPayment<'_>],
) -> Result<Vec<CreditWrite>, DieselError> {
    distinct_payments(payments)?;
    let mut together = Together::default();
    for p in payments {
        let n = p.notification;
        let channel = n.channel.as_str();
        let order_no = n.order_no.as_ref().map(|o| o.as_str());
        let trade_no = n.provider_trade_no.as_deref();
        together.channels.push(channel);
        together.ids.push(&n.notification_id);
        together.order_nos.push(order_no);
        together.trade_nos.push(trade_no);
        together.kinds.push(n.kind.as_str());
        together.amounts.push(n.amount.map(|a| a.get()));
        together.currencies.push(n.currency.map(|c| c.code()));
        together.sources.push(p.evidence.source.as_str());
        together.headers.push(p.evidence.headers_json);
        together.bodies.push(p.evidence.body);
        together.seen.push(p.now);
    }
    let rows: Vec<TogetherRow> = together.load(pg)?;
    if rows.len() != payments.len() || rows.iter().zip(1..).any(|(row, ord)| row.0 != ord) {
        return Err(DieselError::DeserializationError(
            format!(
                "credited {} payments together and read back {} results",
                payments.len(),
                rows.len()
            )
            .into(),
        ));
    }
    Ok(rows
        .into_iter()
        .map(|(_, paid, balance_after, id, delivery_count)| {
            match (paid, balance_after, id.zip(delivery_count)) {
                (false, _, _) => CreditWrite::NotPending,
                (true, Some(balance_after), Some((id, delivery_count))) => {
                    CreditWrite::Credited(Credit {
                        balance_after,
                        delivery: Some(InboxRow { id, delivery_count }),
                    })
                }
                _ => CreditWrite::NotCredited,
            }
        })
        .collect())
}

/// [`pay_and_credit_together`]'s statement: one array per column of the payments' values. Its
/// text never changes, so diesel keeps it prepared.
#[derive(Default)]
struct Together<'a> {
    channels: Vec<&'a str>,
    ids: Vec<&'a str>,
    order_nos: Vec<Option<&'a str>>,
    trade_nos: Vec<Option<&'a str>>,
    kinds: Vec<&'a str>,
    amounts: Vec<Option<i64>>,
    currencies: Vec<Option<&'static str>>,
    sources: Vec<&'static str>,
    headers: Vec<&'a str>,
    bodies: Vec<&'a [u8]>,
    seen: Vec<NaiveDateTime>,
}

impl QueryFragment<Pg> for Together<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // First the locks of `lock_for_credits`, in its order, before any row is written: every
        // write below reads `input`, which waits for all of them. A row the transaction locked
        // already costs a lookup here, not a second lock.
        out.push_sql("WITH locked AS (");
        out.push_sql(LOCK_FOR_CREDITS[0]);
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.order_nos)?;
        out.push_sql(LOCK_FOR_CREDITS[1]);
        out.push_sql("), input AS (SELECT * FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.channels)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.order_nos)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.trade_nos)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.kinds)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<BigInt>>, _>(&self.amounts)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.currencies)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.sources)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.headers)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Binary>, _>(&self.bodies)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamp>, _>(&self.seen)?;
        out.push_sql(
            ") WITH ORDINALITY AS i (channel, notification_id, order_no, provider_trade_no, kind, \
                 amount_minor, currency, source, raw_headers, raw_body, seen_at, ord) \
                 WHERE (SELECT count(*) FROM locked) >= 0), \
             paid AS (UPDATE orders AS o SET status = ",
        );
        out.push_bind_param::<Text, _>(OrderStatus::Paid.as_str())?;
        out.push_sql(
            ", provider_trade_no = i.provider_trade_no, version = o.version + 1, \
                 paid_at = i.seen_at \
             FROM input AS i WHERE o.order_no = i.order_no AND o.status = ",
        );
        out.push_bind_param::<Text, _>(OrderStatus::Pending.as_str())?;
        // The orders by their keys too, whatever plan the statement keeps (see
        // `lock_for_credits`).
        out.push_sql(" AND o.order_no = ANY(");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.order_nos)?;
        out.push_sql(")");
        out.push_sql(
            " RETURNING o.order_no, o.user_id, o.currency, o.amount_minor, i.ord, i.seen_at), \
             per_account AS (SELECT user_id, currency, sum(amount_minor) AS total, \
                 max(seen_at) AS seen_at FROM paid GROUP BY user_id, currency), \
             credited AS (UPDATE accounts AS a SET balance_minor = a.balance_minor + p.total, \
                 version = a.version + 1, updated_at = p.seen_at \
             FROM per_account AS p WHERE a.user_id = p.user_id AND a.currency = p.currency \
                 AND a.balance_minor <= 9223372036854775807 - p.total \
             RETURNING a.user_id, a.currency, a.balance_minor - p.total AS balance_before), \
             booked AS (INSERT INTO ledger (user_id, currency, order_no, kind, amount_minor, \
                 balance_after, created_at, entry_key) \
             SELECT p.user_id, p.currency, p.order_no, ",
        );
        out.push_bind_param::<Text, _>(LedgerKind::Credit.as_str())?;
        out.push_sql(
            ", p.amount_minor, c.balance_before + sum(p.amount_minor) OVER (PARTITION BY \
                 p.user_id, p.currency ORDER BY p.ord), p.seen_at, p.order_no \
             FROM paid AS p JOIN credited AS c ON c.user_id = p.user_id \
                 AND c.currency = p.currency \
             ORDER BY p.ord RETURNING order_no, balance_after), \
             recorded AS (",
        );
        out.push_sql(INSERT_DELIVERY);
        out.push_sql(
            "SELECT i.channel, i.notification_id, i.order_no, i.provider_trade_no, i.kind, \
                 i.amount_minor, i.currency, TRUE, ",
        );
        out.push_bind_param::<Text, _>(Outcome::Credited.as_str())?;
        out.push_sql(
            ", NULL, FALSE, i.source, i.raw_headers, i.raw_body, 1, i.seen_at, i.seen_at \
             FROM input AS i JOIN booked AS b ON b.order_no = i.order_no ORDER BY i.ord",
        );
        out.push_sql(on_repeat_delivery_sql!());
        out.push_sql(
            " RETURNING channel, notification_id, id, delivery_count) \
             SELECT i.ord, p.order_no IS NOT NULL, b.balance_after, r.id, r.delivery_count \
             FROM input AS i LEFT JOIN paid AS p ON p.order_no = i.order_no \
             LEFT JOIN booked AS b ON b.order_no = i.order_no \
             LEFT JOIN recorded AS r ON r.channel = i.channel \
                 AND r.notification_id = i.notification_id \
             ORDER BY i.ord",
        );
        Ok(())
    }
}

/// A row of [`Together`]: the payment's place (from 1), whether its order was pending, the balance
/// after its credit, its inbox row's id and delivery count.
type TogetherRow = (i64, bool, Option<i64>, Option<i64>, Option<i64>);

/// [`Together`]'s id in diesel's statement cache: its SQL is the same for every batch.
struct TogetherId;

impl QueryId for Together<'_> {
    type QueryId = TogetherId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for Together<'_> {
    type SqlType = (
        BigInt,
        Bool,
        Nullable<BigInt>,
        Nullable<BigInt>,
        Nullable<BigInt>,
    );
}

impl RunQueryDsl<PgConnection> for Together<'_> {}

/// A read of fixed text with a text array bound between each two of its pieces, its rows read by
/// column name. Unlike `diesel::sql_query`, diesel keeps it prepared: its statement cache keys it
/// by its text, which is the same for every batch.
pub(super) struct ByKeys<'a, const N: usize> {
    pub(super) sql: &'static [&'static str],
    pub(super) arrays: [Vec<&'a str>; N],
}

impl<const N: usize> QueryFragment<Pg> for ByKeys<'_, N> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        for (i, sql) in self.sql.iter().enumerate() {
            out.push_sql(sql);
            if let Some(array) = self.arrays.get(i) {
                out.push_bind_param::<Array<Text>, _>(array)?;
            }
        }
        Ok(())
    }
}

impl<const N: usize> QueryId for ByKeys<'_, N> {
    type QueryId = ();
    // No static id: the cache keys the statement by its text.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<const N: usize> Query for ByKeys<'_, N> {
    type SqlType = Untyped;
}

impl<const N: usize> RunQueryDsl<PgConnection> for ByKeys<'_, N> {}
