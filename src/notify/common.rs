//! What every adapter shares: RSA keys in the forms providers hand them out, the checks on
//! signature headers and timestamps, HMAC signature lists, and the helpers that turn untrusted
//! text into a [`Rejection`] instead of a panic.
//!
//! Rejection messages end up in logs, so they name the field that failed and show untrusted
//! values only through [`shown`]; they never carry a key, a secret or a signature.

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, ParsedPublicKey};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use spki::der::asn1::UintRef;
use spki::der::{self, Decode, Encode, Reader, SliceReader};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};
use x509_cert::Certificate;

use super::provider::{RawRequest, Rejection, Reply};
use super::sign::RsaSigner;
use crate::domain::ids::OrderNo;
use crate::domain::money::{AmountMinor, Currency};

/// `rsaEncryption` (PKCS #1): every provider here signs with RSA.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The modulus sizes verified with; a key outside them would fail every notification.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// Most signatures one request may offer: room for a key rotation, and a bound on the HMAC work
/// a single request can ask for.
const MAX_SIGNATURES: usize = 8;

/// The hash a PKCS #1 v1.5 signature is made over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RsaHash {
    Sha256,
    /// Alipay's legacy `RSA` sign type.
    Sha1,
}

/// An RSA public key, parsed once for the hash it verifies with: parsing (the modulus's
/// Montgomery constants) costs about a third of a verification.
pub(crate) struct RsaPublicKey {
    /// PKCS #1 `RSAPublicKey` DER.
    pkcs1: Vec<u8>,
    parsed: ParsedPublicKey,
}

impl RsaPublicKey {
    /// Reads a key given as PEM (`PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`), or as bare
    /// base64 DER of a SubjectPublicKeyInfo or certificate (the form Alipay's console shows).
    ///
    /// Its signatures are made over `hash`. Errors describe the key's shape, never its content.
    pub fn from_text(text: &str, hash: RsaHash) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("key is empty".to_owned());
        }
        let pkcs1 = if text.starts_with("-----BEGIN") {
            pkcs1_from_pem(text)?
        } else {
            pkcs1_from_base64_der(text)?
        };
        let bits = modulus_bits(&pkcs1).map_err(|e| format!("not an RSA public key: {e}"))?;
        if !RSA_BITS.contains(&bits) {
            return Err(format!(
                "RSA key has {bits} bits; {} to {} are supported",
                RSA_BITS.start(),
                RSA_BITS.end()
            ));
        }
        let algorithm = match hash {
            RsaHash::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            RsaHash::Sha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        };
        let parsed = ParsedPublicKey::new(algorithm, &pkcs1)
            .map_err(|e| format!("not a usable RSA public key: {e}"))?;
        Ok(RsaPublicKey { pkcs1, parsed })
    }

    /// Whether this is the public half of `pair`: how a channel keyed with the wrong half of a
    /// pair is told apart.
    pub fn is_public_half_of(&self, pair: &RsaSigner) -> bool {
        self.pkcs1 == pair.public_key_der()
    }

    /// Whether `signature` is this key's PKCS #1 v1.5 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.parsed.verify_sig(message, signature).is_ok()
    }
}

fn pkcs1_from_pem(text: &str) -> Result<Vec<u8>, String> {
    let (label, der) =
        der::pem::decode_vec(text.as_bytes()).map_err(|e| format!("not valid PEM: {e}"))?;
    match label {
        "PUBLIC KEY" => pkcs1_from_spki(&der),
        "CERTIFICATE" => pkcs1_from_certificate(&der),
        "RSA PUBLIC KEY" => Ok(der),
        "PRIVATE KEY" | "RSA PRIVATE KEY" => {
            Err("is a private key; configure the provider's public key".to_owned())
        }
        other => Err(format!(
            "PEM {} is neither a public key nor a certificate",
            shown(other)
        )),
    }
}

fn pkcs1_from_base64_der(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.split_ascii_whitespace().collect();
    let der = STANDARD
        .decode(compact)
        .map_err(|_| "neither PEM nor base64 DER".to_owned())?;
    pkcs1_from_spki(&der).or_else(|spki_error| pkcs1_from_certificate(&der).map_err(|_| spki_error))
}

fn pkcs1_from_certificate(der: &[u8]) -> Result<Vec<u8>, String> {
    let certificate =
        Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("certificate key does not encode: {e}"))?;
    pkcs1_from_spki(&spki)
}

fn pkcs1_from_spki(der: &[u8]) -> Result<Vec<u8>, String> {
    let spki = SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| format!("not a SubjectPublicKeyInfo: {e}"))?;
    if spki.algorithm.oid != RSA_ENCRYPTION {
        return Err(format!("key algorithm {} is not RSA", spki.algorithm.oid));
    }
    spki.subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "key bits are not a whole number of bytes".to_owned())
}

