//! Spending a balance: a debit takes an amount from one (user, currency) balance, once per
//! `debit_no` the caller chooses, and never below zero.
//!
//! One transaction locks the account row, looks for a ledger row under the `debit_no`, and only
//! when there is none takes the amount with a compare-and-set (`balance_minor >= amount`) and
//! writes the ledger row. So of two identical debits at once the second waits for the first and
//! then finds its row; of many different ones, each sees the balance the others committed. The
//! ledger's unique (kind, entry_key) key refuses a second row for one `debit_no` even if those
//! checks were wrong; the transaction then runs again and finds the first.
//!
//! A debit the balance cannot cover writes nothing, so the same `debit_no` may succeed after a
//! top-up.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::result::Error as DieselError;

use crate::books::accounts::{self, LedgerEntry, LedgerKind, NewEntry};
use crate::db::schema::accounts as accounts_table;
use crate::db::{self, DbConnection, DbError};
use crate::domain::ids::{DebitNo, UserId};
use crate::domain::money::{AmountMinor, Currency};
use crate::store;

/// The longest memo a debit keeps, in characters.
pub const MEMO_MAX_CHARS: usize = 256;

/// A debit request as it arrives (API body or command line), not yet trusted.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitRequest {
    pub debit_no: String,
    pub amount: String,
    pub currency: String,
    #[serde(default)]
    pub memo: Option<String>,
}

impl DebitRequest {
    /// Checks the request for `user_id`'s account field by field; the error names the first
    /// field at fault.
    pub fn validate(self, user_id: &str) -> Result<NewDebit, String> {
        let user_id = UserId::parse(user_id).map_err(|e| e.to_string())?;
        let debit_no = DebitNo::parse(&self.debit_no).map_err(|e| e.to_string())?;
        let currency = Currency::parse(&self.currency).map_err(|e| format!("currency: {e}"))?;
        let amount =
            AmountMinor::parse(&self.amount, currency).map_err(|e| format!("amount: {e}"))?;
        if amount == AmountMinor::ZERO {
            return Err("amount: must be more than zero".to_owned());
        }
        if let Some(memo) = &self.memo {
            if memo.chars().count() > MEMO_MAX_CHARS {
                return Err(format!("memo: at most {MEMO_MAX_CHARS} characters"));
            }
            if memo.chars().any(char::is_control) {
                return Err("memo: control characters are not allowed".to_owned());
            }
        }
        Ok(NewDebit {
            debit_no,
            user_id,
            amount,
            currency,
            memo: self.memo,
        })
    }
}

/// What a caller asks to spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDebit {
    pub debit_no: DebitNo,
    pub user_id: UserId,
    /// More than zero.
    pub amount: AmountMinor,
    pub currency: Currency,
    pub memo: Option<String>,
}

/// A debit as booked: its ledger row, with every field parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debit {
    pub debit_no: DebitNo,
    pub user_id: UserId,
    /// What was taken, positive.
    pub amount: AmountMinor,
    pub currency: Currency,
    pub memo: Option<String>,
    /// The balance right after the debit, in minor units.
    pub balance_after: i64,
    pub created_at: NaiveDateTime,
}

impl TryFrom<LedgerEntry> for Debit {
    type Error = DieselError;

    /// A debit row that does not parse means the books were edited by hand: refuse it loudly.
    fn try_from(entry: LedgerEntry) -> Result<Debit, DieselError> {
        let bad = |what: &str| {
            DieselError::DeserializationError(
                format!("ledger {}: invalid {what} for a debit", entry.id).into(),
            )
        };
        if entry.kind != LedgerKind::Debit.as_str() {
            return Err(bad("kind"));
        }
        let debit_no = entry.debit_no.as_deref().ok_or_else(|| bad("debit_no"))?;
        let taken = entry.amount_minor.checked_neg().filter(|taken| *taken > 0);
        Ok(Debit {
            debit_no: DebitNo::parse(debit_no).map_err(|_| bad("debit_no"))?,
            user_id: UserId::parse(&entry.user_id).map_err(|_| bad("user_id"))?,
            amount: taken
                .and_then(|taken| AmountMinor::new(taken).ok())
                .ok_or_else(|| bad("amount_minor"))?,
            currency: Currency::parse(&entry.currency).map_err(|_| bad("currency"))?,
            memo: entry.memo,
            balance_after: entry.balance_after,
            created_at: entry.created_at,
        })
    }
}

/// How a debit request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Debited {
    /// Taken now.
    New(Debit),
    /// The identical debit was taken before: an idempotent repeat, nothing taken now.
    Repeat(Debit),
    /// The `debit_no` is taken by a debit that differs in these fields; nothing taken now.
    Conflict(Debit, Vec<&'static str>),
    /// The balance (in minor units; 0 for a missing account) is less than the amount; nothing
    /// was written.
    Insufficient { balance: i64 },
}

impl Debited {
    /// The outcome's name in log lines and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Debited::New(_) => "debited",
            Debited::Repeat(_) => "repeat",
            Debited::Conflict(..) => "conflict",
            Debited::Insufficient { .. } => "insufficient_balance",
        }
    }
}

