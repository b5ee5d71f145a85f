//! What every provider's signer shares: the payment a notification reports and the refunds of it,
//! the signed request that comes out, RSA private keys, errors, and the fresh ids a provider would
//! issue. For `payhook fixtures` and for tests; nothing on the receiving path uses it. The query
//! clients ([`crate::recovery::ask`]) sign their requests with [`RsaSigner`] too.
//!
//! Each provider's signer lives beside its verifier (`alipay::sign`, `wechatpay::sign`, ...) and
//! builds the signed bytes with the verifier's own function, so a notification it makes verifies
//! with the channel's configured keys and nothing else. [`super::signer::Signer`] picks a
//! channel's.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use base64::Engine;
use chrono::{DateTime, FixedOffset, Utc};

use crate::config::Secret;
use crate::domain::ids::OrderNo;
use crate::domain::money::{AmountMinor, Currency};

/// The order a notification pays.
#[derive(Debug, Clone)]
pub struct Payment {
    pub order_no: OrderNo,
    pub amount: AmountMinor,
    pub currency: Currency,
}

/// One refund of a signed payment.
#[derive(Debug, Clone)]
pub struct RefundSpec {
    /// The refund's id where the provider's notification names it (Alipay `out_biz_no`, WeChat
    /// Pay `refund_id`, Standard Webhooks `refund_id`); Stripe's `charge.refunded` names none.
    pub refund_id: String,
    /// What goes back this time.
    pub amount: AmountMinor,
    /// What has gone back of the payment so far, this refund included: what Alipay's
    /// `refund_fee` and Stripe's `amount_refunded` state.
    pub total: AmountMinor,
}

impl RefundSpec {
    /// A refund of `amount` that brings the payment's refunds to `total`, under a fresh id.
    pub fn new(amount: AmountMinor, total: AmountMinor) -> RefundSpec {
        RefundSpec {
            refund_id: format!("RF{}", unique_hex()),
            amount,
            total,
        }
    }
}

/// A signed request: what a fixture item carries.
#[derive(Debug, Clone)]
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A signed payment notification and the provider trade it names, which its refunds name too.
#[derive(Debug, Clone)]
pub struct SignedPayment {
    pub signed: Signed,
    pub trade_no: String,
}

/// Why a private key cannot sign; it describes the key's shape, never its content.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not valid PEM: {0}")]
    Pem(spki::der::pem::Error),
    #[error("PEM {0:?} is not an RSA private key")]
    NotRsaPrivateKey(String),
    #[error("not a usable RSA private key: {0}")]
    Unusable(aws_lc_rs::error::KeyRejected),
    #[error("neither PEM nor base64 DER")]
    NotPemOrBase64,
}

/// Why a notification cannot be signed with a channel's keys.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(
        "signing as {provider} needs --private-key PEM_FILE, the private half of the channel's \
         {public}"
    )]
    NoPrivateKey {
        provider: &'static str,
        public: &'static str,
    },
    #[error("--private-key: {0}")]
    PrivateKey(KeyError),
    #[error("--serial {serial} is not one of the channel's public_keys ({known})")]
    UnknownSerial { serial: String, known: String },
    #[error("the channel has no public_keys")]
    NoPublicKeys,
    #[error("the channel has no signing secret")]
    NoSecret,
    #[error("apiv3_key must be 32 bytes")]
    ApiV3KeyLength,
    #[error("the nonce must be 12 bytes")]
    NonceLength,
    #[error("the resource is too large to encrypt")]
    TooLarge,
    #[error("the secret is not whsec_ followed by non-empty base64")]
    Secret,
}

/// An RSA private key, the signing half of a provider's RSA public key.
pub struct RsaSigner(RsaKeyPair);

impl RsaSigner {
    /// Reads a PEM private key: PKCS #8 (`PRIVATE KEY`) or PKCS #1 (`RSA PRIVATE KEY`).
    ///
    /// Errors describe the key's shape, never its content.
    pub fn from_pem(text: &str) -> Result<RsaSigner, KeyError> {
        let (label, der) =
            spki::der::pem::decode_vec(text.trim().as_bytes()).map_err(KeyError::Pem)?;
        let pair = match label {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            other => return Err(KeyError::NotRsaPrivateKey(other.to_owned())),
        };
        pair.map(RsaSigner).map_err(KeyError::Unusable)
    }

    /// Reads a private key as PEM, or as bare base64 DER of PKCS #8 or PKCS #1 (the form
    /// Alipay's key tool writes).
    ///
    /// Errors describe the key's shape, never its content.
    pub fn from_text(text: &str) -> Result<RsaSigner, KeyError> {
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            return RsaSigner::from_pem(text);
        }
        let compact: String = text.split_ascii_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| KeyError::NotPemOrBase64)?;
        RsaKeyPair::from_pkcs8(&der)
            .or_else(|_| RsaKeyPair::from_der(&der))
            .map(RsaSigner)
            .map_err(KeyError::Unusable)
    }

    /// The public half, as PKCS #1 `RSAPublicKey` DER.
    pub fn public_key_der(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }

    /// SHA256withRSA, PKCS #1 v1.5: Alipay's `RSA2` and WeChat Pay v3's scheme.
    pub fn sign_sha256(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = vec![0; self.0.public_modulus_len()];
        // PKCS #1 v1.5 is deterministic; the API asks for a generator all the same.
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .expect("the buffer is the modulus length");
        signature
    }
}

