//! payhook receives payment providers' notifications and credits each paid order exactly once.
//!
//! How a notification flows, module by module:
//!
//! - [`http`]: the actix-web server; takes the raw body and answers in the provider's protocol.
//! - [`console`]: the operator console under `/console`: what came in, searched; the anomalies a
//!   human resolves; login, CSRF and the headers that keep stored bytes from running.
//! - [`notify`]: one folder per provider (Alipay, WeChat Pay, Stripe, Standard Webhooks); its
//!   adapter turns the raw request into a verified, provider-neutral [`notify::Notification`],
//!   and its signer beside it signs notifications for tests and tools with the same bytes.
//! - [`crediting`]: the crediting transaction, the one place money moves (compare-and-set on
//!   the order, then balance, ledger and inbox in one commit), and group commit: a writer applies
//!   the notifications that arrived together in one transaction and answers them after it.
//! - [`recovery`]: what became of orders whose notification never came; [`recovery::ask`] asks
//!   each provider about an order (and closes it there), its answer verified like a notification.
//! - [`inspect`]: for operators, why a stored notification failed (each key tried, the signed
//!   bytes, the known traps) and applying it again through the crediting transaction.
//! - [`books`]: orders, accounts and their ledger, the inbox; the rows the transaction works on,
//!   debits that spend a balance once each, and the one-command proof that they balance.
//! - [`recovery`]: asking providers about orders whose notification never came (补单), on a
//!   schedule claimed with leases, and closing what expires; answers take the crediting path.
//! - [`db`] and [`store`]: SQLite, PostgreSQL or MySQL chosen by URL, the connection pool, migrations
//!   and transactions; and every SQL statement that differs by backend.
//! - [`domain`]: what every part speaks in: values parsed once at the edge (`AmountMinor`,
//!   `Currency`, `OrderNo`), the injected clock, the provider-neutral notification, the outcome
//!   of a delivery and the answer a provider gets.
//! - [`telemetry`]: log lines to tail and Prometheus metrics.
//! - [`config`], [`app`] and [`cli`]: layered settings, what a command opens (settings, pool,
//!   server), and the `payhook` command line.
//! - [`tools`]: `fixtures` and `replay`, apart from the daemon; signed notifications for new
//!   orders, and a client that sends recorded notifications and checks the answers (also for load).

#![forbid(unsafe_code)]

pub mod app;
pub mod books;
pub mod cli;
pub mod config;
pub mod console;
pub mod crediting;
pub mod db;
pub mod domain;
pub mod http;
pub mod inspect;
pub mod notify;
pub mod recovery;
pub mod store;
pub mod telemetry;
pub mod tools;
