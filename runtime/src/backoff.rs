//! Capped, jittered exponential backoff: a value type, so it can be tested without time;
//! and the one wait of every retry loop ([`Retry`], [`sleep`]), which ends early when the
//! loop's shutdown token is cancelled.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

/// The state of one retry loop: a [`Backoff`] and how many waits since it last succeeded.
///
/// ```text
/// let mut retry = Retry::new(backoff);
/// loop {
///     match try_it().await {
///         Ok(_) => retry.reset(),
///         Err(_) if retry.attempt() == 0 => warn!(…),   // the first failure only
///         Err(_) => {}
///     }
///     if !retry.wait(&shutdown).await { return; }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    backoff: Backoff,
    attempt: u32,
}

impl Retry {
    /// A loop that has not failed yet.
    pub const fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            attempt: 0,
        }
    }

    /// How many delays were handed out since the start or the last [`Retry::reset`]: 0
    /// before the first failure's wait (to log only the first failure).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// It worked: the next failure waits the shortest delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The (jittered) delay before the next try; counts as one attempt. For a loop that
    /// logs the delay before it waits with [`sleep`]; others call [`Retry::wait`].
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay_now(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Waits the next delay: `true` when it passed (try again), `false` when `shutdown`
    /// came first (stop).
    ///
    /// Cancel safety: only a timer; dropping it loses nothing.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        sleep(self.next_delay(), shutdown).await
    }
}

/// Sleeps `delay` unless `shutdown` is cancelled first: `true` when the delay passed,
/// `false` when cancelled (also when it already was: cancellation wins a tie).
///
/// Cancel safety: only a timer; dropping it loses nothing.
pub async fn sleep(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
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

    /// A wait that is not cancelled lasts its whole delay (paused time: no real sleeping).
    #[tokio::test(start_paused = true)]
    async fn a_wait_that_is_not_cancelled_lasts_the_delay() {
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        assert!(sleep(Duration::from_secs(3), &shutdown).await);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    /// Cancelling the token ends a wait at once, with `false`.
    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_a_wait_at_once() {
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            cancel.cancel();
        });
        let mut retry = Retry::new(Backoff::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        assert!(!retry.wait(&shutdown).await, "a cancelled wait says stop");
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    /// A token cancelled before the wait wins even over a zero delay: a loop never runs
    /// another round after shutdown.
    #[tokio::test(start_paused = true)]
    async fn an_already_cancelled_token_stops_even_a_zero_wait() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        assert!(!sleep(Duration::ZERO, &shutdown).await);
        let mut retry = Retry::new(B);
        assert!(!retry.wait(&shutdown).await);
    }

    /// Each wait is longer (up to the cap) until a success resets the count; every delay
    /// stays within its attempt's jitter band.
    #[tokio::test(start_paused = true)]
    async fn waits_grow_until_reset() {
        let shutdown = CancellationToken::new();
        let mut retry = Retry::new(B);
        assert_eq!(retry.attempt(), 0);
        for attempt in 0..8u32 {
            let full = B.base.saturating_mul(1 << attempt).min(B.max);
            let start = tokio::time::Instant::now();
            assert!(retry.wait(&shutdown).await);
            let waited = start.elapsed();
            assert!(
                waited >= full / 2 && waited <= full,
                "attempt {attempt}: waited {waited:?}, expected {:?}..={full:?}",
                full / 2
            );
            assert_eq!(retry.attempt(), attempt + 1);
        }
        retry.reset();
        assert_eq!(retry.attempt(), 0);
        let start = tokio::time::Instant::now();
        assert!(retry.wait(&shutdown).await);
        assert!(
            start.elapsed() <= B.base,
            "back to the first delay after a reset"
        );
    }
}
