//! What is valid but probably not what the operator meant: [`Config::warnings`].
//!
//! Errors refuse a config; warnings do not. `check` prints them after its `OK`, and `run`
//! logs each at WARN when it starts, so an operator sees them where they look first. Each
//! names the key, what will happen and the fix, like an error does.

use std::fmt;

use nexus_policies::SubjectPattern;

use crate::model::{Config, LinkConfig, TlsConfig};

/// One thing a valid config does that its author probably did not mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The key path it is about (`bridge.down[0].local`, `uplink.tls`).
    pub key: String,
    /// What will happen, and the fix.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl Config {
    /// Everything valid in this config that probably is not what was meant, in key order.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut warnings = Vec::new();
        for (role, link) in [("uplink", &self.uplink), ("local", &self.local)] {
            if let Some(link) = link {
                empty_tls(role, link, &mut warnings);
            }
        }
        commands_fed_back(self, &mut warnings);
        exposed_page(self, &mut warnings);
        warnings
    }
}

/// A fleet page listening beyond loopback without a token (anyone who reaches the port
/// sees the fleet), or with a token but without TLS (the token crosses the network in
/// clear text).
fn exposed_page(config: &Config, warnings: &mut Vec<ConfigWarning>) {
    let page = &config.page;
    let Some(listen) = page.listen else { return };
    if listen.ip().is_loopback() {
        return;
    }
    let message = match (&page.token_file, &page.tls) {
        (None, _) => format!(
            "the fleet page listens on {listen} without a token: anyone who reaches that \
             port sees every node of the fleet; set page.token_file (and cert_file + \
             key_file), or listen on 127.0.0.1"
        ),
        (Some(_), None) => format!(
            "the fleet page listens on {listen} over plain HTTP: its bearer token crosses \
             the network in clear text; set page.cert_file and page.key_file"
        ),
        (Some(_), Some(_)) => return,
    };
    warnings.push(ConfigWarning {
        key: "page.listen".to_owned(),
        message,
    });
}

/// An empty `[role.tls]` table with only clear-text URLs: the table alone requires TLS, so
/// against a plain server the link never connects.
fn empty_tls(role: &str, link: &LinkConfig, warnings: &mut Vec<ConfigWarning>) {
    let explicit_tls = link.url.split(',').any(|url| {
        url.trim_start().starts_with("tls://") || url.trim_start().starts_with("wss://")
    });
    if link.tls != Some(TlsConfig::default()) || explicit_tls {
        return;
    }
    warnings.push(ConfigWarning {
        key: format!("{role}.tls"),
        message: format!(
            "[{role}.tls] sets nothing, but its presence requires TLS while {role}.url is \
             clear text ({}): a server without TLS is never reached (the link retries, \
             logging a TLS handshake failure). Remove the empty [{role}.tls] for a plain \
             server; for a TLS server, write tls:// URLs or set ca_file",
            crate::redact_url(&link.url)
        ),
    });
}

/// A `[[bridge.down]]` target that a `[[bridge.up]]` rule also takes: the agent ignores
/// the commands it delivers itself, but whatever else is published there goes up as an
/// event named like the command, which is rarely meant.
fn commands_fed_back(config: &Config, warnings: &mut Vec<ConfigWarning>) {
    for (down_index, down) in config.bridge.down.iter().enumerate() {
        // The target is a pattern with the command's wildcards in it.
        let Ok(target) = SubjectPattern::parse(down.rewrite.to()) else {
            continue;
        };
        let Some((up_index, up)) = config
            .bridge
            .up
            .iter()
            .enumerate()
            .find(|(_, up)| up.rewrite.from().overlaps(&target))
        else {
            continue;
        };
        warnings.push(ConfigWarning {
            key: format!("bridge.down[{down_index}].local"),
            message: format!(
                "`{}` (where command `{}` is delivered) is also taken by bridge.up[{up_index}] \
                 (`{}`): the agent does not bridge up the commands it delivers, but anything \
                 else published there becomes an event, and apps cannot tell commands from \
                 events by subject. Deliver commands on a subject no up rule takes, e.g. \
                 local = \"app.cmd.{}\"",
                down.rewrite.to(),
                down.rewrite.from(),
                up.rewrite.from(),
                down.rewrite.from(),
            ),
        });
    }
}
