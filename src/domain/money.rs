//! Money as integer minor units, never floats.
//!
//! An amount only exists together with its currency's exponent: `"10.00"` CNY is 1000 fen and
//! `"100"` JPY is 100 yen. Parsing is exact and refuses anything it would have to round.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} is negative")]
    Negative(String),
    #[error("amount {0:?} is not a plain decimal number")]
    Malformed(String),
    #[error("amount {amount:?} has more than {exponent} decimal places for {currency}")]
    TooPrecise {
        amount: String,
        currency: Currency,
        exponent: u32,
    },
    #[error("amount {0:?} is too large")]
    Overflow(String),
    #[error("currency {0:?} is not supported (supported: CNY, USD, EUR, GBP, HKD, JPY, KRW)")]
    UnknownCurrency(String),
}

/// An ISO 4217 currency that payhook knows the minor-unit exponent of.
///
/// Unknown currencies are refused rather than guessed: a wrong exponent credits 100 times too much
/// or too little.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Currency {
    Cny,
    Usd,
    Eur,
    Gbp,
    Hkd,
    Jpy,
    Krw,
}

impl Currency {
    pub const ALL: [Currency; 7] = [
        Currency::Cny,
        Currency::Usd,
        Currency::Eur,
        Currency::Gbp,
        Currency::Hkd,
        Currency::Jpy,
        Currency::Krw,
    ];

    /// The number of decimal places of the currency's minor unit.
    pub fn exponent(self) -> u32 {
        match self {
            Currency::Jpy | Currency::Krw => 0,
            _ => 2,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Currency::Cny => "CNY",
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
            Currency::Gbp => "GBP",
            Currency::Hkd => "HKD",
            Currency::Jpy => "JPY",
            Currency::Krw => "KRW",
        }
    }

    /// Parses an ISO code in any letter case (Stripe sends `usd`).
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        Currency::ALL
            .into_iter()
            .find(|c| c.code().eq_ignore_ascii_case(code))
            .ok_or_else(|| MoneyError::UnknownCurrency(code.to_owned()))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::parse(s)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The value is not repeated: a config error must not print what was typed in its place,
        // which may be a secret on the wrong line.
        let code = String::deserialize(d)?;
        Currency::parse(&code).map_err(|_| {
            serde::de::Error::custom(
                "currency is not supported (supported: CNY, USD, EUR, GBP, HKD, JPY, KRW)",
            )
        })
    }
}

/// A non-negative amount in the currency's minor unit (fen, cents, yen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AmountMinor(i64);

impl AmountMinor {
    pub const ZERO: AmountMinor = AmountMinor(0);

    /// Wraps a count of minor units; negative counts are refused.
    pub fn new(minor: i64) -> Result<AmountMinor, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative(minor.to_string()));
        }
        Ok(AmountMinor(minor))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// Parses a decimal string such as `"10.00"`, `"0.01"` or `"100"` exactly.
    ///
    /// Fewer decimals than the exponent are fine (`"10.5"` CNY is 1050); more are refused, as
    /// are signs, exponents, spaces and anything that does not fit in an `i64`.
    pub fn parse(text: &str, currency: Currency) -> Result<AmountMinor, MoneyError> {
        if text.is_empty() {
            return Err(MoneyError::Empty);
        }
        if text.starts_with('-') {
            return Err(MoneyError::Negative(text.to_owned()));
        }
        let malformed = || MoneyError::Malformed(text.to_owned());
        let (int_part, frac_part) = match text.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (text, None),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int_part.is_empty() || !all_digits(int_part) {
            return Err(malformed());
        }
        let frac = frac_part.unwrap_or("");
        if frac_part.is_some() && (frac.is_empty() || !all_digits(frac)) {
            return Err(malformed());
        }
        let exponent = currency.exponent();
        if frac.len() > exponent as usize {
            return Err(MoneyError::TooPrecise {
                amount: text.to_owned(),
                currency,
                exponent,
            });
        }
        let overflow = || MoneyError::Overflow(text.to_owned());
        let scale = 10i64.pow(exponent);
        let units: i64 = int_part.parse().map_err(|_| overflow())?;
        let mut frac_minor: i64 = if frac.is_empty() {
            0
        } else {
            frac.parse().map_err(|_| malformed())?
        };
        for _ in frac.len()..exponent as usize {
            frac_minor *= 10;
        }
        units
            .checked_mul(scale)
            .and_then(|v| v.checked_add(frac_minor))
            .map(AmountMinor)
            .ok_or_else(overflow)
    }

    /// Formats with exactly the currency's number of decimals: 1000 CNY is `"10.00"`.
    pub fn format(self, currency: Currency) -> String {
        format_signed(self.0, currency)
    }
}

