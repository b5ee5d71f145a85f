//! Crediting: the one place where a verified notification moves money.
//!
//! - [`apply`]: the decision, on one screen. Every path runs [`apply_in`]: alone in a transaction
//!   with [`apply_alone`] (or [`apply_alone_in`], in a transaction the caller commits or rolls
//!   back), or with the other notifications of a batch ([`committer`]).
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
mod batch;
pub mod committer;
mod decision;
mod error;
mod give_back;
mod held;
mod read;
pub mod settled;

pub use crate::domain::outcome::{Answer, Outcome};
pub use apply::{apply_alone, apply_alone_in, apply_in, Applied, Claim, Durability};
pub use committer::{commit_batch, ApplyJob, Committer, CountJob};
pub use error::{CreditError, Failure};
pub use read::{find_for_batch, find_for_notification, Found, Key};
