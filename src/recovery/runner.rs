//! The background loop of recovery, on a thread of its own with its own small runtime: every
//! second it claims the orders that are due, asks their providers a few at a time, and applies
//! the answers; a channel whose provider cannot be reached is left alone for a while. Stripe
//! channels also sweep the events Stripe could not deliver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Recovery, RecoveryError};
use crate::books::schedule::{self, Due};
use crate::crediting::Answer;
use crate::domain::ids::ChannelName;
use crate::telemetry;

/// How often due orders are looked for.
const TICK: Duration = Duration::from_secs(1);
/// Most orders one instance claims per tick, and asks about at once.
const CLAIM: i64 = 16;
/// How often a Stripe channel sweeps its undelivered events.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How far back a channel's first sweep reads: Stripe stops retrying an event after three days.
const FIRST_SWEEP_BACK: chrono::Duration = chrono::Duration::days(3);
/// How far before its last sweep a sweep reads again, for events that were indexed late.
const SWEEP_OVERLAP: chrono::Duration = chrono::Duration::minutes(5);
/// How long Stripe keeps events: a sweep never reads further back.
const STRIPE_KEEPS: chrono::Duration = chrono::Duration::days(29);
/// The first and the longest pause of a channel whose provider cannot be reached.
const PAUSE_FIRST: Duration = Duration::from_secs(5);
const PAUSE_MOST: Duration = Duration::from_secs(300);

/// Stops the loop when dropped.
pub struct Running {
    stop: Arc<AtomicBool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts the loop, unless no channel can ask its provider.
pub fn start(recovery: Recovery) -> std::io::Result<Option<Running>> {
    if recovery.askers.is_empty() {
        return Ok(None);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("payhook-recovery".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    log::error!("recovery cannot start its runtime: {e}");
                    return;
                }
            };
            runtime.block_on(run(recovery, stopped));
        })?;
    Ok(Some(Running { stop }))
}

/// A channel left alone until `until`, after `failures` unreachable asks in a row.
struct Pause {
    until: Instant,
    failures: u32,
}

async fn run(recovery: Recovery, stop: Arc<AtomicBool>) {
    let mut paused: HashMap<ChannelName, Pause> = HashMap::new();
    let mut next_sweep = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        // A paused channel keeps its count of failures until it is reached again, so that its
        // pauses double.
        let channels: Vec<ChannelName> = recovery
            .askers
            .keys()
            .filter(|c| paused.get(*c).is_none_or(|p| p.until <= started))
            .cloned()
            .collect();
        if !channels.is_empty() {
            match claim(&recovery, channels).await {
                Ok(due) => ask_all(&recovery, due, &mut paused).await,
                Err(e) => log::warn!(target: "payhook::recovery", "cannot claim due orders: {e}"),
            }
        }
        if started >= next_sweep {
            sweep(&recovery, &paused).await;
            report_oldest(&recovery).await;
            next_sweep = started + SWEEP_EVERY;
        }
        tokio::time::sleep(TICK.saturating_sub(started.elapsed())).await;
    }
}

async fn claim(recovery: &Recovery, channels: Vec<ChannelName>) -> Result<Vec<Due>, RecoveryError> {
    let (schedule, now) = (recovery.schedule, recovery.now());
    recovery
        .db(move |conn| {
            let channels: Vec<&ChannelName> = channels.iter().collect();
            schedule::claim(conn, &channels, &schedule, now, CLAIM)
        })
        .await
}

