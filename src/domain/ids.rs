//! Identifiers that arrive from outside, parsed once at the edge.
//!
//! Each is 1 to `MAX` characters of `[0-9A-Za-z_-]`: safe in a URL path, a log line and every
//! provider's order-number field.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} must be 1 to {max} characters of [0-9A-Za-z_-]")]
pub struct IdError {
    pub what: &'static str,
    pub value: String,
    pub max: usize,
}

fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX: usize = $max;

            pub fn parse(value: &str) -> Result<Self, IdError> {
                if value.is_empty() || value.len() > Self::MAX || !value.bytes().all(is_id_char) {
                    return Err(IdError { what: $what, value: value.to_owned(), max: Self::MAX });
                }
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The merchant's order number, the idempotency key of an order. Alipay allows 64 characters.
    OrderNo,
    "order_no",
    64
);
id_type!(
    /// The caller's number for one spending of a balance, the idempotency key of a debit.
    DebitNo,
    "debit_no",
    64
);
id_type!(
    /// The merchant's user, whose balance a paid order credits.
    UserId,
    "user_id",
    64
);
id_type!(
    /// A configured provider account; its name is the notify URL, `/notify/{channel}`.
    ChannelName,
    "channel",
    64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_provider_safe_characters_only() {
        assert!(OrderNo::parse("A20261122000001").is_ok());
        assert!(OrderNo::parse("20190815155618536-564-57").is_ok());
        assert!(OrderNo::parse(&"a".repeat(64)).is_ok());
        assert!(OrderNo::parse(&"a".repeat(65)).is_err());
        assert!(OrderNo::parse("").is_err());
        assert!(OrderNo::parse("a b").is_err());
        assert!(UserId::parse("user/1").is_err());
        assert!(DebitNo::parse(&"d".repeat(64)).is_ok());
        assert!(DebitNo::parse(&"d".repeat(65)).is_err());
        assert!(DebitNo::parse("d 1")
            .unwrap_err()
            .to_string()
            .contains("debit_no"));
        assert!(ChannelName::parse("alipay").is_ok());
        let err = ChannelName::parse("ali pay").unwrap_err();
        assert!(err.to_string().contains("channel"));
    }
}
