//! Printing a configuration without its secrets: `nexus-agent check` and logs.
//!
//! The only secrets a config holds are credentials inside NATS URLs
//! (`nats://user:password@host`, `nats://token@host`); the node's key, its token and TLS
//! key files are paths and only the paths are ever printed.

use std::fmt::Write as _;
use std::time::Duration;

use crate::model::{
    AclPolicy, BridgeConfig, Config, IotConfig, LandingConfig, LinkConfig, Mode, MqttProtocol,
};
use nexus_policies::SubjectPattern;

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
        if matches!(&self.acl, AclPolicy::Rules(acl) if acl.rules().is_empty()) {
            // A top-level key must come before the first table.
            writeln!(out, "\n# An empty ACL: nothing is allowed.\nacl = []")?;
        }

        let node = &self.node;
        writeln!(out, "\n[node]")?;
        writeln!(out, "id = {}", quote(&node.id))?;
        writeln!(out, "mode = {}", quote(node.mode.as_str()))?;
        match &node.tenant {
            Some(tenant) => writeln!(out, "tenant = {}", quote(tenant))?,
            None => writeln!(out, "# tenant is not set")?,
        }
        writeln!(out, "key = {}", quote(&node.key.to_string_lossy()))?;
        match &node.token {
            Some(token) => writeln!(out, "token = {}", quote(&token.to_string_lossy()))?,
            None => writeln!(out, "# token is not set")?,
        }
        writeln!(
            out,
            "data_dir = {}",
            quote(&node.data_dir.to_string_lossy())
        )?;

        let trust = &self.trust;
        writeln!(out, "\n[trust]")?;
        let keys: Vec<String> = trust
            .root_keys
            .iter()
            .map(|k| quote(&k.to_string()))
            .collect();
        writeln!(out, "root_keys = [{}]", keys.join(", "))?;
        if !trust.release_keys.is_empty() {
            let keys: Vec<String> = trust
                .release_keys
                .iter()
                .map(|k| quote(&k.to_string()))
                .collect();
            writeln!(out, "release_keys = [{}]", keys.join(", "))?;
        }
        writeln!(out, "clock_skew = {}", duration(trust.clock_skew))?;
        writeln!(
            out,
            "revocations_file = {}",
            quote(&trust.revocations_file.to_string_lossy())
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

        let health = &self.health;
        writeln!(out, "\n[health]")?;
        writeln!(out, "outbox_full_pct = {}", health.outbox_full_pct)?;
        writeln!(out, "outbox_max_age = {}", duration(health.outbox_max_age))?;
        writeln!(out, "disk_full_pct = {}", health.disk_full_pct)?;
        writeln!(out, "mem_full_pct = {}", health.mem_full_pct)?;
        writeln!(out, "token_expiry = {}", duration(health.token_expiry))?;

        if let Some(listen) = self.metrics.listen {
            writeln!(out, "\n[metrics]")?;
            writeln!(out, "listen = {}", quote(&listen.to_string()))?;
        }
        writeln!(out, "\n[remote_config]")?;
        writeln!(
            out,
            "accept = {}",
            quote(self.remote_config.accept.as_str())
        )?;
        writeln!(out, "gate = {}", duration(self.remote_config.gate))?;
        writeln!(out, "\n[updates]")?;
        writeln!(out, "gate = {}", duration(self.updates.gate))?;
        writeln!(out, "\n[events]")?;
        if let Some(registry) = &self.events.registry {
            writeln!(out, "registry = {}", quote(&registry.display().to_string()))?;
        }
        writeln!(out, "unknown = {}", quote(self.events.unknown.as_str()))?;
        writeln!(out, "invalid = {}", quote(self.events.invalid.as_str()))?;
        if let Some(listen) = self.page.listen {
            writeln!(out, "\n[page]")?;
            writeln!(out, "listen = {}", quote(&listen.to_string()))?;
            if let Some(token_file) = &self.page.token_file {
                writeln!(
                    out,
                    "token_file = {}",
                    quote(&token_file.display().to_string())
                )?;
            }
            if let Some(tls) = &self.page.tls {
                writeln!(
                    out,
                    "cert_file = {}",
                    quote(&tls.cert_file.display().to_string())
                )?;
                writeln!(
                    out,
                    "key_file = {}",
                    quote(&tls.key_file.display().to_string())
                )?;
            }
        }

        writeln!(out, "\n[log]")?;
        writeln!(out, "level = {}", quote(&self.log.level))?;
        writeln!(out, "format = {}", quote(self.log.format.as_str()))?;

        writeln!(out, "\n[outbox]")?;
        writeln!(out, "max_bytes = {}", self.outbox.max_bytes)?;
        writeln!(out, "batch = {}", self.outbox.batch)?;
        writeln!(out, "when_full = {}", quote(self.outbox.when_full.as_str()))?;
        match self.outbox.max_age {
            Some(max_age) => writeln!(out, "max_age = {}", duration(max_age))?,
            None => writeln!(out, "# max_age is not set: events wait as long as it takes")?,
        }
        match self.outbox.drain_rate {
            Some(rate) => writeln!(out, "drain_rate = {rate}")?,
            None => writeln!(out, "# drain_rate is not set: backlogs drain at full speed")?,
        }

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
        writeln!(out, "max_deliver = {}", ingress.max_deliver)?;
        writeln!(out, "landed_ttl = {}", duration(ingress.landed_ttl))?;
        writeln!(out, "replicas = {}", ingress.replicas)?;

        writeln!(out, "\n[dead_letter]")?;
        writeln!(out, "max_bytes = {}", self.dead_letter.max_bytes)?;
        writeln!(out, "max_entries = {}", self.dead_letter.max_entries)?;

        match &self.acl {
            AclPolicy::TokenGrants => writeln!(
                out,
                "\n# No [[acl]]: everything the token grants is allowed."
            )?,
            AclPolicy::Rules(acl) => {
                for rule in acl.rules() {
                    writeln!(out, "\n[[acl]]")?;
                    writeln!(out, "principal = {}", quote(&rule.principal.to_string()))?;
                    for (key, list) in [
                        ("allow_publish", &rule.allow_publish),
                        ("deny_publish", &rule.deny_publish),
                        ("allow_receive", &rule.allow_receive),
                        ("deny_receive", &rule.deny_receive),
                    ] {
                        if !list.is_empty() {
                            writeln!(out, "{key} = {}", patterns(list))?;
                        }
                    }
                }
            }
        }
        write_iot(out, self.iot.as_ref())?;
        write_bridge(out, &self.bridge)?;
        if self.node.mode == Mode::Root {
            write_landing(out, &self.landing)
        } else {
            writeln!(
                out,
                "\n# [landing] is the root's: a {} lands nothing",
                self.node.mode
            )
        }
    }
}

