//! Recharge orders and the accounts they credit.
//!
//! An order is created with a client-held order number as its primary key, so a retried create is
//! answered with the order it already made. Its `version` rises with every change, so a stale
//! update (an old `If-Match`) can never undo a newer one.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

use crate::books::accounts;
use crate::config::ChannelTerms;
use crate::db::schema::orders;
use crate::db::{self, DbConnection, DbError};
use crate::domain::ids::{ChannelName, OrderNo, UserId};
use crate::domain::money::{AmountMinor, Currency};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Paid,
    /// Paid, and all of it has gone back to the buyer (refunds and chargebacks).
    Refunded,
    Closed,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Closed => "closed",
        }
    }

    /// Whether the order was paid (and credited), whatever went back since: a paid order never
    /// becomes unpaid.
    pub fn was_paid(self) -> bool {
        matches!(self, OrderStatus::Paid | OrderStatus::Refunded)
    }

    fn parse(s: &str) -> Option<OrderStatus> {
        match s {
            "pending" => Some(OrderStatus::Pending),
            "paid" => Some(OrderStatus::Paid),
            "refunded" => Some(OrderStatus::Refunded),
            "closed" => Some(OrderStatus::Closed),
            _ => None,
        }
    }
}

/// An order as stored.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = orders)]
pub struct OrderRow {
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
    refunded_minor: i64,
    disputed_minor: i64,
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
    /// What refunds have given back so far.
    pub refunded: AmountMinor,
    /// What chargebacks hold, net of those reversed.
    pub disputed: AmountMinor,
}

impl Order {
    /// What is left of the payment that has not gone back to the buyer.
    pub fn remaining(&self) -> i64 {
        self.amount.get() - self.refunded.get() - self.disputed.get()
    }
}

impl OrderRow {
    /// The order number as stored, before it is parsed.
    pub fn order_no(&self) -> &str {
        &self.order_no
    }

    /// The channel as stored.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The provider trade that paid the order, as stored.
    pub fn provider_trade_no(&self) -> Option<&str> {
        self.provider_trade_no.as_deref()
    }
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
            refunded: AmountMinor::new(row.refunded_minor).map_err(|_| bad("refunded_minor"))?,
            disputed: AmountMinor::new(row.disputed_minor).map_err(|_| bad("disputed_minor"))?,
        })
    }
}

/// A new order number: a UUIDv7 in 32 hex characters, so numbers sort by time and never collide
/// across instances; valid for every provider.
pub fn new_order_no() -> OrderNo {
    OrderNo::parse(&uuid::Uuid::now_v7().simple().to_string()).expect("32 hex characters")
}

/// A create request as it arrives (API body or command line), not yet trusted.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub order_no: Option<String>,
    pub user_id: String,
    pub amount: String,
    pub currency: String,
    pub channel: String,
}

