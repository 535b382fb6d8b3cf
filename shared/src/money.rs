//! Exact money: integer nanodollars, parsed from and printed as decimal USD strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Nanodollars per dollar: money has nine decimal places, enough for per-token prices.
pub const NANOS_PER_USD: i64 = 1_000_000_000;
const DECIMALS: usize = 9;

/// An exact amount of USD, stored as signed nanodollars. Never a float.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be a decimal number of USD such as \"12.50\"")]
    Malformed,
    #[error("amount has more than {DECIMALS} decimal places")]
    TooPrecise,
    #[error("amount is too large")]
    Overflow,
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_nanos(nanos: i64) -> Money {
        Money(nanos)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    fn from_str(text: &str) -> Result<Money, MoneyError> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (unsigned, ""),
        };
        let all_digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err(MoneyError::Malformed);
        }
        if unsigned.ends_with('.') {
            return Err(MoneyError::Malformed);
        }
        if fraction.len() > DECIMALS {
            return Err(MoneyError::TooPrecise);
        }
        let whole: i64 = whole.parse().map_err(|_| MoneyError::Overflow)?;
        let mut fraction_nanos: i64 = 0;
        for (place, digit) in fraction.bytes().enumerate() {
            fraction_nanos += i64::from(digit - b'0') * 10_i64.pow((DECIMALS - 1 - place) as u32);
        }
        let nanos = whole
            .checked_mul(NANOS_PER_USD)
            .and_then(|nanos| nanos.checked_add(fraction_nanos))
            .ok_or(MoneyError::Overflow)?;
        Ok(Money(if negative { -nanos } else { nanos }))
    }
}

/// Prints at least two decimals and no trailing zeros beyond them: `12.50`, `0.000123`.
impl fmt::Display for Money {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let magnitude = self.0.unsigned_abs();
        let whole = magnitude / NANOS_PER_USD as u64;
        let fraction = format!("{:09}", magnitude % NANOS_PER_USD as u64);
        let trimmed = fraction.trim_end_matches('0');
        let shown = if trimmed.len() < 2 {
            &fraction[..2]
        } else {
            trimmed
        };
        write!(formatter, "{sign}{whole}.{shown}")
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some("USD as an exact decimal string, up to 9 decimals"))
            .examples([serde_json::json!("12.50")])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Money {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimal_strings_exactly() {
        let cases: &[(&str, Result<i64, MoneyError>)] = &[
            ("0", Ok(0)),
            ("12.50", Ok(12_500_000_000)),
            ("0.000000001", Ok(1)),
            ("-3.2", Ok(-3_200_000_000)),
            ("1.", Err(MoneyError::Malformed)),
            (".5", Err(MoneyError::Malformed)),
            ("", Err(MoneyError::Malformed)),
            ("1e3", Err(MoneyError::Malformed)),
            ("+1", Err(MoneyError::Malformed)),
            ("1.2.3", Err(MoneyError::Malformed)),
            ("0.0000000001", Err(MoneyError::TooPrecise)),
            ("99999999999999999999", Err(MoneyError::Overflow)),
            ("9223372037", Err(MoneyError::Overflow)),
        ];
        for (text, expected) in cases {
            let parsed = text.parse::<Money>().map(Money::nanos);
            assert_eq!(&parsed, expected, "parsing {text:?}");
        }
    }

    #[test]
    fn prints_two_decimals_at_least() {
        let cases = [
            (0, "0.00"),
            (12_500_000_000, "12.50"),
            (123_000, "0.000123"),
            (1, "0.000000001"),
            (-1_050_000_000, "-1.05"),
            (7_000_000_000, "7.00"),
        ];
        for (nanos, expected) in cases {
            assert_eq!(Money::from_nanos(nanos).to_string(), expected);
        }
    }

    #[test]
    fn round_trips_through_json_as_a_string() {
        let money: Money = serde_json::from_str("\"1.25\"").unwrap();
        assert_eq!(serde_json::to_string(&money).unwrap(), "\"1.25\"");
        assert!(serde_json::from_str::<Money>("1.25").is_err());
    }
}
