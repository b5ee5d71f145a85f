//! Looking into stored notifications, for the people who run payhook: why one failed, and
//! applying it again once what failed is fixed.
//!
//! - [`explain`]: verifies a stored request again with the channel's current keys and says what
//!   was tried: each key by name and what it said, the exact bytes the signature covers
//!   (escaped: anyone can store bytes in the inbox), the timestamp's skew, and the known traps
//!   ([`traps`]), each detected on the request itself.
//! - [`reapply`]: applies a stored notification that verifies now through the crediting
//!   transaction, or shows in a rolled-back transaction what that would do.
//!
//! Both judge a signed timestamp against the moment the request first arrived (the row's
//! `first_seen_at`), not against now: a stored notification is older than any provider's
//! tolerance by the time someone looks at it, but whether it was fresh when it came does not
//! change. Its signature is checked with the keys configured now.

mod error;
mod explain;
mod reapply;
pub mod traps;

pub use error::InspectError;
pub use explain::{explain, explain_stored, Channels, Explanation, KeyTried, Shown, Skew, Stored};
pub use reapply::{reapply, Application, Reapplied};
pub use traps::{Trap, TrapKind};