impl OrderRequest {
    /// Checks the request field by field against the channel's terms; the error names the
    /// first field at fault. Without an order number, a new one is issued.
    pub fn validate(
        self,
        terms_of: impl Fn(&ChannelName) -> Option<ChannelTerms>,
    ) -> Result<NewOrder, String> {
        let channel = ChannelName::parse(&self.channel).map_err(|e| e.to_string())?;
        let terms = terms_of(&channel)
            .ok_or_else(|| format!("channel: no channel named {channel} is configured"))?;
        let currency = Currency::parse(&self.currency).map_err(|e| format!("currency: {e}"))?;
        if currency != terms.currency {
            return Err(format!(
                "currency: channel {channel} takes {}, not {currency}",
                terms.currency
            ));
        }
        let amount =
            AmountMinor::parse(&self.amount, currency).map_err(|e| format!("amount: {e}"))?;
        if amount == AmountMinor::ZERO {
            return Err("amount: must be more than zero".to_owned());
        }
        let user_id = UserId::parse(&self.user_id).map_err(|e| e.to_string())?;
        let order_no = match self.order_no {
            Some(no) => OrderNo::parse(&no).map_err(|e| e.to_string())?,
            None => new_order_no(),
        };
        if !terms.order_no_len.contains(&order_no.as_str().len()) {
            return Err(format!(
                "order_no: channel {channel} takes {} to {} characters",
                terms.order_no_len.start(),
                terms.order_no_len.end()
            ));
        }
        Ok(NewOrder {
            order_no,
            user_id,
            channel,
            amount,
            currency,
        })
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

/// Creates the order, or recognises a repeat of it. The account is created on first use.
pub fn create(
    conn: &mut DbConnection,
    new: &NewOrder,
    now: NaiveDateTime,
) -> Result<Created, DbError> {
    db::transact(conn, |conn| {
        create_in(conn, new, now).map_err(DbError::from)
    })
}

/// Creates many orders in one transaction (a repeat or a conflict is reported per order, as by
/// [`create`]).
pub fn create_all(
    conn: &mut DbConnection,
    new: &[NewOrder],
    now: NaiveDateTime,
) -> Result<Vec<Created>, DbError> {
    db::transact(conn, |conn| {
        new.iter()
            .map(|order| create_in(conn, order, now).map_err(DbError::from))
            .collect()
    })
}

fn create_in(
    conn: &mut DbConnection,
    new: &NewOrder,
    now: NaiveDateTime,
) -> Result<Created, DieselError> {
    {
        if let Some(existing) = find(conn, &new.order_no)? {
            let differs = differing_fields(&existing, new);
            return Ok(if differs.is_empty() {
                Created::Existing(existing)
            } else {
                Created::Conflict(existing, differs)
            });
        }
        accounts::ensure(conn, &new.user_id, new.currency, now)?;
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
    }
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

/// The compare-and-set of money going back:
/// `UPDATE orders SET refunded_minor = ?, disputed_minor = ?, status = ? ... WHERE order_no = ?
/// AND version = ?`, from the order as this transaction read it. True when this call changed the
/// row; false when anyone changed the order since it was read, and the caller must read it again.
/// The order is `refunded` once nothing of its amount is left, and `paid` again when a reversed
/// chargeback gives some back.
pub fn give_back(
    conn: &mut DbConnection,
    order: &Order,
    refunded: AmountMinor,
    disputed: AmountMinor,
) -> Result<bool, DieselError> {
    let gone = refunded.get().checked_add(disputed.get());
    let status = match gone {
        Some(gone) if gone == order.amount.get() => OrderStatus::Refunded,
        Some(gone) if gone < order.amount.get() => OrderStatus::Paid,
        _ => return Ok(false),
    };
    let changed = diesel::update(orders::table)
        .filter(orders::order_no.eq(order.order_no.as_str()))
        .filter(orders::version.eq(order.version))
        .set((
            orders::refunded_minor.eq(refunded.get()),
            orders::disputed_minor.eq(disputed.get()),
            orders::status.eq(status.as_str()),
            orders::version.eq(orders::version + 1),
        ))
        .execute(conn)?;
    Ok(changed == 1)
}

/// How a versioned close ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closing {
    Closed(Order),
    NotFound,
    /// Paid or closed already: nothing to close.
    NotPending(Order),
    /// The caller's version is stale: someone changed the order since they read it.
    VersionMismatch(Order),
}

/// Closes a pending order if it is still at `expected_version`, in one transaction.
pub fn close(
    conn: &mut DbConnection,
    order_no: &OrderNo,
    expected_version: i64,
    now: NaiveDateTime,
) -> Result<Closing, DbError> {
    db::transact(conn, |conn| {
        if close_pending(conn, order_no, Some(expected_version), now)? {
            let order = find(conn, order_no)?.ok_or(DieselError::NotFound)?;
            return Ok(Closing::Closed(order));
        }
        Ok(match find(conn, order_no)? {
            None => Closing::NotFound,
            Some(order) if order.status != OrderStatus::Pending => Closing::NotPending(order),
            Some(order) => Closing::VersionMismatch(order),
        })
    })
}