/// The modulus size of a PKCS #1 `RSAPublicKey`, which also proves the DER is one.
fn modulus_bits(pkcs1: &[u8]) -> der::Result<usize> {
    let mut reader = SliceReader::new(pkcs1)?;
    let bits = reader.sequence(|seq| {
        let modulus = UintRef::decode(seq)?;
        UintRef::decode(seq)?; // the public exponent
        let bytes = modulus.as_bytes();
        Ok(bytes
            .first()
            .map_or(0, |top| bytes.len() * 8 - top.leading_zeros() as usize))
    })?;
    reader.finish(bits)
}

/// The first of `names` present: a header the signature depends on, so its absence means the
/// request cannot be verified.
pub(crate) fn signed_header<'a>(
    request: &RawRequest<'a>,
    names: &[&str],
) -> Result<&'a str, Rejection> {
    names
        .iter()
        .find_map(|name| request.header(name))
        .ok_or_else(|| Rejection::Signature(format!("missing {} header", names.join(" or "))))
}

/// Which side of `now` a timestamp's tolerance covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Window {
    /// Too old or too far ahead: a timestamp from the future is as unverifiable as a stale one.
    Both,
    /// Too old only, for providers whose own libraries accept a sender's clock running ahead.
    PastOnly,
}

/// Checks a unix-seconds timestamp against `now`.
pub(crate) fn check_timestamp(
    value: &str,
    now: DateTime<Utc>,
    tolerance_secs: u64,
    window: Window,
) -> Result<(), Rejection> {
    let sent = unix_seconds(value).ok_or_else(|| {
        Rejection::Signature(format!("timestamp {} is not unix seconds", shown(value)))
    })?;
    let age = now.timestamp().saturating_sub(sent);
    let off = match window {
        Window::Both => age.unsigned_abs(),
        Window::PastOnly => age.max(0).unsigned_abs(),
    };
    if off > tolerance_secs {
        return Err(Rejection::Signature(format!(
            "timestamp is {off} s from now; {tolerance_secs} s are allowed"
        )));
    }
    Ok(())
}

/// Plain digits only: `i64::from_str` would also take a sign.
pub(crate) fn unix_seconds(value: &str) -> Option<i64> {
    let plain = !value.is_empty() && value.len() <= 18 && value.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| value.parse().ok()).flatten()
}

/// Whether any of `signatures` is the HMAC-SHA256 of `message` under any of `keys`, each
/// comparison in constant time.
pub(crate) fn check_hmac(
    keys: &[hmac::Key],
    message: &[u8],
    signatures: &[Vec<u8>],
) -> Result<(), Rejection> {
    if signatures.is_empty() {
        return Err(Rejection::Signature("no v1 signature".to_owned()));
    }
    if signatures.len() > MAX_SIGNATURES {
        return Err(Rejection::Signature(format!(
            "{} signatures offered; at most {MAX_SIGNATURES} are checked",
            signatures.len()
        )));
    }
    let holds = keys.iter().any(|key| {
        signatures
            .iter()
            .any(|sig| hmac::verify(key, message, sig).is_ok())
    });
    if holds {
        Ok(())
    } else {
        Err(Rejection::Signature("no signature matches".to_owned()))
    }
}

/// A base64 signature; malformed means unverifiable.
pub(crate) fn signature_from_base64(text: &str) -> Result<Vec<u8>, Rejection> {
    STANDARD
        .decode(text)
        .map_err(|_| Rejection::Signature("signature is not base64".to_owned()))
}

/// Parses a verified JSON document into its typed form.
pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Rejection> {
    // serde's message names the field at fault but may also quote the offending value
    // (decrypted plaintext included): keep it short.
    serde_json::from_slice(bytes).map_err(|e| {
        let message = e.to_string();
        let cut = message
            .char_indices()
            .nth(96)
            .map_or(message.len(), |(i, _)| i);
        Rejection::Format(format!("{what}: {}", &message[..cut]))
    })
}

pub(crate) fn order_no(value: &str) -> Result<OrderNo, Rejection> {
    OrderNo::parse(value)
        .map_err(|_| Rejection::Format(format!("order number {} is malformed", shown(value))))
}

pub(crate) fn currency(code: &str) -> Result<Currency, Rejection> {
    Currency::parse(code)
        .map_err(|_| Rejection::Format(format!("currency {} is not supported", shown(code))))
}

pub(crate) fn minor_units(value: i64) -> Result<AmountMinor, Rejection> {
    AmountMinor::new(value).map_err(|e| Rejection::Format(e.to_string()))
}

/// Untrusted text for a message: quoted, and cut short so one request makes one short log line.
pub(crate) fn shown(value: &str) -> String {
    const LIMIT: usize = 64;
    match value.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{:?}...", value.get(..cut).unwrap_or_default()),
        None => format!("{value:?}"),
    }
}

/// A 2xx status: every provider but Alipay reads it as delivered, whatever the body says.
pub(crate) fn is_success(status: u16) -> bool {
    (200..=299).contains(&status)
}

pub(crate) fn text_reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.as_bytes().to_vec(),
    }
}

pub(crate) fn json_reply(status: u16, body: &serde_json::Value) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body: body.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing;

    /// The same key as PKCS #1 `RSAPublicKey`.
    const WECHAT_TEST_PKCS1: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAzpVK/kRPO51llul+I44FfLsBISL/rlPRM4RADsOTPHusDHwnZ5JO
