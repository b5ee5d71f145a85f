//! Recovery (补单): asking providers about orders whose notification never came, and closing
//! what expires, with the same guarantees as notifications.
//!
//! - [`ask`]: one client per provider, which signs its requests and verifies the answers.
//! - [`runner`]: the background loop. It claims due orders with a lease
//!   ([`crate::books::schedule`]), so a fleet asks about each order once, asks their provider
//!   off the HTTP workers and the writers, and applies what it finds through the crediting
//!   transaction: the same checks and compare-and-set as a notification, with the provider's
//!   signed answer kept in the inbox as `source = query`.
//! - [`Recovery::sync`]: the same for one order, now (`POST /api/orders/{order_no}/sync`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDateTime;

use crate::books::inbox::{self, Source};
use crate::books::orders::{self, Order};
use crate::books::schedule::{self, Due, Schedule};
use crate::crediting::committer::CommitError;
use crate::crediting::{Answer, Applied, Committer};
use crate::db::{DbError, Pool};
use crate::domain::clock::Clock;
use crate::domain::ids::ChannelName;
use crate::domain::outcome::Outcome;
use crate::telemetry;

pub mod ask;
pub mod runner;

/// The longest one ask about an order may take, query and close together: well within the
/// lease ([`schedule::LEASE`]), so that no other instance asks meanwhile.
const ASK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

use ask::{AskError, Asker, Closing, Queried, QueryEvidence};

/// Everything recovery needs: the channels that can be asked, the schedule, and the path every
/// answer takes to the books.
#[derive(Clone)]
pub struct Recovery {
    /// The channels that have the keys to ask their provider (for the loop, only while
    /// `recovery.enabled`; `sync` asks whenever a channel can).
    pub askers: Arc<BTreeMap<ChannelName, Arc<Asker>>>,
    pub schedule: Schedule,
    pub pool: Pool,
    pub committer: Committer,
    pub clock: Arc<dyn Clock>,
}

/// What asking about one order came to.
#[derive(Debug)]
pub enum Asked {
    /// The provider said something about the order, and it went through the crediting
    /// transaction.
    Applied(Applied),
    /// The provider knows no payment for it yet.
    NotPaid,
    /// The order expired unpaid and was closed, at the provider too where it can close.
    Closed,
    /// The provider refused to close: it was paid meanwhile. It is asked again after the next
    /// interval, and credited.
    PaidMeanwhile,
}

/// Why an ask came to nothing; the order is asked again later.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("channel {0} cannot ask its provider")]
    CannotAsk(ChannelName),
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    #[error("the provider's answer does not verify: {0}")]
    Invalid(String),
    #[error("{0}")]
    Commit(#[from] CommitError),
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("a database task stopped: {0}")]
    Task(String),
}

impl Recovery {
    fn now(&self) -> NaiveDateTime {
        self.clock.now().naive_utc()
    }

    /// Asks now about one order and applies the answer: `POST /api/orders/{order_no}/sync`.
    pub async fn sync(&self, order: &Order) -> Result<Asked, RecoveryError> {
        let asker = self
            .askers
            .get(&order.channel)
            .ok_or_else(|| RecoveryError::CannotAsk(order.channel.clone()))?;
        let queried = self.query(asker, order).await?;
        self.apply(&order.channel, queried).await
    }

    /// Applies what a sweep of undelivered events found; returns the answer a provider would
    /// have got, had it been a notification.
    async fn apply_swept(
        &self,
        channel: &ChannelName,
        queried: Queried,
    ) -> Result<Option<Answer>, RecoveryError> {
        Ok(match self.apply(channel, queried).await? {
            Asked::Applied(applied) => Some(applied.outcome.answer()),
            _ => None,
        })
    }

