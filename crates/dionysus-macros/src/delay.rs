//! `delayed = "5m"` and `delayed = ["5m", "1h"]` of `#[publish(...)]`: each delay read as
//! the runtime reads it (a number and a unit, s/m/h/d, or a sum such as `1h30m`; at least a
//! second, at most a year), so a wrong one fails the build at its own string. The expansion
//! carries seconds; naming the delay topics is the runtime's (`wire::delay`).

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::{Expr, Lit};

use crate::attr;
use crate::ctxt::Ctxt;
use crate::symbol::DELAYED;

/// The longest delay, in seconds (the runtime's `MAX_DELAY_SECONDS`).
const MAX_SECONDS: u64 = 365 * 86_400;
const EXAMPLE: &str = r#"delayed = "5m" or delayed = ["5m", "1h"]"#;

/// One delay of a chain, with the string it was written in.
pub(crate) struct Delay {
    pub(crate) seconds: u64,
    pub(crate) span: Span,
}

/// `delayed = "5m"` or `delayed = ["5m", "1h"]`; `None` when nothing valid was given (every
/// mistake recorded).
pub(crate) fn read(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<Vec<Delay>>> {
    let Some(expr) = attr::value(cx, DELAYED, meta, EXAMPLE)? else { return Ok(None) };
    let items: Vec<&Expr> = match &expr {
        Expr::Array(array) => array.elems.iter().collect(),
        other => vec![other],
    };
    if items.is_empty() {
        cx.error_spanned_by(&expr, format!("`delayed` needs at least one delay, e.g. `{EXAMPLE}`"));
        return Ok(None);
    }
    let mut delays = Vec::with_capacity(items.len());
    let mut valid = true;
    for item in items {
        match attr::lit(item) {
            Some(Lit::Str(text)) => match seconds(&text.value()) {
                Ok(seconds) => delays.push(Delay { seconds, span: text.span() }),
                Err(message) => {
                    cx.error_spanned_by(text, message);
                    valid = false;
                }
            },
            _ => {
                cx.error_spanned_by(item, format!("expected a delay as a string for `delayed`, e.g. `{EXAMPLE}`"));
                valid = false;
            }
        }
    }
    Ok(valid.then_some(delays))
}

/// The seconds of one delay, or what is wrong with it.
fn seconds(text: &str) -> Result<u64, String> {
    let hint = "write a number followed by a unit (s, m, h or d), e.g. `30s`, `5m`, `1h`, `1h30m`";
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(format!("a delay cannot be empty; {hint}"));
    }
    let too_long = || format!("`{text}` is longer than the longest delay, a year (365d)");
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("`{text}` is not a delay: {hint}"));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "" => return Err(format!("`{text}` is not a delay: {hint}")),
            unit => {
                return Err(format!(
                    "`{text}` has an unknown unit `{unit}`: use s (seconds), m (minutes), h (hours) or d (days)"
                ))
            }
        };
        rest = &rest[unit_len..];
        total = number.checked_mul(scale).and_then(|part| total.checked_add(part)).ok_or_else(too_long)?;
    }
    match total {
        0 => Err(format!("`{text}` is no delay: it must be at least one second")),
        seconds if seconds > MAX_SECONDS => Err(too_long()),
        seconds => Ok(seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::seconds;

    #[test]
    fn delays_read_as_the_runtime_reads_them() {
        assert_eq!(seconds("30s"), Ok(30));
        assert_eq!(seconds("5m"), Ok(300));
        assert_eq!(seconds("1h30m"), Ok(5_400));
        assert_eq!(seconds("2d"), Ok(172_800));
        assert!(seconds("5").is_err());
        assert!(seconds("0s").is_err());
        assert!(seconds("5w").unwrap_err().contains("unknown unit `w`"));
        assert!(seconds("400d").unwrap_err().contains("longest delay"));
    }
}
