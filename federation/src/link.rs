//! A NATS connection that starts without its server, reconnects forever with backoff,
//! notices a dead peer within a few ping intervals, and publishes its state on a `watch`.
//!
//! Pitfalls designed around (see docs/pitfalls.md, "async-nats"): `retry_on_initial_connect`
//! is on, so an edge agent starts while its uplink is down; the ping interval defaults to
//! 5 s, not NATS' 60 s; state changes are logged once, and a failing reconnect is logged
//! once per distinct error, not on every attempt.
//!
//! TLS (`[uplink.tls]`, `tls://`) is required when configured, with a `rustls::ClientConfig`
//! built by [`crate::tls`]; a link in clear to another machine is warned about once, at start.
//!
//! `[uplink] jetstream_domain` (a leaf-node site, docs/deploy-leaf-site.md): the link's
//! JetStream context addresses the parent tier's domain through the local leaf server.

use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use nexus_config::{redact_url, LinkConfig};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::tls::{self, TlsError};

/// The observable state of a link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkState {
    /// Whether the client is connected now.
    pub connected: bool,
    /// Since when it has been in this state.
    pub since: OffsetDateTime,
    /// The last connection error, while disconnected.
    pub last_error: Option<String>,
}

/// Why a link could not be set up at all (connection failures are retried, not errors).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The URL or options were refused by the client.
    #[error("cannot set up the {role} link to {url}: {source}")]
    Setup {
        /// `uplink` or `local`.
        role: &'static str,
        /// The configured URL (credentials redacted).
        url: String,
        /// The client's error.
        source: async_nats::ConnectError,
    },
    /// The link's TLS settings cannot be used (a file missing, not PEM, a key that does not
    /// fit its certificate, …); the error names the config key and the file.
    #[error("cannot set up TLS for the {role} link: {source}")]
    Tls {
        /// `uplink` or `local`.
        role: &'static str,
        /// What is wrong (boxed: it names keys and files, and `LinkError` travels in
        /// every `Result` of set-up).
        source: Box<TlsError>,
    },
}

/// The client's own default of buffered messages per subscription.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 65_536;

/// A NATS connection with its JetStream context and observable state.
#[derive(Debug, Clone)]
pub struct Link {
    role: &'static str,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    state: watch::Receiver<LinkState>,
}

impl Link {
    /// Starts connecting to `config.url` in the background and returns at once.
    pub async fn connect(
        role: &'static str,
        config: &LinkConfig,
        client_name: &str,
    ) -> Result<Self, LinkError> {
        Self::connect_bounded(role, config, client_name, DEFAULT_SUBSCRIPTION_CAPACITY).await
    }

    /// [`Self::connect`] with at most `capacity` messages buffered per subscription: what
    /// a slow reader leaves unread beyond that is dropped by the client (a slow consumer),
    /// so memory stays bounded whatever a publisher on that server does.
    pub async fn connect_bounded(
        role: &'static str,
        config: &LinkConfig,
        client_name: &str,
        capacity: usize,
    ) -> Result<Self, LinkError> {
        let (tx, rx) = watch::channel(LinkState {
            connected: false,
            since: OffsetDateTime::now_utc(),
            last_error: None,
        });
        let tx = Arc::new(tx);
        let last_logged_error = Arc::new(Mutex::new(None::<String>));
        let url_for_log = redact_url(&config.url);
        let backoff = Backoff::new(
            std::time::Duration::from_millis(100),
            config.reconnect_max_delay,
        );

        let (tls, cert_failures) = tls_settings(role, config, &url_for_log)?;
        let tls_required = tls.is_some();
        let events_tx = Arc::clone(&tx);
        let events_url = url_for_log.clone();
        let options = async_nats::ConnectOptions::new()
            .name(client_name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(config.ping_interval)
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .subscription_capacity(capacity.max(1))
            .reconnect_delay_callback(move |attempts| {
                backoff.delay_now(u32::try_from(attempts).unwrap_or(u32::MAX))
            })
            .event_callback(move |event| {
                let tx = Arc::clone(&events_tx);
                let last_logged_error = Arc::clone(&last_logged_error);
                let url = events_url.clone();
                let cert_failures = cert_failures.clone();
                async move {
                    let tls = tls_required.then_some(&cert_failures);
                    on_event(role, &url, event, &tx, &last_logged_error, tls)
                }
            });
        let options = match tls {
            Some(tls) => options.require_tls(true).tls_client_config(tls),
            None => options,
        };
        let options = match &config.inbox_prefix {
            Some(prefix) => options.custom_inbox_prefix(prefix),
            None => options,
        };
        // async-nats ignores credentials in a URL: pass them on (docs/pitfalls.md, "async-nats").
        let options = match url_credentials(&config.urls()) {
            Some(UrlAuth::UserPassword(user, password)) => {
                options.user_and_password(user, password)
            }
            Some(UrlAuth::Token(token)) => options.token(token),
            None => options,
        };
        // Every server of the list (a cluster): the client tries them in turn, at start and
        // on every reconnect, and learns the others a server announces.
        let client = options
            .connect(config.urls())
            .await
            .map_err(|source| LinkError::Setup {
                role,
                url: url_for_log,
                source,
            })?;
        // Through a leaf node (`jetstream_domain`), every JetStream request goes to the
        // parent tier's domain, not to the local server's own JetStream; key-value puts too
        // (`$JS.{domain}.API.$KV.…`, mapped back to `$KV.…` by the parent's server).
        let mut jetstream = match &config.jetstream_domain {
            Some(domain) => jetstream::with_domain(client.clone(), domain),
            None => jetstream::new(client.clone()),
        };
        jetstream.set_timeout(config.request_timeout);
        Ok(Self {
            role,
            client,
            jetstream,
            state: rx,
        })
    }

    /// `uplink` or `local`.
    pub fn role(&self) -> &'static str {
        self.role
    }