/// A signed count of minor units as a decimal string: `-2.00` for a debt.
pub fn format_signed(minor: i64, currency: Currency) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let magnitude = minor.unsigned_abs();
    let exponent = currency.exponent();
    if exponent == 0 {
        return format!("{sign}{magnitude}");
    }
    let scale = 10u64.pow(exponent);
    format!(
        "{sign}{}.{:0width$}",
        magnitude / scale,
        magnitude % scale,
        width = exponent as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signed_amounts_show_their_sign() {
        assert_eq!(format_signed(-700, Currency::Cny), "-7.00");
        assert_eq!(format_signed(5, Currency::Cny), "0.05");
        assert_eq!(format_signed(-5, Currency::Jpy), "-5");
        assert_eq!(format_signed(0, Currency::Usd), "0.00");
        assert_eq!(
            format_signed(i64::MIN, Currency::Cny),
            "-92233720368547758.08"
        );
    }

    #[test]
    fn parses_decimal_strings_exactly() {
        let cny = Currency::Cny;
        assert_eq!(AmountMinor::parse("10.00", cny).unwrap().get(), 1000);
        assert_eq!(AmountMinor::parse("0.01", cny).unwrap().get(), 1);
        assert_eq!(AmountMinor::parse("100", cny).unwrap().get(), 10000);
        assert_eq!(AmountMinor::parse("10.5", cny).unwrap().get(), 1050);
        assert_eq!(AmountMinor::parse("0", cny).unwrap().get(), 0);
        assert_eq!(AmountMinor::parse("100", Currency::Jpy).unwrap().get(), 100);
    }

    #[test]
    fn refuses_what_it_would_have_to_round_or_guess() {
        let cny = Currency::Cny;
        assert!(matches!(
            AmountMinor::parse("0.001", cny),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            AmountMinor::parse("1.5", Currency::Jpy),
            Err(MoneyError::TooPrecise { .. })
        ));
        assert!(matches!(
            AmountMinor::parse("-1.00", cny),
            Err(MoneyError::Negative(_))
        ));
        assert_eq!(AmountMinor::parse("", cny), Err(MoneyError::Empty));
        for bad in [
            "1e3", " 1.00", "1.00 ", "+1", "1.", ".5", "1,00", "abc", "1..0", "0x10", "١",
        ] {
            assert!(
                matches!(AmountMinor::parse(bad, cny), Err(MoneyError::Malformed(_))),
                "{bad:?} should be malformed"
            );
        }
        assert!(matches!(
            AmountMinor::parse("92233720368547758.08", cny),
            Err(MoneyError::Overflow(_))
        ));
        assert!(matches!(
            AmountMinor::parse("99999999999999999999999", cny),
            Err(MoneyError::Overflow(_))
        ));
        assert_eq!(
            AmountMinor::parse("92233720368547758.07", cny)
                .unwrap()
                .get(),
            i64::MAX
        );
        assert!(AmountMinor::new(-1).is_err());
    }

    #[test]
    fn currencies_are_known_by_code_in_any_case_and_unknown_ones_refused() {
        assert_eq!(Currency::parse("usd").unwrap(), Currency::Usd);
        assert_eq!(Currency::parse("CNY").unwrap(), Currency::Cny);
        assert_eq!(Currency::parse("KRW").unwrap().exponent(), 0);
        assert!(matches!(
            Currency::parse("XBT"),
            Err(MoneyError::UnknownCurrency(_))
        ));
        assert!(Currency::parse("").is_err());
    }

    #[test]
    fn formats_with_the_currency_exponent() {
        assert_eq!(AmountMinor(1000).format(Currency::Cny), "10.00");
        assert_eq!(AmountMinor(1).format(Currency::Usd), "0.01");
        assert_eq!(AmountMinor(1050).format(Currency::Eur), "10.50");
        assert_eq!(AmountMinor(100).format(Currency::Jpy), "100");
    }

    proptest! {
        #[test]
        fn formatting_then_parsing_round_trips(minor in 0i64..=i64::MAX, idx in 0usize..Currency::ALL.len()) {
            let currency = Currency::ALL[idx];
            let amount = AmountMinor::new(minor).unwrap();
            let text = amount.format(currency);
            prop_assert_eq!(AmountMinor::parse(&text, currency).unwrap(), amount);
        }

        #[test]
        fn parsing_then_formatting_round_trips(int in 0u64..1_000_000_000_000, frac in 0u32..100) {
            let text = format!("{int}.{frac:02}");
            let amount = AmountMinor::parse(&text, Currency::Cny).unwrap();
            prop_assert_eq!(amount.format(Currency::Cny), text);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in "\\PC{0,24}") {
            let _ = AmountMinor::parse(&text, Currency::Cny);
        }
    }
}
