//! The `payhook` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{self, open, open_migrated, DbArgs};
use crate::books::accounts;
use crate::books::debits::{self, DebitRequest, Debited};
use crate::books::orders::{self, Created, OrderRequest};
use crate::books::verify;
use crate::db;
use crate::domain::ids::UserId;
use crate::domain::money::format_signed;
use crate::http::views::{AccountView, DebitView, OrderView};
use crate::inspect::{self, Reapplied};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "payhook",
    version,
    about = "Receives payment notifications and credits each paid order exactly once"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Append log lines to this file instead of writing them to stderr.
    #[arg(long, global = true, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server (applies pending migrations first).
    Serve {
        #[command(flatten)]
        db: DbArgs,
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free one).
        #[arg(long)]
        bind: Option<String>,
    },
    /// Apply the embedded database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Check that the books balance: exit 0 when they do, 1 with a report of the offending rows.
    Verify {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Explain a stored notification: verified again with the current keys, each key tried and
    /// what it said, the signed bytes, the timestamp's skew and the known traps. Exit 0 when it
    /// verifies now, 1 when it does not.
    Explain {
        #[command(flatten)]
        db: DbArgs,
        /// The stored notification's id: its inbox row's `id`.
        notification_id: i64,
        /// Print the explanation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply a stored notification again: verified with the current keys, then through the
    /// crediting transaction (a repeat credits nothing). Exit 0 when it was applied (with
    /// --dry-run: would be), 1 when it does not verify, with the explanation.
    Reapply {
        #[command(flatten)]
        db: DbArgs,
        /// The stored notification's id: its inbox row's `id`.
        notification_id: i64,
        /// Do it all in a transaction that is rolled back, and print what it would do.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create orders without the server.
    Order {
        #[command(subcommand)]
        command: OrderCommand,
    },
    /// Show or spend balances without the server.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Send recorded notifications to a server and check its answers (also a load generator).
    Replay(crate::tools::replay::Args),
    /// Create pending orders on a channel and write the signed notifications that pay them.
    Fixtures(crate::tools::fixtures::Args),
}

#[derive(Debug, Subcommand)]
enum OrderCommand {
    /// Create a pending order (or find the identical one) and print it as JSON.
    Create {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        user_id: String,
        /// Decimal amount in the currency's unit, e.g. 10.00.
        #[arg(long)]
        amount: String,
        #[arg(long, default_value = "CNY")]
        currency: String,
        /// A configured channel (see --config).
        #[arg(long)]
        channel: String,
        /// The idempotency key; a new one is issued when left out.
        #[arg(long)]
        order_no: Option<String>,
    },
    /// Ask the order's provider about it now, apply the answer as a notification would be, and
    /// print the order as it is afterwards (the channel needs its query keys, see --config).
    Sync {
        #[command(flatten)]
        db: DbArgs,
        order_no: String,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Print a user's balances and ledger (newest first) as JSON.
    Show {
        #[command(flatten)]
        db: DbArgs,
        user_id: String,
        /// Most ledger rows to print.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Spend from a user's balance once per debit number, and print the debit as JSON.
    Debit {
        #[command(flatten)]
        db: DbArgs,
        /// The user whose balance is spent.
        user_id: String,
        /// The idempotency key: the same number again takes nothing more.
        #[arg(long)]
        debit_no: String,
        /// Decimal amount in the currency's unit, e.g. 3.00.
        #[arg(long)]
        amount: String,
        /// The balance's currency, e.g. CNY.
        #[arg(long)]
        currency: String,
        /// A note kept with the debit (at most 256 characters).
        #[arg(long)]
        memo: Option<String>,
    },
}

/// Parses the command line, runs the command, and turns an error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init_logging(cli.log_format, cli.log_file.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { db, bind } => app::serve(db.settings(bind)?),
        Command::Replay(args) => crate::tools::replay::run(args),
        Command::Fixtures(args) => crate::tools::fixtures::run(args),
        Command::Migrate { db } => {
            let settings = db.settings(None)?;
            let pool = open(&settings)?;
            let ran = db::migrate(&mut *pool.get()?)?;
            println!("{ran} migration(s) applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { db } => {
            let settings = db.settings(None)?;
            let pool = open_migrated(&settings)?;
            let report = verify::verify(&mut *pool.get()?)?;
            println!("{report}");
            Ok(if report.balanced() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Explain {
            db,
            notification_id,
            json,
        } => {
            let settings = db.settings(None)?;
            let pool = open_migrated(&settings)?;
            let explanation =
                inspect::explain(&mut *pool.get()?, &settings.channels, notification_id)?;
            print(&explanation, json)?;
            Ok(exit_code(explanation.verifies))
        }
        Command::Reapply {
            db,
            notification_id,
            dry_run,
            json,
        } => {
            let settings = db.settings(None)?;
            let pool = open_migrated(&settings)?;
            let now = chrono::Utc::now().naive_utc();
            let reapplied = inspect::reapply(
                &mut *pool.get()?,
                &settings.channels,
                notification_id,
                dry_run,
                now,
            )?;
            print(&reapplied, json)?;
            Ok(exit_code(matches!(reapplied, Reapplied::Applied(_))))
        }
        Command::Order {
            command:
                OrderCommand::Create {
                    db,
                    user_id,
                    amount,
                    currency,
                    channel,
                    order_no,
                },
        } => {
            let settings = db.settings(None)?;
            let request = OrderRequest {
                order_no,
                user_id,
                amount,
                currency,
                channel,
            };
            let new = request
                .validate(|c| settings.channels.get(c).map(|cfg| cfg.terms()))
                .map_err(|e| anyhow::anyhow!(e))?;
            let pool = open_migrated(&settings)?;
            let now = chrono::Utc::now().naive_utc();
            match orders::create(&mut *pool.get()?, &new, now)? {
                Created::New(order) | Created::Existing(order) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&OrderView::from(&order))?
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Created::Conflict(order, fields) => anyhow::bail!(
                    "order {} exists with a different {}",
                    order.order_no,
                    fields.join(", ")
                ),
            }
        }
        Command::Order {
            command: OrderCommand::Sync { db, order_no },
        } => app::sync_order(&db.settings(None)?, &order_no),
        Command::Account {
            command: AccountCommand::Show { db, user_id, limit },
        } => {
            let settings = db.settings(None)?;
            let user = UserId::parse(&user_id)?;
            let pool = open_migrated(&settings)?;
            let statement = accounts::statement(&mut *pool.get()?, &user, limit.max(1), None)?;
            if statement.balances.is_empty() {
                anyhow::bail!("no account for user {user}");
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&AccountView::from(statement))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Account {
            command:
                AccountCommand::Debit {
                    db,
                    user_id,
                    debit_no,
                    amount,
                    currency,
                    memo,
                },
        } => {
            let settings = db.settings(None)?;
            let request = DebitRequest {
                debit_no,
                amount,
                currency,
                memo,
            };
            let new = request.validate(&user_id).map_err(|e| anyhow::anyhow!(e))?;
            let pool = open_migrated(&settings)?;
            let now = chrono::Utc::now().naive_utc();
            match debits::debit(&mut *pool.get()?, &new, now)? {
                Debited::New(debit) | Debited::Repeat(debit) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&DebitView::from(&debit))?
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Debited::Conflict(debit, fields) => anyhow::bail!(
                    "debit {} exists with a different {}",
                    debit.debit_no,
                    fields.join(", ")
                ),
                Debited::Insufficient { balance } => anyhow::bail!(
                    "insufficient balance: user {} has {} {currency}, the debit needs {} \
                     {currency}; nothing was taken",
                    new.user_id,
                    format_signed(balance, new.currency),
                    new.amount.format(new.currency),
                    currency = new.currency
                ),
            }
        }
    }
}

/// A result as JSON, or as text for a human.
fn print<T: serde::Serialize + std::fmt::Display>(value: &T, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{value}");
    }
    Ok(())
}

fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
