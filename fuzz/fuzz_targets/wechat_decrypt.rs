//! A WeChat Pay v3 notification with fuzzed headers and body, through `WechatPay::verify`
//! (signature check, then envelope parse and AES-256-GCM decrypt of the resource).
//!
//! Each signed header and the body is either absent, raw fuzz bytes, or a value taken from the
//! vectors (optionally with one byte changed), so the fuzzer reaches the RSA check with real
//! signatures and keys. Checks: no panic, and `Ok` only for a validly signed vector's exact
//! timestamp, nonce, signature and body, under the configured serial, within the tolerance.
//!
//! The decrypt helper is private to the crate; it is reached only through `verify`.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use payhook::config::{Secret, WechatPayConfig};
use payhook::domain::ids::ChannelName;
use payhook::domain::money::Currency;
use payhook::notify::wechatpay::WechatPay;
use payhook::notify::{Provider, RawRequest};

/// The repository's `tests/vectors/wechatpay.json` (test keys only).
const VECTORS: &str = include_str!("../../tests/vectors/wechatpay.json");
/// Every vector carries this `Wechatpay-Timestamp`.
const SENT_AT: i64 = 1_795_375_716;
const TOLERANCE: u64 = 300;

const NAMES: [&str; 5] = [
    "Wechatpay-Timestamp",
    "Wechatpay-Nonce",
    "Wechatpay-Signature",
    "Wechatpay-Serial",
    "Wechatpay-Signature-Type",
];

struct Case {
    /// Header values in the order of `NAMES`.
    headers: [String; 5],
    body: Vec<u8>,
    valid: bool,
}

struct Fixture {
    wechat: WechatPay,
    channel: ChannelName,
    serial: String,
    cases: Vec<Case>,
    /// Per header in `NAMES`, the values seen in the vectors (plus the configured serial).
    known: [Vec<String>; 5],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let v: serde_json::Value = serde_json::from_str(VECTORS).expect("wechatpay.json");
        let text = |key: &str| v[key].as_str().expect(key).to_owned();
        let serial = text("public_key_id");
        let wechat = WechatPay::new(&WechatPayConfig {
            mchid: text("mchid"),
            appid: text("appid"),
            apiv3_key: Secret::new(text("apiv3_key")),
            public_keys: [(serial.clone(), Secret::new(text("public_key_pem")))].into(),
            currency: Currency::Cny,
            timestamp_tolerance_secs: TOLERANCE,
            merchant_private_key: None,
            merchant_serial_no: None,
            api_base: String::new(),
        })
        .expect("the test keys load");
        let cases: Vec<Case> = v["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|case| Case {
                headers: NAMES.map(|name| case["headers"][name].as_str().expect(name).to_owned()),
                body: case["body"].as_str().expect("body").as_bytes().to_vec(),
                valid: case["signature"] == "valid",
            })
            .collect();
        let mut known: [Vec<String>; 5] = Default::default();
        known[3].push(serial.clone());
        for case in &cases {
            for (i, value) in case.headers.iter().enumerate() {
                if !known[i].contains(value) {
                    known[i].push(value.clone());
                }
            }
        }
        Fixture {
            wechat,
            channel: ChannelName::parse("wechatpay").expect("channel name"),
            serial,
            cases,
            known,
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Value<'a> {
    Absent,
    Raw(&'a str),
    /// The n-th (modulo) value the vectors hold for this header.
    Known(u8),
}

#[derive(Arbitrary, Debug)]
enum Body<'a> {
    Raw(&'a [u8]),
    /// The n-th (modulo) vector's body.
    Known(u8),
    /// The n-th vector's body with one byte XORed.
    KnownFlipped { case: u8, index: u16, xor: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    timestamp: Value<'a>,
    nonce: Value<'a>,
    signature: Value<'a>,
    serial: Value<'a>,
    signature_type: Value<'a>,
    /// Header names sent lower-case (names match without regard to case).
    lowercase_names: bool,
    /// Extra headers, sent before the signed ones when `extra_first` (so they can shadow them).
    extra: Vec<(&'a str, &'a str)>,
    extra_first: bool,
    /// Seconds between the vectors' timestamp and the clock.
    now_offset: i16,
    body: Body<'a>,
}

fuzz_target!(|input: Input<'_>| {
    let f = fixture();
    let values = [
        &input.timestamp,
        &input.nonce,
        &input.signature,
        &input.serial,
        &input.signature_type,
    ];
    let mut signed = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let value = match value {
            Value::Absent => continue,
            Value::Raw(s) => (*s).to_owned(),
            Value::Known(n) => f.known[i][*n as usize % f.known[i].len()].clone(),
        };
        let name = if input.lowercase_names {
            NAMES[i].to_ascii_lowercase()
        } else {
            NAMES[i].to_owned()
        };
        signed.push((name, value));
    }
    let extra = input
        .extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    let headers: Vec<(String, String)> = if input.extra_first {
        extra.chain(signed).collect()
    } else {
        signed.into_iter().chain(extra).collect()
    };
    let body: Vec<u8> = match input.body {
        Body::Raw(bytes) => bytes.to_vec(),
        Body::Known(n) => f.cases[n as usize % f.cases.len()].body.clone(),
        Body::KnownFlipped { case, index, xor } => {
            let mut body = f.cases[case as usize % f.cases.len()].body.clone();
            let at = index as usize % body.len().max(1);
            if let Some(b) = body.get_mut(at) {
                *b ^= xor;
            }
            body
        }
    };
    let now = Utc.timestamp_opt(SENT_AT + i64::from(input.now_offset), 0).unwrap();
    let request = RawRequest {
        headers: &headers,
        body: &body,
    };

    if let Ok(notification) = f.wechat.verify(&f.channel, &request, now) {
        // What the adapter saw: the first header of each name, as `RawRequest::header` finds it.
        let seen = NAMES.map(|name| request.header(name));
        let matches_valid_case = f.cases.iter().filter(|c| c.valid).any(|c| {
            (0..3).all(|i| seen[i] == Some(c.headers[i].as_str()))
                && seen[4].is_none_or(|t| t == c.headers[4])
                && c.body == body
        });
        let ok = matches_valid_case
            && seen[3] == Some(f.serial.as_str())
            && u64::from(input.now_offset.unsigned_abs()) <= TOLERANCE;
        if !ok {
            panic!(
                "verify accepted a request that is not a signed vector: {notification:?}\n\
                 headers: {headers:?}\nnow_offset: {}\nbody: {:?}",
                input.now_offset,
                String::from_utf8_lossy(&body)
            );
        }
    }
});
