//! The clock used for trust decisions on boxes without a real-time clock.
//!
//! A Raspberry Pi boots with the time of its last shutdown (fake-hwclock) or the epoch until
//! NTP syncs. Token windows are checked against [`TrustClock::now`]:
//! - the wall clock, when it is past the build floor and not behind the last known good
//!   time plus the monotonic time elapsed since it was taken;
//! - otherwise the last known good time plus that elapsed time (a lower bound of the real
//!   time: expiry is then checked against a time that may be early, never late);
//! - with no last known good time and an unsynced clock, `Err`: new authorisations fail
//!   closed until the clock syncs.
//!
//! The last known good time is persisted under `data_dir` at most once a minute, so a
//! reboot without network resumes from it. The rule itself is pure (`nexus_policies::clock`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nexus_policies::clock::{ClockGuard, TimeSource, UnixTime};
use nexus_policies::error::ClockError;
use tracing::warn;

/// How often the last known good time is written to disk.
const PERSIST_EVERY: Duration = Duration::from_secs(60);

/// The agent's trust clock; see the module docs for the rule.
#[derive(Debug)]
pub struct TrustClock {
    guard: ClockGuard,
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The last wall time seen while synced, and when (monotonic) it was seen.
    last_known_good: Option<(UnixTime, Instant)>,
    persisted_at: Option<Instant>,
    warned_unsynced: bool,
}

impl TrustClock {
    /// A clock persisting its last known good time at `path` (loaded now, if present).
    pub fn new(path: Option<PathBuf>) -> Self {
        let loaded = path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| text.trim().parse::<i64>().ok())
            .map(|secs| (UnixTime(secs), Instant::now()));
        Self {
            guard: ClockGuard::default(),
            path,
            state: Mutex::new(State {
                last_known_good: loaded,
                persisted_at: None,
                warned_unsynced: false,
            }),
        }
    }

    /// The effective "now" for token checks.
    pub fn now(&self) -> Result<UnixTime, ClockError> {
        let wall = UnixTime(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
        self.now_at(wall, Instant::now())
    }

    /// Whether the wall clock is usable for token checks now: not behind the last known
    /// good time, and not before the build's floor.
    pub fn is_synced(&self) -> bool {
        self.now().is_ok()
            && !self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .warned_unsynced
    }

    /// [`Self::now`] with the wall and monotonic clocks given (for tests).
    pub fn now_at(&self, wall: UnixTime, mono: Instant) -> Result<UnixTime, ClockError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (lkg, elapsed) = match state.last_known_good {
            Some((time, at)) => (Some(time), mono.saturating_duration_since(at)),
            None => (None, Duration::ZERO),
        };
        match self.guard.effective_now(wall, elapsed, lkg) {
            Ok(effective) => {
                if effective.source == TimeSource::Wall {
                    state.last_known_good = Some((effective.now, mono));
                    state.warned_unsynced = false;
                    let due = state
                        .persisted_at
                        .is_none_or(|at| mono.saturating_duration_since(at) >= PERSIST_EVERY);
                    if due {
                        state.persisted_at = Some(mono);
                        self.persist(effective.now);
                    }
                } else if !state.warned_unsynced {
                    state.warned_unsynced = true;
                    warn!(wall = wall.0, using = effective.now.0, "Wall clock is behind the last known good time; using that plus elapsed time for token checks until it syncs.");
                }
                Ok(effective.now)
            }
            Err(error) => {
                if !state.warned_unsynced {
                    state.warned_unsynced = true;
                    warn!(%error, "Clock not synced and no last known good time: refusing new authorisations until it syncs.");
                }
                Err(error)
            }
        }
    }

    fn persist(&self, now: UnixTime) {
        let Some(path) = &self.path else { return };
        let result =
            crate::fsutil::write_atomically(path, format!("{}\n", now.0).as_bytes(), 0o644);
        if let Err(error) = result {
            warn!(path = %path.display(), %error, "Cannot persist the last known good time.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_policies::clock::BUILD_FLOOR;

    #[test]
    fn a_synced_clock_is_used_and_remembered_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("clock.lkg");
        let t0 = Instant::now();
        let synced = UnixTime(BUILD_FLOOR.0 + 1_000_000);
        let clock = TrustClock::new(Some(path.clone()));
        assert_eq!(clock.now_at(synced, t0), Ok(synced));

        // A reboot with the clock back at the epoch: the persisted time is a lower bound.
        let rebooted = TrustClock::new(Some(path));
        let now = rebooted
            .now_at(UnixTime(0), Instant::now())
            .expect("last known good");
        assert!(
            now >= synced,
            "{now:?} is at least the last known good time"
        );
    }

    #[test]
    fn an_unsynced_clock_without_history_fails_closed() {
        let clock = TrustClock::new(None);
        assert!(clock.now_at(UnixTime(0), Instant::now()).is_err());
        // Once synced it is trusted, and a later jump back is bounded below.
        let t0 = Instant::now();
        let synced = UnixTime(BUILD_FLOOR.0 + 50);
        assert_eq!(clock.now_at(synced, t0), Ok(synced));
        let later = t0 + Duration::from_secs(30);
        assert_eq!(
            clock.now_at(UnixTime(10), later),
            Ok(UnixTime(synced.0 + 30))
        );
    }
}