    /// The core NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context (publish acks time out after the link's `request_timeout`): the
    /// parent tier's domain when the link has a `jetstream_domain`, else the server's own.
    /// Everything the agent does over JetStream on this link goes through it.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// A receiver of state changes.
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Waits until connected; `false` if `shutdown` fired first.
    pub async fn wait_connected(&self, shutdown: &CancellationToken) -> bool {
        let mut state = self.state.clone();
        // Cancel safety: `wait_for` only borrows the receiver; dropping it loses nothing.
        tokio::select! {
            _ = shutdown.cancelled() => false,
            result = state.wait_for(|s| s.connected) => result.is_ok(),
        }
    }
}

/// Credentials embedded in a URL (`nats://user:password@host`, `nats://token@host`).
#[derive(PartialEq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

impl std::fmt::Debug for UrlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlAuth::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ***)"),
            UrlAuth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The credentials of the first URL of the list that embeds any, percent-decoded: one set
/// per link (the client authenticates to every server of the list with it).
fn url_credentials(urls: &[&str]) -> Option<UrlAuth> {
    urls.iter().find_map(|url| {
        let rest = url.split_once("://")?.1;
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, _) = authority.rsplit_once('@')?;
        match userinfo.split_once(':') {
            Some((user, password)) => Some(UrlAuth::UserPassword(
                percent_decode(user),
                percent_decode(password),
            )),
            None if !userinfo.is_empty() => Some(UrlAuth::Token(percent_decode(userinfo))),
            None => None,
        }
    })
}

/// `%XX` escapes decoded (what a URL's user info may hold); anything else kept as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// TLS as configured: the agent's own `rustls::ClientConfig` (see [`crate::tls`]), to be
/// required, when `[role.tls]` is set or a URL is `tls://`; otherwise `None`, after one
/// warning if the link reaches a host other than this machine in clear.
fn tls_settings(
    role: &'static str,
    config: &LinkConfig,
    url_for_log: &str,
) -> Result<(Option<async_nats::rustls::ClientConfig>, tls::CertFailures), LinkError> {
    let settings = match &config.tls {
        Some(settings) => settings.clone(),
        // The config crate turns a `tls://` URL into `Some(default)`; a LinkConfig built by
        // hand may not have.
        None if tls::url_requires_tls(&config.url) => nexus_config::TlsConfig::default(),
        None => {
            let hosts = tls::plaintext_remote_hosts(&config.url, false);
            if !hosts.is_empty() {
                warn!(
                    link = role,
                    url = %url_for_log,
                    host = %hosts.join(","),
                    "Link is not configured for TLS: credentials and events travel unencrypted \
                     (unless the server demands TLS). Use a tls:// URL or the link's [tls] section.",
                );
            }
            return Ok((None, tls::CertFailures::default()));
        }
    };
    let ws_hosts = tls::plaintext_remote_hosts(&config.url, true);
    if !ws_hosts.is_empty() {
        warn!(
            link = role,
            url = %url_for_log,
            host = %ws_hosts.join(","),
            "Link has TLS settings, but ws:// is never upgraded to TLS: credentials and events \
             travel unencrypted to these hosts. Use wss://.",
        );
    }
    let tls = tls::client_config(role, &settings).map_err(|source| LinkError::Tls {
        role,
        source: Box::new(source),
    })?;
    Ok((Some(tls.config), tls.failures))
}

