//! Asking the providers about an order (补单), against the provider simulator: what each answer
//! becomes, that payhook's requests are signed so that the provider accepts them, and that no
//! hostile answer ever reads as a payment.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::Utc;
use payhook::books::orders::{Order, OrderStatus};
use payhook::domain::ids::{ChannelName, OrderNo, UserId};
use payhook::domain::money::{AmountMinor, Currency};
use payhook::domain::notification::{Notification, NotificationKind};
use payhook::recovery::ask::{AskError, Closing, Queried, ASK_TIMEOUT};

use crate::common::simulator::{channel_name, Mode, Provider, Simulator, TradeState};

const PROVIDERS: [Provider; 3] = [Provider::Alipay, Provider::WechatPay, Provider::Stripe];
const SIGNING: [Provider; 2] = [Provider::Alipay, Provider::WechatPay];

fn block<F: Future>(future: F) -> F::Output {
    actix_web::rt::System::new().block_on(future)
}

/// A pending order of `amount_minor` on `provider`'s simulator channel, made just now.
fn order(provider: Provider, order_no: &str, amount_minor: i64) -> Order {
    Order {
        order_no: OrderNo::parse(order_no).unwrap(),
        user_id: UserId::parse("u1").unwrap(),
        channel: ChannelName::parse(channel_name(provider)).unwrap(),
        amount: AmountMinor::new(amount_minor).unwrap(),
        currency: currency(provider),
        status: OrderStatus::Pending,
        provider_trade_no: None,
        version: 0,
        created_at: Utc::now().naive_utc(),
        paid_at: None,
        closed_at: None,
        refunded: AmountMinor::ZERO,
        disputed: AmountMinor::ZERO,
    }
}

fn currency(provider: Provider) -> Currency {
    match provider {
        Provider::Stripe => Currency::Usd,
        _ => Currency::Cny,
    }
}

/// An order number of the provider's own, unique in the test.
fn order_no(provider: Provider, n: u32) -> String {
    let prefix = match provider {
        Provider::Alipay => "A",
        Provider::WechatPay => "W",
        Provider::Stripe => "S",
    };
    format!("{prefix}2026112200000{n}")
}

/// The provider takes `amount_minor` for `order_no` as trade `trade_no` (Stripe: a paid
/// Checkout Session whose payment intent is `trade_no`, in an event it delivered).
fn pay(sim: &Simulator, provider: Provider, order_no: &str, amount_minor: i64, trade_no: &str) {
    match provider {
        Provider::Stripe => {
            sim.stripe_paid(order_no, amount_minor, trade_no, true);
        }
        _ => sim.set_trade(order_no, TradeState::Paid, amount_minor, trade_no),
    }
}

fn said(result: Result<Queried, AskError>, what: &str) -> Notification {
    match result {
        Ok(Queried::Said {
            notification,
            evidence,
        }) => {
            assert!(!evidence.body.is_empty(), "{what}: no evidence");
            notification
        }
        other => panic!("{what}: expected an answer, got {other:?}"),
    }
}

fn invalid_reason(result: Result<Queried, AskError>, what: &str) -> String {
    match result {
        Err(AskError::Invalid { reason, evidence }) => {
            assert!(!evidence.body.is_empty(), "{what}: no evidence kept");
            reason
        }
        other => panic!("{what}: expected an invalid answer, got {other:?}"),
    }
}

#[test]
fn a_paid_order_is_said_paid_with_the_providers_trade_amount_and_currency() {
    let sim = Simulator::start();
    for provider in PROVIDERS {
        let no = order_no(provider, 1);
        let trade = format!("T{no}");
        pay(&sim, provider, &no, 1000, &trade);
        let asker = sim.asker(provider);
        let n = said(block(asker.query(&order(provider, &no, 1000))), &no);
        assert_eq!(n.kind, NotificationKind::Paid, "{provider:?}");
        assert_eq!(n.order_no.as_ref().map(OrderNo::as_str), Some(no.as_str()));
        assert_eq!(n.provider_trade_no.as_deref(), Some(trade.as_str()));
        assert_eq!(n.amount, Some(AmountMinor::new(1000).unwrap()));
        assert_eq!(n.currency, Some(currency(provider)));
        assert_eq!(n.channel.as_str(), channel_name(provider));
        assert_eq!(n.merchant_mismatch, None, "{provider:?}");
        let expected_id = match provider {
            Provider::Alipay => format!("query:{trade}:TRADE_SUCCESS"),
            Provider::WechatPay => format!("query:{trade}:SUCCESS"),
            Provider::Stripe => "evt_sim000000".to_owned(),
        };
        assert_eq!(n.notification_id, expected_id);
        // Asking again hears the same notification.
        let again = said(block(asker.query(&order(provider, &no, 1000))), &no);
        assert_eq!(again.notification_id, n.notification_id);
    }
    let seen = sim.seen();
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|s| s.verified), "{seen:#?}");
}

