//! Recharge orders and the accounts they credit.
//!
//! An order is created with a client-held order number as its primary key, so a retried create is
//! answered with the order it already made. Its `version` rises with every change, so a stale
//! update (an old `If-Match`) can never undo a newer one.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use serde::Serialize;

use crate::db::schema::{accounts, ledger, orders};
use crate::db::{self, DbConnection, DbError};
use crate::ids::{ChannelName, OrderNo, UserId};
use crate::money::{AmountMinor, Currency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Paid,
    Closed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Closed => "closed",
        }
    }

    fn parse(s: &str) -> Option<OrderStatus> {
        match s {
            "pending" => Some(OrderStatus::Pending),
            "paid" => Some(OrderStatus::Paid),
            "closed" => Some(OrderStatus::Closed),
            _ => None,
        }
    }
}

/// An order as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders)]
struct OrderRow {
    order_no: String,
    user_id: String,
    channel: String,
    amount_minor: i64,
    currency: String,
    status: String,
    provider_trade_no: Option<String>,
    version: i64,
    created_at: NaiveDateTime,
    paid_at: Option<NaiveDateTime>,
    closed_at: Option<NaiveDateTime>,
}

/// An order, with every field parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_no: OrderNo,
    pub user_id: UserId,
    pub channel: ChannelName,
    pub amount: AmountMinor,
    pub currency: Currency,
    pub status: OrderStatus,
    pub provider_trade_no: Option<String>,
    pub version: i64,
    pub created_at: NaiveDateTime,
    pub paid_at: Option<NaiveDateTime>,
    pub closed_at: Option<NaiveDateTime>,
}

impl TryFrom<OrderRow> for Order {
    type Error = DieselError;

    /// A row that does not parse means the books were edited by hand: refuse it loudly.
    fn try_from(row: OrderRow) -> Result<Order, DieselError> {
        let bad = |what: &str| {
            DieselError::DeserializationError(
                format!("order {}: invalid {what} in the database", row.order_no).into(),
            )
        };
        Ok(Order {
            order_no: OrderNo::parse(&row.order_no).map_err(|_| bad("order_no"))?,
            user_id: UserId::parse(&row.user_id).map_err(|_| bad("user_id"))?,
            channel: ChannelName::parse(&row.channel).map_err(|_| bad("channel"))?,
            amount: AmountMinor::new(row.amount_minor).map_err(|_| bad("amount_minor"))?,
            currency: Currency::parse(&row.currency).map_err(|_| bad("currency"))?,
            status: OrderStatus::parse(&row.status).ok_or_else(|| bad("status"))?,
            provider_trade_no: row.provider_trade_no,
            version: row.version,
            created_at: row.created_at,
            paid_at: row.paid_at,
            closed_at: row.closed_at,
        })
    }
}

/// The JSON form of an order, as `../INTERFACE` fixes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OrderView {
    pub order_no: OrderNo,
    pub user_id: UserId,
    pub channel: ChannelName,
    pub amount: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: OrderStatus,
    pub version: i64,
    pub provider_trade_no: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub paid_at: Option<chrono::DateTime<chrono::Utc>>,
    pub closed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> OrderView {
        OrderView {
            order_no: o.order_no.clone(),
            user_id: o.user_id.clone(),
            channel: o.channel.clone(),
            amount: o.amount.format(o.currency),
            amount_minor: o.amount.get(),
            currency: o.currency,
            status: o.status,
            version: o.version,
            provider_trade_no: o.provider_trade_no.clone(),
            created_at: o.created_at.and_utc(),
            paid_at: o.paid_at.map(|t| t.and_utc()),
            closed_at: o.closed_at.map(|t| t.and_utc()),
        }
    }
}

/// What a client asks for when it creates an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_no: OrderNo,
    pub user_id: UserId,
    pub channel: ChannelName,
    pub amount: AmountMinor,
    pub currency: Currency,
}

/// How a create request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new order.
    New(Order),
    /// The identical order existed already: an idempotent repeat.
    Existing(Order),
    /// The order number is taken by an order that differs in these fields.
    Conflict(Order, Vec<&'static str>),
}

pub fn find(conn: &mut DbConnection, order_no: &OrderNo) -> Result<Option<Order>, DieselError> {
    orders::table
        .find(order_no.as_str())
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?
        .map(Order::try_from)
        .transpose()
}

/// The order a provider trade number already paid, if any.
pub fn find_by_trade(
    conn: &mut DbConnection,
    channel: &ChannelName,
    trade_no: &str,
) -> Result<Option<OrderNo>, DieselError> {
    let found: Option<String> = orders::table
        .filter(orders::channel.eq(channel.as_str()))
        .filter(orders::provider_trade_no.eq(trade_no))
        .select(orders::order_no)
        .first(conn)
        .optional()?;
    Ok(found.and_then(|no| OrderNo::parse(&no).ok()))
}