/// Asks about every claimed order at once, and pauses the channels that could not be reached:
/// once per tick, however many of their asks failed.
async fn ask_all(recovery: &Recovery, due: Vec<Due>, paused: &mut HashMap<ChannelName, Pause>) {
    let mut asks = tokio::task::JoinSet::new();
    for due in due {
        let recovery = recovery.clone();
        asks.spawn(async move {
            let asked = recovery.ask_about(&due).await;
            (due, asked)
        });
    }
    let mut reached: HashMap<ChannelName, bool> = HashMap::new();
    while let Some(done) = asks.join_next().await {
        let Ok((due, asked)) = done else {
            continue;
        };
        let channel = &due.order.channel;
        match asked {
            Ok(_) => {
                reached.insert(channel.clone(), true);
            }
            Err(RecoveryError::Unreachable(why)) => {
                log::warn!(
                    target: "payhook::recovery",
                    channel = channel.as_str(),
                    order_no = due.order.order_no.as_str();
                    "provider unreachable: {why}"
                );
                reached.entry(channel.clone()).or_insert(false);
            }
            Err(e) => log::warn!(
                target: "payhook::recovery",
                channel = channel.as_str(),
                order_no = due.order.order_no.as_str();
                "ask failed: {e}"
            ),
        }
    }
    for (channel, reached) in reached {
        if reached {
            paused.remove(&channel);
            continue;
        }
        let failures = paused.get(&channel).map_or(0, |p| p.failures) + 1;
        let pause = PAUSE_FIRST
            .saturating_mul(2u32.saturating_pow(failures - 1))
            .min(PAUSE_MOST);
        log::warn!(
            target: "payhook::recovery",
            channel = channel.as_str(),
            pause_secs = pause.as_secs();
            "provider unreachable: channel paused"
        );
        paused.insert(
            channel,
            Pause {
                until: Instant::now() + pause,
                failures,
            },
        );
    }
}

/// Reads each Stripe channel's undelivered events created since its last sweep (a few minutes
/// before it, for events indexed late; the first sweep reads three days back), applies them, and
/// then records this sweep. The sweep reads by time, not from an event id: Stripe forgets events
/// after 30 days, and an id it forgot can no longer be read from.
///
/// An event that comes to "retry" (a refund before its payment) keeps the record where it was,
/// so the next sweep reads it again: for three days at most, after which Stripe has stopped
/// retrying it too and the record moves on.
async fn sweep(recovery: &Recovery, paused: &HashMap<ChannelName, Pause>) {
    for (channel, asker) in recovery.askers.iter() {
        if paused
            .get(channel)
            .is_some_and(|p| p.until > Instant::now())
        {
            continue;
        }
        let lookup = channel.clone();
        let mark = match recovery
            .db(move |conn| Ok(schedule::cursor(conn, &lookup)?))
            .await
        {
            Ok(mark) => mark,
            Err(e) => {
                log::warn!(target: "payhook::recovery", "cannot read the sweep cursor: {e}");
                continue;
            }
        };
        let started = recovery.now();
        let since = match &mark {
            Some((_, swept_at)) => (*swept_at - SWEEP_OVERLAP).max(started - STRIPE_KEEPS),
            None => started - FIRST_SWEEP_BACK,
        };
        let (found, newest) = match asker.undelivered(None, since.and_utc()).await {
            Ok(found) => found,
            Err(e) => {
                log::warn!(target: "payhook::recovery", channel = channel.as_str(); "sweep failed: {e}");
                continue;
            }
        };
        let mut hold = false;
        for queried in found {
            match recovery.apply_swept(channel, queried).await {
                Ok(Some(Answer::Retry)) => hold = true,
                Ok(_) => {}
                Err(e) => {
                    log::warn!(target: "payhook::recovery", channel = channel.as_str(); "swept event not applied: {e}");
                    hold = true;
                }
            }
        }
        let held_recently = mark
            .as_ref()
            .is_some_and(|(_, swept_at)| started - *swept_at < FIRST_SWEEP_BACK);
        if hold && (held_recently || mark.is_none()) {
            continue;
        }
        let read_up_to = newest
            .or_else(|| mark.map(|(id, _)| id))
            .unwrap_or_else(|| "-".to_owned());
        let channel = channel.clone();
        let saved = recovery
            .db(move |conn| schedule::save_cursor(conn, &channel, &read_up_to, started))
            .await;
        if let Err(e) = saved {
            log::warn!(target: "payhook::recovery", "cannot save the sweep cursor: {e}");
        }
    }
}

/// Sets the gauge of the oldest pending order's age.
async fn report_oldest(recovery: &Recovery) {
    let oldest = recovery
        .db(|conn| Ok(schedule::oldest_pending(conn)?))
        .await;
    if let Ok(oldest) = oldest {
        let age = oldest.map_or(0.0, |created| {
            (recovery.now() - created).num_milliseconds().max(0) as f64 / 1000.0
        });
        telemetry::record_oldest_pending(age);
    }
}
