//! The known traps (PROTOCOLS.md), each detected on the stored request itself: a trap is
//! *confirmed* when the evidence proves it, most often because the adapter's own signature check
//! holds once the trap is undone on a copy of the request (an HTML-escaped value unescaped, a
//! value decoded once more or once less, the form put back in its charset). The copies are only
//! ever examined, never applied.

use std::borrow::Cow;

use serde::Serialize;

use crate::books::inbox::{self, REJECTED_BODY_BYTES};
use crate::config::{AlipayConfig, ChannelConfig};
use crate::notify::alipay::{self, Alipay};
use crate::notify::{shown, Examination, RawRequest};

/// A known way for an authentic notification to fail verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrapKind {
    /// Something in front of payhook HTML-escaped the form (`&quot;` in `fund_bill_list`).
    HtmlEscaped,
    /// A value was decoded once too often or once too few on its way here.
    DecodedTwice,
    /// The app's own public key is configured where Alipay's belongs.
    AppKeyConfigured,
    /// The form's `charset` does not match its bytes (GBK and UTF-8).
    CharsetMismatch,
    /// WeChat Pay names a key (`Wechatpay-Serial`) the channel does not have.
    UnknownSerial,
    /// A rejected request's body was kept only in part, so it cannot be verified again.
    TruncatedBody,
}

impl TrapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::HtmlEscaped => "html_escaped",
            TrapKind::DecodedTwice => "decoded_twice",
            TrapKind::AppKeyConfigured => "app_key_configured",
            TrapKind::CharsetMismatch => "charset_mismatch",
            TrapKind::UnknownSerial => "unknown_serial",
            TrapKind::TruncatedBody => "truncated_body",
        }
    }
}

/// One trap found on a stored request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trap {
    pub trap: TrapKind,
    /// Proven by the evidence (most often: the signature holds once the trap is undone), rather
    /// than only suggested by it.
    pub confirmed: bool,
    /// What was found and what to do, for a human.
    pub detail: String,
}

impl Trap {
    fn new(trap: TrapKind, confirmed: bool, detail: String) -> Trap {
        Trap {
            trap,
            confirmed,
            detail,
        }
    }
}

/// The traps found on a stored request that its channel's adapter examined as `examination`.
pub(super) fn detect(
    notification_id: &str,
    request: &RawRequest<'_>,
    cfg: &ChannelConfig,
    examination: &Examination,
) -> Vec<Trap> {
    if inbox::keeps_whole_body(notification_id, request.body) == Some(false) {
        return vec![Trap::new(
            TrapKind::TruncatedBody,
            true,
            format!(
                "the request was rejected when it arrived, and a rejected request keeps only its \
                 first {REJECTED_BODY_BYTES} bytes; the digest in its id is of a longer body, so \
                 the signature cannot be checked again. Once the channel's keys are right, the \
                 provider's next retry is verified as it arrives"
            ),
        )];
    }
    let mut traps: Vec<Trap> = unknown_serial(examination).into_iter().collect();
    if let ChannelConfig::Alipay(c) = cfg {
        traps.extend(alipay_traps(c, request, examination));
    }
    traps
}

/// WeChat Pay chooses the key by `Wechatpay-Serial`: a serial the channel lacks fails, whatever
/// key would have verified.
fn unknown_serial(examination: &Examination) -> Option<Trap> {
    let serial = examination.named_key.as_deref()?;
    if examination.keys.iter().any(|check| check.chosen) {
        return None;
    }
    let configured: Vec<String> = examination.keys.iter().map(|k| shown(&k.key)).collect();
    let mut detail = format!(
        "the request names Wechatpay-Serial {}; the channel's public_keys are {}",
        shown(serial),
        if configured.is_empty() {
            "none that could be tried".to_owned()
        } else {
            configured.join(", ")
        }
    );
    match examination.keys.iter().find(|check| check.result.is_ok()) {
        Some(check) => detail.push_str(&format!(
            ". The signature verifies with the key configured as {}: that key is filed under the \
             wrong serial",
            shown(&check.key)
        )),
        None => detail.push_str(
            ". No configured key verifies it: add the key WeChat Pay names by that serial (its \
             platform certificate or its PUB_KEY_ID_ public key) beside the others",
        ),
    }
    Some(Trap::new(TrapKind::UnknownSerial, true, detail))
}

