//! Money: integer minor units plus an ISO 4217 currency; shown as a decimal string in
//! major units. Never a float.

use async_graphql::{InputObject, SimpleObject};
use iso_currency::Currency;

use crate::error::{AppError, AppResult};

/// The ISO 4217 currency with this code that has minor units (not gold, SDRs, ...).
fn currency(code: &str) -> Option<(Currency, u32)> {
    let currency = Currency::from_code(code)?;
    Some((currency, u32::from(currency.exponent()?)))
}

/// Decimal places of a currency's minor unit (codes are validated before they are stored).
fn exponent(code: &str) -> u32 {
    currency(code).map_or(2, |(_, exp)| exp)
}

pub fn validate_currency(field: &str, code: &str) -> AppResult<String> {
    let code = code.trim().to_uppercase();
    match currency(&code) {
        Some((currency, _)) => Ok(currency.code().to_string()),
        None => Err(AppError::field(
            field,
            "must be an ISO 4217 currency code with minor units, such as IDR, USD or EUR",
        )),
    }
}

/// `"25000"` or `"25000.50"` in major units -> minor units. Negative amounts and more
/// decimals than the currency has are refused.
pub fn parse_amount(field: &str, amount: &str, currency: &str) -> AppResult<i64> {
    let exp = exponent(currency);
    let bad = |why: &str| AppError::field(field, why.to_string());
    let amount = amount.trim();
    let (whole, frac) = amount.split_once('.').unwrap_or((amount, ""));
    if whole.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad(
            "must be a non-negative decimal number such as 25000 or 19.99",
        ));
    }
    if frac.len() as u32 > exp {
        return Err(bad(&format!("{currency} has {exp} decimal places")));
    }
    let scale = 10i64.pow(exp);
    let whole: i64 = whole.parse().map_err(|_| bad("is too large"))?;
    let frac_value: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().map_err(|_| bad("is invalid"))? * 10i64.pow(exp - frac.len() as u32)
    };
    whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(frac_value))
        .ok_or_else(|| bad("is too large"))
}

/// Like `parse_amount`, with one optional sign: `"-5000"` is a debit of 5000.
pub fn parse_signed_amount(field: &str, amount: &str, currency: &str) -> AppResult<i64> {
    let amount = amount.trim();
    match amount.strip_prefix('-') {
        Some(rest) => Ok(-parse_amount(field, rest, currency)?),
        None => parse_amount(field, amount.strip_prefix('+').unwrap_or(amount), currency),
    }
}

/// Minor units -> decimal string in major units.
pub fn format_amount(minor: i64, currency: &str) -> String {
    let exp = exponent(currency);
    if exp == 0 {
        return minor.to_string();
    }
    let scale = 10i64.pow(exp);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        abs / scale as u64,
        abs % scale as u64,
        width = exp as usize
    )
}

#[derive(SimpleObject, Clone, Debug, PartialEq, Eq)]
pub struct Money {
    /// Decimal string in major units, e.g. "25000.00".
    pub amount: String,
    /// ISO 4217 code, e.g. "IDR".
    pub currency: String,
}

impl Money {
    pub fn new(minor: i64, currency: &str) -> Self {
        Money {
            amount: format_amount(minor, currency),
            currency: currency.to_string(),
        }
    }
}

#[derive(InputObject, Clone, Debug)]
pub struct MoneyInput {
    /// Decimal string in major units, e.g. "25000" or "19.99".
    pub amount: String,
    /// ISO 4217 code; absent: the server's default currency (`PODIUM_DEFAULT_CURRENCY`).
    pub currency: Option<String>,
}

impl MoneyInput {
    /// (minor units, normalized currency).
    pub fn parse(&self, field: &str, default_currency: &str) -> AppResult<(i64, String)> {
        let currency =
            validate_currency(field, self.currency.as_deref().unwrap_or(default_currency))?;
        Ok((parse_amount(field, &self.amount, &currency)?, currency))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_exactly() {
        assert_eq!(parse_amount("p", "25000", "IDR").unwrap(), 2_500_000);
        assert_eq!(format_amount(2_500_000, "IDR"), "25000.00");
        assert_eq!(parse_amount("p", "19.9", "USD").unwrap(), 1990);
        assert_eq!(format_amount(5, "USD"), "0.05");
        assert_eq!(parse_amount("p", "500", "JPY").unwrap(), 500);
        assert_eq!(format_amount(-1234, "KWD"), "-1.234");
        assert!(parse_amount("p", "1.001", "USD").is_err());
        assert!(parse_amount("p", "-1", "USD").is_err());
        assert!(parse_amount("p", "1e3", "USD").is_err());
        assert!(validate_currency("c", "rupiah").is_err());
        // Three letters are not enough: the code must exist and have minor units.
        assert!(validate_currency("c", "XYZ").is_err());
        assert!(validate_currency("c", "XAU").is_err());
        assert_eq!(validate_currency("c", " usd ").unwrap(), "USD");
    }
}
