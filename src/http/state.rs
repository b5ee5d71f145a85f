//! What every handler shares: the pool, the group-commit writer, the configured channels, the
//! clock, and the separate store for rejected requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;

use crate::books::inbox;
use crate::books::schedule::Schedule;
use crate::config::{ChannelTerms, PoolSettings, Secret, Settings};
use crate::crediting::Committer;
use crate::db::{DbError, Pool};
use crate::domain::clock::Clock;
use crate::domain::ids::ChannelName;
use crate::notify::{self, Provider};
use crate::recovery::ask::{self, Asker};
use crate::recovery::{runner, Recovery};

/// A configured channel: its provider's adapter, what its orders must look like, and the client
/// that asks its provider about an order when the channel has query keys.
#[derive(Clone)]
pub struct Channel {
    pub provider: Arc<dyn Provider>,
    pub terms: ChannelTerms,
    pub asker: Option<Arc<Asker>>,
}

/// What every handler shares.
pub struct AppState {
    pub pool: Pool,
    /// The group-commit writer that applies verified notifications.
    pub committer: Committer,
    pub channels: HashMap<ChannelName, Channel>,
    pub clock: Arc<dyn Clock>,
    /// Where requests that fail verification are stored, apart from the writers' connections.
    pub rejections: RejectionStore,
    pub admin_token: Option<Secret>,
    /// Largest notification body; larger ones are answered 413.
    pub body_limit: usize,
    /// How long a client may take to send a whole notification body; slower ones get 408.
    pub body_timeout: Duration,
    /// Asking providers about orders (补单): the channels that can, and the way answers go.
    pub recovery: Recovery,
    /// Every channel's configuration, with which an operator's console explains a stored
    /// notification and applies it again.
    pub channel_configs: Arc<crate::inspect::Channels>,
    /// The background loop of recovery, stopped when the state is dropped.
    _recovering: Option<runner::Running>,
}

impl AppState {
    /// Builds every configured channel's adapter and asker; a bad key stops start-up with the
    /// channel named.
    pub fn new(settings: &Settings, pool: Pool, clock: Arc<dyn Clock>) -> anyhow::Result<AppState> {
        let mut channels = HashMap::new();
        let http = ask::http_client().map_err(|e| anyhow::anyhow!(e))?;
        for (name, cfg) in &settings.channels {
            let provider =
                notify::from_config(cfg).map_err(|e| anyhow::anyhow!("channel {name}: {e}"))?;
            let asker = Asker::new(name, cfg, http.clone())
                .map_err(|e| anyhow::anyhow!("channel {name}: {e}"))?
                .map(|asker| Arc::new(asker.with_clock(clock.clone())));
            let channel = Channel {
                provider: Arc::from(provider),
                terms: cfg.terms(),
                asker,
            };
            channels.insert(name.clone(), channel);
        }
        let writers = match settings.commit.writers {
            0 => crate::db::DatabaseUrl::parse(settings.database_url.expose())
                .map_or(1, |url| url.default_writers(settings.pool.max_size)),
            n => n,
        };
        let committer = Committer::start(
            pool.clone(),
            writers,
            settings.commit.max_batch,
            Duration::from_secs(settings.commit.timeout_secs),
        )
        .map_err(|e| anyhow::anyhow!("cannot start the writer thread: {e}"))?;
        let rejections = RejectionStore::open(settings)
            .map_err(|e| anyhow::anyhow!("cannot open the pool for rejected requests: {e}"))?;
        let askers = channels
            .iter()
            .filter_map(|(name, c)| Some((name.clone(), c.asker.clone()?)))
            .collect();
        let recovery = Recovery {
            askers: Arc::new(askers),
            schedule: Schedule::from(&settings.recovery),
            pool: pool.clone(),
            committer: committer.clone(),
            clock: clock.clone(),
        };
        let recovering = if settings.recovery.enabled {
            runner::start(recovery.clone())
                .map_err(|e| anyhow::anyhow!("cannot start recovery: {e}"))?
        } else {
            None
        };
        Ok(AppState {
            pool,
            committer,
            channels,
            clock,
            rejections,
            admin_token: settings.admin_token.clone(),
            body_limit: settings.http.body_limit_bytes,
            body_timeout: Duration::from_secs(settings.http.request_timeout_secs),
            recovery,
            channel_configs: Arc::new(settings.channels.clone()),
            _recovering: recovering,
        })
    }
}

