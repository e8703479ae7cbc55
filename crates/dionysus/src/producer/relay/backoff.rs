//! When a failed outbox row is retried: dionysus-rb's curve `base × 2^attempts` (P-19: 10 s
//! after the first failure, then 20, 40, …), with ±20 % jitter so rows that failed together
//! do not retry together, capped, and parked after the maximum number of attempts.

use std::time::Duration;

use crate::config::ProducerConfig;

/// What to do with a row after its `attempts`-th failure (counting this one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RetryDecision {
    /// Wait before the next attempt.
    pub(crate) delay: Duration,
    /// Whether the row is parked (`failed_at` set) because it used up its attempts.
    pub(crate) park: bool,
}

/// The un-jittered delay after the `attempts`-th failure: `base × 2^attempts`, capped.
pub(crate) fn base_delay(config: &ProducerConfig, attempts: u32) -> Duration {
    let factor = 2_f64.powi(i32::try_from(attempts.min(62)).unwrap_or(62));
    let seconds = config.retry_backoff_base.as_secs_f64() * factor;
    Duration::from_secs_f64(seconds.min(config.retry_backoff_cap.as_secs_f64()))
}

/// The decision after the `attempts`-th failure; `jitter` in `[0, 1)` spreads the delay over
/// ±20 %.
pub(crate) fn decide(config: &ProducerConfig, attempts: u32, jitter: f64) -> RetryDecision {
    let base = base_delay(config, attempts).as_secs_f64();
    let spread = base * (0.8 + 0.4 * jitter.clamp(0.0, 1.0));
    RetryDecision {
        delay: Duration::from_secs_f64(spread.min(config.retry_backoff_cap.as_secs_f64())),
        park: attempts >= config.max_attempts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_gems_curve_with_a_cap() {
        // Vector p34: retry_at = now + 5 × 2^(new attempts) s.
        let config = ProducerConfig::default();
        let seconds: Vec<u64> = (1..=8).map(|n| base_delay(&config, n).as_secs()).collect();
        assert_eq!(seconds, [10, 20, 40, 80, 160, 320, 600, 600]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_rows_park_at_the_limit() {
        let config = ProducerConfig { max_attempts: 3, ..ProducerConfig::default() };
        assert_eq!(decide(&config, 1, 0.0).delay, Duration::from_secs(8));
        assert_eq!(decide(&config, 1, 0.999_999).delay.as_secs(), 11);
        assert!(!decide(&config, 2, 0.5).park);
        assert!(decide(&config, 3, 0.5).park);
    }

    proptest::proptest! {
        #[test]
        fn delay_is_monotonic_in_attempts_and_never_exceeds_the_cap(attempts in 0_u32..100, jitter in 0.0_f64..1.0) {
            let config = ProducerConfig::default();
            proptest::prop_assert!(base_delay(&config, attempts) <= base_delay(&config, attempts + 1));
            proptest::prop_assert!(decide(&config, attempts, jitter).delay <= config.retry_backoff_cap);
        }
    }
}
