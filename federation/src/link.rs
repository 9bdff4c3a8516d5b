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
        let mut jetstream = jetstream::new(client.clone());
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

    /// The JetStream context (publish acks time out after the link's `request_timeout`).
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
