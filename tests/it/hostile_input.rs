//! Hostile input against every provider adapter, built from every valid test vector: random
//! bytes, truncations, bit flips, duplicated parameters, huge headers and invalid UTF-8. For every
//! input: no panic, and no verified notification unless what the signature covers is byte for
//! byte a genuine request's (for Alipay: its signed parameters; `sign_type` is not signed).
//! Nothing unverified reaches the crediting transaction, so nothing credits.

use chrono::{DateTime, Utc};
use payhook::config::Settings;
use payhook::domain::ids::ChannelName;
use std::sync::OnceLock;

use payhook::notify::{self, Provider, RawRequest};

use payhook::domain::notification::Notification;
use proptest::prelude::*;
use serde_json::Value;

const VECTOR_TIME: i64 = 1_795_375_716;

fn vectors(file: &str) -> Value {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A genuine request, the adapter that accepts it, and what it verifies to.
struct Genuine {
    provider: Box<dyn Provider>,
    channel: ChannelName,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    notification: Notification,
}

fn s(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap().to_owned()
}

/// Every valid case of every vector file, each with its channel's adapter; built once.
fn genuine_requests() -> &'static [Genuine] {
    static ALL: OnceLock<Vec<Genuine>> = OnceLock::new();
    ALL.get_or_init(build_genuine_requests)
}

fn build_genuine_requests() -> Vec<Genuine> {
    let alipay = vectors("alipay.json");
    let wechat = vectors("wechatpay.json");
    let stripe = vectors("stripe.json");
    let webhooks = vectors("standard-webhooks.json");
    let config = format!(
        "[channels.alipay]\nprovider = \"alipay\"\napp_id = {:?}\nseller_id = {:?}\nalipay_public_key = {:?}\n\
         [channels.alipay_legacy]\nprovider = \"alipay\"\nsign_type = \"RSA\"\napp_id = {:?}\nseller_id = {:?}\nalipay_public_key = {:?}\n\
         [channels.wxpay]\nprovider = \"wechatpay\"\nmchid = {:?}\nappid = {:?}\napiv3_key = {:?}\n\
         [channels.wxpay.public_keys]\n{:?} = {:?}\n\
         [channels.stripe]\nprovider = \"stripe\"\ncurrency = \"USD\"\nsecrets = [{:?}]\n\
         [channels.gateway]\nprovider = \"standard-webhooks\"\nsecrets = [{:?}]\n",
        s(&alipay, "app_id"),
        s(&alipay, "seller_id"),
        s(&alipay, "alipay_public_key"),
        s(&alipay, "app_id"),
        s(&alipay, "seller_id"),
        s(&alipay, "alipay_public_key"),
        s(&wechat, "mchid"),
        s(&wechat, "appid"),
        s(&wechat, "apiv3_key"),
        s(&wechat, "public_key_id"),
        s(&wechat, "public_key_pem"),
        s(&stripe, "secret"),
        s(&webhooks, "secret"),
    );
    let settings = Settings::from_toml(&config).unwrap();
    let mut out = Vec::new();
    for (file, channel) in [
        (&alipay, "alipay"),
        (&wechat, "wxpay"),
        (&stripe, "stripe"),
        (&webhooks, "gateway"),
    ] {
        for case in file["cases"].as_array().unwrap() {
            if case["signature"] != "valid" {
                continue;
            }
            // A legacy (SHA-1) notification verifies only on a channel set up for it.
            let channel = match s(case, "body").ends_with("&sign_type=RSA") {
                true => "alipay_legacy",
                false => channel,
            };
            let name = ChannelName::parse(channel).unwrap();
            let mut headers = vec![("content-type".to_owned(), s(file, "content_type"))];
            if let Some(map) = case["headers"].as_object() {
                headers.extend(
                    map.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())),
                );
            }
            let provider = notify::from_config(&settings.channels[&name]).unwrap();
            let body = s(case, "body").into_bytes();
            let request = RawRequest {
                headers: &headers,
                body: &body,
            };
            let notification = provider
                .verify(&name, &request, now())
                .unwrap_or_else(|e| panic!("{channel} {}: {e}", case["name"]));
            out.push(Genuine {
                provider,
                channel: name.clone(),
                headers,
                body,
                notification,
            });
        }
    }
    assert_eq!(out.len(), 12, "every valid vector case is used");
    out
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(VECTOR_TIME, 0).unwrap()
}

