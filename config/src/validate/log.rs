//! `[log]` (the tracing filter and format) and `[heartbeat]` (its interval and when a
//! silent child counts as offline): small sections with defaults only.

use super::reader::{Reader, Section};
use super::schema::{HEARTBEAT_INTERVAL, LOG_LEVEL, OFFLINE_AFTER_INTERVALS};
use crate::error::ErrorKind;
use crate::model::{HeartbeatConfig, LogConfig, LogFormat};

/// The levels of a tracing filter.
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

impl Reader<'_> {
    /// `[heartbeat]`: `offline_after` defaults to a multiple of the interval read.
    pub(super) fn heartbeat(&mut self, s: &Section<'_>) -> HeartbeatConfig {
        let interval = self.duration(s, "interval", HEARTBEAT_INTERVAL);
        let offline_after = self.duration(
            s,
            "offline_after",
            interval.saturating_mul(OFFLINE_AFTER_INTERVALS),
        );
        HeartbeatConfig {
            interval,
            offline_after,
        }
    }

    /// `[log]`: a bad value is reported, and its default used to carry on.
    pub(super) fn log(&mut self, s: &Section<'_>) -> LogConfig {
        let level = match self.optional_text(s, "level") {
            Some(g) if valid_filter(&g.value) => g.value,
            Some(g) => {
                self.push(
                    ErrorKind::InvalidValue,
                    g.origin,
                    &g.path,
                    format!(
                        "{:?} is not a log filter: use one of {} or a comma list of \
                         target=level (e.g. \"nexus_federation=debug,info\")",
                        g.value,
                        LEVELS.join(", ")
                    ),
                );
                LOG_LEVEL.to_owned()
            }
            None => LOG_LEVEL.to_owned(),
        };
        let format = match self.optional_text(s, "format") {
            None => LogFormat::Human,
            Some(g) => self.choice(g, "a log format").unwrap_or(LogFormat::Human),
        };
        LogConfig { level, format }
    }
}

/// A plausible tracing filter: levels and `target=level` directives, comma-separated.
fn valid_filter(filter: &str) -> bool {
    let is_level = |level: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim()));
    let is_target = |target: &str| {
        let target = target.trim();
        !target.is_empty()
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
    };
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    !directives.is_empty()
        && directives.iter().all(|d| match d.split_once('=') {
            None => is_level(d),
            Some((target, level)) => is_target(target) && is_level(level),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_are_levels_or_target_level_lists() {
        assert!(valid_filter("info"));
        assert!(valid_filter("WARN"));
        assert!(valid_filter("nexus_federation=debug,info"));
        assert!(valid_filter(
            "nexus_federation::uplink=trace, async_nats=warn"
        ));
        assert!(!valid_filter(""));
        assert!(!valid_filter("verbose"));
        assert!(!valid_filter("nexus=loud"));
        assert!(!valid_filter("=info"));
    }
}
