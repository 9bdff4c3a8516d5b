//! Value parsers for the command line: every value an operator types is checked here, by
//! clap, before anything runs. A bad value is a usage error — exit 2, with clap's message
//! naming the flag and saying what was expected — never a runtime failure (exit 1).
//!
//! Each parser returns the typed value the command uses, so nothing parses it twice. The
//! rules are the owners' own: node and tenant ids are `nexus_policies::ids`, subject
//! patterns `nexus_policies::SubjectPattern`, event and command names
//! `nexus_federation::subject`, NATS URLs what `async_nats` accepts.

use std::ffi::OsStr;
use std::fmt;
use std::path::{PathBuf, MAIN_SEPARATOR};
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use nexus_policies::keys::{PUBLIC_KEY_PREFIX, SECRET_KEY_PREFIX};
use nexus_policies::{PublicKey, Role, SubjectPattern, TokenId};
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The longest token lifetime `token issue` accepts; anything longer is a typo.
const MAX_TTL: Duration = Duration::from_secs(1000 * 365 * 86_400);

/// A node id: 1-64 chars of `[a-z0-9_-]`, not the reserved `local`.
pub fn node_id(text: &str) -> Result<String, String> {
    nexus_policies::ids::check_node_id(text)
        .map(|()| text.to_owned())
        .map_err(|reason| format!("not a node id ({reason}): use 1-64 chars of [a-z0-9_-]"))
}

/// Node ids or globs (`edge-*`), comma-separated, as `config push` targets.
pub fn node_targets(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("an empty target: give node ids or globs separated by commas".to_owned());
    }
    for part in &parts {
        node_pattern(part)?;
    }
    Ok(text.to_owned())
}

/// A node id, or a glob of node-id characters and `*` (`edge-*`).
pub fn node_pattern(text: &str) -> Result<String, String> {
    let plain = text.replace('*', "a");
    if text.contains('*') && !text.is_empty() {
        node_id(&plain).map(|_| text.to_owned()).map_err(|_| {
            format!("`{text}` is not a node glob: node-id characters [a-z0-9_-] and `*`")
        })
    } else {
        node_id(text)
    }
}

/// A target triple (`aarch64-unknown-linux-gnu`): letters, digits, `_` and `-`.
pub fn target_triple(text: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&text.len())
        && text.contains('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(text.to_owned())
    } else {
        Err("not a target triple, e.g. aarch64-unknown-linux-gnu (`nexus-agent --version` names a binary's)".to_owned())
    }
}

/// A top-level config section name (`iot`, `heartbeat`, `remote_config`).
pub fn section_name(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        Ok(text.to_owned())
    } else {
        Err("not a section name: lower-case letters and `_`, e.g. iot or heartbeat".to_owned())
    }
}

/// An event id: a UUID in its hyphenated form (as every envelope's `event_id`), lower case.
pub fn event_id(text: &str) -> Result<String, String> {
    let hex: Vec<char> = text.chars().filter(|c| *c != '-').collect();
    let shaped = text.len() == 36
        && [8, 13, 18, 23]
            .iter()
            .all(|&i| text.as_bytes().get(i) == Some(&b'-'))
        && hex.len() == 32
        && hex.iter().all(char::is_ascii_hexdigit);
    if shaped {
        Ok(text.to_ascii_lowercase())
    } else {
        Err("not an event id: use the envelope's event_id, a UUID like \
             0192f3a1-7c2e-7d40-8f00-0123456789ab"
            .to_owned())
    }
}

/// A tenant id: 1-64 chars of `[a-z0-9_-]`, not the reserved `_core`.
pub fn tenant_id(text: &str) -> Result<String, String> {
    nexus_policies::ids::check_tenant(text)
        .map(|()| text.to_owned())
        .map_err(|reason| format!("not a tenant id ({reason}): use 1-64 chars of [a-z0-9_-]"))
}

/// A NATS subject pattern (`nexus.salon-001.>`, `nexus._core.edge.health.*`).
pub fn subject_pattern(text: &str) -> Result<SubjectPattern, String> {
    SubjectPattern::parse(text).map_err(|e| {
        format!(
            "not a subject pattern: {e} (tokens are separated by `.`; `*` stands for one \
             token, `>` for the rest)"
        )
    })
}

/// `NAME` or `NAME@VERSION` (a version ≥ 1): an entry of the event registry.
pub fn event_spec(text: &str) -> Result<String, String> {
    let (name, version) = match text.rsplit_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (text, None),
    };
    event_name(name)?;
    if let Some(version) = version {
        if !version.parse::<u32>().is_ok_and(|v| v >= 1) {
            return Err(format!(
                "`{version}` is not a version: NAME@1, NAME@2, … (or NAME for its latest)"
            ));
        }
    }
    Ok(text.to_owned())
}

