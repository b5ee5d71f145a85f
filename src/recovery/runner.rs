//! The background loop of recovery, on a thread of its own with its own small runtime: every
//! second it claims the orders that are due, asks their providers a few at a time, and applies
//! the answers; a channel whose provider cannot be reached is left alone for a while. Stripe
//! channels also sweep the events Stripe could not deliver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Asked, Recovery, RecoveryError};
use crate::books::schedule::{self, Due};
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
        paused.retain(|_, pause| pause.until > started);
        let channels: Vec<ChannelName> = recovery
            .askers
            .keys()
            .filter(|c| !paused.contains_key(*c))
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

/// Asks about every claimed order at once, and pauses the channels that could not be reached.
async fn ask_all(recovery: &Recovery, due: Vec<Due>, paused: &mut HashMap<ChannelName, Pause>) {
    let mut asks = tokio::task::JoinSet::new();
    for due in due {
        let recovery = recovery.clone();
        asks.spawn(async move {
            let asked = recovery.ask_about(&due).await;
            (due, asked)
        });
    }
    while let Some(done) = asks.join_next().await {
        let Ok((due, asked)) = done else {
            continue;
        };
        let channel = &due.order.channel;
        match asked {
            Ok(Asked::NotPaid | Asked::Applied(_) | Asked::Closed | Asked::PaidMeanwhile) => {
                paused.remove(channel);
            }
            Err(RecoveryError::Unreachable(why)) => {
                let failures = paused.get(channel).map_or(0, |p| p.failures) + 1;
                let pause = PAUSE_FIRST
                    .saturating_mul(2u32.saturating_pow(failures - 1))
                    .min(PAUSE_MOST);
                log::warn!(
                    target: "payhook::recovery",
                    channel = channel.as_str(),
                    order_no = due.order.order_no.as_str(),
                    pause_secs = pause.as_secs();
                    "provider unreachable: {why}"
                );
                paused.insert(
                    channel.clone(),
                    Pause {
                        until: Instant::now() + pause,
                        failures,
                    },
                );
            }
            Err(e) => log::warn!(
                target: "payhook::recovery",
                channel = channel.as_str(),
                order_no = due.order.order_no.as_str();
                "ask failed: {e}"
            ),
        }
    }
}

/// Reads each Stripe channel's undelivered events from where its last sweep stopped, applies
/// them, and only then moves its cursor.
async fn sweep(recovery: &Recovery, paused: &HashMap<ChannelName, Pause>) {
    for (channel, asker) in recovery.askers.iter() {
        if paused.contains_key(channel) {
            continue;
        }
        let lookup = channel.clone();
        let cursor = match recovery
            .db(move |conn| Ok(schedule::cursor(conn, &lookup)?))
            .await
        {
            Ok(cursor) => cursor,
            Err(e) => {
                log::warn!(target: "payhook::recovery", "cannot read the sweep cursor: {e}");
                continue;
            }
        };
        let since = recovery.clock.now() - FIRST_SWEEP_BACK;
        let (found, read_up_to) = match asker.undelivered(cursor.as_deref(), since).await {
            Ok(found) => found,
            Err(e) => {
                log::warn!(target: "payhook::recovery", channel = channel.as_str(); "sweep failed: {e}");
                continue;
            }
        };
        let mut applied_all = true;
        for queried in found {
            if let Err(e) = recovery.apply_swept(channel, queried).await {
                log::warn!(target: "payhook::recovery", channel = channel.as_str(); "swept event not applied: {e}");
                applied_all = false;
            }
        }
        // An event that did not apply is read again by the next sweep.
        if let (true, Some(read_up_to)) = (applied_all, read_up_to) {
            if cursor.as_deref() != Some(read_up_to.as_str()) {
                let (channel, now) = (channel.clone(), recovery.now());
                let saved = recovery
                    .db(move |conn| schedule::save_cursor(conn, &channel, &read_up_to, now))
                    .await;
                if let Err(e) = saved {
                    log::warn!(target: "payhook::recovery", "cannot save the sweep cursor: {e}");
                }
            }
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