/// `[bridge]` and its rules, each as its two subjects.
fn write_bridge(out: &mut String, bridge: &BridgeConfig) -> std::fmt::Result {
    writeln!(out, "\n[bridge]")?;
    writeln!(out, "max_payload = {}", bridge.max_payload)?;
    if bridge.up.is_empty() {
        writeln!(
            out,
            "# no [[bridge.up]] rules: no local subject is published as an event"
        )?;
    }
    if bridge.down.is_empty() {
        writeln!(
            out,
            "# no [[bridge.down]] rules: no command is delivered to a local app"
        )?;
    }
    for rule in &bridge.up {
        writeln!(out, "\n[[bridge.up]]")?;
        writeln!(out, "local = {}", quote(rule.rewrite.from().as_str()))?;
        writeln!(out, "event = {}", quote(rule.rewrite.to()))?;
        writeln!(out, "encoding = {}", quote(rule.encoding.as_str()))?;
    }
    for rule in &bridge.down {
        writeln!(out, "\n[[bridge.down]]")?;
        writeln!(out, "command = {}", quote(rule.rewrite.from().as_str()))?;
        writeln!(out, "local = {}", quote(rule.rewrite.to()))?;
        writeln!(out, "timeout = {}", duration(rule.timeout))?;
    }
    Ok(())
}

/// `[landing]`: the journal and its domain streams.
fn write_landing(out: &mut String, landing: &LandingConfig) -> std::fmt::Result {
    writeln!(out, "\n[landing]")?;
    writeln!(out, "stream = {}", quote(&landing.stream))?;
    writeln!(out, "max_age = {}", duration(landing.max_age))?;
    match landing.max_bytes {
        Some(max_bytes) => writeln!(out, "max_bytes = {max_bytes}")?,
        None => writeln!(
            out,
            "# max_bytes is not set: the journal is bounded by max_age only"
        )?,
    }
    writeln!(out, "replicas = {}", landing.replicas)?;
    if landing.domains.is_empty() {
        writeln!(
            out,
            "# No domain streams: events are kept in the journal only."
        )?;
        writeln!(out, "domains = []")?;
    }
    for domain in &landing.domains {
        writeln!(out, "\n[[landing.domains]]")?;
        writeln!(out, "name = {}", quote(&domain.name))?;
        writeln!(out, "subjects = {}", patterns(&domain.subjects))?;
        writeln!(out, "max_age = {}", duration(domain.max_age))?;
        if let Some(max_bytes) = domain.max_bytes {
            writeln!(out, "max_bytes = {max_bytes}")?;
        }
    }
    Ok(())
}