    /// Asks about a claimed order; when it expired unpaid, closes it. Sets when it is asked
    /// next, unless it left `pending`.
    pub async fn ask_about(&self, due: &Due) -> Result<Asked, RecoveryError> {
        let order = &due.order;
        let asker = self
            .askers
            .get(&order.channel)
            .ok_or_else(|| RecoveryError::CannotAsk(order.channel.clone()))?;
        // However the provider pages or stalls, an ask ends well within its lease.
        let asked = tokio::time::timeout(ASK_DEADLINE, async {
            let asked = match self.query(asker, order).await {
                Ok(queried) => self.apply(&order.channel, queried).await,
                Err(e) => Err(e),
            };
            match asked {
                Ok(Asked::NotPaid) if due.expired => self.close(asker, due).await,
                other => other,
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(RecoveryError::Unreachable(format!(
                "no answer within {}s",
                ASK_DEADLINE.as_secs()
            )))
        });
        // Asked again after the next interval, whatever came of it: an order paid meanwhile is
        // credited then, and a provider that contradicts itself is not asked every second.
        let now = self.now();
        let (due, schedule) = (due.clone(), self.schedule);
        self.db(move |conn| Ok(schedule::reschedule(conn, &due, &schedule, now)?))
            .await?;
        asked
    }

    /// One query, with a rejected answer kept in the inbox as a rejected query.
    async fn query(&self, asker: &Asker, order: &Order) -> Result<Queried, RecoveryError> {
        let channel = order.channel.as_str();
        match asker.query(order).await {
            Ok(queried) => Ok(queried),
            Err(AskError::Unreachable(why)) => {
                telemetry::record_query(channel, "unreachable");
                Err(RecoveryError::Unreachable(why))
            }
            Err(AskError::Invalid { reason, evidence }) => {
                telemetry::record_query(channel, "invalid");
                self.keep_rejected(&order.channel, &reason, evidence)
                    .await?;
                Err(RecoveryError::Invalid(reason))
            }
        }
    }

    /// Applies what a query found through the crediting transaction.
    async fn apply(&self, channel: &ChannelName, queried: Queried) -> Result<Asked, RecoveryError> {
        let channel = channel.as_str();
        let Queried::Said {
            notification,
            evidence,
        } = queried
        else {
            telemetry::record_query(channel, "not_paid");
            return Ok(Asked::NotPaid);
        };
        let applied = self
            .committer
            .submit(
                notification.clone(),
                evidence.headers_json,
                evidence.body.into(),
                Source::Query,
                self.now(),
            )
            .await?;
        telemetry::record_query(channel, applied.outcome.as_str());
        if applied.anomaly {
            telemetry::record_anomaly(channel);
        }
        if let Some(kind) = telemetry::money_back_kind(&notification.kind) {
            telemetry::record_money_back(channel, kind, applied.outcome.as_str());
        }
        // One line per query that changed something; repeats of what is known only at debug.
        let level = if applied.anomaly {
            log::Level::Error
        } else if applied.outcome.moved_money() || applied.outcome == Outcome::Closed {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(
            target: "payhook::recovery",
            level,
            channel = channel,
            order_no = notification.order_no.as_ref().map_or("-", |o| o.as_str()),
            notification_id = notification.notification_id.as_str(),
            kind = notification.kind.as_str(),
            outcome = applied.outcome.as_str(),
            anomaly = applied.anomaly,
            detail = applied.detail.as_deref().unwrap_or("");
            "query"
        );
        Ok(Asked::Applied(applied))
    }

    /// Closes an expired unpaid order: first at the provider, so that the buyer cannot pay it any
    /// more, then here with the same compare-and-set as an admin close. A provider that says it
    /// was paid meanwhile has the order asked again at once, and its payment credited.
    async fn close(&self, asker: &Asker, due: &Due) -> Result<Asked, RecoveryError> {
        let order = &due.order;
        let channel = order.channel.as_str();
        let closing = asker.close(order).await.map_err(|e| {
            telemetry::record_close(channel, "failed");
            match e {
                AskError::Unreachable(why) => RecoveryError::Unreachable(why),
                AskError::Invalid { reason, .. } => RecoveryError::Invalid(reason),
            }
        })?;
        if let Closing::AlreadyPaid = closing {
            telemetry::record_close(channel, "paid_meanwhile");
            return Ok(Asked::PaidMeanwhile);
        }
        if !matches!(closing, Closing::NotSupported) {
            // A provider may answer a close before a payment in flight settles (WeChat Pay
            // answers 204 even then): asked once more, a payment found wins over the close.
            if let Asked::Applied(applied) = self
                .apply(&order.channel, self.query(asker, order).await?)
                .await?
            {
                if applied.outcome != Outcome::Closed {
                    telemetry::record_close(channel, "paid_meanwhile");
                    return Ok(Asked::Applied(applied));
                }
            }
        }
        let now = self.now();
        let order_no = order.order_no.clone();
        let closed = self
            .db(move |conn| Ok(orders::close_pending(conn, &order_no, None, now)?))
            .await?;
        telemetry::record_close(channel, if closed { "closed" } else { "not_pending" });
        log::info!(
            target: "payhook::recovery",
            channel = channel,
            order_no = order.order_no.as_str(),
            at_provider = !matches!(closing, Closing::NotSupported),
            closed = closed;
            "expired order closed"
        );
        Ok(Asked::Closed)
    }

    async fn keep_rejected(
        &self,
        channel: &ChannelName,
        reason: &str,
        evidence: QueryEvidence,
    ) -> Result<(), RecoveryError> {
        let (channel, reason, now) = (channel.clone(), reason.to_owned(), self.now());
        log::warn!(
            target: "payhook::recovery",
            channel = channel.as_str(),
            reason = reason.as_str();
            "query answer rejected"
        );
        self.db(move |conn| {
            let headers: Vec<(String, String)> =
                serde_json::from_str::<BTreeMap<String, String>>(&evidence.headers_json)
                    .map(|h| h.into_iter().collect())
                    .unwrap_or_default();
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            inbox::record_rejection(
                conn,
                &channel,
                Source::Query,
                &reason,
                &headers,
                &evidence.body,
                now,
            )?;
            Ok(())
        })
        .await
    }

    /// Runs database work off the async thread.
    async fn db<T, F>(&self, f: F) -> Result<T, RecoveryError>
    where
        T: Send + 'static,
        F: FnOnce(&mut crate::db::DbConnection) -> Result<T, DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || f(&mut *pool.get()?))
            .await
            .map_err(|e| RecoveryError::Task(e.to_string()))?
            .map_err(RecoveryError::from)
    }
}
