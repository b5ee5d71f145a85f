//! The books: what payhook keeps, and the proof that it adds up.
//!
//! - [`orders`]: recharge orders, from pending to paid or closed.
//! - [`accounts`]: one balance per user and currency, changed only together with a ledger row.
//! - [`debits`]: a balance spent, once per caller-chosen `debit_no`, never below zero.
//! - [`inbox`]: every notification received, with the evidence to verify it again; [`search`]
//!   reads it as an operator looks for something.
//! - [`anomalies`]: what a human decided about a notification kept for one, once each.
//! - [`overview`]: recent traffic, what waits, and one order's history, for the console.
//! - [`schedule`]: when pending orders are asked about at their provider, claimed with a lease.
//! - [`verify`]: the one-command proof that the books balance.
//!
//! Queries here are written once for every backend; SQL that differs by backend lives in
//! [`crate::store`].

pub mod accounts;
pub mod anomalies;
pub mod debits;
pub mod inbox;
pub mod orders;
pub mod overview;
pub mod schedule;
pub mod search;
pub mod verify;
