//! Shared helpers for Corral's benchmark programs: timing statistics and table output.

pub mod raw;

use std::time::Duration;

/// The median of `samples` (upper median for an even count); zero when empty.
pub fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

/// The `p`th percentile of `samples` by nearest rank; zero when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `a / b` as a ratio.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Reads `--name value` from the command line, or `default`.
pub fn flag<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        let s: Vec<Duration> = [5, 1, 3, 2, 4]
            .iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect();
        assert_eq!(median(&s), Duration::from_millis(3));
        assert_eq!(percentile(&s, 100.0), Duration::from_millis(5));
        assert_eq!(percentile(&s, 0.0), Duration::from_millis(1));
        assert_eq!(median(&[]), Duration::ZERO);
    }
}
