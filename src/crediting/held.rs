//! What the writers share besides their queue: the orders they keep out of their batches, because
//! a lock wait on their rows timed out or another writer's batch holds them.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::apply::Applied;
use super::error::Failure;
use crate::db::Retry;
use crate::domain::ids::OrderNo;
use crate::domain::notification::Notification;

/// How long an order whose rows a lock wait timed out on is kept out of batches.
const HELD_FOR: Duration = Duration::from_secs(60);

/// Most orders the writers remember as held.
const HELD_CAPACITY: usize = 4096;

/// The orders whose rows a lock wait of the writers lately timed out on: held by a session that
/// may be frozen (a stopped peer, a paused VM) until the server ends it. Each delivery of such an
/// order is applied alone with a short lock wait, after its batch, so that a held row costs the
/// batch's notifications nothing and its own delivery a short wait. A delivery that goes through
/// forgets the order; so does time.
///
/// The writers share it, as they share their queue, with the orders of the batches they are
/// applying: a delivery of an order in another writer's batch is set aside too. Its batch may be
/// waiting on a frozen session's lock, which would otherwise hold up a second writer as well.
#[derive(Default)]
pub(super) struct Held {
    until: HashMap<OrderNo, Instant>,
    in_flight: HashSet<OrderNo>,
}

/// The held orders, even after a writer panicked while holding them: what they record is a
/// hint, never money.
pub(super) fn lock(held: &Mutex<Held>) -> MutexGuard<'_, Held> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Held {
    /// Whether `notification` may go into the batch being made: its order is neither held nor
    /// in another writer's batch. If so, its order is claimed for this batch (added to
    /// `claimed`), until [`Held::release`].
    pub(super) fn claim(
        &mut self,
        notification: &Notification,
        now: Instant,
        claimed: &mut Vec<OrderNo>,
    ) -> bool {
        if self.holds(notification, now) {
            return false;
        }
        let Some(order_no) = &notification.order_no else {
            return true;
        };
        if claimed.contains(order_no) {
            return true;
        }
        if !self.in_flight.insert(order_no.clone()) {
            return false;
        }
        claimed.push(order_no.clone());
        true
    }

    /// Lets go of the orders a batch claimed.
    pub(super) fn release(&mut self, claimed: &[OrderNo]) {
        for order_no in claimed {
            self.in_flight.remove(order_no);
        }
    }

    fn holds(&mut self, notification: &Notification, now: Instant) -> bool {
        let Some(order_no) = &notification.order_no else {
            return false;
        };
        match self.until.get(order_no) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.until.remove(order_no);
                false
            }
            None => false,
        }
    }

    pub(super) fn learn(
        &mut self,
        notification: &Notification,
        result: &Result<Applied, Failure>,
        now: Instant,
    ) {
        let Some(order_no) = &notification.order_no else {
            return;
        };
        match result {
            Err(error) if error.is_lock_timeout() => {
                if self.until.len() >= HELD_CAPACITY {
                    self.until.retain(|_, until| *until > now);
                }
                if self.until.len() < HELD_CAPACITY {
                    self.until.insert(order_no.clone(), now + HELD_FOR);
                }
            }
            Ok(_) => {
                self.until.remove(order_no);
            }
            Err(_) => {}
        }
    }
}
