//! Why a notification was not applied.

use std::sync::Arc;

use diesel::result::Error as DieselError;

use crate::books::orders::Order;
use crate::db::{self, Retry};
use crate::domain::ids::{OrderNo, UserId};
use crate::domain::money::Currency;

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
    /// The order changed between this transaction's read and its compare-and-set: read again.
    #[error("order {0} changed while money went back; reading it again")]
    Changed(OrderNo),
    #[error("internal error: a batch panicked")]
    Panicked,
    /// A batch came to its commit without a result for it: a bug, answered "retry".
    #[error("internal error: its batch did not apply it")]
    Unapplied,
    /// Its caller stopped waiting (and answered "retry") before the writer came to it.
    #[error("not tried: its caller had stopped waiting")]
    Abandoned,
}

/// A failure shared by everyone its batch answers.
pub type Failure = Arc<CreditError>;

impl CreditError {
    pub(super) fn not_credited(order: &Order) -> CreditError {
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
            CreditError::StillPending(_) | CreditError::Changed(_) => true,
            _ => false,
        }
    }

    fn is_lock_timeout(&self) -> bool {
        matches!(self, CreditError::Database(e) if db::is_lock_timeout(e))
    }
}
