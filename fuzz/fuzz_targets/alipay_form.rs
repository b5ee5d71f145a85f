//! Arbitrary bytes as the body of an Alipay notification.
//!
//! Checks: `Alipay::verify` never panics, and never returns `Ok` for a body that is not one of
//! the validly signed vectors (byte for byte, or the same form once decoded: extra empty `&`
//! pairs, reordered pairs, other percent-escapes of the same bytes, or a changed `sign_type`,
//! which Alipay does not sign).
#![no_main]

use std::sync::OnceLock;

use chrono::{DateTime, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use payhook::config::{AlipayConfig, AlipaySignType, Secret};
use payhook::domain::ids::ChannelName;
use payhook::domain::money::Currency;
use payhook::notify::alipay::Alipay;
use payhook::notify::{Provider, RawRequest};

/// The repository's `tests/vectors/alipay.json` (test keys only).
const VECTORS: &str = include_str!("../../tests/vectors/alipay.json");

type Form = Vec<(Vec<u8>, Vec<u8>)>;

struct Fixture {
    alipay: Alipay,
    channel: ChannelName,
    headers: Vec<(String, String)>,
    now: DateTime<Utc>,
    valid_bodies: Vec<Vec<u8>>,
    valid_forms: Vec<Form>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let v: serde_json::Value = serde_json::from_str(VECTORS).expect("alipay.json");
        let text = |key: &str| v[key].as_str().expect(key).to_owned();
        let alipay = Alipay::new(&AlipayConfig {
            app_id: text("app_id"),
            seller_id: Some(text("seller_id")),
            alipay_public_key: Secret::new(text("alipay_public_key")),
            sign_type: AlipaySignType::Rsa2,
            currency: Currency::Cny,
            app_private_key: None,
            gateway_url: String::new(),
        })
        .expect("the test public key loads");
        let valid_bodies: Vec<Vec<u8>> = v["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .filter(|case| case["signature"] == "valid")
            .map(|case| case["body"].as_str().expect("body").as_bytes().to_vec())
            .collect();
        assert!(!valid_bodies.is_empty());
        let valid_forms = valid_bodies.iter().filter_map(|b| decoded(b)).collect();
        Fixture {
            alipay,
            channel: ChannelName::parse("alipay").expect("channel name"),
            headers: vec![(
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            )],
            now: Utc.timestamp_opt(1_795_375_716, 0).unwrap(),
            valid_bodies,
            valid_forms,
        }
    })
}

/// The oracle's own reading of a form (independent of the adapter's): pairs split on `&`, empty
/// pairs skipped, `+` as space then percent-decoded, sorted by key; `sign_type` dropped because
/// it is not signed. `None` when a key repeats.
fn decoded(body: &[u8]) -> Option<Form> {
    let decode = |s: &[u8]| -> Vec<u8> {
        let spaced: Vec<u8> = s.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
        percent_encoding::percent_decode(&spaced).collect()
    };
    let mut form: Form = body
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (decode(&pair[..i]), decode(&pair[i + 1..])),
            None => (decode(pair), Vec::new()),
        })
        .collect();
    form.sort();
    if form.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    form.retain(|(k, _)| k != b"sign_type");
    Some(form)
}

fuzz_target!(|body: &[u8]| {
    let f = fixture();
    let request = RawRequest {
        headers: &f.headers,
        body,
    };
    if let Ok(notification) = f.alipay.verify(&f.channel, &request, f.now) {
        let known = f.valid_bodies.iter().any(|b| b.as_slice() == body)
            || decoded(body).is_some_and(|form| f.valid_forms.contains(&form));
        if !known {
            panic!(
                "verify accepted a body that is not a signed vector: {notification:?}\nbody: {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
});