#[test]
fn the_wechat_pay_answer_is_kept_with_the_headers_its_signature_is_in() {
    let sim = Simulator::start();
    let no = order_no(Provider::WechatPay, 1);
    sim.set_trade(&no, TradeState::Paid, 500, "4200000001");
    let result = block(
        sim.asker(Provider::WechatPay)
            .query(&order(Provider::WechatPay, &no, 500)),
    );
    let Ok(Queried::Said { evidence, .. }) = result else {
        panic!("{result:?}");
    };
    let headers: serde_json::Value = serde_json::from_str(&evidence.headers_json).unwrap();
    for name in [
        "Wechatpay-Timestamp",
        "Wechatpay-Nonce",
        "Wechatpay-Signature",
        "Wechatpay-Serial",
    ] {
        assert!(headers[name].is_string(), "{name} missing from {headers}");
    }
    let body: serde_json::Value = serde_json::from_slice(&evidence.body).unwrap();
    assert_eq!(body["trade_state"], "SUCCESS");
}

#[test]
fn an_order_the_provider_has_no_payment_for_is_not_paid() {
    let sim = Simulator::start();
    for provider in PROVIDERS {
        let unknown = order(provider, &order_no(provider, 1), 1000);
        let result = block(sim.asker(provider).query(&unknown));
        assert!(
            matches!(result, Ok(Queried::NotPaid)),
            "{provider:?}: {result:?}"
        );
    }
    for provider in SIGNING {
        let no = order_no(provider, 2);
        sim.set_trade(&no, TradeState::Waiting, 1000, "");
        let result = block(sim.asker(provider).query(&order(provider, &no, 1000)));
        assert!(
            matches!(result, Ok(Queried::NotPaid)),
            "{provider:?}: {result:?}"
        );
    }
    // Stripe: other orders' payments, and this order's session completed unpaid, pay nothing.
    let no = order_no(Provider::Stripe, 2);
    sim.stripe_paid(&order_no(Provider::Stripe, 3), 1000, "pi_other", true);
    let unpaid = serde_json::json!({ "id": "cs_unpaid", "object": "checkout.session",
        "client_reference_id": no, "amount_total": 1000, "currency": "usd",
        "payment_status": "unpaid", "payment_intent": "pi_unpaid" });
    sim.stripe_event("checkout.session.completed", unpaid, true);
    let result = block(
        sim.asker(Provider::Stripe)
            .query(&order(Provider::Stripe, &no, 1000)),
    );
    assert!(matches!(result, Ok(Queried::NotPaid)), "{result:?}");
    assert!(sim.seen().iter().all(|s| s.verified));
}

#[test]
fn an_order_closed_at_the_provider_is_said_closed() {
    let sim = Simulator::start();
    for provider in SIGNING {
        let no = order_no(provider, 1);
        sim.set_trade(&no, TradeState::Closed, 1000, &format!("T{no}"));
        let n = said(
            block(sim.asker(provider).query(&order(provider, &no, 1000))),
            &no,
        );
        assert_eq!(n.kind, NotificationKind::Closed, "{provider:?}");
    }
}