/// An event or command name: two or more dot-separated tokens of `[a-z0-9_-]`.
pub fn event_name(text: &str) -> Result<String, String> {
    if nexus_federation::subject::is_valid_event_name(text) {
        Ok(text.to_owned())
    } else {
        Err(
            "not an event name: two or more dot-separated tokens of [a-z0-9_-], e.g. \
             booking.created or agent.ping"
                .to_owned(),
        )
    }
}

/// A NATS server URL (`nats://host:4222`, `tls://…`; the scheme defaults to `nats://`).
pub fn nats_url(text: &str) -> Result<String, String> {
    text.parse::<async_nats::ServerAddr>()
        .map(|_| text.to_owned())
        .map_err(|e| format!("{e}: use e.g. nats://127.0.0.1:4222"))
}

/// A file to write: a path that names a file, not a directory.
pub fn file_path(text: &str) -> Result<PathBuf, String> {
    // The last segment as typed: `Path` would read `keys/.` as `keys`.
    let last = text.rsplit(MAIN_SEPARATOR).next().unwrap_or_default();
    if matches!(last, "" | "." | "..") {
        return Err("names a directory, not a file".to_owned());
    }
    Ok(PathBuf::from(text))
}

/// A count of at least one.
pub fn count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a count: {e}")),
    }
}

/// A token's lifetime as the operator wrote it (`30d`): printed back in their words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ttl {
    /// At least a second.
    pub duration: Duration,
    /// As given.
    text: String,
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `--ttl`: a humantime duration of at least a second (tokens count whole seconds).
pub fn ttl(text: &str) -> Result<Ttl, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(duration) if duration.as_secs() == 0 => {
            Err("shorter than a second: tokens count whole seconds".to_owned())
        }
        Ok(duration) if duration > MAX_TTL => Err("longer than 1000 years".to_owned()),
        Ok(duration) => Ok(Ttl {
            duration,
            text: text.trim().to_owned(),
        }),
        Err(e) => Err(format!("not a duration ({e}): use e.g. 30d, 12h, 90m")),
    }
}

/// An RFC 3339 time.
pub fn rfc3339(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time ({e}): use e.g. 2026-03-01T00:00:00Z"))
}

/// A point in the past: a duration back from now (`30m`, `1h`, `7d`) or an RFC 3339 time.
pub fn time_or_ago(text: &str) -> Result<OffsetDateTime, String> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at);
    }
    let Ok(back) = humantime::parse_duration(text) else {
        return Err(
            "neither a duration back from now (30m, 1h, 7d) nor an RFC 3339 time \
             (2026-05-01T10:00:00Z)"
                .to_owned(),
        );
    };
    time::Duration::try_from(back)
        .ok()
        .and_then(|back| OffsetDateTime::now_utc().checked_sub(back))
        .ok_or_else(|| "too far back".to_owned())
}

/// `--data`: a JSON object.
pub fn json_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(r#"not a JSON object: use e.g. '{"reason": "test"}'"#.to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// A command's `--timeout`: 1 ms up to what a command may live
/// ([`nexus_federation::command::MAX_TIMEOUT`]).
pub fn command_timeout(text: &str) -> Result<Duration, String> {
    let max = nexus_federation::command::MAX_TIMEOUT;
    let timeout = humantime::parse_duration(text.trim())
        .map_err(|e| format!("not a duration ({e}): use e.g. 5s or 500ms"))?;
    if timeout < Duration::from_millis(1) || timeout > max {
        return Err(format!(
            "must be between 1ms and {}",
            humantime::format_duration(max)
        ));
    }
    Ok(timeout)
}

/// A token id, as `token issue` and `token inspect` print it.
pub fn token_id(text: &str) -> Result<TokenId, String> {
    text.trim()
        .parse::<TokenId>()
        .map_err(|e| format!("{e}: use an id as printed by `token issue` and `token inspect`"))
}

/// A node's tier, as `--role` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// An edge box.
    Member,
    /// A site or region server.
    Hub,
    /// The cloud's trust anchor.
    Root,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Member => Role::Member,
            RoleArg::Hub => Role::Hub,
            RoleArg::Root => Role::Root,
        }
    }
}

/// A public key argument: the `ed25519:…` text, checked now, or the path of a .pub file,
/// read when the command runs (a file that is missing or wrong is a runtime failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyArg {
    /// The key itself.
    Key(PublicKey),
    /// A .pub file holding it.
    File(PathBuf),
}

/// Parses a [`PublicKeyArg`]. Unlike the other parsers its errors never repeat the value:
/// what was typed may be a secret key.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicKeyParser;

