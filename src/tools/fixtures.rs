//! `payhook fixtures`: creates pending orders on a configured channel and writes the signed
//! notifications that pay them, and optionally refund them, as a fixture file for `payhook
//! replay`.
//!
//! Orders take the same path as `payhook order create`: validated against the channel's terms,
//! then [`orders::create`] after the migrations are applied. The notifications are signed as the
//! provider signs them ([`Signer`]): HMAC providers with the channel's first
//! configured secret, RSA providers (Alipay, WeChat Pay) with `--private-key`, since the channel
//! holds only the public half. The first notification, and its first refund, are verified with
//! the channel's own adapter before any order is created, so a key that does not match fails at
//! once instead of leaving orders that nothing can pay.
//!
//! Each `--refund AMOUNT` adds one refund notification per order, written after the order's
//! payment and the refunds before it, in the order given. Refunds that add up to more than the
//! order's amount are refused before anything is made.
//!
//! Notifications are signed at the current time. WeChat Pay, Stripe and Standard Webhooks
//! channels refuse them once they are older than `timestamp_tolerance_secs` (300 s by default);
//! Alipay's carry no time limit.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};

use super::replay::{Expect, Fixture};
use crate::books::orders::{self, Created, NewOrder, OrderRequest};
use crate::config::ChannelConfig;
use crate::domain::ids::ChannelName;
use crate::domain::money::{AmountMinor, Currency};
use crate::domain::notification::{Notification, NotificationKind, Refund};
use crate::notify::sign::{Payment, RefundSpec, Signed};
use crate::notify::signer::Signer;
use crate::notify::{self, ProviderName, RawRequest};

/// How many fixture orders share one transaction.
const ORDERS_PER_TRANSACTION: usize = 1000;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
The notifications are signed now: WeChat Pay, Stripe and Standard Webhooks channels accept them \
for timestamp_tolerance_secs (default 300 s), so replay them within five minutes. Alipay's carry \
no time limit.

Each --refund adds one refund notification per order, after its payment, in the order given: \
Alipay and Stripe state the refunds so far (refund_fee, amount_refunded), WeChat Pay and \
Standard Webhooks each refund's own amount. A refund replayed before its payment is answered \
retry.

Example, with the test-only demo configuration:
  payhook fixtures --config config/demo.toml --channel alipay --count 100 \\
      --private-key config/demo-keys/alipay-test-private-key.pem --out alipay.ndjson
  payhook fixtures --config config/demo.toml --channel stripe --count 100 --amount 10.00 \\
      --refund 3.00 --refund 7.00 --out stripe-refunds.ndjson
  payhook replay --url http://127.0.0.1:8080 alipay.ndjson")]
