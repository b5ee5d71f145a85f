//! What this instance has seen committed: notifications whose next deliveries are answered
//! without the database. A paid order stays paid and a booked refund stays booked, so those
//! facts stay true.

use std::collections::HashMap;
use std::sync::Mutex;

use super::apply::{Applied, Claim};
use crate::domain::notification::{Dispute, Notification, NotificationKind, Refund};
use crate::domain::outcome::Outcome;

/// How many settled notifications one generation of [`Settled`] remembers.
pub const SETTLED_CAPACITY: usize = 50_000;

/// What identifies a settled notification and everything checked before it was acked, hashed
/// (SHA-256, first 128 bits): for a payment its channel, provider id, order, trade, amount and
/// currency; for money going back the same and what the provider says went back (refund or
/// dispute id, amount, cumulative total). A new cumulative total is a new fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// `None` for notifications that settle nothing: only payments ([`Claim`]) and money going
    /// back, addressed to us, are answered from memory.
    pub fn of(n: &Notification) -> Option<Fingerprint> {
        let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut field = |value: &str| {
            hash.update(&(value.len() as u64).to_le_bytes());
            hash.update(value.as_bytes());
        };
        if let Some(claim) = Claim::of(n) {
            for value in [
                claim.channel.as_str(),
                &n.notification_id,
                claim.order_no.as_str(),
                claim.trade_no,
                &claim.amount.get().to_string(),
                claim.currency.code(),
            ] {
                field(value);
            }
        } else if n.kind.is_money_back() && n.merchant_mismatch.is_none() {
            let given_back = match &n.kind {
                NotificationKind::Refund(Refund::One { refund_id, amount }) => {
                    format!("refund {refund_id} {}", amount.get())
                }
                NotificationKind::Refund(Refund::UpTo { total, .. }) => {
                    format!("refunds up to {}", total.get())
                }
                NotificationKind::Chargeback(Dispute { dispute_id, amount }) => {
                    format!("chargeback {dispute_id} {}", amount.get())
                }
                NotificationKind::ChargebackReversal(Dispute { dispute_id, amount }) => {
                    format!("reversal {dispute_id} {}", amount.get())
                }
                _ => return None,
            };
            for value in [
                n.channel.as_str(),
                &n.notification_id,
                n.order_no.as_ref().map_or("", |o| o.as_str()),
                n.provider_trade_no.as_deref().unwrap_or(""),
                &n.amount.map_or(String::new(), |a| a.get().to_string()),
                n.currency.map_or("", |c| c.code()),
                &given_back,
            ] {
                field(value);
            }
        } else {
            return None;
        }
        let digest = hash.finish();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        Some(Fingerprint(bytes))
    }
}

/// What a later delivery of a notification that came to `outcome` is answered, if it can be
/// answered from memory: only outcomes that stay true do.
pub fn repeat_of(outcome: Outcome) -> Option<Outcome> {
    match outcome {
        Outcome::Credited | Outcome::AlreadyPaid => Some(Outcome::AlreadyPaid),
        Outcome::Refunded
        | Outcome::ChargedBack
        | Outcome::ChargebackReversed
        | Outcome::AlreadyBooked => Some(Outcome::AlreadyBooked),
        _ => None,
    }
}

/// What this instance knows of a settled notification's inbox row.
#[derive(Debug, Clone, Copy)]
struct Known {
    inbox_id: i64,
    deliveries: i64,
    /// What a repeat is answered.
    repeat: Outcome,
}

/// Paid notifications this instance has seen committed, credited or acked as a repeat, so that
/// their next deliveries need no database. Two generations bound the memory: when the current
/// one is full it becomes the previous one and the old previous one is forgotten (a forgotten
/// notification just takes the writer's path again).
pub struct Settled {
    capacity: usize,
    generations: Mutex<(HashMap<Fingerprint, Known>, HashMap<Fingerprint, Known>)>,
}

impl Settled {
    pub fn new(capacity: usize) -> Settled {
        Settled {
            capacity,
            generations: Mutex::new((HashMap::new(), HashMap::new())),
        }
    }

    /// The answer to one more delivery of a settled notification, or `None` if it is not known.
    pub fn repeat(&self, fingerprint: &Fingerprint) -> Option<Applied> {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let (current, previous) = &mut *generations;
        let known = match current.get_mut(fingerprint) {
            Some(known) => known,
            None => {
                let known = previous.remove(fingerprint)?;
                current.entry(*fingerprint).or_insert(known)
            }
        };
        known.deliveries += 1;
        Some(Applied {
            outcome: known.repeat,
            anomaly: false,
            detail: None,
            inbox_id: known.inbox_id,
            delivery_count: known.deliveries,
            balance_after: None,
        })
    }

