//! Printing a configuration without its secrets: `nexus-agent check` and logs.
//!
//! The only secrets a config holds are credentials inside NATS URLs
//! (`nats://user:password@host`, `nats://token@host`); the node's key is a path and only
//! the path is ever printed.

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::{Config, LinkConfig};

/// What replaces a password or token.
const MASK: &str = "***";

/// `url` (a comma-separated NATS URL list) with passwords and tokens replaced by `***`:
/// `nats://user:pass@host` → `nats://user:***@host`, `nats://token@host` → `nats://***@host`.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    // The last `@` anywhere ends the credentials: a password may contain `/` or `@`, and
    // masking a websocket path that contains `@` is a price worth paying for never
    // printing one.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = rest.split_at(at);
    let userinfo = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:{MASK}"),
        None => MASK.to_owned(),
    };
    format!("{scheme}{userinfo}{host}")
}

impl Config {
    /// The effective configuration (defaults filled in) as TOML, with secrets redacted:
    /// what `nexus-agent check` prints. Paths are printed as resolved (absolute).
    pub fn redacted(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_redacted(&mut out);
        out
    }

    fn write_redacted(&self, out: &mut String) -> std::fmt::Result {
        match &self.source {
            Some(path) => writeln!(
                out,
                "# Effective nexus-agent configuration from {}.",
                path.display()
            )?,
            None => writeln!(out, "# Effective nexus-agent configuration.")?,
        }
        writeln!(
            out,
            "# Defaults are filled in; passwords and tokens in URLs are shown as {MASK}."
        )?;

        let node = &self.node;
        writeln!(out, "\n[node]")?;
        writeln!(out, "id = {}", quote(&node.id))?;
        writeln!(out, "mode = {}", quote(node.mode.as_str()))?;
        match &node.tenant {
            Some(tenant) => writeln!(out, "tenant = {}", quote(tenant))?,
            None => writeln!(out, "# tenant is not set")?,
        }
        writeln!(out, "key = {}", quote(&node.key.to_string_lossy()))?;
        writeln!(
            out,
            "data_dir = {}",
            quote(&node.data_dir.to_string_lossy())
        )?;

        write_link(out, "uplink", self.uplink.as_ref())?;
        write_link(out, "local", self.local.as_ref())?;

        writeln!(out, "\n[heartbeat]")?;
        writeln!(out, "interval = {}", duration(self.heartbeat.interval))?;
        writeln!(
            out,
            "offline_after = {}",
            duration(self.heartbeat.offline_after)
        )?;

        writeln!(out, "\n[log]")?;
        writeln!(out, "level = {}", quote(&self.log.level))?;
        writeln!(out, "format = {}", quote(self.log.format.as_str()))?;

        writeln!(out, "\n[outbox]")?;
        writeln!(out, "max_bytes = {}", self.outbox.max_bytes)?;
        writeln!(out, "batch = {}", self.outbox.batch)?;

        let ingress = &self.ingress;
        writeln!(out, "\n[ingress]")?;
        writeln!(out, "stream = {}", quote(&ingress.stream))?;
        writeln!(out, "consumer = {}", quote(&ingress.consumer))?;
        writeln!(out, "max_bytes = {}", ingress.max_bytes)?;
        writeln!(out, "max_age = {}", duration(ingress.max_age))?;
        writeln!(
            out,
            "duplicate_window = {}",
            duration(ingress.duplicate_window)
        )?;
        writeln!(out, "batch = {}", ingress.batch)?;
        Ok(())
    }
}

fn write_link(out: &mut String, name: &str, link: Option<&LinkConfig>) -> std::fmt::Result {
    let Some(link) = link else {
        return writeln!(out, "\n# [{name}] is not set");
    };
    writeln!(out, "\n[{name}]")?;
    writeln!(out, "url = {}", quote(&redact_url(&link.url)))?;
    writeln!(out, "ping_interval = {}", duration(link.ping_interval))?;
    writeln!(out, "connect_timeout = {}", duration(link.connect_timeout))?;
    writeln!(out, "request_timeout = {}", duration(link.request_timeout))?;
    writeln!(
        out,
        "reconnect_max_delay = {}",
        duration(link.reconnect_max_delay)
    )
}

/// A duration as a quoted humantime string (`"10s"`, `"7days"`) that parses back.
fn duration(d: Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_tokens_in_urls_are_masked() {
        assert_eq!(
            redact_url("nats://user:pass@host:4222"),
            "nats://user:***@host:4222"
        );
        assert_eq!(redact_url("tls://s3cr3t@host"), "tls://***@host");
        assert_eq!(
            redact_url("nats://a:b@h1:4222,nats://h2:4222"),
            "nats://a:***@h1:4222,nats://h2:4222"
        );
        assert_eq!(redact_url("nats://u:pa/ss@h"), "nats://u:***@h");
        assert_eq!(redact_url("nats://u:p@ss@h"), "nats://u:***@h");
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn strings_are_quoted_as_toml() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("a\nb"), r#""a\nb""#);
    }
}