fn alipay_traps(
    cfg: &AlipayConfig,
    request: &RawRequest<'_>,
    examination: &Examination,
) -> Vec<Trap> {
    let Ok(adapter) = Alipay::new(cfg) else {
        return Vec::new();
    };
    let mut traps = Vec::new();
    let app_key = cfg.app_private_key.as_ref();
    if app_key.and_then(|key| adapter.public_key_pairs_with(key.expose())) == Some(true) {
        traps.push(Trap::new(
            TrapKind::AppKeyConfigured,
            true,
            "alipay_public_key is the public half of app_private_key: the app's own public key \
             (应用公钥) is configured where Alipay's public key (支付宝公钥) belongs. Copy \
             Alipay's public key from the open platform's key settings into alipay_public_key"
                .to_owned(),
        ));
    }
    let experiment = Experiment {
        adapter: &adapter,
        request,
    };
    let signature_holds = examination.verified_by().is_some();
    // A signature that held, or one that could not be tried at all (no `sign`), is not made to
    // hold by undoing anything.
    let can_try = !signature_holds && !examination.keys.is_empty();
    if can_try {
        traps.extend(html_escaped(&experiment));
        traps.extend(decoded_twice(&experiment));
    }
    traps.extend(charset(&experiment, signature_holds, can_try));
    traps
}

/// A copy of the stored request with some values changed, examined by the channel's adapter.
struct Experiment<'a> {
    adapter: &'a Alipay,
    request: &'a RawRequest<'a>,
}

/// One pair of the form: its key decoded, and its value as sent and decoded.
struct Pair<'a> {
    key: Vec<u8>,
    raw: &'a [u8],
    value: Vec<u8>,
}