/// What the signature covers. JSON providers sign the body byte for byte. Alipay (both its
/// channels, RSA2 and legacy RSA) signs the form's decoded parameters: not `sign_type`, not empty
/// `&&` pairs, not their order or the case of their percent-escapes.
fn signed_content(channel: &str, body: &[u8]) -> Vec<Vec<u8>> {
    if !["alipay", "alipay_legacy"].contains(&channel) {
        return vec![body.to_vec()];
    }
    let decode = |part: &[u8]| -> Vec<u8> {
        let spaced: Vec<u8> = part
            .iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect();
        percent_encoding::percent_decode(&spaced).collect()
    };
    let mut pairs: Vec<Vec<u8>> = body
        .split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            [decode(key), b"=".to_vec(), decode(value)].concat()
        })
        .filter(|pair| !pair.starts_with(b"sign_type="))
        .collect();
    pairs.sort();
    pairs
}

/// Verifies a mutated request. It may only pass when what the signature covers is the genuine
/// request's, and then only as the genuine notification: a header or form field the signature
/// does not cover may change, nothing that says what was paid.
fn check(g: &Genuine, headers: &[(String, String)], body: &[u8]) -> Result<(), TestCaseError> {
    let request = RawRequest { headers, body };
    if let Ok(n) = g.provider.verify(&g.channel, &request, now()) {
        let channel = g.channel.as_str();
        prop_assert!(
            signed_content(channel, body) == signed_content(channel, &g.body),
            "a changed body verified: {:?}",
            String::from_utf8_lossy(body)
        );
        prop_assert_eq!(n, g.notification.clone());
    }
    Ok(())
}

fn cases() -> usize {
    genuine_requests().len()
}

#[test]
fn every_genuine_vector_verifies_unchanged() {
    for g in genuine_requests() {
        let request = RawRequest {
            headers: &g.headers,
            body: &g.body,
        };
        let n = g.provider.verify(&g.channel, &request, now()).unwrap();
        assert_eq!(n, g.notification, "{}", g.channel);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_verify(which in 0..cases(), body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let g = &genuine_requests()[which];
        check(g, &g.headers, &body)?;
    }

    #[test]
    fn truncated_bodies_never_verify(which in 0..cases(), cut in any::<prop::sample::Index>()) {
        let g = &genuine_requests()[which];
        let body = &g.body[..cut.index(g.body.len())];
        check(g, &g.headers, body)?;
    }

    #[test]
    fn bit_flips_in_body_or_headers_never_verify(
        which in 0..cases(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        in_header in any::<bool>(),
        header in any::<prop::sample::Index>(),
    ) {
        let g = &genuine_requests()[which];
        let mut headers = g.headers.clone();
        let mut body = g.body.clone();
        if in_header {
            let (_, value) = &mut headers[header.index(g.headers.len())];
            let mut bytes = value.clone().into_bytes();
            let i = at.index(bytes.len().max(1)).min(bytes.len().saturating_sub(1));
            if let Some(b) = bytes.get_mut(i) {
                *b ^= 1 << bit;
            }
            // Header values are text; a flip that leaves UTF-8 is dropped by the HTTP layer.
            *value = String::from_utf8_lossy(&bytes).into_owned();
        } else {
            let i = at.index(body.len());
            body[i] ^= 1 << bit;
        }
        check(g, &headers, &body)?;
    }

    #[test]
    fn duplicated_parameters_and_invalid_utf8_never_verify(
        which in 0..cases(),
        extra in "[a-z_]{1,12}=[ -~]{0,16}",
        junk in proptest::collection::vec(128u8..=255, 1..8),
    ) {
        let g = &genuine_requests()[which];
        // A repeated parameter (a=1&a=2) or an extra one, appended.
        let first_key = String::from_utf8_lossy(&g.body)
            .split('=')
            .next()
            .unwrap_or("a")
            .to_owned();
        for tail in [format!("&{first_key}=x"), format!("&{extra}")] {
            let mut body = g.body.clone();
            body.extend_from_slice(tail.as_bytes());
            check(g, &g.headers, &body)?;
        }
        let mut body = g.body.clone();
        body.extend_from_slice(&junk);
        check(g, &g.headers, &body)?;
        let mut body = junk.clone();
        body.extend_from_slice(&g.body);
        check(g, &g.headers, &body)?;
    }

    #[test]
    fn huge_or_repeated_headers_never_verify_or_panic(which in 0..cases(), size in 1usize..200_000, header in any::<prop::sample::Index>()) {
        let g = &genuine_requests()[which];
        let mut headers = g.headers.clone();
        let i = header.index(headers.len());
        headers[i].1 = "A".repeat(size);
        check(g, &headers, &g.body)?;
        // The same header twice, the second genuine: the first one is what counts.
        let mut doubled = vec![(g.headers[i].0.clone(), "x".repeat(size % 512))];
        doubled.extend(g.headers.iter().cloned());
        check(g, &doubled, &g.body)?;
    }
}
