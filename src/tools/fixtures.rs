//! `payhook fixtures`: creates pending orders on a configured channel and writes the signed
//! notifications that pay them, as a fixture file for `payhook replay`.
//!
//! Orders take the same path as `payhook order create`: validated against the channel's terms,
//! then [`orders::create`] after the migrations are applied. The notifications are signed as the
//! provider signs them ([`Signer`]): HMAC providers with the channel's first
//! configured secret, RSA providers (Alipay, WeChat Pay) with `--private-key`, since the channel
//! holds only the public half. The first notification is verified with the channel's own adapter
//! before any order is created, so a key that does not match fails at once instead of leaving
//! orders that nothing can pay.
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
use crate::domain::notification::NotificationKind;
use crate::notify::sign::{Payment, Signed};
use crate::notify::signer::Signer;
use crate::notify::{self, ProviderName, RawRequest};

/// How many fixture orders share one transaction.
const ORDERS_PER_TRANSACTION: usize = 1000;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
The notifications are signed now: WeChat Pay, Stripe and Standard Webhooks channels accept them \
for timestamp_tolerance_secs (default 300 s), so replay them within five minutes. Alipay's carry \
no time limit.

Example, with the test-only demo configuration:
  payhook fixtures --config config/demo.toml --channel alipay --count 100 \\
      --private-key config/demo-keys/alipay-test-private-key.pem --out alipay.ndjson
  payhook replay --url http://127.0.0.1:8080 alipay.ndjson")]
pub struct Args {
    /// The config file that configures the channel, and the database.
    #[command(flatten)]
    pub db: crate::app::DbArgs,
    /// The configured channel the orders are paid through.
    #[arg(long, value_name = "NAME")]
    pub channel: String,
    /// How many orders (and notifications) to make.
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
    let provider = notify::from_config(cfg)?;
    let request = RawRequest {
        headers: &signed.headers,
        body: signed.body.as_bytes(),
    };
    let n = notify::verify(provider.as_ref(), channel, &request, now).map_err(|e| e.to_string())?;
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

    // One notification is verified before any order exists, so a wrong key leaves nothing behind.
    let now = Utc::now();
    let first = Payment::from(&new_orders[0]);
    let probe = signer
        .paid(&first, now)
        .map_err(|e| anyhow!("channel {channel}: {e}"))?;
    if let Err(e) = check(cfg, &channel, &first, &probe, now) {
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
    // Orders are created a thousand per transaction, each before its notification is written.
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
        let signed = signer
            .paid(&payment, Utc::now())
            .map_err(|e| anyhow!("channel {channel}: {e}"))?;
        let fixture = Fixture {
            name: Some(format!("{channel} #{} {}", i + 1, new.order_no)),
            channel: channel.to_string(),
            provider: Some(signer.provider()),
            expect: Some(Expect::Ack),
            headers: signed.headers.into_iter().collect(),
            body: signed.body,
        };
        serde_json::to_writer(&mut out, &fixture)?;
        out.write_all(b"\n")?;
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
    log::info!(
        "created {} pending order(s) of {} {currency} on channel {channel} for {users}; \
         wrote their signed notifications to {written_to}",
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
    fn notifications_signed_now_go_stale_after_the_channel_tolerance() {
        let settings = demo();
        for name in ["wxpay", "stripe", "gateway"] {
            let channel = ChannelName::parse(name).unwrap();
            let cfg = &settings.channels[&channel];
            let key = key_for(name);
            let signer = Signer::new(cfg, key.as_deref(), None).unwrap();
            let payment = payment(cfg);
            let now = Utc::now();
            let signed = signer.paid(&payment, now).unwrap();
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
        let signed = signer.paid(&payment, Utc::now()).unwrap();
        let error = check(cfg, &channel, &payment, &signed, Utc::now()).unwrap_err();
        assert!(error.contains("signature"), "{error}");
    }
}
