//! `[log]` (the tracing filter and format), `[heartbeat]` (its interval and when a silent
//! child counts as offline), `[health]` (when a node is degraded) and `[metrics]` (the
//! optional listener): small sections with defaults only.

use super::reader::{Reader, Section};
use super::schema::{
    FULL_PCT, HEARTBEAT_INTERVAL, LOG_LEVEL, OFFLINE_AFTER_INTERVALS, OUTBOX_FULL_PCT,
    OUTBOX_MAX_AGE, PCT_RANGE, TOKEN_EXPIRY,
};
use crate::error::ErrorKind;
use crate::model::{HealthConfig, HeartbeatConfig, LogConfig, LogFormat, MetricsConfig};

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

    /// `[health]`: thresholds, each defaulted on its own.
    pub(super) fn health(&mut self, s: &Section<'_>) -> HealthConfig {
        let pct = |reader: &mut Self, key: &str, default: u8| {
            reader
                .integer(s, key, PCT_RANGE.clone())
                .and_then(|n| u8::try_from(n).ok())
                .unwrap_or(default)
        };
        HealthConfig {
            outbox_full_pct: pct(self, "outbox_full_pct", OUTBOX_FULL_PCT),
            outbox_max_age: self.duration(s, "outbox_max_age", OUTBOX_MAX_AGE),
            disk_full_pct: pct(self, "disk_full_pct", FULL_PCT),
            mem_full_pct: pct(self, "mem_full_pct", FULL_PCT),
            token_expiry: self.duration(s, "token_expiry", TOKEN_EXPIRY),
        }
    }

    /// `[metrics]`: `listen` is a socket address (`127.0.0.1:9464`, `[::1]:9464`).
    pub(super) fn metrics_listener(&mut self, s: &Section<'_>) -> MetricsConfig {
        let listen =
            self.optional_text(s, "listen")
                .and_then(|got| match got.value.trim().parse() {
                    Ok(address) => Some(address),
                    Err(_) => {
                        self.push(
                            ErrorKind::InvalidValue,
                            got.origin,
                            &got.path,
                            format!(
                                "{:?} is not a socket address: use an IP address and a port, \
                             e.g. \"127.0.0.1:9464\" (loopback only) or \"0.0.0.0:9464\"",
                                got.value
                            ),
                        );
                        None
                    }
                });
        MetricsConfig { listen }
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