/// The private half of a channel's RSA public key, as PEM text: the channel holds only the
/// public half.
pub(crate) fn private_key(
    pem: Option<&str>,
    provider: &'static str,
    public: &'static str,
) -> Result<RsaSigner, SignError> {
    let pem = pem.ok_or(SignError::NoPrivateKey { provider, public })?;
    RsaSigner::from_pem(pem).map_err(SignError::PrivateKey)
}

/// The secret fixtures sign with: the channel's first configured one.
pub(crate) fn first_secret(secrets: &[Secret]) -> Result<String, SignError> {
    secrets
        .first()
        .map(|s| s.expose().to_owned())
        .ok_or(SignError::NoSecret)
}

/// China Standard Time, in which Alipay and WeChat Pay write their times.
pub(crate) fn china(now: DateTime<Utc>) -> DateTime<FixedOffset> {
    now.with_timezone(&FixedOffset::east_opt(8 * 3600).expect("a valid offset"))
}

/// `n` random decimal digits.
pub(crate) fn digits(n: usize) -> String {
    (0..n).map(|_| fastrand::digit(10)).collect()
}

/// A fresh id: 32 hex digits, time-ordered and unique.
pub(crate) fn unique_hex() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A fresh id in no order: 32 random hex digits. Providers' trade ids come in no order, so
/// fixtures' ids land anywhere in an index, as real ones do.
pub(crate) fn random_hex() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing;

    #[test]
    fn private_keys_are_read_from_either_pem_form_and_public_keys_are_refused() {
        use spki::der::asn1::OctetStringRef;
        use spki::der::pem::{self, LineEnding};
        use spki::der::{Decode, Reader, SliceReader};

        let pkcs8 = testing::read("wechatpay-test-private-key.pem");
        let (_, der) = pem::decode_vec(pkcs8.as_bytes()).unwrap();
        // PKCS #8 wraps the PKCS #1 key: version, algorithm, then the key as an octet string.
        let mut reader = SliceReader::new(&der).unwrap();
        let pkcs1 = reader
            .sequence(|seq| {
                u8::decode(seq)?;
                spki::AlgorithmIdentifierRef::decode(seq)?;
                Ok(OctetStringRef::decode(seq)?.as_bytes().to_vec())
            })
            .unwrap();
        let pkcs1 = pem::encode_string("RSA PRIVATE KEY", LineEnding::LF, &pkcs1).unwrap();
        let message = b"the same key signs the same bytes";
        assert_eq!(
            RsaSigner::from_pem(&pkcs1).unwrap().sign_sha256(message),
            RsaSigner::from_pem(&pkcs8).unwrap().sign_sha256(message)
        );

        let public = testing::load::<serde_json::Value>("wechatpay.json")["public_key_pem"]
            .as_str()
            .unwrap()
            .to_owned();
        let error = RsaSigner::from_pem(&public).err().unwrap().to_string();
        assert!(error.contains("PUBLIC KEY"), "{error}");
        assert!(RsaSigner::from_pem("not a key").is_err());

        // Bare base64 of either form, as Alipay's key tool writes it, on one line or several.
        let bare =
            |pem: &str| -> String { pem.lines().filter(|l| !l.starts_with("-----")).collect() };
        for text in [bare(&pkcs8), bare(&pkcs1), pkcs1.clone()] {
            assert_eq!(
                RsaSigner::from_text(&text).unwrap().sign_sha256(message),
                RsaSigner::from_pem(&pkcs8).unwrap().sign_sha256(message)
            );
        }
        let error = RsaSigner::from_text("sk_live_s3cr3t")
            .err()
            .unwrap()
            .to_string();
        assert!(!error.contains("s3cr3t"), "{error}");
        assert!(RsaSigner::from_text("AAAA").is_err());
    }

    #[test]
    fn sha256_with_rsa_matches_the_wechatpay_go_signer_vector() {
        // wechatpay-go's own test of its SHA256WithRSASigner (the signer behind its
        // Authorization header): this key signs "source" as this signature.
        let published: serde_json::Value = testing::load("published.json");
        let v = &published["wechatpay-go-sha256withrsa"];
        let text = |key: &str| v[key].as_str().expect(key).to_owned();
        let signer = RsaSigner::from_text(&text("private_key")).unwrap();
        let signature = signer.sign_sha256(text("message").as_bytes());
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(signature),
            text("signature")
        );
    }
}
