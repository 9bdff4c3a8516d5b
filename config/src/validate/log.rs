//! `[log]` (the tracing filter and format), `[heartbeat]` (its interval and when a silent
//! child counts as offline), `[health]` (when a node is degraded) and `[metrics]` (the
//! optional listener), `[remote_config]` (whose documents apply, and the health gate): small
//! sections with defaults only.

use super::reader::{Reader, Section};
use super::schema::{
    FULL_PCT, HEARTBEAT_INTERVAL, LOG_LEVEL, OFFLINE_AFTER_INTERVALS, OUTBOX_FULL_PCT,
    OUTBOX_MAX_AGE, PCT_RANGE, TOKEN_EXPIRY,
};
use crate::error::ErrorKind;
use crate::model::{
    EventsConfig, HealthConfig, HeartbeatConfig, LandingPolicy, LogConfig, LogFormat,
    MetricsConfig, Mode, PageConfig, RemoteConfigConfig, ServerTls,
};
use std::time::Duration;

/// The levels of a tracing filter.
const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// The shortest bearer token `page.token_file` may hold.
pub const MIN_PAGE_TOKEN: usize = 16;

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
        MetricsConfig {
            listen: self.listen(s, 9464),
        }
    }

    /// `[events]`: `registry` is an existing directory (its files are read and compiled by
    /// the agent at start and by `check`, which name the file of any error); `unknown`
    /// (default `land`) and `invalid` (default `audit`) are landing policies.
    pub(super) fn events(&mut self, s: &Section<'_>) -> EventsConfig {
        let registry = self
            .optional_text(s, "registry")
            .and_then(|got| self.path(got))
            .and_then(|got| {
                if got.value.is_dir() {
                    return Some(got.value);
                }
                let problem = format!(
                    "{} is not a directory: point it at your event registry (NAME/VERSION/ \
                     directories; `nexus-agent events scaffold NAME --version 1 --dir DIR` \
                     starts one), or remove the key",
                    got.value.display()
                );
                self.push(ErrorKind::InvalidValue, got.origin, &got.path, problem);
                None
            });
        let policy = |reader: &mut Self, key: &str, default: LandingPolicy| match reader
            .optional_text(s, key)
        {
            None => default,
            Some(got) => reader.choice(got, "a policy").unwrap_or(default),
        };
        EventsConfig {
            registry,
            unknown: policy(self, "unknown", LandingPolicy::Land),
            invalid: policy(self, "invalid", LandingPolicy::Audit),
        }
    }

    /// `[remote_config]`: `accept` (default `tree`) and `gate` (default 60 s, at least 1 s).
    pub(super) fn remote_config(&mut self, s: &Section<'_>) -> RemoteConfigConfig {
        let defaults = RemoteConfigConfig::default();
        let accept = match self.optional_text(s, "accept") {
            None => defaults.accept,
            Some(got) => self.choice(got, "a source").unwrap_or(defaults.accept),
        };
        let gate = self.gate(s, "remote_config.gate", defaults.gate);
        RemoteConfigConfig { accept, gate }
    }

    /// A health gate (`remote_config.gate`, `updates.gate`): a duration of at least 1 s.
    pub(super) fn gate(&mut self, s: &Section<'_>, path: &str, default: Duration) -> Duration {
        let gate = self.duration(s, "gate", default);
        if gate < Duration::from_secs(1) {
            let origin = self.origin_or_fallback(s, "gate");
            self.push(
                ErrorKind::InvalidValue,
                origin,
                path,
                "must be at least 1s: the node needs time to connect before it is judged".into(),
            );
        }
        gate
    }

    /// `[page]` (hubs and the root): `listen` as for `[metrics]`, an optional
    /// `token_file` (readable, one token of at least [`MIN_PAGE_TOKEN`] characters) and
    /// optional `cert_file` + `key_file` (PEM, both or neither).
    pub(super) fn page(&mut self, s: &Section<'_>, mode: Option<Mode>) -> PageConfig {
        if !s.present {
            return PageConfig::default();
        }
        if mode == Some(Mode::Member) {
            self.push(
                ErrorKind::ForbiddenSection,
                s.origin.clone(),
                "page",
                "a member has no fleet to show: remove the [page] section (hubs serve the \
                 page of their site, the root that of the whole fleet)"
                    .to_owned(),
            );
            return PageConfig::default();
        }
        let listen = self.listen(s, 9470);
        let token_file = self
            .optional_text(s, "token_file")
            .and_then(|got| self.path(got))
            .and_then(|got| {
                let problem = match super::preflight::read_capped(&got.value, 4096) {
                    Err(error) => format!("cannot read {}: {error}", got.value.display()),
                    Ok(bytes) => match std::str::from_utf8(&bytes).map(str::trim) {
                        Ok(token)
                            if token.len() >= MIN_PAGE_TOKEN
                                && token.chars().all(|c| {
                                    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
                                }) =>
                        {
                            return Some(got.value);
                        }
                        _ => format!(
                            "{} must hold one token of at least {MIN_PAGE_TOKEN} characters, \
                             letters, digits and -._~+/= only (it travels in a header, a \
                             cookie and an address), e.g. made with \
                             `head -c 24 /dev/urandom | base64 > page.token`",
                            got.value.display()
                        ),
                    },
                };
                self.push(ErrorKind::InvalidValue, got.origin, &got.path, problem);
                None
            });
        let cert_file = self.pem_file(s, "cert_file", "certificate");
        let key_file = self.pem_file(s, "key_file", "private key");
        let tls = match (cert_file, key_file) {
            (Ok(Some(cert_file)), Ok(Some(key_file))) => Some(ServerTls {
                cert_file,
                key_file,
            }),
            (Ok(Some(_)), Ok(None)) | (Ok(None), Ok(Some(_))) => {
                let (given, missing) = if self.raw(s, "cert_file").is_some() {
                    ("cert_file", "key_file")
                } else {
                    ("key_file", "cert_file")
                };
                self.push(
                    ErrorKind::MissingKey,
                    self.fallback.clone(),
                    &format!("page.{missing}"),
                    format!(
                        "{given} is set without {missing}: HTTPS needs both (or neither, for \
                         plain HTTP)"
                    ),
                );
                None
            }
            _ => None,
        };
        PageConfig {
            listen,
            token_file,
            tls,
        }
    }

    /// `listen`: a socket address, or none.
    fn listen(&mut self, s: &Section<'_>, port: u16) -> Option<std::net::SocketAddr> {
        let got = self.optional_text(s, "listen")?;
        match got.value.trim().parse() {
            Ok(address) => Some(address),
            Err(_) => {
                self.push(
                    ErrorKind::InvalidValue,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} is not a socket address: use an IP address and a port, \
                         e.g. \"127.0.0.1:{port}\" (loopback only) or \"0.0.0.0:{port}\"",
                        got.value
                    ),
                );
                None
            }
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
