//! Delayed copies on the wire: the [`Delay`] of a `#[publish(..., delayed = …)]` (how it is
//! written, its canonical name), the `<topic>_delay_<delay>` topic a copy waits in, the
//! headers a copy carries ([`DelayHeaders`]) and the due time they state.
//!
//! This module owns the names and the arithmetic; sending copies is the relay's, waiting
//! and re-sending them the delayer's.

use std::fmt;
use std::time::Duration;

/// The longest delay accepted: a year. A copy must outlive its wait on the delay topic, so
/// the topic's retention must be longer than the delay anyway.
pub const MAX_DELAY_SECONDS: u64 = 365 * 86_400;

/// How long a delayed copy waits before it is re-sent to its topic, in whole seconds.
///
/// Written as a number and a unit, `30s`, `5m`, `1h`, `2d`, or as a sum of such parts
/// (`1h30m`); its [canonical name](Delay::name) uses the largest unit that divides it
/// exactly (`90m` for `1h30m`, `1m` for `60s`), so two spellings of one delay share one topic.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Delay {
    seconds: u64,
}

/// A delay that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelayError {
    /// Nothing was written.
    #[error("a delay cannot be empty; write a number and a unit, e.g. `5m`")]
    Empty,
    /// A part has a number but no unit, or a unit but no number.
    #[error("`{text}` is not a delay: write a number followed by a unit (s, m, h or d), e.g. `30s`, `5m`, `1h`")]
    Malformed {
        /// What was written.
        text: String,
    },
    /// A unit other than `s`, `m`, `h`, `d`.
    #[error("`{text}` has an unknown unit `{unit}`: use s (seconds), m (minutes), h (hours) or d (days)")]
    UnknownUnit {
        /// What was written.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// Zero seconds: a copy that is due at once is no delay.
    #[error("`{text}` is no delay: it must be at least one second")]
    Zero {
        /// What was written.
        text: String,
    },
    /// Longer than [`MAX_DELAY_SECONDS`].
    #[error("`{text}` is longer than the longest delay, a year (365d)")]
    TooLong {
        /// What was written.
        text: String,
    },
}

impl Delay {
    /// A delay of `seconds` (at least one, at most [`MAX_DELAY_SECONDS`]; `None` otherwise).
    pub const fn from_secs(seconds: u64) -> Option<Delay> {
        if seconds == 0 || seconds > MAX_DELAY_SECONDS {
            None
        } else {
            Some(Delay { seconds })
        }
    }

    /// A delay of `seconds`, raised to one second or lowered to [`MAX_DELAY_SECONDS`] when
    /// outside (what `#[publish(..., delayed = …)]` expands to, after checking the value).
    pub const fn clamped(seconds: u64) -> Delay {
        if seconds == 0 {
            Delay { seconds: 1 }
        } else if seconds > MAX_DELAY_SECONDS {
            Delay { seconds: MAX_DELAY_SECONDS }
        } else {
            Delay { seconds }
        }
    }

    /// The delay in seconds.
    pub const fn as_secs(self) -> u64 {
        self.seconds
    }

    /// The delay as a [`Duration`].
    pub const fn duration(self) -> Duration {
        Duration::from_secs(self.seconds)
    }

    /// Reads `5m`, `30s`, `1h30m`, … (see [`Delay`]).
    pub fn parse(text: &str) -> Result<Delay, DelayError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(DelayError::Empty);
        }
        let malformed = || DelayError::Malformed { text: text.to_owned() };
        let too_long = || DelayError::TooLong { text: text.to_owned() };
        let mut total: u64 = 0;
        let mut rest = trimmed;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(malformed());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| too_long())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let scale = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3_600,
                "d" => 86_400,
                "" => return Err(malformed()),
                other => return Err(DelayError::UnknownUnit { text: text.to_owned(), unit: other.to_owned() }),
            };
            total = number.checked_mul(scale).and_then(|part| total.checked_add(part)).ok_or_else(too_long)?;
        }
        match total {
            0 => Err(DelayError::Zero { text: text.to_owned() }),
            seconds if seconds > MAX_DELAY_SECONDS => Err(too_long()),
            seconds => Ok(Delay { seconds }),
        }
    }

    /// The canonical name: the largest unit that divides the delay exactly (`5m`, `90s`,
    /// `1h`, `2d`), as used in the delay topic's name.
    pub fn name(self) -> String {
        self.to_string()
    }

    /// `<topic>_delay_<name>`: the topic copies of `topic`'s messages wait in.
    pub fn topic(self, topic: &str) -> String {
        format!("{topic}_delay_{self}")
    }

    /// When a copy sent at `sent_at_ms` (milliseconds since the Unix epoch) is due.
    pub fn due_after(self, sent_at_ms: i64) -> i64 {
        let delay_ms = i64::try_from(self.seconds.saturating_mul(1_000)).unwrap_or(i64::MAX);
        sent_at_ms.saturating_add(delay_ms)
    }
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.seconds;
        let (number, unit) = if seconds.is_multiple_of(86_400) {
            (seconds / 86_400, "d")
        } else if seconds.is_multiple_of(3_600) {
            (seconds / 3_600, "h")
        } else if seconds.is_multiple_of(60) {
            (seconds / 60, "m")
        } else {
            (seconds, "s")
        };
        write!(f, "{number}{unit}")
    }
}

impl std::str::FromStr for Delay {
    type Err = DelayError;

    fn from_str(text: &str) -> Result<Delay, DelayError> {
        Delay::parse(text)
    }
}

/// A chain of delays as one header value: canonical names joined by commas (`5m,1h`);
/// empty for no delay.
pub fn chain_text(chain: &[Delay]) -> String {
    chain.iter().map(|delay| delay.name()).collect::<Vec<_>>().join(",")
}