    /// Remembers a committed notification, if its outcome stays true ([`repeat_of`]).
    pub fn insert(&self, fingerprint: Fingerprint, applied: &Applied) {
        let Some(repeat) = repeat_of(applied.outcome) else {
            return;
        };
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let (current, previous) = &mut *generations;
        if current.len() >= self.capacity {
            *previous = std::mem::take(current);
        }
        current.insert(
            fingerprint,
            Known {
                inbox_id: applied.inbox_id,
                deliveries: applied.delivery_count,
                repeat,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{ChannelName, OrderNo};
    use crate::domain::money::{AmountMinor, Currency};
    use crate::domain::notification::{Dispute, NotificationKind, Refund};

    fn paid(id: &str, order: &str, trade: &str, minor: i64) -> Notification {
        Notification {
            channel: ChannelName::parse("alipay").unwrap(),
            notification_id: id.to_owned(),
            order_no: Some(OrderNo::parse(order).unwrap()),
            provider_trade_no: Some(trade.to_owned()),
            amount: Some(AmountMinor::new(minor).unwrap()),
            currency: Some(Currency::parse("CNY").unwrap()),
            kind: NotificationKind::Paid,
            merchant_mismatch: None,
        }
    }

    fn credited(inbox_id: i64) -> Applied {
        Applied {
            outcome: Outcome::Credited,
            anomaly: false,
            detail: None,
            inbox_id,
            delivery_count: 1,
            balance_after: Some(100),
        }
    }

    #[test]
    fn only_the_identical_notification_is_a_known_repeat() {
        let settled = Settled::new(10);
        let n = paid("n1", "O1", "T1", 100);
        settled.insert(Fingerprint::of(&n).unwrap(), &credited(7));

        let again = settled.repeat(&Fingerprint::of(&n).unwrap()).unwrap();
        assert_eq!(again.outcome, Outcome::AlreadyPaid);
        assert_eq!((again.inbox_id, again.delivery_count), (7, 2));
        assert_eq!(
            settled
                .repeat(&Fingerprint::of(&n).unwrap())
                .unwrap()
                .delivery_count,
            3
        );

        for other in [
            paid("n2", "O1", "T1", 100),
            paid("n1", "O2", "T1", 100),
            paid("n1", "O1", "T2", 100),
            paid("n1", "O1", "T1", 101),
        ] {
            assert!(
                settled.repeat(&Fingerprint::of(&other).unwrap()).is_none(),
                "{other:?}"
            );
        }
        let mut dollars = n.clone();
        dollars.currency = Some(Currency::parse("USD").unwrap());
        assert!(settled
            .repeat(&Fingerprint::of(&dollars).unwrap())
            .is_none());
    }

    #[test]
    fn only_plain_payments_of_a_named_order_have_a_fingerprint() {
        let n = paid("n1", "O1", "T1", 100);
        assert!(Fingerprint::of(&n).is_some());
        let mut closed = n.clone();
        closed.kind = NotificationKind::Closed;
        assert!(Fingerprint::of(&closed).is_none());
        let mut foreign = n.clone();
        foreign.merchant_mismatch = Some("another merchant".to_owned());
        assert!(Fingerprint::of(&foreign).is_none());
        let mut tradeless = n.clone();
        tradeless.provider_trade_no = None;
        assert!(Fingerprint::of(&tradeless).is_none());
        let mut nameless = n;
        nameless.order_no = None;
        assert!(Fingerprint::of(&nameless).is_none());
    }

    #[test]
    fn a_booked_refund_s_repeat_is_a_repeat_and_a_new_total_is_not() {
        let settled = Settled::new(10);
        let up_to = |id: &str, total: i64| {
            let mut n = paid(id, "O1", "T1", 100);
            n.amount = None;
            n.kind = NotificationKind::Refund(Refund::UpTo {
                total: AmountMinor::new(total).unwrap(),
                refund_id: None,
            });
            n
        };
        let first = up_to("r1", 30);
        let mut refunded = credited(8);
        refunded.outcome = Outcome::Refunded;
        settled.insert(Fingerprint::of(&first).unwrap(), &refunded);

        let again = settled.repeat(&Fingerprint::of(&first).unwrap()).unwrap();
        assert_eq!(again.outcome, Outcome::AlreadyBooked);
        assert_eq!((again.inbox_id, again.delivery_count), (8, 2));
        // A new cumulative total, even under the same notification id, goes to the database.
        assert!(settled
            .repeat(&Fingerprint::of(&up_to("r1", 50)).unwrap())
            .is_none());
        assert!(settled
            .repeat(&Fingerprint::of(&up_to("r2", 30)).unwrap())
            .is_none());
        let mut chargeback = first.clone();
        chargeback.kind = NotificationKind::Chargeback(Dispute {
            dispute_id: "dp_1".to_owned(),
            amount: AmountMinor::new(30).unwrap(),
        });
        assert!(settled
            .repeat(&Fingerprint::of(&chargeback).unwrap())
            .is_none());

        // What has not settled is never remembered: its next delivery must meet the database.
        let early = up_to("r3", 40);
        let mut not_yet = credited(9);
        not_yet.outcome = Outcome::NotYet;
        settled.insert(Fingerprint::of(&early).unwrap(), &not_yet);
        assert!(settled.repeat(&Fingerprint::of(&early).unwrap()).is_none());
        let mut failed = first;
        failed.notification_id = "r4".to_owned();
        failed.kind = NotificationKind::RefundFailed("ABNORMAL".to_owned());
        assert!(Fingerprint::of(&failed).is_none());
    }

    #[test]
    fn memory_is_two_generations_at_most() {
        let settled = Settled::new(3);
        let fingerprints: Vec<Fingerprint> = (0..7)
            .map(|i| Fingerprint::of(&paid(&format!("n{i}"), "O1", "T1", 100)).unwrap())
            .collect();
        for (i, f) in fingerprints.iter().enumerate() {
            settled.insert(*f, &credited(i as i64));
        }
        {
            let generations = settled.generations.lock().unwrap();
            assert!(generations.0.len() <= 3 && generations.1.len() <= 3);
        }
        // The newest are remembered; the oldest are forgotten and take the writer's path again.
        assert!(settled.repeat(&fingerprints[6]).is_some());
        assert!(settled.repeat(&fingerprints[3]).is_some());
        assert!(settled.repeat(&fingerprints[0]).is_none());
    }
}