wQYoatY83Ugq97z9ZirG0BlvAlx50t0+O4ntqlclbo/eALDepTAc7bQMRKeacpDY
dlJK6GEQIF8e0nH/9OQv2kEGy87AmQ3wwmHNu7Cn2nJqxwo/EmogofpdBwgTRcEn
uv27nbLN51Q72Y2H36JldUJrJ6F4Lm6iFckiSdt1OJCWZ+3ljvZkG6MB+Q8CcwOa
ZgDSOvuCZCwx9P1P5C1Z8+gMZQs5+qBTEOlz8u8aJF9Gvc3oSunrr3e3yRO3A7S3
0saZBsZM7Pfk7S+fRsxQzPRafYe7gh5D6wIDAQAB
-----END RSA PUBLIC KEY-----
";

    const RSA_1024_SPKI: &str = "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC77K7EYJ+yYMri3hw8vxVdorak7zMKkQVP3CBVjEjHo0XgaMBLBiyClhsCRAgUWK9BJMrPpDecmnTafN+xcwWx6hYhCW9NUGalehCthp4StqswzQycR4SrKsMNAL3h+ZyWv+3PQD7hAP8CPEewSZOULVQAvvFh3ZoO4lpllaByAwIDAQAB";

    const P256_SPKI: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpWrkYjDo/d97jnmMohPG85atdf8FUB/4IfpyNrqpKyrbL7dtJtqVFZag5oTVKY+gX/uF/eTmJTxbWITtlZ3M0A==";

    fn wechat_public_key_pem() -> String {
        testing::load::<serde_json::Value>("wechatpay.json")["public_key_pem"]
            .as_str()
            .expect("public_key_pem")
            .to_owned()
    }

    #[test]
    fn every_key_form_yields_the_same_pkcs1_key() {
        let spki_pem = wechat_public_key_pem();
        let spki_base64: String = spki_pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let expected = RsaPublicKey::from_text(&spki_pem, RsaHash::Sha256)
            .unwrap()
            .pkcs1;
        for form in [
            spki_base64.as_str(),
            testing::WECHAT_TEST_CERTIFICATE,
            WECHAT_TEST_PKCS1,
        ] {
            assert_eq!(
                RsaPublicKey::from_text(form, RsaHash::Sha256)
                    .unwrap()
                    .pkcs1,
                expected
            );
        }
        let certificate_base64: String = testing::WECHAT_TEST_CERTIFICATE
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        assert_eq!(
            RsaPublicKey::from_text(&certificate_base64, RsaHash::Sha256)
                .unwrap()
                .pkcs1,
            expected
        );
    }

    #[test]
    fn unusable_keys_are_refused_with_a_reason() {
        let private_key = testing::read("alipay-test-private-key.pem");
        let cases = [
            ("", "empty"),
            ("not a key", "base64"),
            ("MIIBIjANBgkq", "SubjectPublicKeyInfo"),
            (RSA_1024_SPKI, "1024 bits"),
            (P256_SPKI, "not RSA"),
            (private_key.as_str(), "private key"),
        ];
        for (text, reason) in cases {
            let error = RsaPublicKey::from_text(text, RsaHash::Sha256)
                .err()
                .expect(reason);
            assert!(
                error.contains(reason),
                "{error:?} should mention {reason:?}"
            );
        }
    }

    #[test]
    fn timestamps_hold_within_the_tolerance_in_both_directions() {
        let now = testing::at(1_000_000);
        let both = |value| check_timestamp(value, now, 300, Window::Both);
        assert!(both("1000000").is_ok());
        assert!(both("999700").is_ok());
        assert!(both("1000300").is_ok());
        let past_only = |value| check_timestamp(value, now, 300, Window::PastOnly);
        assert!(past_only("2000000").is_ok(), "ahead of our clock is fine");
        assert!(past_only("999699").is_err());
        for bad in [
            "999699",
            "1000301",
            "",
            "+1000000",
            "-5",
            "1e6",
            "99999999999999999999",
        ] {
            assert!(matches!(both(bad), Err(Rejection::Signature(_))), "{bad:?}");
        }
    }

    #[test]
    fn long_untrusted_values_are_cut_in_messages() {
        let long = "é".repeat(1000);
        assert!(shown(&long).chars().count() < 80);
        assert_eq!(shown("abc"), "\"abc\"");
    }

    #[test]
    fn hmac_checks_refuse_empty_and_oversized_signature_lists() {
        let keys = [hmac::Key::new(hmac::HMAC_SHA256, b"k")];
        let tags = [hmac::sign(&keys[0], b"m").as_ref().to_vec()];
        assert!(check_hmac(&keys, b"m", &tags).is_ok());
        assert!(check_hmac(&keys, b"n", &tags).is_err());
        assert!(check_hmac(&keys, b"m", &[]).is_err());
        let too_many = vec![tags[0].clone(); MAX_SIGNATURES + 1];
        assert!(check_hmac(&keys, b"m", &too_many).is_err());
    }
}