pub struct Args {
    /// The config file that configures the channel, and the database.
    #[command(flatten)]
    pub db: crate::app::DbArgs,
    /// The configured channel the orders are paid through.
    #[arg(long, value_name = "NAME")]
    pub channel: String,
    /// How many orders (and payment notifications) to make.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,
    /// The user the orders credit; with --users above 1, the prefix of ID-1 ... ID-N.
    #[arg(long, value_name = "ID", default_value = "demo-user")]
    pub user_id: String,
    /// Spread the orders round-robin over this many users.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: u32,
    /// Each order's amount in the channel's currency.
    #[arg(long, default_value = "10.00")]
    pub amount: String,
    /// Refund this much of every order, in the channel's currency, after its payment; repeat it
    /// for several refunds, which together may not exceed --amount.
    #[arg(long = "refund", value_name = "AMOUNT")]
    pub refunds: Vec<String>,
    /// PEM private key (PKCS #8 or PKCS #1) that signs as Alipay or WeChat Pay: the pair of the
    /// public key the channel is configured with.
    #[arg(long, value_name = "PEM_FILE")]
    pub private_key: Option<PathBuf>,
    /// WeChat Pay: the Wechatpay-Serial to sign as (default: the channel's first public key id).
    #[arg(long, value_name = "ID")]
    pub serial: Option<String>,
    /// Write the fixtures to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

impl From<&NewOrder> for Payment {
    fn from(order: &NewOrder) -> Payment {
        Payment {
            order_no: order.order_no.clone(),
            amount: order.amount,
            currency: order.currency,
        }
    }
}

/// Verifies `signed` with the channel's own adapter, as the server would at `now`, and checks it
/// pays `payment`.
pub fn check(
    cfg: &ChannelConfig,
    channel: &ChannelName,
    payment: &Payment,
    signed: &Signed,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let n = verified(cfg, channel, signed, now)?;
    let pays = n.kind == NotificationKind::Paid
        && n.order_no.as_ref() == Some(&payment.order_no)
        && n.amount == Some(payment.amount)
        && n.currency == Some(payment.currency)
        && n.merchant_mismatch.is_none();
    if pays {
        Ok(())
    } else {
        Err(format!("it verifies but does not pay the order: {n:?}"))
    }
}

/// Verifies `signed` with the channel's own adapter, as the server would at `now`, and checks it
/// gives back `refund` of `payment`, which the trade `trade_no` paid: this refund's amount where
/// the provider states each refund, the total so far where it states that.
pub fn check_refund(
    cfg: &ChannelConfig,
    channel: &ChannelName,
    payment: &Payment,
    trade_no: &str,
    refund: &RefundSpec,
    signed: &Signed,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let n = verified(cfg, channel, signed, now)?;
    let states_the_refund = match &n.kind {
        NotificationKind::Refund(Refund::One { refund_id, amount }) => {
            *refund_id == refund.refund_id && *amount == refund.amount
        }
        NotificationKind::Refund(Refund::UpTo { total, .. }) => *total == refund.total,
        _ => false,
    };
    // An adapter may leave the order out when the trade names it (Stripe's Charge).
    let refunds = states_the_refund
        && n.order_no.as_ref().is_none_or(|o| *o == payment.order_no)
        && n.provider_trade_no.as_deref() == Some(trade_no)
        && n.amount.is_none_or(|a| a == payment.amount)
        && n.currency == Some(payment.currency)
        && n.merchant_mismatch.is_none();
    if refunds {
        Ok(())
    } else {
        Err(format!("it verifies but does not refund the order: {n:?}"))
    }
}

/// `signed` as the channel's adapter reads it at `now`, through the rules every notification obeys.
fn verified(
    cfg: &ChannelConfig,
    channel: &ChannelName,
    signed: &Signed,
    now: DateTime<Utc>,
) -> Result<Notification, String> {
    let provider = notify::from_config(cfg)?;
    let request = RawRequest {
        headers: &signed.headers,
        body: signed.body.as_bytes(),
    };
    notify::verify(provider.as_ref(), channel, &request, now).map_err(|e| e.to_string())
}

/// Each `--refund` amount with the total refunded once it is done, refused when an amount is not
/// positive or the refunds add up to more than `paid`.
fn refund_steps(
    refunds: &[String],
    paid: AmountMinor,
    currency: Currency,
) -> anyhow::Result<Vec<(AmountMinor, AmountMinor)>> {
    let mut total = AmountMinor::ZERO;
    let mut steps = Vec::with_capacity(refunds.len());
    for text in refunds {
        let amount =
            AmountMinor::parse(text, currency).map_err(|e| anyhow!("--refund {text}: {e}"))?;
        if amount == AmountMinor::ZERO {
            bail!("--refund {text}: a refund gives back more than nothing");
        }
        total = total
            .get()
            .checked_add(amount.get())
            .and_then(|sum| AmountMinor::new(sum).ok())
            .filter(|sum| sum.get() <= paid.get())
            .ok_or_else(|| {
                anyhow!(
                    "--refund {}: the refunds add up to more than the order's {} {currency}",
                    refunds.join(" + "),
                    paid.format(currency)
                )
            })?;
        steps.push((amount, total));
    }
    Ok(steps)
}

/// One fixture as a JSON line.
fn write_line(out: &mut dyn Write, fixture: &Fixture) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, fixture)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// The user of the `i`th order.
fn user_of(args: &Args, i: u32) -> String {
    if args.users == 1 {
        args.user_id.clone()
    } else {
        format!("{}-{}", args.user_id, i % args.users + 1)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = args.db.settings(None)?;
    let channel = ChannelName::parse(&args.channel)?;
    let Some(cfg) = settings.channels.get(&channel) else {
        let known: Vec<String> = settings.channels.keys().map(|c| c.to_string()).collect();
        bail!(
            "no channel named {channel} is configured (configured: {}); name the config with --config",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    };
    let private_key = args
        .private_key
        .as_ref()
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --private-key {}", path.display()))
        })
        .transpose()?;
    let signer = Signer::new(cfg, private_key.as_deref(), args.serial.as_deref())
        .map_err(|e| anyhow!("channel {channel}: {e}"))?;
    let signing = |e| anyhow!("channel {channel}: {e}");

    let currency = cfg.currency();
    let new_orders = (0..args.count)
        .map(|i| {
            let request = OrderRequest {
                order_no: None,
                user_id: user_of(&args, i),
                amount: args.amount.clone(),
                currency: currency.code().to_owned(),
                channel: channel.to_string(),
            };
            request
                .validate(|c| settings.channels.get(c).map(ChannelConfig::terms))
                .map_err(|e| anyhow!("order: {e}"))
        })
        .collect::<anyhow::Result<Vec<NewOrder>>>()?;
    let refunds = refund_steps(&args.refunds, new_orders[0].amount, currency)?;
    let refund_specs = || {
        refunds
            .iter()
            .map(|&(amount, total)| RefundSpec::new(amount, total))
    };

    // One notification, and its first refund, are verified before any order exists, so a wrong
    // key leaves nothing behind.
    let now = Utc::now();
    let first = Payment::from(&new_orders[0]);
    let probe = signer.paid(&first, now).map_err(signing)?;
    let mut refused = check(cfg, &channel, &first, &probe.signed, now).err();
    if let (None, Some(refund)) = (&refused, refund_specs().next()) {
        let signed = signer
            .refunded(&first, &probe.trade_no, &refund, now)
            .map_err(signing)?;
        refused = check_refund(
            cfg,
            &channel,
            &first,
            &probe.trade_no,
            &refund,
            &signed,
            now,
        )
        .err();
    }
    if let Some(e) = refused {
        let hint = match signer.provider() {
            ProviderName::Alipay | ProviderName::WechatPay => {
                " Is --private-key the pair of the channel's configured public key?"
            }
            _ => "",
        };
        bail!("channel {channel} would refuse these notifications: {e}.{hint}");
    }

    let pool = crate::app::open_migrated(&settings)?;
    let mut conn = pool.get()?;

    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut write = |name: String, signed: Signed| {
        let fixture = Fixture {
            name: Some(name),
            channel: channel.to_string(),
            provider: Some(signer.provider()),
            expect: Some(Expect::Ack),
            headers: signed.headers.into_iter().collect(),
            body: signed.body,
        };
        write_line(&mut out, &fixture)
    };
    // Orders are created a thousand per transaction, each before its notifications are written.
    for (i, new) in new_orders.iter().enumerate() {
        if i % ORDERS_PER_TRANSACTION == 0 {
            let chunk = &new_orders[i..new_orders.len().min(i + ORDERS_PER_TRANSACTION)];
            for created in orders::create_all(&mut conn, chunk, Utc::now().naive_utc())? {
                match created {
                    Created::New(_) => {}
                    Created::Existing(order) | Created::Conflict(order, _) => {
                        bail!("order number {} is taken", order.order_no)
                    }
                }
            }
        }
        let payment = Payment::from(new);
        let name = format!("{channel} #{} {}", i + 1, new.order_no);
        let paid = signer.paid(&payment, Utc::now()).map_err(signing)?;
        write(name.clone(), paid.signed)?;
        for (k, refund) in refund_specs().enumerate() {
            let signed = signer
                .refunded(&payment, &paid.trade_no, &refund, Utc::now())
                .map_err(signing)?;
            write(format!("{name} refund {}", k + 1), signed)?;
        }
    }
    out.flush()?;
    let users = if args.users == 1 {
        args.user_id.clone()
    } else {
        format!(
            "{} users {}-1 ... {}-{}",
            args.users, args.user_id, args.user_id, args.users
        )
    };
    let written_to = args
        .out
        .as_ref()
        .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
    let refunded = match refunds.last() {
        Some((_, total)) => format!(
            " and {} refund(s) of {} {currency} in all each",
            refunds.len(),
            total.format(currency)
        ),
        None => String::new(),
    };
    log::info!(
        "created {} pending order(s) of {} {currency} on channel {channel} for {users}; \
         wrote their signed payment notifications{refunded} to {written_to}",
        args.count,
        new_orders[0].amount.format(currency),
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::money::AmountMinor;

    fn demo() -> Settings {
        Settings::from_toml(include_str!("../../config/demo.toml")).expect("demo config")
    }

    fn demo_key(file: &str) -> String {
        let path = format!("{}/config/demo-keys/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn key_for(channel: &str) -> Option<String> {
        match channel {
            "alipay" => Some(demo_key("alipay-test-private-key.pem")),
            "wxpay" => Some(demo_key("wechatpay-test-private-key.pem")),
            _ => None,
        }
    }

    fn payment(cfg: &ChannelConfig) -> Payment {
        Payment {
            order_no: orders::new_order_no(),
            amount: AmountMinor::new(1234).unwrap(),
            currency: cfg.currency(),
        }
    }

    #[test]
    fn every_demo_channel_gets_notifications_that_verify_and_pay_the_order() {
        let settings = demo();
        let mut providers = Vec::new();
        for (channel, cfg) in &settings.channels {
            let key = key_for(channel.as_str());
            let signer = Signer::new(cfg, key.as_deref(), None).unwrap();
            providers.push(signer.provider());
            let payment = payment(cfg);
            let now = Utc::now();
            let first = signer.paid(&payment, now).unwrap();
            let second = signer.paid(&payment, now).unwrap();
            assert_ne!(first.trade_no, second.trade_no, "{channel}");
            let (first, second) = (first.signed, second.signed);
            check(cfg, channel, &payment, &first, now).unwrap_or_else(|e| panic!("{channel}: {e}"));
            check(cfg, channel, &payment, &second, now)
                .unwrap_or_else(|e| panic!("{channel}: {e}"));

            // Each notification is a new one: its own notification id and trade number.
            let adapter = notify::from_config(cfg).unwrap();
            let verify = |s: &Signed| {
                let request = RawRequest {
                    headers: &s.headers,
                    body: s.body.as_bytes(),
                };
                adapter.verify(channel, &request, now).unwrap()
            };
            let (a, b) = (verify(&first), verify(&second));
            assert_ne!(a.notification_id, b.notification_id, "{channel}");
            assert_ne!(a.provider_trade_no, b.provider_trade_no, "{channel}");
            assert!(a.provider_trade_no.is_some(), "{channel}");
        }
        providers.sort_by_key(|p| format!("{p:?}"));
        assert_eq!(
            providers,
            [
                ProviderName::Alipay,
                ProviderName::StandardWebhooks,
                ProviderName::Stripe,
                ProviderName::WechatPay
            ]
        );
    }

    #[test]
    fn every_demo_channel_signs_refunds_that_verify_and_state_what_goes_back() {
        let settings = demo();
        for (channel, cfg) in &settings.channels {
            let key = key_for(channel.as_str());
            let signer = Signer::new(cfg, key.as_deref(), None).unwrap();
            let payment = payment(cfg);
            let now = Utc::now();
            let paid = signer.paid(&payment, now).unwrap();
            let refunds = ["3.00".to_owned(), "9.34".to_owned()];
            let steps = refund_steps(&refunds, payment.amount, payment.currency).unwrap();
            for (amount, total) in steps {
                let refund = RefundSpec::new(amount, total);
                let signed = signer
                    .refunded(&payment, &paid.trade_no, &refund, now)
                    .unwrap();
                check_refund(
                    cfg,
                    channel,
                    &payment,
                    &paid.trade_no,
                    &refund,
                    &signed,
                    now,
                )
                .unwrap_or_else(|e| panic!("{channel}: {e}"));

                // Alipay and Stripe state the refunds so far, the others each refund.
                let n = verified(cfg, channel, &signed, now).unwrap();
                let expected = match signer.provider() {
                    ProviderName::Alipay => Refund::UpTo {
                        total,
                        refund_id: Some(refund.refund_id.clone()),
                    },
                    ProviderName::Stripe => Refund::UpTo {
                        total,
                        refund_id: Some(paid.trade_no.replacen("pi_", "ch_", 1)),
                    },
                    ProviderName::WechatPay | ProviderName::StandardWebhooks => Refund::One {
                        refund_id: refund.refund_id.clone(),
                        amount,
                    },
                };
                assert_eq!(n.kind, NotificationKind::Refund(expected), "{channel}");
                if signer.provider() == ProviderName::Alipay {
                    let status = match total == payment.amount {
                        true => "trade_status=TRADE_CLOSED",
                        false => "trade_status=TRADE_SUCCESS",
                    };
                    assert!(signed.body.contains(status), "{}", signed.body);
                }

                // A refund is no payment, and names the trade it was signed for.
                let error = check(cfg, channel, &payment, &signed, now).unwrap_err();
                assert!(error.contains("does not pay"), "{channel}: {error}");
                let other = check_refund(cfg, channel, &payment, "T0", &refund, &signed, now);
                assert!(other.is_err(), "{channel}");
            }
        }
    }

    #[test]
    fn refunds_must_each_give_something_back_and_together_no_more_than_was_paid() {
        let ten = AmountMinor::new(1000).unwrap();
        let steps = |refunds: &[&str]| {
            let refunds: Vec<String> = refunds.iter().map(|r| r.to_string()).collect();
            refund_steps(&refunds, ten, Currency::Cny)
        };
        let minor = |pairs: Vec<(AmountMinor, AmountMinor)>| -> Vec<(i64, i64)> {
            pairs.iter().map(|(a, t)| (a.get(), t.get())).collect()
        };
        assert_eq!(
            minor(steps(&["3.00", "7.00"]).unwrap()),
            [(300, 300), (700, 1000)]
        );
        assert!(steps(&[]).unwrap().is_empty());
        for (refunds, complaint) in [
            (
                &["3.00", "7.01"][..],
                "add up to more than the order's 10.00 CNY",
            ),
            (&["10.01"], "add up to more than"),
            (&["0.00"], "more than nothing"),
            (&["1.234"], "--refund 1.234"),
            (&["-1.00"], "--refund -1.00"),
            (&["ten"], "--refund ten"),
        ] {
            let error = steps(refunds).unwrap_err().to_string();
            assert!(error.contains(complaint), "{refunds:?}: {error}");
        }
    }

    #[test]
    fn notifications_signed_now_go_stale_after_the_channel_tolerance() {
        let settings = demo();
        for name in ["wxpay", "stripe", "gateway"] {
            let channel = ChannelName::parse(name).unwrap();
            let cfg = &settings.channels[&channel];
            let key = key_for(name);
            let signer = Signer::new(cfg, key.as_deref(), None).unwrap();
            let payment = payment(cfg);
            let now = Utc::now();
            let signed = signer.paid(&payment, now).unwrap().signed;
            let late = now + chrono::Duration::seconds(301);
            assert!(check(
                cfg,
                &channel,
                &payment,
                &signed,
                now + chrono::Duration::seconds(299)
            )
            .is_ok());
            let error = check(cfg, &channel, &payment, &signed, late).unwrap_err();
            assert!(error.contains("timestamp"), "{name}: {error}");
        }
    }

    #[test]
    fn a_private_key_that_is_not_the_channel_pair_is_caught_before_orders_are_made() {
        let settings = demo();
        let channel = ChannelName::parse("alipay").unwrap();
        let cfg = &settings.channels[&channel];
        let wrong = demo_key("wechatpay-test-private-key.pem");
        let signer = Signer::new(cfg, Some(&wrong), None).unwrap();
        let payment = payment(cfg);
        let signed = signer.paid(&payment, Utc::now()).unwrap().signed;
        let error = check(cfg, &channel, &payment, &signed, Utc::now()).unwrap_err();
        assert!(error.contains("signature"), "{error}");
    }
}
