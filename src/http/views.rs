//! The JSON shapes the API answers with (and the command line prints), made from the books' own
//! types, so that the books know nothing of how they are shown.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::books::accounts::{LedgerEntry, Statement};
use crate::books::debits::Debit;
use crate::books::inbox::{InboxEntry, Listed};
use crate::books::orders::Order;
use crate::domain::ids::{ChannelName, DebitNo, OrderNo, UserId};
use crate::domain::money::{format_signed, Currency};

/// An order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OrderView {
    pub order_no: OrderNo,
    pub user_id: UserId,
    pub channel: ChannelName,
    pub amount: String,
    pub amount_minor: i64,
    pub currency: Currency,
    pub status: &'static str,
    pub version: i64,
    pub provider_trade_no: Option<String>,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    /// What refunds gave back.
    pub refunded: String,
    pub refunded_minor: i64,
    /// What chargebacks hold, net of those reversed.
    pub charged_back: String,
    pub charged_back_minor: i64,
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
            status: o.status.as_str(),
            version: o.version,
            provider_trade_no: o.provider_trade_no.clone(),
            created_at: o.created_at.and_utc(),
            paid_at: o.paid_at.map(|t| t.and_utc()),
            closed_at: o.closed_at.map(|t| t.and_utc()),
            refunded: o.refunded.format(o.currency),
            refunded_minor: o.refunded.get(),
            charged_back: o.disputed.format(o.currency),
            charged_back_minor: o.disputed.get(),
        }
    }
}

/// A debit: what was spent, and the balance it left.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DebitView {
    pub debit_no: DebitNo,
    pub user_id: UserId,
    /// Positive, as a decimal string.
    pub amount: String,
    /// Positive.
    pub amount_minor: i64,
    pub currency: Currency,
    pub memo: Option<String>,
    /// In minor units, as the ledger shows it.
    pub balance_after: i64,
    pub created_at: DateTime<Utc>,
}

impl From<&Debit> for DebitView {
    fn from(d: &Debit) -> DebitView {
        DebitView {
            debit_no: d.debit_no.clone(),
            user_id: d.user_id.clone(),
            amount: d.amount.format(d.currency),
            amount_minor: d.amount.get(),
            currency: d.currency,
            memo: d.memo.clone(),
            balance_after: d.balance_after,
            created_at: d.created_at.and_utc(),
        }
    }
}

/// A user's balances and a page of their ledger.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountView {
    pub user_id: UserId,
    pub balances: Vec<BalanceView>,
    pub ledger: Vec<LedgerEntryView>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BalanceView {
    pub currency: String,
    pub amount: String,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LedgerEntryView {
    pub id: i64,
    pub kind: String,
    /// Always positive; `amount_minor` carries the sign.
    pub amount: String,
    /// Signed: negative for money going out.
    pub amount_minor: i64,
    pub currency: String,
    pub balance_after: i64,
    /// The order a credit, refund or chargeback belongs to; null for a debit.
    pub order_no: Option<String>,
    /// A debit's idempotency key; null otherwise.
    pub debit_no: Option<String>,
    pub memo: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<LedgerEntry> for LedgerEntryView {
    fn from(e: LedgerEntry) -> LedgerEntryView {
        LedgerEntryView {
            id: e.id,
            amount: shown_amount(
                e.amount_minor.unsigned_abs().min(i64::MAX as u64) as i64,
                &e.currency,
            ),
            kind: e.kind,
            amount_minor: e.amount_minor,
            currency: e.currency,
            balance_after: e.balance_after,
            order_no: e.order_no,
            debit_no: e.debit_no,
            memo: e.memo,
            created_at: e.created_at.and_utc(),
        }
    }
}

/// A signed amount in minor units as a decimal string, or the bare minor units when the books
/// hold a currency this build does not know.
fn shown_amount(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(c) => format_signed(minor, c),
        Err(_) => minor.to_string(),
    }
}

impl From<Statement> for AccountView {
    fn from(statement: Statement) -> AccountView {
        let balances = statement
            .balances
            .into_iter()
            .map(|b| BalanceView {
                // A debt shows as a negative amount.
                amount: shown_amount(b.amount_minor, &b.currency),
                currency: b.currency,
                amount_minor: b.amount_minor,
            })
            .collect();
        let ledger = statement
            .ledger
            .into_iter()
            .map(LedgerEntryView::from)
            .collect();
        AccountView {
            user_id: statement.user_id,
            balances,
            ledger,
            next_before: statement.next_before,
        }
    }
}

/// A stored notification with, on request, its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct NotificationView {
    #[serde(flatten)]
    pub notification: InboxEntry,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawEvidence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RawEvidence {
    pub headers: serde_json::Value,
    /// The body as text when it is UTF-8.
    pub body: Option<String>,
    pub body_base64: String,
}

impl From<Listed> for NotificationView {
    fn from(listed: Listed) -> NotificationView {
        let raw = listed.raw.map(|(headers, body)| RawEvidence {
            headers: serde_json::from_str(&headers).unwrap_or(serde_json::Value::Null),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&body),
            body: String::from_utf8(body).ok(),
        });
        NotificationView {
            notification: listed.notification,
            raw,
        }
    }
}