impl TypedValueParser for PublicKeyParser {
    type Value = PublicKeyArg;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<PublicKeyArg, clap::Error> {
        let flag = arg.map_or_else(|| "...".to_owned(), ToString::to_string);
        let refuse = |reason: String| {
            let mut cmd = cmd.clone();
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for '{flag}': {reason}"),
            )
            .format(&mut cmd)
        };
        let Some(text) = value.to_str().map(str::trim) else {
            return Ok(PublicKeyArg::File(PathBuf::from(value)));
        };
        // A secret key is never echoed back in an error.
        if text.starts_with(SECRET_KEY_PREFIX) {
            return Err(refuse(
                "this is a SECRET key (not shown): give the public key (the .pub file) instead"
                    .to_owned(),
            ));
        }
        if text.starts_with(PUBLIC_KEY_PREFIX) {
            return PublicKey::parse(text)
                .map(PublicKeyArg::Key)
                .map_err(|e| refuse(format!("'{text}' is not an Ed25519 public key: {e}")));
        }
        if text.is_empty() {
            return Err(refuse(
                "empty: give an `ed25519:…` public key or the path of a .pub file".to_owned(),
            ));
        }
        Ok(PublicKeyArg::File(PathBuf::from(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_policies_rule() {
        assert_eq!(node_id("edge-msk-01").as_deref(), Ok("edge-msk-01"));
        for bad in ["a.b", "Edge", "", "local", &"x".repeat(65)] {
            assert!(node_id(bad).is_err(), "{bad}");
        }
        assert_eq!(tenant_id("salon-001").as_deref(), Ok("salon-001"));
        assert!(tenant_id("Salon").is_err());
    }

    #[test]
    fn ttls_parse_as_humantime_and_refuse_nonsense() {
        assert_eq!(
            ttl("30d").map(|t| t.duration),
            Ok(Duration::from_secs(30 * 86_400))
        );
        for bad in ["0s", "500ms", "forever", "2000y"] {
            assert!(ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_durations_back_or_rfc3339() {
        let at = time_or_ago("2026-05-01T10:00:00Z").expect("parses");
        assert_eq!(at.unix_timestamp(), 1_777_629_600);
        let back = time_or_ago("1h").expect("parses");
        let age = OffsetDateTime::now_utc() - back;
        assert!(age >= time::Duration::minutes(59) && age <= time::Duration::minutes(61));
        assert!(time_or_ago("yesterday").is_err());
        // Past what a time can hold: refused, not a panic.
        assert!(time_or_ago("20000y").is_err());
        assert!(rfc3339("yesterday").is_err());
    }

    #[test]
    fn data_is_a_json_object_and_timeouts_are_bounded() {
        assert_eq!(json_object(r#"{"a": 1}"#).map(|m| m.len()), Ok(1));
        assert!(json_object("[1]").is_err());
        assert!(json_object("{").is_err());
        assert_eq!(command_timeout("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["0s", "1h", "soon"] {
            assert!(command_timeout(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_patterns_urls_and_paths() {
        assert!(subject_pattern("nexus.>").is_ok());
        assert!(subject_pattern("a..b").is_err());
        assert!(event_name("booking.created").is_ok());
        assert!(event_name("Booking").is_err());
        assert!(nats_url("nats://127.0.0.1:4222").is_ok());
        assert!(nats_url("127.0.0.1:4222").is_ok());
        assert!(nats_url("nats://127.0.0.1:99999").is_err());
        assert!(nats_url("http://example.com").is_err());
        assert!(file_path("keys/node.key").is_ok());
        for bad in ["", "keys/", ".", "..", "keys/..", "keys/."] {
            assert!(file_path(bad).is_err(), "{bad}");
        }
        assert!(token_id("not-an-id").is_err());
    }

    #[test]
    fn public_keys_are_text_or_a_file_and_a_secret_is_never_echoed() {
        use clap::Parser as _;

        use crate::cli::{Cli, Command, TokenCommand};
        let parse = |text: &str| {
            Cli::try_parse_from(["nexus-agent", "token", "verify", "f", "--trust", text]).map(
                |cli| match cli.command {
                    Command::Token {
                        command: TokenCommand::Verify { trust, .. },
                    } => trust,
                    other => panic!("parsed as {other:?}"),
                },
            )
        };
        let secret = nexus_policies::SecretKey::from_seed(&[3; 32]).expect("key");
        let public = secret.public();
        assert_eq!(
            parse(&public.to_string()).expect("text"),
            [PublicKeyArg::Key(public)]
        );
        assert_eq!(
            parse("keys/n.key.pub").expect("path"),
            [PublicKeyArg::File(PathBuf::from("keys/n.key.pub"))]
        );
        let refused = parse("ed25519:short").expect_err("malformed");
        assert_eq!(refused.kind(), ErrorKind::ValueValidation);
        assert_eq!(refused.exit_code(), 2);
        assert!(refused.to_string().contains("--trust"), "{refused}");
        let text = secret.to_file_text();
        let refused = parse(text.trim()).expect_err("a secret");
        let shown = refused.to_string();
        let body = text.trim().rsplit(':').next().expect("body");
        assert!(shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains(body), "{shown}");
    }
}