impl<'a> Experiment<'a> {
    fn pairs(&self) -> Vec<Pair<'a>> {
        alipay::raw_pairs(self.request.body)
            .map(|(key, raw)| Pair {
                key: alipay::form_decode(key).into_owned(),
                raw,
                value: alipay::form_decode(raw).into_owned(),
            })
            .collect()
    }

    /// Whether the signature holds once `change` has changed the values it returns a new value
    /// for; every other pair is kept byte for byte as it arrived.
    fn holds_with(&self, change: impl Fn(&Pair<'_>) -> Option<Vec<u8>>) -> bool {
        let mut body = Vec::with_capacity(self.request.body.len());
        let mut changed = false;
        for (raw_key, raw) in alipay::raw_pairs(self.request.body) {
            if !body.is_empty() {
                body.push(b'&');
            }
            body.extend_from_slice(raw_key);
            body.push(b'=');
            let pair = Pair {
                key: alipay::form_decode(raw_key).into_owned(),
                raw,
                value: alipay::form_decode(raw).into_owned(),
            };
            match change(&pair) {
                Some(value) => {
                    changed = true;
                    body.extend(form_urlencoded::byte_serialize(&value).flat_map(str::bytes));
                }
                None => body.extend_from_slice(raw),
            }
        }
        let request = RawRequest {
            headers: self.request.headers,
            body: &body,
        };
        changed && self.adapter.examine(&request).verified_by().is_some()
    }

    /// The fields (by name) for which `holds_with` holds changing that field alone, or all of
    /// `fields` together; empty when neither does.
    fn fields_that_fix(
        &self,
        fields: &[Vec<u8>],
        change: impl Fn(&Pair<'_>) -> Option<Vec<u8>>,
    ) -> Vec<String> {
        if fields.is_empty() {
            return Vec::new();
        }
        let only = |field: &[u8]| {
            self.holds_with(|pair| (pair.key == field).then(|| change(pair)).flatten())
        };
        let alone: Vec<String> = fields
            .iter()
            .take(MAX_FIELDS_TRIED_ALONE)
            .filter(|field| only(field))
            .map(|field| name(field))
            .collect();
        if !alone.is_empty() {
            return alone;
        }
        let all = |pair: &Pair<'_>| fields.contains(&pair.key).then(|| change(pair)).flatten();
        if self.holds_with(all) {
            fields.iter().map(|field| name(field)).collect()
        } else {
            Vec::new()
        }
    }
}

/// How many fields are tried one by one: a bound on the RSA work one explanation may ask for.
const MAX_FIELDS_TRIED_ALONE: usize = 16;

/// A field's name for a message: untrusted, so quoted and cut.
fn name(field: &[u8]) -> String {
    shown(&String::from_utf8_lossy(field))
}

/// The entities an HTML escaper writes, and what they stand for (`&amp;` last).
const HTML_ENTITIES: [(&str, &str); 7] = [
    ("&quot;", "\""),
    ("&#34;", "\""),
    ("&#39;", "'"),
    ("&#039;", "'"),
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&amp;", "&"),
];

fn unescape_html(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let unescaped = HTML_ENTITIES
        .iter()
        .fold(text.to_owned(), |text, (entity, plain)| {
            text.replace(entity, plain)
        });
    (unescaped != text).then(|| unescaped.into_bytes())
}

/// A framework's input filter HTML-escapes `fund_bill_list` (a JSON array) before the verifier
/// sees it: `&quot;` where Alipay signed `"`.
fn html_escaped(experiment: &Experiment<'_>) -> Option<Trap> {
    let fields: Vec<Vec<u8>> = experiment
        .pairs()
        .into_iter()
        .filter(|pair| unescape_html(&pair.value).is_some())
        .map(|pair| pair.key)
        .collect();
    if fields.is_empty() {
        return None;
    }
    let listed: Vec<String> = fields.iter().map(|field| name(field)).collect();
    let fixed = experiment.fields_that_fix(&fields, |pair| unescape_html(&pair.value));
    Some(if fixed.is_empty() {
        Trap::new(
            TrapKind::HtmlEscaped,
            false,
            format!(
                "HTML entities such as &quot; in {}, but the signature does not verify with them \
                 unescaped either",
                listed.join(", ")
            ),
        )
    } else {
        Trap::new(
            TrapKind::HtmlEscaped,
            true,
            format!(
                "HTML-escaped {} (&quot; where Alipay signed \"): the signature verifies once it \
                 is unescaped. Something in front of payhook (a proxy or a framework's input \
                 filter) rewrites the form; let it pass the body untouched",
                fixed.join(", ")
            ),
        )
    })
}

/// Whether `value` holds a percent escape (`%` and two hex digits).
fn has_escape(value: &[u8]) -> bool {
    value
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// A form's values are decoded exactly once. A value decoded once more (a proxy decoded the body
/// before payhook decoded it again) loses the `%` it held; a value encoded once more arrives
/// still escaped after payhook's one decode.
fn decoded_twice(experiment: &Experiment<'_>) -> Vec<Trap> {
    let pairs = experiment.pairs();
    let keys_where = |keep: &dyn Fn(&Pair<'_>) -> bool| -> Vec<Vec<u8>> {
        pairs
            .iter()
            .filter(|pair| keep(pair))
            .map(|pair| pair.key.clone())
            .collect()
    };
    // Decoded before payhook: the value Alipay signed is the text that arrived.
    let decoded_before = keys_where(&|pair| pair.raw.contains(&b'%') || pair.raw.contains(&b'+'));
    let fixed = experiment.fields_that_fix(&decoded_before, |pair| Some(pair.raw.to_vec()));
    if !fixed.is_empty() {
        return vec![Trap::new(
            TrapKind::DecodedTwice,
            true,
            format!(
                "the signature verifies with {} taken as it arrived, undecoded: the form was \
                 decoded once before payhook received it, so payhook's own decode was a second one \
                 and broke the '%' or '+' Alipay signed. Let the proxy in front pass the body as \
                 Alipay sent it",
                fixed.join(", ")
            ),
        )];
    }
    // Encoded once more on the way: one more decode gives what Alipay signed.
    let encoded_twice = keys_where(&|pair| has_escape(&pair.value));
    let fixed = experiment.fields_that_fix(&encoded_twice, |pair| {
        Some(alipay::form_decode(&pair.value).into_owned())
    });
    if !fixed.is_empty() {
        return vec![Trap::new(
            TrapKind::DecodedTwice,
            true,
            format!(
                "the signature verifies only with {} decoded twice: the form was encoded once \
                 more on its way to payhook. Let the proxy in front pass the body as Alipay sent \
                 it",
                fixed.join(", ")
            ),
        )];
    }
    let percent = keys_where(&|pair| pair.value.contains(&b'%'));
    if percent.is_empty() {
        return Vec::new();
    }
    let listed: Vec<String> = percent.iter().map(|field| name(field)).collect();
    vec![Trap::new(
        TrapKind::DecodedTwice,
        false,
        format!(
            "a literal '%' (sent as %25) in {}, which a second decode anywhere on the way would \
             break; but decoding once more or once less does not make the signature verify",
            listed.join(", ")
        ),
    )]
}

/// The charsets Alipay names, by the label the form carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Utf8,
    Gbk,
}

impl Charset {
    fn of(label: &str) -> Option<Charset> {
        match label.to_ascii_lowercase().as_str() {
            "utf-8" => Some(Charset::Utf8),
            "gbk" | "gb2312" => Some(Charset::Gbk),
            _ => None,
        }
    }

    /// The other charset, by name.
    fn other(self) -> &'static str {
        match self {
            Charset::Utf8 => "GBK",
            Charset::Gbk => "UTF-8",
        }
    }

    /// `bytes` in the other charset, put back in this one.
    fn back_from_other(self, bytes: &[u8]) -> Option<Vec<u8>> {
        match self {
            Charset::Utf8 => gbk_to_utf8(bytes),
            Charset::Gbk => utf8_to_gbk(bytes),
        }
    }

    fn holds(self, bytes: &[u8]) -> bool {
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes).is_ok(),
            Charset::Gbk => gbk_text(bytes).is_some(),
        }
    }
}

