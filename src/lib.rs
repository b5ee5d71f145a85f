//! payhook receives payment providers' notifications and credits each paid order exactly once.
//!
//! How a notification flows, module by module:
//!
//! - [`http`]: the actix-web server; takes the raw body and answers in the provider's protocol.
//! - [`notify`]: one adapter per provider (Alipay, WeChat Pay, Stripe, Standard Webhooks) turns
//!   the raw request into a verified, provider-neutral [`notify::Notification`].
//! - [`crediting`]: the crediting transaction, the one place money moves (compare-and-set on
//!   the order, then balance, ledger and inbox in one commit), and group commit: a writer applies
//!   the notifications that arrived together in one transaction and answers them after it.
//! - [`books`]: orders, accounts and their ledger, the inbox; the rows the transaction works on,
//!   and the one-command proof that they balance.
//! - [`db`]: SQLite or PostgreSQL chosen by URL, the connection pool, migrations.
//! - [`money`] and [`ids`]: values parsed once at the edge (`AmountMinor`, `Currency`, `OrderNo`).
//! - [`telemetry`]: log lines to tail and Prometheus metrics.
//! - [`config`] and [`cli`]: layered settings and the `payhook` command line.
//! - [`fixtures`] and [`replay`]: tools around the server; signed notifications for new orders,
//!   and a client that sends recorded notifications and checks the answers (also for load).

#![forbid(unsafe_code)]

pub mod books;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crediting;
pub mod db;
pub mod domain;
pub mod fixtures;
pub mod http;
pub mod ids;
pub mod money;
pub mod notify;
pub mod replay;
pub mod store;
pub mod telemetry;
