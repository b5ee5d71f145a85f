//! What this instance has seen committed: paid notifications whose next deliveries are answered
//! without the database. A paid order never leaves `paid`, so that fact stays true.

use std::collections::HashMap;
use std::sync::Mutex;

use super::apply::{Applied, Claim};
use crate::domain::notification::Notification;
use crate::domain::outcome::Outcome;

/// How many settled notifications one generation of [`Settled`] remembers.
pub const SETTLED_CAPACITY: usize = 50_000;

/// What identifies a paid notification and everything checked before it was acked: channel,
/// provider id, order, trade, amount and currency, hashed (SHA-256, first 128 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// `None` for notifications that claim no payment (see [`Claim`]): only a payment's repeats
    /// are answered from memory.
    pub fn of(n: &Notification) -> Option<Fingerprint> {
        let claim = Claim::of(n)?;
        let amount = claim.amount.get().to_string();
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        for field in [
            claim.channel.as_str(),
            &n.notification_id,
            claim.order_no.as_str(),
            claim.trade_no,
            &amount,
            claim.currency.code(),
        ] {
            hash.update(&(field.len() as u64).to_le_bytes());
            hash.update(field.as_bytes());
        }
        let digest = hash.finish();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        Some(Fingerprint(bytes))
    }
}

/// What this instance knows of a settled notification's inbox row.
#[derive(Debug, Clone, Copy)]
struct Known {
    inbox_id: i64,
    deliveries: i64,
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
            outcome: Outcome::AlreadyPaid,
            detail: None,
            inbox_id: known.inbox_id,
            delivery_count: known.deliveries,
            balance_after: None,
        })
    }

    pub fn insert(&self, fingerprint: Fingerprint, applied: &Applied) {
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
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{ChannelName, OrderNo};
    use crate::domain::money::{AmountMinor, Currency};
    use crate::domain::notification::NotificationKind;

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
        let mut refund = n.clone();
        refund.kind = NotificationKind::Refund;
        assert!(Fingerprint::of(&refund).is_none());
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
