//! Time for token checks on boxes without a real-time clock.
//!
//! A Raspberry Pi has no RTC: until NTP syncs, its wall clock may be at the epoch or days
//! behind (fake-hwclock restores the time of the last shutdown). Token expiry depends on
//! it, so the agent does not take the wall clock on faith. The rule:
//!
//! 1. The caller persists a **last-known-good** wall time (LKG) from time to time while the
//!    clock is trusted, and passes, with every reading, the **monotonic time known to have
//!    passed since that LKG** (since it was taken, in this process; since the process
//!    started, when it was loaded from disk, which under-counts and so stays a lower bound).
//!    `lkg + elapsed` is then a time that has certainly passed: a lower bound of the truth.
//! 2. The wall clock is **unsynced** if it is before the build-time floor
//!    ([`BUILD_FLOOR`], 2026-01-01), or before `lkg + elapsed` (it is demonstrably behind).
//! 3. Synced: "now" is the wall clock, and the caller should persist it as the new LKG.
//! 4. Unsynced with an LKG: "now" is `lkg + elapsed`. A clock reset to 1970 thus cannot
//!    resurrect a token that expired before the LKG. Expiry is checked against a lower
//!    bound, so a token may be honoured for up to the unknown downtime past its expiry;
//!    that is the price of working offline, and it ends when NTP syncs.
//! 5. Unsynced with no LKG (or an LKG before the floor, which cannot be a good time):
//!    **fail closed** for new authorisations with [`ClockError::Unsynced`]. Grants already
//!    verified may be kept by the caller; nothing new is authorised on a made-up time.
//!
//! A wall clock running *ahead* cannot be detected without a reference and is taken as is.
//! Everything here is pure: the caller reads the clocks and passes the values in.

use std::time::Duration;

use crate::error::ClockError;

/// Unix time in whole seconds (UTC). Tokens carry times in this unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub i64);

impl UnixTime {
    /// Seconds since the epoch.
    pub fn secs(self) -> i64 {
        self.0
    }

    /// This time plus `d` (whole seconds, saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_secs(d)))
    }
}

impl std::fmt::Display for UnixTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whole seconds of `d` as i64, saturating.
pub(crate) fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// 2026-01-01T00:00:00Z: no correct clock running this build reads earlier.
pub const BUILD_FLOOR: UnixTime = UnixTime(1_767_225_600);

/// Where the effective time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The wall clock, judged synced: persist it as the new last-known-good time.
    Wall,
    /// Last-known-good plus monotonic elapsed time: the wall clock is unsynced.
    LastKnownGood,
}

/// The time to check tokens against, and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveNow {
    /// The time to use.
    pub now: UnixTime,
    /// Where it came from.
    pub source: TimeSource,
}

/// Decides the effective "now" from the wall clock, a monotonic elapsed time and the
/// last-known-good time. See the module docs for the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockGuard {
    floor: UnixTime,
}

impl Default for ClockGuard {
    fn default() -> Self {
        Self::new(BUILD_FLOOR)
    }
}

impl ClockGuard {
    /// A guard with the given floor (normally [`BUILD_FLOOR`]).
    pub fn new(floor: UnixTime) -> Self {
        Self { floor }
    }

    /// The floor below which the wall clock is never believed.
    pub fn floor(&self) -> UnixTime {
        self.floor
    }

