//! Crediting: the one place where a verified notification moves money.
//!
//! - [`apply`]: the decision, on one screen. Every path runs [`apply_in`]: alone in a transaction
//!   with [`apply_alone`], or with the other notifications of a batch ([`committer`]).
//! - [`committer`]: group commit; writer threads apply what arrived together in one transaction
//!   and answer each caller after that commit.
//! - [`settled`]: the payments this instance has seen committed, so their repeats skip the
//!   database.
//!
//! The decision compare-and-sets the order from `pending`
//! to `paid`; only the transaction whose update changed exactly one row credits the balance and
//! writes the ledger; then it records the delivery and its outcome in the inbox. Duplicates
//! arriving at the same moment on other instances lose the compare-and-set inside the database
//! and credit nothing.
//!
//! # Error policy: what the provider is told
//!
//! Every result maps to exactly one answer:
//!
//! - **ack** ([`Answer::Ack`]): the delivery is committed and needs nothing more from the
//!   provider. That holds for `Credited` and `AlreadyPaid`, but also for `PaidByOtherTrade`,
//!   `Mismatch`, `Closed` and `Ignored`: retrying them would change nothing, and the anomalies
//!   are kept in the inbox for a human.
//! - **retry** ([`Answer::Retry`]): nothing may be lost, so when the order is not visible yet
//!   (`UnknownOrder`, committed to the inbox) or anything fails (the transaction rolls back:
//!   database down, pool exhausted, conflicts beyond the retry budget) the provider is asked to
//!   send again. Providers retry for a day or more; an ack for something not committed would
//!   lose money.

pub mod apply;
pub mod committer;
mod read;
pub mod settled;

pub use crate::domain::outcome::{Answer, Outcome};
pub use apply::{apply_alone, apply_in, Applied, Claim, Durability};
pub use committer::{commit_batch, ApplyJob, Committer, CountJob};

use std::sync::Arc;

use diesel::result::Error as DieselError;

use crate::books::orders::Order;
use crate::db::{self, Retry};
use crate::ids::{OrderNo, UserId};
use crate::money::Currency;

/// Why a notification was not applied. Nothing of it was committed, so each is answered "retry".
#[derive(Debug, thiserror::Error)]
pub enum CreditError {
    #[error("database: {0}")]
    Database(#[from] DieselError),
    #[error("no database connection free: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// The order was marked paid, but no account took the credit. For a human.
    #[error(
        "order {order_no}: account {user_id}/{currency} is missing or its balance would overflow"
    )]
    NotCredited {
        order_no: OrderNo,
        user_id: UserId,
        currency: Currency,
    },
    /// The compare-and-set lost to a transaction that has not committed its state yet.
    #[error("order {0} is still pending after another transaction changed it")]
    StillPending(OrderNo),
    #[error("internal error: a batch panicked")]
    Panicked,
}

/// A failure shared by everyone its batch answers.
pub type Failure = Arc<CreditError>;

impl CreditError {
    fn not_credited(order: &Order) -> CreditError {
        CreditError::NotCredited {
            order_no: order.order_no.clone(),
            user_id: order.user_id.clone(),
            currency: order.currency,
        }
    }
}

impl Retry for CreditError {
    fn is_transient(&self) -> bool {
        match self {
            CreditError::Database(e) => db::is_transient(e),
            CreditError::StillPending(_) => true,
            _ => false,
        }
    }

    fn is_lock_timeout(&self) -> bool {
        matches!(self, CreditError::Database(e) if db::is_lock_timeout(e))
    }
}
