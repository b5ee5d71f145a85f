//! Why a stored notification could not be explained or applied again.

use diesel::result::Error as DieselError;

use crate::crediting::CreditError;
use crate::db::Retry;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no stored notification has id {0}")]
    NotFound(i64),
    /// Answers to payhook's own questions are verified as answers when they come (recovery asks
    /// again); only notifications are examined here.
    #[error(
        "stored notification {id} is an answer to payhook's own query (source {origin}), not a \
         notification the provider sent"
    )]
    NotANotification { id: i64, origin: String },
    #[error("database: {0}")]
    Database(#[from] DieselError),
    #[error("no database connection free: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// The crediting transaction failed; nothing of it was committed.
    #[error(transparent)]
    Credit(#[from] CreditError),
}

impl Retry for InspectError {
    fn is_transient(&self) -> bool {
        match self {
            InspectError::Database(e) => e.is_transient(),
            InspectError::Credit(e) => e.is_transient(),
            _ => false,
        }
    }

    fn is_lock_timeout(&self) -> bool {
        match self {
            InspectError::Database(e) => e.is_lock_timeout(),
            InspectError::Credit(e) => e.is_lock_timeout(),
            _ => false,
        }
    }
}