#[test]
fn closing_is_signed_and_the_provider_closes_the_trade() {
    let sim = Simulator::start();
    for provider in SIGNING {
        let asker = sim.asker(provider);
        let waiting = order_no(provider, 1);
        sim.set_trade(&waiting, TradeState::Waiting, 1000, &format!("T{waiting}"));
        let closing = block(asker.close(&order(provider, &waiting, 1000)));
        assert!(
            matches!(closing, Ok(Closing::Closed)),
            "{provider:?}: {closing:?}"
        );
        assert_eq!(sim.trade_state(&waiting), Some(TradeState::Closed));
        assert!(sim.closed().contains(&(provider, waiting.clone())));
        let last = sim.seen().pop().unwrap();
        assert!(last.verified, "{last:?}");
        match provider {
            Provider::Alipay => assert_eq!(last.call, "alipay.trade.close"),
            _ => assert!(
                last.method == "POST" && last.path.ends_with("/close"),
                "{last:?}"
            ),
        }
        // Closing again, or an order the provider never saw, leaves nothing to pay.
        let again = block(asker.close(&order(provider, &waiting, 1000)));
        assert!(
            matches!(again, Ok(Closing::Closed)),
            "{provider:?}: {again:?}"
        );
        let unknown = block(asker.close(&order(provider, &order_no(provider, 2), 1000)));
        assert!(
            matches!(unknown, Ok(Closing::Closed)),
            "{provider:?}: {unknown:?}"
        );

        let paid = order_no(provider, 3);
        sim.set_trade(&paid, TradeState::Paid, 1000, &format!("T{paid}"));
        let refused = block(asker.close(&order(provider, &paid, 1000)));
        assert!(
            matches!(refused, Ok(Closing::AlreadyPaid)),
            "{provider:?}: {refused:?}"
        );
        assert_eq!(sim.trade_state(&paid), Some(TradeState::Paid));
    }
    let requests = sim.seen().len();
    let stripe = block(
        sim.asker(Provider::Stripe)
            .close(&order(Provider::Stripe, "S1", 1000)),
    );
    assert!(matches!(stripe, Ok(Closing::NotSupported)), "{stripe:?}");
    assert_eq!(sim.seen().len(), requests, "Stripe is not asked to close");
}

#[test]
fn an_answer_with_a_bad_signature_is_invalid_and_never_a_payment() {
    let sim = Simulator::start();
    for provider in SIGNING {
        sim.set_mode(provider, Mode::BadSignature);
        let no = order_no(provider, 1);
        sim.set_trade(&no, TradeState::Paid, 1000, &format!("T{no}"));
        let asker = sim.asker(provider);
        let reason = invalid_reason(block(asker.query(&order(provider, &no, 1000))), &no);
        assert!(reason.contains("verify"), "{provider:?}: {reason}");
        // Nor a "not paid" or a "closed" that no one signed.
        let unknown = order(provider, &order_no(provider, 2), 1000);
        invalid_reason(block(asker.query(&unknown)), "unknown order");
        let closing = block(asker.close(&unknown));
        assert!(
            matches!(closing, Err(AskError::Invalid { .. })),
            "{provider:?}: {closing:?}"
        );
    }
}

#[test]
fn an_authentic_answer_about_another_order_is_invalid() {
    let sim = Simulator::start();
    for provider in SIGNING {
        sim.set_mode(provider, Mode::AnotherOrder);
        let paid = order_no(provider, 1);
        sim.set_trade(&paid, TradeState::Paid, 1000, &format!("T{paid}"));
        let waiting = order_no(provider, 2);
        sim.set_trade(&waiting, TradeState::Waiting, 1000, "");
        for no in [paid, waiting] {
            let reason = invalid_reason(
                block(sim.asker(provider).query(&order(provider, &no, 1000))),
                &no,
            );
            assert!(reason.contains("another order"), "{provider:?}: {reason}");
        }
    }
}

#[test]
fn an_answer_that_is_not_json_is_invalid() {
    let sim = Simulator::start();
    for provider in PROVIDERS {
        sim.set_mode(provider, Mode::NotJson);
        let no = order_no(provider, 1);
        pay(&sim, provider, &no, 1000, &format!("T{no}"));
        invalid_reason(
            block(sim.asker(provider).query(&order(provider, &no, 1000))),
            &no,
        );
    }
}

