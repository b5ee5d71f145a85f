//! What the commands open: the settings their flags name, the database pool, and the server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::config::{Overrides, Settings};
use crate::db;
use crate::domain::clock::SystemClock;
use crate::http;

/// The flags every command that touches the database takes.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Config file (TOML); also PAYHOOK_CONFIG. Nothing is read by default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// sqlite://PATH or postgres://user:pass@host:5432/db; also PAYHOOK_DATABASE_URL.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

impl DbArgs {
    /// The settings these flags name, over the file, the environment and the defaults.
    pub fn settings(&self, bind: Option<String>) -> anyhow::Result<Settings> {
        let flags = Overrides {
            bind,
            database_url: self.database_url.clone(),
            admin_token: None,
        };
        Ok(Settings::load(
            self.config.as_deref(),
            &Overrides::from_env(),
            &flags,
        )?)
    }
}

/// Opens the pool and applies pending migrations, for commands that work on the books directly.
pub fn open_migrated(settings: &Settings) -> anyhow::Result<db::Pool> {
    let pool = open(settings)?;
    db::migrate(&mut *pool.get()?)?;
    Ok(pool)
}

/// Opens the pool; the error carries the database's own message.
pub fn open(settings: &Settings) -> anyhow::Result<db::Pool> {
    let url = settings.database_url.expose();
    let redacted = db::DatabaseUrl::parse(url)?.redacted();
    db::connect(url, &settings.pool).with_context(|| format!("database {redacted}"))
}

/// Runs the server until it is stopped, after applying pending migrations.
pub fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let pool = open(&settings)?;
    let ran = db::migrate(&mut *pool.get()?)?;
    if ran > 0 {
        log::info!("applied {ran} migration(s)");
    }
    if settings.admin_token.is_none() {
        log::warn!("no admin_token configured: /api refuses every request");
    }
    let state = http::AppState::new(&settings, pool, Arc::new(SystemClock))?;
    let channels: Vec<String> = state.channels.keys().map(|c| c.to_string()).collect();
    let bound = http::bind(&settings, state)
        .with_context(|| format!("cannot listen on {}", settings.bind))?;
    for addr in &bound.addrs {
        log::info!(
            "payhook listening on http://{addr} (database {}, channels: {})",
            db::DatabaseUrl::parse(settings.database_url.expose())?.redacted(),
            if channels.is_empty() {
                "none".to_owned()
            } else {
                channels.join(", ")
            }
        );
    }
    actix_web::rt::System::new().block_on(bound.server)?;
    log::info!("payhook stopped");
    Ok(ExitCode::SUCCESS)
}

/// `payhook order sync`: asks the order's provider now, without the server, and prints the
/// order as it is afterwards. The answer takes the notification's path: the same checks, the
/// same compare-and-set, evidence kept with `source = query`.
pub fn sync_order(settings: &Settings, order_no: &str) -> anyhow::Result<ExitCode> {
    use crate::books::orders;
    use crate::books::schedule::Schedule;
    use crate::crediting::Committer;
    use crate::domain::ids::OrderNo;
    use crate::http::views::OrderView;
    use crate::recovery::ask::{self, Asker};
    use crate::recovery::Recovery;

    let order_no = OrderNo::parse(order_no).map_err(|e| anyhow::anyhow!(e))?;
    let pool = open_migrated(settings)?;
    let order = orders::find(&mut *pool.get()?, &order_no)?
        .with_context(|| format!("no order {order_no}"))?;
    let cfg = settings
        .channels
        .get(&order.channel)
        .with_context(|| format!("channel {} is not configured", order.channel))?;
    let http = ask::http_client().map_err(|e| anyhow::anyhow!(e))?;
    let asker = Asker::new(&order.channel, cfg, http)
        .map_err(|e| anyhow::anyhow!("channel {}: {e}", order.channel))?
        .with_context(|| {
            format!(
                "channel {} has no keys to ask its provider (see the README, Recovery)",
                order.channel
            )
        })?;
    let committer = Committer::start(
        pool.clone(),
        1,
        1,
        std::time::Duration::from_secs(settings.commit.timeout_secs),
    )?;
    let recovery = Recovery {
        askers: Arc::new(
            [(order.channel.clone(), Arc::new(asker))]
                .into_iter()
                .collect(),
        ),
        schedule: Schedule::from(&settings.recovery),
        pool: pool.clone(),
        committer,
        clock: Arc::new(SystemClock),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(recovery.sync(&order))
        .with_context(|| format!("order {order_no}"))?;
    let order = orders::find(&mut *pool.get()?, &order_no)?
        .with_context(|| format!("no order {order_no}"))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&OrderView::from(&order))?
    );
    Ok(ExitCode::SUCCESS)
}
