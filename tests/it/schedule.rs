//! The recovery schedule on every backend: due orders are claimed with a lease, instances
//! claiming at once never share an order, a crashed instance's lease runs out, and asks back off.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{create_order, exec, now, pay_order, race, TestDb};
use payhook::books::orders;
use payhook::books::schedule::{self, Schedule, LEASE};
use payhook::domain::ids::ChannelName;

fn schedule() -> Schedule {
    Schedule {
        first_query_after: Duration::from_secs(60),
        max_interval: Duration::from_secs(600),
        expire_after: Duration::from_secs(7200),
    }
}

fn alipay() -> ChannelName {
    ChannelName::parse("alipay").unwrap()
}

fn due_orders_are_claimed_once_and_a_lease_that_runs_out_frees_them(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let pending: Vec<String> = (0..4)
        .map(|_| create_order(&mut conn, "s1", "alipay", "1.00", "CNY", None).to_string())
        .collect();
    let paid = create_order(&mut conn, "s1", "alipay", "1.00", "CNY", None);
    pay_order(&mut conn, "alipay", paid.as_str(), "T-s1", 100, "CNY");
    let closed = create_order(&mut conn, "s1", "alipay", "1.00", "CNY", None);
    assert!(orders::close_pending(&mut conn, &closed, None, now()).unwrap());
    let elsewhere = create_order(&mut conn, "s1", "wxpay", "1.00", "CNY", None);
    let channel = alipay();
    let channels = [&channel];
    let s = schedule();
    let start = now();

    // Not due before first_query_after.
    assert!(schedule::claim(&mut conn, &channels, &s, start, 10)
        .unwrap()
        .is_empty());
    let at = start + Duration::from_secs(61);
    let claimed = schedule::claim(&mut conn, &channels, &s, at, 10).unwrap();
    let mut numbers: Vec<String> = claimed
        .iter()
        .map(|d| d.order.order_no.to_string())
        .collect();
    numbers.sort();
    let mut expected = pending.clone();
    expected.sort();
    assert_eq!(numbers, expected, "only the pending orders of the channel");
    assert!(!numbers.contains(&elsewhere.to_string()));
    assert!(claimed.iter().all(|d| d.attempts == 0 && !d.expired));

    // Claimed: not due again while the lease runs...
    assert!(
        schedule::claim(&mut conn, &channels, &s, at + Duration::from_secs(30), 10)
            .unwrap()
            .is_empty()
    );
    // ...and due again once it has run out, as when the instance that claimed them crashed.
    let after_lease = at + LEASE + Duration::from_secs(1);
    let again = schedule::claim(&mut conn, &channels, &s, after_lease, 10).unwrap();
    assert_eq!(again.len(), 4);

    // An ask that found nothing backs off: due after 120 s, then 240 s.
    let first = &again[0];
    let next = schedule::reschedule(&mut conn, first, &s, after_lease).unwrap();
    assert_eq!(next, after_lease + Duration::from_secs(120));
    let later = schedule::claim(&mut conn, &channels, &s, next, 10).unwrap();
    let first_again = later
        .iter()
        .find(|d| d.order.order_no == first.order.order_no)
        .expect("due again after its interval");
    assert_eq!(first_again.attempts, 1);
    let next = schedule::reschedule(&mut conn, first_again, &s, next).unwrap();
    assert_eq!(
        next,
        after_lease + Duration::from_secs(120) + Duration::from_secs(240)
    );

    // An order past its time is claimed as expired: its last ask.
    let expired_at = start + Duration::from_secs(7300);
    let last = schedule::claim(&mut conn, &channels, &s, expired_at, 10).unwrap();
    assert_eq!(last.len(), 4);
    assert!(last.iter().all(|d| d.expired));
}

fn instances_claiming_at_once_never_share_an_order(db: TestDb) {
    let pool = db.pool(8);
    let mut conn = pool.get().unwrap();
    let created: HashSet<String> = (0..40)
        .map(|_| create_order(&mut conn, "s2", "alipay", "1.00", "CNY", None).to_string())
        .collect();
    drop(conn);
    let at = now() + Duration::from_secs(61);
    let p = pool.clone();
    // Six claimers at once, each taking up to 4 orders a claim until nothing is left.
    let claims = race(6, move |_| {
        let channel = alipay();
        let mut mine = Vec::new();
        let mut conn = p.get().unwrap();
        loop {
            let claimed = schedule::claim(&mut conn, &[&channel], &schedule(), at, 4).unwrap();
            if claimed.is_empty() {
                break mine;
            }
            mine.extend(claimed.into_iter().map(|d| d.order.order_no.to_string()));
        }
    });
    let all: Vec<&String> = claims.iter().flatten().collect();
    let distinct: HashSet<String> = all.iter().map(|s| (*s).clone()).collect();
    assert_eq!(all.len(), 40, "an order was claimed twice: {claims:?}");
    assert_eq!(distinct, created);
}

fn a_channel_s_sweep_keeps_its_cursor(db: TestDb) {
    let pool = db.pool(2);
    let mut conn = pool.get().unwrap();
    let channel = ChannelName::parse("stripe").unwrap();
    assert_eq!(schedule::cursor(&mut conn, &channel).unwrap(), None);
    schedule::save_cursor(&mut conn, &channel, "evt_1", now()).unwrap();
    schedule::save_cursor(&mut conn, &channel, "evt_2", now()).unwrap();
    assert_eq!(
        schedule::cursor(&mut conn, &channel)
            .unwrap()
            .map(|(id, _)| id)
            .as_deref(),
        Some("evt_2")
    );
    exec(&pool, "DELETE FROM provider_cursors");
    assert_eq!(schedule::cursor(&mut conn, &channel).unwrap(), None);
}

on_every_backend!(
    due_orders_are_claimed_once_and_a_lease_that_runs_out_frees_them,
    instances_claiming_at_once_never_share_an_order,
    a_channel_s_sweep_keeps_its_cursor,
);