/// Says which servers of a link that requires TLS do not offer it (the handshake with them
/// fails with a bare "IO error").
async fn explain_tls_failure(role: &'static str, url: String) {
    let plain = tls::servers_without_tls(&url, std::time::Duration::from_secs(2)).await;
    if !plain.is_empty() {
        warn!(
            link = role,
            server = %plain.join(","),
            "This server does not offer TLS, but the link requires it ([{role}.tls] is present \
             or a URL is tls://). Remove [{role}.tls] and use nats:// URLs for a plain server, \
             or enable TLS on the server."
        );
    }
}

fn on_event(
    role: &'static str,
    url: &str,
    event: async_nats::Event,
    tx: &watch::Sender<LinkState>,
    last_logged_error: &Mutex<Option<String>>,
    tls: Option<&tls::CertFailures>,
) {
    use async_nats::Event;
    let now = OffsetDateTime::now_utc();
    match event {
        Event::Connected => {
            info!(link = role, %url, "Link connected.");
            if let Some(cert_failures) = tls {
                cert_failures.take();
            }
            if let Ok(mut last) = last_logged_error.lock() {
                *last = None;
            }
            tx.send_replace(LinkState {
                connected: true,
                since: now,
                last_error: None,
            });
        }
        Event::Disconnected => {
            warn!(link = role, %url, "Link disconnected; reconnecting with backoff.");
            tx.send_replace(LinkState {
                connected: false,
                since: now,
                last_error: None,
            });
        }
        Event::ClientError(error) => {
            // async-nats reports only the kind ("IO error"); add why the server's
            // certificate was refused, when that is what happened, or that this link
            // requires TLS, which a server without TLS fails exactly like this.
            let (error, tls_unexplained) = match tls.map(tls::CertFailures::take) {
                Some(Some(why)) => (format!("{error}: {why}"), false),
                Some(None) => (error.to_string(), true),
                None => (error.to_string(), false),
            };
            let first_of_its_kind = match last_logged_error.lock() {
                Ok(mut last) if last.as_deref() != Some(error.as_str()) => {
                    *last = Some(error.clone());
                    true
                }
                _ => false,
            };
            if first_of_its_kind {
                warn!(link = role, %url, %error, "Link cannot connect; retrying until it can.");
                if tls_unexplained {
                    tokio::spawn(explain_tls_failure(role, url.to_owned()));
                }
            } else {
                debug!(link = role, %url, %error, "Link connect attempt failed.");
            }
            tx.send_modify(|state| state.last_error = Some(error));
        }
        Event::ServerError(error) => warn!(link = role, %url, %error, "Server reported an error."),
        Event::SlowConsumer(sid) => {
            warn!(link = role, %url, sid, "Subscription fell behind; the client dropped messages.")
        }
        Event::LameDuckMode => info!(link = role, %url, "Server is entering lame duck mode."),
        Event::Draining | Event::Closed => debug!(link = role, %url, %event, "Link event."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_from_the_first_url_that_embeds_them() {
        assert_eq!(url_credentials(&["nats://127.0.0.1:4222"]), None);
        assert_eq!(
            url_credentials(&["nats://a:4222", "tls://hub-uplink:p%40ss:w@b:4222/x"]),
            Some(UrlAuth::UserPassword(
                "hub-uplink".to_owned(),
                "p@ss:w".to_owned()
            ))
        );
        assert_eq!(
            url_credentials(&["nats://s3cr3t@a:4222"]),
            Some(UrlAuth::Token("s3cr3t".to_owned()))
        );
        assert_eq!(url_credentials(&["nats://@a:4222"]), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert!(!format!("{:?}", url_credentials(&["nats://u:hunter2@a"])).contains("hunter2"));
    }
}