#[test]
fn a_provider_failing_with_a_server_error_is_unreachable() {
    let sim = Simulator::start();
    for provider in PROVIDERS {
        sim.set_mode(provider, Mode::ServerError);
        let no = order_no(provider, 1);
        pay(&sim, provider, &no, 1000, &format!("T{no}"));
        let asker = sim.asker(provider);
        let result = block(asker.query(&order(provider, &no, 1000)));
        assert!(
            matches!(&result, Err(AskError::Unreachable(why)) if why.contains("500")),
            "{result:?}"
        );
        if provider != Provider::Stripe {
            let closing = block(asker.close(&order(provider, &no, 1000)));
            assert!(
                matches!(closing, Err(AskError::Unreachable(_))),
                "{closing:?}"
            );
        }
    }
}

#[test]
fn a_provider_that_hangs_is_unreachable_within_the_timeout() {
    let sim = std::sync::Arc::new(Simulator::start());
    let waits: Vec<_> = PROVIDERS
        .into_iter()
        .map(|provider| {
            let sim = sim.clone();
            std::thread::spawn(move || {
                sim.set_mode(provider, Mode::Hang);
                let no = order_no(provider, 1);
                pay(&sim, provider, &no, 1000, &format!("T{no}"));
                let asker = sim.asker(provider);
                let started = Instant::now();
                let result = block(asker.query(&order(provider, &no, 1000)));
                (provider, started.elapsed(), result)
            })
        })
        .collect();
    for wait in waits {
        let (provider, took, result) = wait.join().unwrap();
        assert!(
            matches!(&result, Err(AskError::Unreachable(_))),
            "{provider:?}: {result:?}"
        );
        assert!(
            took >= ASK_TIMEOUT - Duration::from_millis(500),
            "{provider:?}: {took:?}"
        );
        assert!(
            took < ASK_TIMEOUT + Duration::from_secs(3),
            "{provider:?}: {took:?}"
        );
    }
}

#[test]
fn a_paid_amount_that_differs_from_the_order_is_said_with_the_providers_amount() {
    let sim = Simulator::start();
    for provider in PROVIDERS {
        let no = order_no(provider, 1);
        pay(&sim, provider, &no, 999, &format!("T{no}"));
        let n = said(
            block(sim.asker(provider).query(&order(provider, &no, 1000))),
            &no,
        );
        // The crediting transaction refuses it as a mismatch; the answer keeps what was paid.
        assert_eq!(n.kind, NotificationKind::Paid);
        assert_eq!(
            n.amount,
            Some(AmountMinor::new(999).unwrap()),
            "{provider:?}"
        );
    }
}

#[test]
fn the_provider_refuses_a_request_signed_with_another_key() {
    let sim = Simulator::start();
    for (provider, wrong) in [
        (Provider::Alipay, "wechatpay-merchant-test-private-key.pem"),
        (Provider::WechatPay, "alipay-app-test-private-key.pem"),
        (Provider::Stripe, "sk_test_notTheSimulatorsKey"),
    ] {
        let no = order_no(provider, 1);
        pay(&sim, provider, &no, 1000, &format!("T{no}"));
        let result = block(
            sim.asker_with(provider, wrong)
                .query(&order(provider, &no, 1000)),
        );
        let reason = match &result {
            Err(AskError::Invalid { reason, .. }) => reason.clone(),
            other => panic!("{provider:?}: {other:?}"),
        };
        let last = sim.seen().pop().unwrap();
        assert!(
            !last.verified,
            "{provider:?}: the simulator took a wrong signature"
        );
        let hint = match provider {
            Provider::Alipay => "isv.invalid-signature",
            Provider::WechatPay => "merchant_private_key",
            Provider::Stripe => "api_key",
        };
        assert!(reason.contains(hint), "{provider:?}: {reason}");
        assert!(!reason.contains("notTheSimulatorsKey"), "{reason}");
        block(sim.asker(provider).query(&order(provider, &no, 1000))).unwrap();
        assert!(
            sim.seen().pop().unwrap().verified,
            "{provider:?}: the right key"
        );
    }
}