/// Creates the order, or recognises a repeat of it. The account is created on first use.
pub fn create(
    conn: &mut DbConnection,
    new: &NewOrder,
    now: NaiveDateTime,
) -> Result<Created, DbError> {
    db::transact(conn, |conn| {
        if let Some(existing) = find(conn, &new.order_no)? {
            let differs = differing_fields(&existing, new);
            return Ok(if differs.is_empty() {
                Created::Existing(existing)
            } else {
                Created::Conflict(existing, differs)
            });
        }
        ensure_account(conn, &new.user_id, new.currency, now)?;
        // A racing create of the same number fails here with a unique violation; the retry
        // then finds the row above.
        diesel::insert_into(orders::table)
            .values((
                orders::order_no.eq(new.order_no.as_str()),
                orders::user_id.eq(new.user_id.as_str()),
                orders::channel.eq(new.channel.as_str()),
                orders::amount_minor.eq(new.amount.get()),
                orders::currency.eq(new.currency.code()),
                orders::status.eq(OrderStatus::Pending.as_str()),
                orders::version.eq(0),
                orders::created_at.eq(now),
            ))
            .execute(conn)?;
        let order = find(conn, &new.order_no)?.ok_or(DieselError::NotFound)?;
        Ok(Created::New(order))
    })
}

fn differing_fields(existing: &Order, new: &NewOrder) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if existing.user_id != new.user_id {
        fields.push("user_id");
    }
    if existing.channel != new.channel {
        fields.push("channel");
    }
    if existing.amount != new.amount {
        fields.push("amount");
    }
    if existing.currency != new.currency {
        fields.push("currency");
    }
    fields
}

/// Inserts the (user, currency) account with a zero balance unless it exists.
pub fn ensure_account(
    conn: &mut DbConnection,
    user: &UserId,
    currency: Currency,
    now: NaiveDateTime,
) -> Result<(), DieselError> {
    let exists = accounts::table
        .find((user.as_str(), currency.code()))
        .select(accounts::version)
        .first::<i64>(conn)
        .optional()?
        .is_some();
    if !exists {
        diesel::insert_into(accounts::table)
            .values((
                accounts::user_id.eq(user.as_str()),
                accounts::currency.eq(currency.code()),
                accounts::balance_minor.eq(0i64),
                accounts::version.eq(0i64),
                accounts::created_at.eq(now),
                accounts::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// The balance of one account, if it exists.
pub fn balance(
    conn: &mut DbConnection,
    user: &UserId,
    currency: Currency,
) -> Result<Option<AmountMinor>, DieselError> {
    let minor: Option<i64> = accounts::table
        .find((user.as_str(), currency.code()))
        .select(accounts::balance_minor)
        .first(conn)
        .optional()?;
    Ok(minor.map(|m| AmountMinor::new(m).unwrap_or(AmountMinor::ZERO)))
}

/// Adds `amount` to the account in the database (never read-modify-write in the application, so
/// concurrent credits cannot lose each other) and writes the ledger row. Returns the new balance.
///
/// The ledger's unique (order_no, kind) key refuses a second credit for one order even if every
/// check above this line were wrong.
pub fn credit(
    conn: &mut DbConnection,
    order: &Order,
    now: NaiveDateTime,
) -> Result<i64, DieselError> {
    let account = accounts::table.find((order.user_id.as_str(), order.currency.code()));
    let changed = diesel::update(account)
        .set((
            accounts::balance_minor.eq(accounts::balance_minor + order.amount.get()),
            accounts::version.eq(accounts::version + 1),
            accounts::updated_at.eq(now),
        ))
        .execute(conn)?;
    if changed != 1 {
        return Err(DieselError::NotFound);
    }
    let balance_after: i64 = account.select(accounts::balance_minor).first(conn)?;
    diesel::insert_into(ledger::table)
        .values((
            ledger::user_id.eq(order.user_id.as_str()),
            ledger::currency.eq(order.currency.code()),
            ledger::order_no.eq(order.order_no.as_str()),
            ledger::kind.eq("credit"),
            ledger::amount_minor.eq(order.amount.get()),
            ledger::balance_after.eq(balance_after),
            ledger::created_at.eq(now),
        ))
        .execute(conn)?;
    Ok(balance_after)
}

/// `UPDATE orders SET status = closed ... WHERE order_no = ? AND status = pending [AND version = ?]`:
/// true when this call closed the order. With `expected_version`, a stale request (an old
/// `If-Match`) changes nothing.
pub fn close_pending(
    conn: &mut DbConnection,
    order_no: &OrderNo,
    expected_version: Option<i64>,
    now: NaiveDateTime,
) -> Result<bool, DieselError> {
    let target = orders::table
        .filter(orders::order_no.eq(order_no.as_str()))
        .filter(orders::status.eq(OrderStatus::Pending.as_str()));
    let set = (
        orders::status.eq(OrderStatus::Closed.as_str()),
        orders::version.eq(orders::version + 1),
        orders::closed_at.eq(now),
    );
    let changed = match expected_version {
        Some(v) => diesel::update(target.filter(orders::version.eq(v)))
            .set(set)
            .execute(conn)?,
        None => diesel::update(target).set(set).execute(conn)?,
    };
    Ok(changed == 1)
}
