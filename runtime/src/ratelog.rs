//! "Log once per cause per period": keeps a noisy failure from flooding the journal of a
//! small box while still saying how much was suppressed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Decides, per cause, whether to log now.
#[derive(Debug)]
pub struct RateLimitedLog {
    period: Duration,
    causes: HashMap<String, (Instant, u64)>,
}

impl RateLimitedLog {
    /// At most one line per cause per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            causes: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a line for `cause` should be written now (`suppressed` is
    /// how many occurrences were swallowed since the last line), `None` to stay quiet.
    pub fn check(&mut self, cause: &str, now: Instant) -> Option<u64> {
        match self.causes.get_mut(cause) {
            Some((last, suppressed)) if now.duration_since(*last) < self.period => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let count = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(count)
            }
            None => {
                // Bound the map: causes are a small closed set in practice, but never let a
                // stream of distinct strings grow it without limit.
                if self.causes.len() >= 1024 {
                    self.causes.clear();
                }
                self.causes.insert(cause.to_owned(), (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_cause_per_period_with_the_suppressed_count() {
        let mut log = RateLimitedLog::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.check("bad_signature", t0), Some(0));
        assert_eq!(
            log.check("bad_signature", t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            log.check("bad_signature", t0 + Duration::from_secs(2)),
            None
        );
        assert_eq!(log.check("malformed", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(
            log.check("bad_signature", t0 + Duration::from_secs(61)),
            Some(2)
        );
        assert_eq!(
            log.check("bad_signature", t0 + Duration::from_secs(62)),
            None
        );
    }
}