fn gbk_text(bytes: &[u8]) -> Option<Cow<'_, str>> {
    encoding_rs::GBK.decode_without_bom_handling_and_without_replacement(bytes)
}

/// Alipay signs the form's bytes in the charset it names (`charset`, UTF-8 when absent). Bytes
/// that are not valid in it were transcoded on the way, or mislabelled by the sender.
fn charset(experiment: &Experiment<'_>, signature_holds: bool, can_try: bool) -> Option<Trap> {
    let pairs = experiment.pairs();
    let label = pairs
        .iter()
        .find(|pair| pair.key == b"charset")
        .map_or(Cow::Borrowed("utf-8"), |pair| {
            String::from_utf8_lossy(&pair.value)
        });
    let Some(charset) = Charset::of(&label) else {
        return Some(Trap::new(
            TrapKind::CharsetMismatch,
            false,
            format!(
                "the form names charset {}, which is none of Alipay's (utf-8, gbk, gb2312)",
                shown(&label)
            ),
        ));
    };
    let fits = |pair: &Pair<'_>| charset.holds(&pair.key) && charset.holds(&pair.value);
    let misfits: Vec<Vec<u8>> = pairs
        .iter()
        .filter(|pair| !fits(pair))
        .map(|pair| pair.key.clone())
        .collect();
    // Which values may have been transcoded into the other charset on the way: those not valid
    // in the label's and, in a GBK form, non-ASCII values valid in UTF-8 (UTF-8 text often reads
    // as valid GBK too).
    let suspects: Vec<Vec<u8>> = pairs
        .iter()
        .filter(|pair| {
            !fits(pair)
                || (charset == Charset::Gbk
                    && !pair.value.is_ascii()
                    && std::str::from_utf8(&pair.value).is_ok())
        })
        .map(|pair| pair.key.clone())
        .collect();
    let fixed = if can_try {
        experiment.fields_that_fix(&suspects, |pair| charset.back_from_other(&pair.value))
    } else {
        Vec::new()
    };
    let label = shown(&label);
    if !fixed.is_empty() {
        return Some(Trap::new(
            TrapKind::CharsetMismatch,
            true,
            format!(
                "the form says charset {label}, but {} arrived in {other}: the signature verifies \
                 once it is put back in {label}. Something in front of payhook transcoded the \
                 body; let it pass the bytes as Alipay sent them",
                fixed.join(", "),
                other = charset.other()
            ),
        ));
    }
    if misfits.is_empty() {
        return None;
    }
    let listed: Vec<String> = misfits.iter().map(|field| name(field)).collect();
    let why = if signature_holds {
        "; the signature holds over these very bytes, so the sender labelled them wrongly"
    } else {
        ""
    };
    Some(Trap::new(
        TrapKind::CharsetMismatch,
        true,
        format!(
            "the form says charset {label}, but the bytes of {} are not valid {label}{why}",
            listed.join(", ")
        ),
    ))
}

fn gbk_to_utf8(gbk: &[u8]) -> Option<Vec<u8>> {
    gbk_text(gbk).map(|text| text.into_owned().into_bytes())
}

