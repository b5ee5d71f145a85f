//! What every part of payhook speaks in, with no storage, web or provider in it.
//!
//! - [`ids`] and [`money`]: values parsed once at the edge (`OrderNo`, `AmountMinor`, `Currency`).
//! - [`clock`]: time, injected.
//! - [`notification`]: a verified notification, with nothing left that says which provider sent
//!   it.
//! - [`outcome`]: what a delivery came to, and what the provider is told.

pub mod clock;
pub mod ids;
pub mod money;
pub mod notification;
pub mod outcome;