/// `[iot]` and its rules, the password masked. Written after every plain section: its
/// `[[iot.sensors]]` (like `[[bridge.up]]` and `[[landing.domains]]`) are arrays of tables.
fn write_iot(out: &mut String, iot: Option<&IotConfig>) -> std::fmt::Result {
    let Some(iot) = iot else {
        return writeln!(out, "\n# [iot] is not set: no MQTT bridge");
    };
    writeln!(out, "\n[iot]")?;
    writeln!(out, "url = {}", quote(&redact_url(&iot.url)))?;
    writeln!(out, "client_id = {}", quote(&iot.client_id))?;
    if let Some(username) = &iot.username {
        writeln!(out, "username = {}", quote(username))?;
    }
    if iot.password.is_some() {
        writeln!(out, "password = {}", quote(MASK))?;
    }
    writeln!(out, "protocol = {}", quote(iot.protocol.as_str()))?;
    if iot.protocol == MqttProtocol::V5 {
        writeln!(out, "session_expiry = {}", duration(iot.session_expiry))?;
    }
    writeln!(out, "qos = {}", iot.qos)?;
    writeln!(out, "keep_alive = {}", duration(iot.keep_alive))?;
    writeln!(
        out,
        "reconnect_max_delay = {}",
        duration(iot.reconnect_max_delay)
    )?;
    writeln!(out, "max_payload = {}", iot.max_payload)?;
    writeln!(out, "queue = {}", iot.queue)?;
    if let Some(tls) = &iot.tls {
        writeln!(out, "\n[iot.tls]")?;
        if let Some(path) = &tls.ca_file {
            writeln!(out, "ca_file = {}", quote(&path.to_string_lossy()))?;
        }
        if let Some(cert) = &tls.client_cert {
            writeln!(
                out,
                "cert_file = {}",
                quote(&cert.cert_file.to_string_lossy())
            )?;
            writeln!(
                out,
                "key_file = {}",
                quote(&cert.key_file.to_string_lossy())
            )?;
        }
        if let Some(name) = &tls.server_name {
            writeln!(out, "server_name = {}", quote(name))?;
        }
    }
    for rule in &iot.sensors {
        writeln!(out, "\n[[iot.sensors]]")?;
        writeln!(out, "topic = {}", quote(&rule.topic))?;
        writeln!(out, "payload = {}", quote(rule.payload.as_str()))?;
        if let Some(time) = &rule.time {
            writeln!(out, "time = {}", quote(time))?;
        }
        let metrics: Vec<String> = rule
            .metrics
            .iter()
            .map(|m| {
                format!(
                    "{} = {{ pointer = {}, unit = {} }}",
                    quote(&m.name),
                    quote(&m.pointer),
                    quote(&m.unit)
                )
            })
            .collect();
        writeln!(out, "metrics = {{ {} }}", metrics.join(", "))?;
    }
    Ok(())
}

/// A TOML array of quoted patterns.
fn patterns(list: &[SubjectPattern]) -> String {
    let quoted: Vec<String> = list.iter().map(|p| quote(p.as_str())).collect();
    format!("[{}]", quoted.join(", "))
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
    )?;
    if let Some(domain) = &link.jetstream_domain {
        writeln!(out, "jetstream_domain = {}", quote(domain))?;
    }
    if let Some(prefix) = &link.inbox_prefix {
        writeln!(
            out,
            "# replies come back on {prefix}.> (allow it in the leaf's permissions)"
        )?;
    }
    let Some(tls) = &link.tls else {
        return writeln!(out, "# no TLS required on this link");
    };
    writeln!(out, "\n[{name}.tls]")?;
    match &tls.ca_file {
        Some(path) => writeln!(out, "ca_file = {}", quote(&path.to_string_lossy()))?,
        None => writeln!(out, "# ca_file is not set: the system's root CAs are used")?,
    }
    match &tls.client_cert {
        Some(cert) => {
            writeln!(
                out,
                "cert_file = {}",
                quote(&cert.cert_file.to_string_lossy())
            )?;
            writeln!(
                out,
                "key_file = {}",
                quote(&cert.key_file.to_string_lossy())
            )?;
        }
        None => writeln!(out, "# no client certificate")?,
    }
    match &tls.server_name {
        Some(name) => writeln!(out, "server_name = {}", quote(name)),
        None => writeln!(out, "# server_name is not set: the URL's host is checked"),
    }
}

/// A duration as a quoted humantime string (`"10s"`, `"90d"`) that parses back. Whole days
/// are printed as days: humantime's months of 30.44 days would print `"90d"` as
/// `"2months 29days 2h 52m 48s"`.
fn duration(d: Duration) -> String {
    const DAY: u64 = 24 * 60 * 60;
    if d.subsec_nanos() == 0 && d.as_secs() >= DAY && d.as_secs().is_multiple_of(DAY) {
        return quote(&format!("{}d", d.as_secs() / DAY));
    }
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
    fn whole_days_print_as_days_and_everything_parses_back() {
        assert_eq!(duration(Duration::from_secs(90 * 24 * 60 * 60)), "\"90d\"");
        assert_eq!(duration(Duration::from_secs(2 * 60)), "\"2m\"");
        assert_eq!(duration(Duration::from_millis(1500)), "\"1s 500ms\"");
        for d in [
            Duration::from_secs(365 * 24 * 60 * 60),
            Duration::from_secs(31 * 24 * 60 * 60 + 1),
            Duration::from_millis(250),
        ] {
            let printed = duration(d);
            let parsed = humantime::parse_duration(printed.trim_matches('"'));
            assert_eq!(parsed.ok(), Some(d), "{printed}");
        }
    }

    #[test]
    fn strings_are_quoted_as_toml() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("a\nb"), r#""a\nb""#);
    }
}