/// The same text in GBK, when every character has a GBK form.
fn utf8_to_gbk(utf8: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(utf8).ok()?;
    let (bytes, _, unmappable) = encoding_rs::GBK.encode(text);
    (!unmappable).then(|| bytes.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AlipaySignType, Secret};
    use crate::domain::money::Currency;
    use crate::notify::alipay::sign::rsa2;
    use crate::notify::sign::RsaSigner;

    fn vector(file: &str) -> String {
        let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn channel(public_key: &str) -> ChannelConfig {
        ChannelConfig::Alipay(AlipayConfig {
            app_id: "2021000000000001".to_owned(),
            seller_id: None,
            alipay_public_key: Secret::new(public_key),
            sign_type: AlipaySignType::Rsa2,
            currency: Currency::Cny,
            app_private_key: None,
            gateway_url: String::new(),
        })
    }

    fn alipays_key() -> ChannelConfig {
        let v: serde_json::Value = serde_json::from_str(&vector("alipay.json")).unwrap();
        channel(v["alipay_public_key"].as_str().unwrap())
    }

    /// `fields` (decoded) signed with Alipay's test key, as `(key, value as sent)` pairs.
    fn signed(fields: &[(&'static str, &[u8])]) -> Vec<(&'static str, Vec<u8>)> {
        let key = RsaSigner::from_pem(&vector("alipay-test-private-key.pem")).unwrap();
        let sign = rsa2(fields, &key);
        let sent = |value: &[u8]| form_urlencoded::byte_serialize(value).collect::<String>();
        let mut pairs: Vec<(&str, Vec<u8>)> = fields
            .iter()
            .map(|(k, v)| (*k, sent(v).into_bytes()))
            .collect();
        pairs.push(("sign", sent(sign.as_bytes()).into_bytes()));
        pairs
    }

    fn body(pairs: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let pairs: Vec<Vec<u8>> = pairs
            .iter()
            .map(|(k, v)| [k.as_bytes(), b"=", v].concat())
            .collect();
        pairs.join(&b'&')
    }

    fn traps(cfg: &ChannelConfig, body: &[u8]) -> Vec<Trap> {
        let request = RawRequest { headers: &[], body };
        let examination = crate::notify::examine(cfg, &request).unwrap();
        detect("N1", &request, cfg, &examination)
    }

    const TRADE: [(&str, &[u8]); 3] = [
        ("notify_id", b"N1"),
        ("out_trade_no", b"A1"),
        ("total_amount", b"1.00"),
    ];

    #[test]
    fn a_value_encoded_once_more_on_the_way_is_found() {
        let mut fields = TRADE.to_vec();
        fields.push(("passback_params", b"a/b c"));
        let mut pairs = signed(&fields);
        pairs[3].1 = b"a%252Fb%2Bc".to_vec();
        let found = traps(&alipays_key(), &body(&pairs));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].trap, TrapKind::DecodedTwice);
        assert!(found[0].confirmed && found[0].detail.contains("decoded twice"));
    }

    #[test]
    fn gbk_bytes_in_a_utf8_form_are_found_whoever_put_them_there() {
        // "充值" in GBK.
        let gbk: &[u8] = &[0xB3, 0xE4, 0xD6, 0xB5];
        // Alipay signed the GBK bytes under the utf-8 label: the signature holds over them.
        let mut fields = TRADE.to_vec();
        fields.extend([("charset", &b"utf-8"[..]), ("subject", gbk)]);
        let found = traps(&alipays_key(), &body(&signed(&fields)));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].confirmed && found[0].detail.contains("labelled them wrongly"));
        // Alipay signed UTF-8; something transcoded it to GBK on the way.
        let mut fields = TRADE.to_vec();
        fields.extend([("charset", &b"utf-8"[..]), ("subject", "充值".as_bytes())]);
        let mut pairs = signed(&fields);
        pairs[4].1 = b"%B3%E4%D6%B5".to_vec();
        let found = traps(&alipays_key(), &body(&pairs));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].trap, TrapKind::CharsetMismatch);
        assert!(found[0].detail.contains("arrived in GBK"), "{found:?}");
        let latin1 = [("charset", &b"iso-8859-1"[..])];
        let found = traps(&alipays_key(), &body(&signed(&latin1)));
        assert!(found[0].detail.contains("none of Alipay's"), "{found:?}");
    }

    #[test]
    fn a_sound_request_shows_no_trap_under_the_right_key_or_a_wrong_one() {
        let mut fields = TRADE.to_vec();
        fields.extend([
            ("fund_bill_list", &br#"[{"amount":"1.00"}]"#[..]),
            ("subject", "100% 充值 a+b".as_bytes()),
            ("gmt_payment", b"2026-11-22 10:00:00"),
        ]);
        let sound = body(&signed(&fields));
        assert_eq!(traps(&alipays_key(), &sound), []);
        let recovery: serde_json::Value = serde_json::from_str(&vector("recovery.json")).unwrap();
        let wrong = channel(recovery["alipay_app_public_key"].as_str().unwrap());
        let found = traps(&wrong, &sound);
        assert!(found.iter().all(|t| !t.confirmed), "{found:?}");
        // Entities Alipay itself signed are no trap, but are shown as a suspicion when the
        // signature fails.
        fields.push(("body", b"&quot;as signed&quot;"));
        let found = traps(&wrong, &body(&signed(&fields)));
        let html = found
            .iter()
            .find(|t| t.trap == TrapKind::HtmlEscaped)
            .unwrap();
        assert!(
            !html.confirmed && html.detail.contains("\"body\""),
            "{html:?}"
        );
        assert_eq!(traps(&alipays_key(), &body(&signed(&fields))), []);
    }
}