    /// The effective time for token checks.
    ///
    /// - `wall`: the wall clock now;
    /// - `elapsed`: monotonic time known to have passed since `last_known_good` was taken
    ///   (a lower bound is fine; zero if unknown);
    /// - `last_known_good`: the last wall time the caller saw while the clock was synced
    ///   (persisted across restarts), if any.
    pub fn effective_now(
        &self,
        wall: UnixTime,
        elapsed: Duration,
        last_known_good: Option<UnixTime>,
    ) -> Result<EffectiveNow, ClockError> {
        // An LKG before the floor was not taken from a synced clock: ignore it.
        let lower_bound = last_known_good
            .filter(|lkg| *lkg >= self.floor)
            .map(|lkg| lkg.saturating_add(elapsed));
        match lower_bound {
            Some(bound) if wall < bound => Ok(EffectiveNow {
                now: bound,
                source: TimeSource::LastKnownGood,
            }),
            _ if wall >= self.floor => Ok(EffectiveNow {
                now: wall,
                source: TimeSource::Wall,
            }),
            Some(bound) => Ok(EffectiveNow {
                now: bound,
                source: TimeSource::LastKnownGood,
            }),
            None => Err(ClockError::Unsynced {
                wall: wall.0,
                floor: self.floor.0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: UnixTime = BUILD_FLOOR;
    const DAY: i64 = 86_400;

    fn guard() -> ClockGuard {
        ClockGuard::default()
    }

    #[test]
    fn a_synced_wall_clock_is_used_as_is() {
        let wall = UnixTime(FLOOR.0 + 10 * DAY);
        let lkg = Some(UnixTime(FLOOR.0 + 9 * DAY));
        let got = guard().effective_now(wall, Duration::from_secs(60), lkg);
        assert_eq!(
            got,
            Ok(EffectiveNow {
                now: wall,
                source: TimeSource::Wall
            })
        );
        let got = guard().effective_now(wall, Duration::ZERO, None);
        assert_eq!(
            got,
            Ok(EffectiveNow {
                now: wall,
                source: TimeSource::Wall
            })
        );
    }

    #[test]
    fn a_clock_at_the_epoch_falls_back_to_last_known_good_plus_elapsed() {
        let lkg = UnixTime(FLOOR.0 + 5 * DAY);
        let got = guard().effective_now(UnixTime(0), Duration::from_secs(120), Some(lkg));
        assert_eq!(
            got,
            Ok(EffectiveNow {
                now: UnixTime(lkg.0 + 120),
                source: TimeSource::LastKnownGood
            })
        );
    }

    #[test]
    fn a_clock_behind_last_known_good_is_unsynced_even_above_the_floor() {
        // fake-hwclock restored a time after the floor but before what we already saw.
        let lkg = UnixTime(FLOOR.0 + 30 * DAY);
        let wall = UnixTime(FLOOR.0 + 2 * DAY);
        let got = guard().effective_now(wall, Duration::from_secs(5), Some(lkg));
        assert_eq!(
            got,
            Ok(EffectiveNow {
                now: UnixTime(lkg.0 + 5),
                source: TimeSource::LastKnownGood
            })
        );
        // Behind lkg + elapsed, though after lkg: still demonstrably behind.
        let wall = UnixTime(lkg.0 + 10);
        let got = guard().effective_now(wall, Duration::from_secs(100), Some(lkg));
        assert_eq!(
            got,
            Ok(EffectiveNow {
                now: UnixTime(lkg.0 + 100),
                source: TimeSource::LastKnownGood
            })
        );
    }

    #[test]
    fn no_last_known_good_and_an_unsynced_clock_fails_closed() {
        let got = guard().effective_now(UnixTime(0), Duration::from_secs(9), None);
        assert_eq!(
            got,
            Err(ClockError::Unsynced {
                wall: 0,
                floor: FLOOR.0
            })
        );
        // An LKG below the floor is not a good time.
        let got = guard().effective_now(UnixTime(5), Duration::ZERO, Some(UnixTime(10)));
        assert_eq!(
            got,
            Err(ClockError::Unsynced {
                wall: 5,
                floor: FLOOR.0
            })
        );
    }

    #[test]
    fn the_floor_itself_is_synced_and_huge_elapsed_saturates() {
        let got = guard().effective_now(FLOOR, Duration::ZERO, None);
        assert_eq!(
            got,
            Ok(EffectiveNow {
                now: FLOOR,
                source: TimeSource::Wall
            })
        );
        let got = guard().effective_now(UnixTime(0), Duration::MAX, Some(FLOOR));
        assert_eq!(
            got,
            Ok(EffectiveNow {
                now: UnixTime(i64::MAX),
                source: TimeSource::LastKnownGood
            })
        );
        assert_eq!(ClockGuard::new(UnixTime(7)).floor(), UnixTime(7));
    }
}