/// Reads [`chain_text`]'s form back.
pub fn parse_chain(text: &str) -> Result<Vec<Delay>, DelayError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    text.split(',').map(Delay::parse).collect()
}

/// Header names of a delayed copy. On a delay topic a copy carries all but
/// [`DelayHeaders::DELAYED`]; re-sent to its topic it carries only that one. The value is
/// byte for byte the value of the immediate message, and the key its key.
#[derive(Debug, Clone, Copy)]
pub struct DelayHeaders;

impl DelayHeaders {
    /// The topic the copy is re-sent to when due, e.g. `v3_rentals`.
    pub const TARGET: &'static str = "dionysus-delay-target";
    /// When the copy is due: milliseconds since the Unix epoch (decimal).
    pub const DUE: &'static str = "dionysus-delay-due";
    /// The delays still to come after this one, as [`chain_text`] writes them (absent or
    /// empty at the end of the chain).
    pub const CHAIN: &'static str = "dionysus-delay-chain";
    /// The partition key the immediate message was partitioned by (absent when it was
    /// partitioned by its key); the re-sent copy goes to the same partition of the target.
    pub const PARTITION_KEY: &'static str = "dionysus-delay-partition-key";
    /// On a re-sent copy: the delay it waited, e.g. `5m` — a marker consumers may read; the
    /// value is the same event.
    pub const DELAYED: &'static str = "dionysus-delayed";
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn delays_are_written_with_one_unit_or_a_sum_of_parts() {
        assert_eq!(Delay::parse("30s").map(Delay::as_secs), Ok(30));
        assert_eq!(Delay::parse("5m").map(Delay::as_secs), Ok(300));
        assert_eq!(Delay::parse("1h").map(Delay::as_secs), Ok(3_600));
        assert_eq!(Delay::parse("2d").map(Delay::as_secs), Ok(172_800));
        assert_eq!(Delay::parse("1h30m").map(Delay::as_secs), Ok(5_400));
        assert_eq!(Delay::parse(" 5m ").map(Delay::as_secs), Ok(300));
    }

    #[test]
    fn wrong_delays_say_what_is_wrong() {
        assert_eq!(Delay::parse(""), Err(DelayError::Empty));
        assert!(matches!(Delay::parse("5"), Err(DelayError::Malformed { .. })));
        assert!(matches!(Delay::parse("m"), Err(DelayError::Malformed { .. })));
        assert!(matches!(Delay::parse("-5m"), Err(DelayError::Malformed { .. })));
        assert!(matches!(Delay::parse("5 m"), Err(DelayError::UnknownUnit { .. })));
        assert!(matches!(Delay::parse("5w"), Err(DelayError::UnknownUnit { .. })));
        assert!(matches!(Delay::parse("0s"), Err(DelayError::Zero { .. })));
        assert!(matches!(Delay::parse("366d"), Err(DelayError::TooLong { .. })));
        assert!(matches!(Delay::parse("99999999999999999999999s"), Err(DelayError::TooLong { .. })));
        let message = Delay::parse("5w").unwrap_err().to_string();
        assert!(message.contains("unknown unit `w`"), "{message}");
    }

    #[test]
    fn canonical_names_use_the_largest_exact_unit() {
        let name = |text: &str| Delay::parse(text).unwrap().name();
        assert_eq!(name("60s"), "1m");
        assert_eq!(name("90s"), "90s");
        assert_eq!(name("1h30m"), "90m");
        assert_eq!(name("120m"), "2h");
        assert_eq!(name("24h"), "1d");
        assert_eq!(Delay::parse("5m").unwrap().topic("v3_rentals"), "v3_rentals_delay_5m");
    }

    #[test]
    fn the_due_time_is_the_send_time_plus_the_delay() {
        let delay = Delay::parse("5m").unwrap();
        assert_eq!(delay.due_after(1_000), 301_000);
        assert_eq!(delay.due_after(i64::MAX - 1), i64::MAX);
    }

    #[test]
    fn chains_read_back_what_they_write() {
        let chain = vec![Delay::parse("5m").unwrap(), Delay::parse("1h").unwrap()];
        assert_eq!(chain_text(&chain), "5m,1h");
        assert_eq!(parse_chain("5m,1h"), Ok(chain));
        assert_eq!(parse_chain(""), Ok(Vec::new()));
        assert!(parse_chain("5m,,1h").is_err());
    }

    proptest! {
        #[test]
        fn a_canonical_name_reads_back_as_the_same_delay(seconds in 1..=MAX_DELAY_SECONDS) {
            let delay = Delay::from_secs(seconds).unwrap();
            prop_assert_eq!(Delay::parse(&delay.name()), Ok(delay));
        }

        #[test]
        fn spellings_of_one_delay_share_one_name(hours in 0u64..48, minutes in 0u64..120, seconds in 0u64..120) {
            prop_assume!(hours + minutes + seconds > 0);
            let spelled = format!("{hours}h{minutes}m{seconds}s");
            let total = Delay::from_secs(hours * 3_600 + minutes * 60 + seconds).unwrap();
            prop_assert_eq!(Delay::parse(&spelled).map(Delay::name), Ok(total.name()));
        }

        #[test]
        fn a_copy_is_never_due_before_its_delay(sent in 0i64..4_000_000_000_000, seconds in 1..=MAX_DELAY_SECONDS) {
            let delay = Delay::from_secs(seconds).unwrap();
            prop_assert_eq!(delay.due_after(sent) - sent, i64::try_from(seconds * 1_000).unwrap());
        }
    }
}
