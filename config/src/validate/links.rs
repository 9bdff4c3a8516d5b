//! `[uplink]` and `[local]`, the NATS links, and their `[uplink.tls]` / `[local.tls]`
//! (which `[iot.tls]` reuses): URL lists, timeouts, TLS settings.
//!
//! Which mode requires or forbids which link is decided in [`super::Reader::config`].

use super::reader::{truncate, Got, Reader, Section};
use super::schema::{LINK_TIMEOUT, RECONNECT_MAX_DELAY, TLS_KEYS};
use crate::error::ErrorKind;
use crate::model::{ClientCert, LinkConfig, TlsConfig};
use crate::redact::redact_url;

/// The schemes of a NATS URL list (the NATS client's).
const URL_SCHEMES: &[&str] = &["nats", "tls", "ws", "wss"];

impl Reader<'_> {
    /// `[uplink]` or `[local]`, when present: its URL list, timeouts and TLS.
    pub(super) fn link(&mut self, s: &Section<'_>) -> Option<LinkConfig> {
        s.dict?;
        let example = format!("url = \"nats://host:4222\" under [{}]", s.name);
        let url = self
            .required_text(s, "url", &example)
            .and_then(|g| self.url(g));
        let ping_interval = self.duration(s, "ping_interval", LINK_TIMEOUT);
        let connect_timeout = self.duration(s, "connect_timeout", LINK_TIMEOUT);
        let request_timeout = self.duration(s, "request_timeout", LINK_TIMEOUT);
        let reconnect_max_delay = self.duration(s, "reconnect_max_delay", RECONNECT_MAX_DELAY);
        let jetstream_domain = self.jetstream_domain(s);
        let tls_section = self.subtable(s, "tls", TLS_KEYS);
        let tls = self.tls(&tls_section);
        let url = url?;
        // A `tls://` URL requires TLS as surely as a [tls] section does.
        let tls = match tls {
            None if url.split(',').any(|u| u.trim().starts_with("tls://")) => {
                Some(TlsConfig::default())
            }
            tls => tls,
        };
        Some(LinkConfig {
            url,
            ping_interval,
            connect_timeout,
            request_timeout,
            reconnect_max_delay,
            jetstream_domain,
            inbox_prefix: None,
            tls,
        })
    }

    /// `[uplink] jetstream_domain`, when set: a JetStream name (the parent tier's domain,
    /// reached through this node's own leaf server). Refused in `[local]`, whose server's own
    /// JetStream is always meant.
    fn jetstream_domain(&mut self, s: &Section<'_>) -> Option<String> {
        let got = self.optional_text(s, "jetstream_domain")?;
        if s.name != "uplink" {
            self.push(
                ErrorKind::InvalidValue,
                got.origin,
                &got.path,
                format!(
                    "jetstream_domain applies to [uplink] only: [{}] is this node's own NATS, \
                     whose own JetStream the agent uses; remove the key (when the uplink goes \
                     through this server as a leaf node, set jetstream_domain under [uplink] \
                     to the parent tier's domain)",
                    s.name
                ),
            );
            return None;
        }
        self.is_jetstream_name(&got).then_some(got.value)
    }

    /// `[uplink.tls]` / `[local.tls]`, when present: every file readable PEM, the client
    /// certificate and its key together.
    pub(super) fn tls(&mut self, s: &Section<'_>) -> Option<TlsConfig> {
        s.dict?;
        let ca_file = self.pem_file(s, "ca_file", "CA bundle").ok().flatten();
        let cert_file = self.pem_file(s, "cert_file", "certificate");
        let key_file = self.pem_file(s, "key_file", "private key");
        let client_cert = match (cert_file, key_file) {
            (Ok(Some(cert_file)), Ok(Some(key_file))) => Some(ClientCert {
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
                    &format!("{}.{missing}", s.name),
                    format!(
                        "{given} is set without {missing}: a client certificate needs both \
                         (or neither, for TLS without a client certificate)"
                    ),
                );
                None
            }
            _ => None,
        };
        let server_name = self.optional_text(s, "server_name").and_then(|got| {
            if valid_server_name(&got.value) {
                return Some(got.value);
            }
            self.push(
                ErrorKind::InvalidValue,
                got.origin,
                &got.path,
                format!(
                    "{:?} is not a server name: give the DNS name (or IP address) the server's \
                     certificate is issued for, without scheme or port",
                    truncate(&got.value)
                ),
            );
            None
        });
        Some(TlsConfig {
            ca_file,
            client_cert,
            server_name,
        })
    }

    fn url(&mut self, got: Got<String>) -> Option<String> {
        match url_problem(&got.value) {
            None => Some(got.value.trim().to_owned()),
            Some(problem) => {
                self.push(
                    ErrorKind::InvalidValue,
                    got.origin,
                    &got.path,
                    format!(
                        "{:?} is not a valid NATS URL: {problem}; use nats://, tls://, ws:// or \
                         wss:// URLs, separated by commas",
                        redact_url(&got.value)
                    ),
                );
                None
            }
        }
    }
}

/// A DNS name or an IP address: what a server certificate is checked against.
fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        && !name.starts_with(['.', '-'])
}

/// What is wrong with a comma-separated NATS URL list, if anything.
fn url_problem(list: &str) -> Option<String> {
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Some("an entry is empty".to_owned());
        }
        if entry.chars().any(char::is_whitespace) {
            return Some("an entry contains a space".to_owned());
        }
        let Some((scheme, rest)) = entry.split_once("://") else {
            return Some("an entry has no scheme".to_owned());
        };
        if !URL_SCHEMES.contains(&scheme) {
            return Some(format!("scheme `{scheme}://` is not supported"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            return Some("an entry has no host".to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_accept_the_four_nats_schemes_only() {
        assert_eq!(url_problem("nats://a:4222"), None);
        assert_eq!(url_problem("tls://a:4222, wss://b/path,ws://c"), None);
        assert_eq!(url_problem("nats://u:p@a:4222"), None);
        assert!(url_problem("http://a:4222").is_some());
        assert!(url_problem("a:4222").is_some());
        assert!(url_problem("nats://a,").is_some());
        assert!(url_problem("nats://").is_some());
        assert!(url_problem("nats://u:p@").is_some());
    }
}