/// Takes the debit once, or recognises a repeat of it, in one transaction.
pub fn debit(
    conn: &mut DbConnection,
    new: &NewDebit,
    now: NaiveDateTime,
) -> Result<Debited, DbError> {
    db::transact(conn, |conn| debit_in(conn, new, now).map_err(DbError::from))
}

fn debit_in(
    conn: &mut DbConnection,
    new: &NewDebit,
    now: NaiveDateTime,
) -> Result<Debited, DieselError> {
    let user = new.user_id.as_str();
    let key = new.debit_no.as_str();
    store::lock_account(conn, user, new.currency)?;
    if let Some(entry) = accounts::find_entry(conn, LedgerKind::Debit, key)? {
        let debit = Debit::try_from(entry)?;
        let differs = differing_fields(&debit, new);
        return Ok(if differs.is_empty() {
            Debited::Repeat(debit)
        } else {
            Debited::Conflict(debit, differs)
        });
    }
    let taken = -new.amount.get();
    let Some(balance_after) = store::change_balance(conn, user, new.currency, taken, 0, now)?
    else {
        return Ok(Debited::Insufficient {
            balance: balance(conn, &new.user_id, new.currency)?,
        });
    };
    accounts::book(
        conn,
        &NewEntry {
            user_id: user,
            currency: new.currency,
            order_no: None,
            kind: LedgerKind::Debit,
            amount_minor: taken,
            balance_after,
            entry_key: key,
            debit_no: Some(key),
            memo: new.memo.as_deref(),
            created_at: now,
        },
    )?;
    // Read back, so that the answer is the row as stored, as a repeat will show it.
    let entry = accounts::find_entry(conn, LedgerKind::Debit, key)?.ok_or(DieselError::NotFound)?;
    Ok(Debited::New(Debit::try_from(entry)?))
}

fn differing_fields(existing: &Debit, new: &NewDebit) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if existing.user_id != new.user_id {
        fields.push("user_id");
    }
    if existing.amount != new.amount {
        fields.push("amount");
    }
    if existing.currency != new.currency {
        fields.push("currency");
    }
    if existing.memo != new.memo {
        fields.push("memo");
    }
    fields
}

/// The (user, currency) balance in minor units; 0 when there is no account.
fn balance(conn: &mut DbConnection, user: &UserId, currency: Currency) -> Result<i64, DieselError> {
    Ok(accounts_table::table
        .find((user.as_str(), currency.code()))
        .select(accounts_table::balance_minor)
        .first::<i64>(conn)
        .optional()?
        .unwrap_or(0))
}

/// The debit booked under `debit_no`, if any.
pub fn find(conn: &mut DbConnection, debit_no: &DebitNo) -> Result<Option<Debit>, DieselError> {
    accounts::find_entry(conn, LedgerKind::Debit, debit_no.as_str())?
        .map(Debit::try_from)
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(debit_no: &str, amount: &str, currency: &str, memo: Option<&str>) -> DebitRequest {
        DebitRequest {
            debit_no: debit_no.to_owned(),
            amount: amount.to_owned(),
            currency: currency.to_owned(),
            memo: memo.map(str::to_owned),
        }
    }

    #[test]
    fn a_valid_request_becomes_a_debit_of_minor_units() {
        let new = request("D-1", "3.5", "cny", Some("coffee"))
            .validate("u1")
            .unwrap();
        assert_eq!(new.debit_no.as_str(), "D-1");
        assert_eq!(new.user_id.as_str(), "u1");
        assert_eq!(new.amount.get(), 350);
        assert_eq!(new.currency, Currency::Cny);
        assert_eq!(new.memo.as_deref(), Some("coffee"));
        let memo = "备".repeat(MEMO_MAX_CHARS);
        assert!(request("D-1", "1", "JPY", Some(&memo))
            .validate("u1")
            .is_ok());
    }

    #[test]
    fn the_first_invalid_field_is_named() {
        let long_memo = "m".repeat(MEMO_MAX_CHARS + 1);
        for (user, req, field) in [
            ("u 1", request("x/y", "0", "XXX", None), "user_id"),
            ("", request("D-1", "1", "CNY", None), "user_id"),
            ("u1", request("x/y", "0", "XXX", None), "debit_no"),
            ("u1", request("", "1", "CNY", None), "debit_no"),
            ("u1", request(&"d".repeat(65), "1", "CNY", None), "debit_no"),
            ("u1", request("D-1", "0", "XXX", None), "currency"),
            ("u1", request("D-1", "0", "CNY", None), "amount"),
            ("u1", request("D-1", "-1", "CNY", None), "amount"),
            ("u1", request("D-1", "1.001", "CNY", None), "amount"),
            ("u1", request("D-1", "1.5", "JPY", None), "amount"),
            ("u1", request("D-1", "1", "CNY", Some(&long_memo)), "memo"),
            ("u1", request("D-1", "1", "CNY", Some("a\nb")), "memo"),
        ] {
            let error = req.clone().validate(user).unwrap_err();
            assert!(error.starts_with(field), "{req:?} for {user:?}: {error}");
        }
    }
}