#[test]
fn stripe_undelivered_events_come_page_by_page_oldest_first_with_the_newest_as_cursor() {
    let sim = Simulator::start();
    let since = Utc::now() - chrono::Duration::minutes(5);
    let mut undelivered = Vec::new();
    for n in 0..5 {
        sim.stripe_paid(
            &format!("S1{n}"),
            100 + n,
            &format!("pi_delivered{n}"),
            true,
        );
        undelivered.push(sim.stripe_paid(&format!("S2{n}"), 200 + n, &format!("pi_{n}"), false));
    }
    let refund = serde_json::json!({ "id": "ch_1", "object": "charge", "amount": 200,
        "amount_refunded": 50, "currency": "usd", "payment_intent": "pi_0", "metadata": {} });
    undelivered.push(sim.stripe_event("charge.refunded", refund, false));
    sim.stripe_event(
        "customer.created",
        serde_json::json!({ "id": "cus_1" }),
        false,
    );
    let asker = sim.asker(Provider::Stripe).with_page_size(2);
    let before = sim.seen().len();

    let (events, cursor) = block(asker.undelivered(None, since)).unwrap();
    let ids: Vec<String> = events.iter().map(|q| event_id(q).to_owned()).collect();
    assert_eq!(ids, undelivered);
    assert_eq!(cursor.as_deref(), undelivered.last().map(String::as_str));
    let Queried::Said { notification, .. } = &events[5] else {
        unreachable!()
    };
    assert!(notification.kind.is_money_back(), "{notification:?}");
    let pages = sim.seen()[before..].to_vec();
    assert_eq!(pages.len(), 3, "six events two by two: {pages:#?}");
    assert!(pages
        .iter()
        .all(|p| p.path.contains("delivery_success=false")));
    assert!(pages[1].path.contains("starting_after="), "{:?}", pages[1]);

    // Only what came after the cursor, paged towards the newest.
    let later: Vec<String> = (5..8)
        .map(|n| sim.stripe_paid(&format!("S3{n}"), 300, &format!("pi_{n}"), false))
        .collect();
    let (events, next) = block(asker.undelivered(cursor.as_deref(), since)).unwrap();
    let ids: Vec<String> = events.iter().map(|q| event_id(q).to_owned()).collect();
    assert_eq!(ids, later);
    assert_eq!(next.as_deref(), later.last().map(String::as_str));
    assert!(sim.seen().iter().any(|s| s.path.contains("ending_before=")));

    let (events, same) = block(asker.undelivered(next.as_deref(), since)).unwrap();
    assert!(events.is_empty());
    assert_eq!(same, next);
    // The other providers have nothing undelivered to list.
    for provider in SIGNING {
        let nothing = block(sim.asker(provider).undelivered(Some("c"), since)).unwrap();
        assert!(nothing.0.is_empty() && nothing.1.as_deref() == Some("c"));
    }
}

fn event_id(queried: &Queried) -> &str {
    match queried {
        Queried::Said { notification, .. } => &notification.notification_id,
        Queried::NotPaid => panic!("an event said nothing"),
    }
}

#[test]
fn stripe_finds_the_payment_of_an_order_pages_deep() {
    let sim = Simulator::start();
    let no = order_no(Provider::Stripe, 1);
    sim.stripe_paid(&no, 700, "pi_ours", true);
    for n in 0..5 {
        sim.stripe_paid(&format!("S9{n}"), 100, &format!("pi_{n}"), true);
    }
    let asker = sim.asker(Provider::Stripe).with_page_size(2);
    let n = said(block(asker.query(&order(Provider::Stripe, &no, 700))), &no);
    assert_eq!(n.provider_trade_no.as_deref(), Some("pi_ours"));
    assert_eq!(sim.seen().len(), 3, "the oldest event is on the third page");
}

#[test]
fn a_bad_query_key_stops_serve_naming_the_channel_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("payhook.toml");
    let alipay_key = crate::common::simulator::vector_json("alipay.json")["alipay_public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(
        &config,
        format!(
            "bind = \"127.0.0.1:0\"\n[channels.ali]\nprovider = \"alipay\"\napp_id = \"1\"\n\
             alipay_public_key = \"{alipay_key}\"\napp_private_key = \"MIIEs3cr3tAppKey\"\n"
        ),
    )
    .unwrap();
    let database = format!("sqlite://{}", dir.path().join("p.db").display());
    let mut child = crate::common::payhook()
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--database-url", &database])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("payhook serve started with a bad app_private_key");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("channel ali: app_private_key"), "{stderr}");
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}
