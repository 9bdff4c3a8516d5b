//! Capped, jittered exponential backoff: a value type, so it can be tested without time.

use std::time::Duration;

/// Exponential backoff: `base × 2^attempt`, capped at `max`, with "equal jitter" (the
/// delay is uniformly spread over the upper half, so retries of many nodes do not
/// synchronise after a shared outage, yet never collapse to zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `base` up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry number `attempt` (0-based), given a uniformly random `jitter`.
    pub fn delay(&self, attempt: u32, jitter: u64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = exp / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let extra = if spread == 0 {
            0
        } else {
            jitter % (spread + 1)
        };
        half + Duration::from_nanos(extra)
    }

    /// The delay before retry `attempt`, jittered from the process' random state.
    pub fn delay_now(&self, attempt: u32) -> Duration {
        self.delay(attempt, random_u64())
    }
}

/// A random u64 from std's per-process random hasher keys (enough for jitter; not crypto).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

    #[test]
    fn delays_double_then_cap() {
        // With the largest jitter the delay is the full exponential value.
        let full = |a| B.delay(a, u64::MAX - 1);
        assert!(full(0) <= Duration::from_millis(100));
        assert!(full(3) <= Duration::from_millis(800));
        assert!(full(3) >= Duration::from_millis(400));
        assert!(full(30) <= Duration::from_secs(10));
        assert!(full(30) >= Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        for jitter in [0, 1, 12345, u64::MAX] {
            let d = B.delay(4, jitter);
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(1600),
                "{d:?}"
            );
        }
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert!(B.delay(u32::MAX, 7) <= Duration::from_secs(10));
    }
}