/// Stores rejected requests through a small pool of their own, so that a flood of unverified
/// requests never takes a connection the writers need. A request that finds every connection
/// busy is not stored: it is answered retry at once, as it would be anyway. What is stored is
/// bounded: every [`inbox::prune_every`] requests stored for a channel, the same connection
/// deletes that channel's rejected rows but the newest `inbox.keep_rejected`.
pub struct RejectionStore {
    pool: Pool,
    /// One per connection, taken without waiting.
    permits: Arc<tokio::sync::Semaphore>,
    /// `inbox.keep_rejected`.
    keep: u64,
    /// Requests stored so far per configured channel, counting towards the next prune.
    stored: Arc<HashMap<ChannelName, AtomicU64>>,
}

/// Why a rejected request was not stored.
#[derive(Debug, thiserror::Error)]
pub enum NotStored {
    #[error("every connection for rejected requests is busy")]
    Busy,
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("{0}")]
    Blocking(#[from] actix_web::error::BlockingError),
}

impl RejectionStore {
    /// A pool of `pool.rejection_max_size` connections and as many permits, so that a holder of
    /// a permit never waits for a connection in use; only for one being opened.
    pub fn open(settings: &Settings) -> Result<RejectionStore, DbError> {
        let size = settings.pool.rejection_max_size;
        let pool_settings = PoolSettings {
            max_size: size,
            connection_timeout_secs: 1,
            ..settings.pool.clone()
        };
        Ok(RejectionStore {
            pool: crate::db::connect(settings.database_url.expose(), &pool_settings)?,
            permits: Arc::new(tokio::sync::Semaphore::new(size as usize)),
            keep: settings.inbox.keep_rejected,
            stored: Arc::new(
                settings
                    .channels
                    .keys()
                    .map(|name| (name.clone(), AtomicU64::new(0)))
                    .collect(),
            ),
        })
    }

    /// Records one rejected request (see [`inbox::record_rejection`]) unless every connection is
    /// busy, and prunes the channel's rejected rows when its turn comes; returns its inbox row,
    /// which `payhook explain` takes.
    pub async fn record(
        &self,
        channel: ChannelName,
        reason: String,
        headers: Vec<(&'static str, String)>,
        body: web::Bytes,
        now: chrono::NaiveDateTime,
    ) -> Result<i64, NotStored> {
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| NotStored::Busy)?;
        let (pool, keep, stored) = (self.pool.clone(), self.keep, self.stored.clone());
        web::block(move || {
            let _permit = permit;
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut conn = pool.get()?;
            let id = inbox::record_rejection(
                &mut conn,
                &channel,
                inbox::Source::Notify,
                &reason,
                &headers,
                &body,
                now,
            )?;
            let turn = stored
                .get(&channel)
                .map(|n| n.fetch_add(1, Ordering::Relaxed) + 1);
            if turn.is_some_and(|n| n % inbox::prune_every(keep) == 0) {
                // The request is stored whatever becomes of the prune; the next turn tries again.
                match inbox::prune_rejected(&mut conn, &channel, keep) {
                    Ok(deleted) => log::debug!(
                        channel = channel.as_str(),
                        deleted = deleted;
                        "rejected requests pruned"
                    ),
                    Err(e) => log::warn!(
                        channel = channel.as_str();
                        "cannot prune rejected requests: {e}"
                    ),
                }
            }
            Ok::<i64, DbError>(id)
        })
        .await?
        .map_err(NotStored::from)
    }
}
