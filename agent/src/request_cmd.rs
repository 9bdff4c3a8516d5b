//! `nexus-agent request` and `nexus-agent publish`: an operator's commands and events,
//! signed with a node's own key and token (from its config file).
//!
//! - `request NODE COMMAND`: from the root or a hub, on its own NATS; prints the reply's
//!   payload (stdout) and who signed it (stderr); exits 0 on an `ok` reply, 1 on an error
//!   reply, a timeout or when no agent answers.
//! - `publish EVENT`: from any node, straight into the next tier's ingress (a JetStream
//!   publish, acknowledged durably); prints the event id and subject.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use async_nats::client::RequestErrorKind;
use async_nats::jetstream::message::PublishMessage;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nexus_config::{Config, LinkConfig, Mode};
use nexus_federation::command::{self, Issuer, MAX_COMMAND_BYTES};
use nexus_federation::subject::ingress_subject;
use nexus_federation::trust;
use nexus_federation::{Encoding, Envelope, Link, NatsProvenance as _, SignedEvent};
use nexus_policies::{UnixTime, Verifier};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::keygen::load_secret;

/// How long to wait for the NATS server before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn connect(role: &'static str, link: &LinkConfig, name: &str) -> anyhow::Result<Link> {
    let url = nexus_config::redact_url(&link.url);
    let connected = Link::connect(role, link, name)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let never = CancellationToken::new();
    match tokio::time::timeout(CONNECT_TIMEOUT, connected.wait_connected(&never)).await {
        Ok(true) => Ok(connected),
        _ => bail!(
            "cannot reach NATS at {url} within {} s (is the server up? [{role}] url in the config)",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

fn read_token(config: &Config) -> anyhow::Result<Option<Vec<u8>>> {
    config
        .node
        .token
        .as_ref()
        .map(|path| {
            std::fs::read(path)
                .with_context(|| format!("cannot read node.token {}", path.display()))
        })
        .transpose()
}

/// A node's way to send signed commands: its key, its chain and its own NATS.
pub struct Asker<'c> {
    config: &'c Config,
    key: nexus_policies::SecretKey,
    chain: Option<Vec<u8>>,
    link: Link,
}

impl<'c> Asker<'c> {
    /// Loads the key and token of `config` and connects to its `[local]` NATS; `purpose`
    /// names the connection (`request`, `trace`).
    pub async fn connect(config: &'c Config, purpose: &str) -> anyhow::Result<Self> {
        if config.node.mode == Mode::Member {
            bail!(
                "commands are sent from the root or a hub; {} is a member",
                config.node.id
            );
        }
        let link = config
            .local
            .as_ref()
            .context("the config has no [local] NATS to send the command on")?;
        let key = load_secret(&config.node.key)?;
        let chain = read_token(config)?;
        let link = connect(
            "local",
            link,
            &format!("nexus-agent {purpose} {}", config.node.id),
        )
        .await?;
        Ok(Self {
            config,
            key,
            chain,
            link,
        })
    }

    /// JetStream on the node's own NATS.
    pub fn jetstream(&self) -> &async_nats::jetstream::Context {
        self.link.jetstream()
    }

    /// Sends command `name` to `node` and returns its verified reply (an `ok` one or an
    /// error reply); errs when nobody answers in time, the reply does not verify, or a hub
    /// refused it before it was signed.
    pub async fn ask(
        &self,
        node: &str,
        name: &str,
        data: Map<String, Value>,
        timeout: Duration,
    ) -> anyhow::Result<(SignedEvent, Envelope)> {
        let issuer = Issuer {
            node_id: &self.config.node.id,
            key: &self.key,
            chain: self.chain.as_deref(),
        };
        let sealed = command::seal(
            &issuer,
            node,
            name,
            data,
            timeout,
            OffsetDateTime::now_utc(),
        )
        .map_err(|e| anyhow!(e))?;
        let request = async_nats::Request::new()
            .payload(sealed.body.clone())
            .headers(sealed.headers.clone())
            .timeout(Some(timeout));
        let answer = self
            .link
            .client()
            .send_request(sealed.subject.clone(), request)
            .await
            .map_err(|error| match error.kind() {
                RequestErrorKind::NoResponders => anyhow!(
                    "no agent listens for commands on this NATS: is the node's hub (or the node) running?"
                ),
                RequestErrorKind::TimedOut => anyhow!(
                    "no reply from node `{node}` within {}: no hub knows it (it never sent a \
                     heartbeat through one), or it is slow",
                    humantime::format_duration(timeout)
                ),
                _ => anyhow!("cannot send the command: {error}"),
            })?;
        if let Some(code) = answer.headers.as_ref().and_then(|h| h.get("Nexus-Error")) {
            bail!(
                "refused ({}): {}",
                code.as_str(),
                String::from_utf8_lossy(&answer.payload)
            );
        }
        let chain = answer
            .headers
            .as_ref()
            .and_then(|h| h.get(command::HDR_CHAIN))
            .map(|v| v.as_str().to_owned());
        let (event, reply) = nexus_federation::SignedEvent::open_detached(
            answer.headers.as_ref(),
            answer.payload,
            MAX_COMMAND_BYTES,
        )
        .map_err(|e| anyhow!("the reply does not verify: {e}"))?;
        check_reply(
            self.config,
            &sealed.envelope,
            node,
            &event,
            &reply,
            chain.as_deref(),
        )?;
        Ok((event, reply))
    }
}

/// `code: message` of an error reply.
pub fn error_of(reply: &Envelope) -> String {
    let code = reply
        .payload
        .get("code")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let message = reply
        .payload
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("{code}: {message}")
}

/// `request NODE COMMAND`.
pub async fn request(
    config: &Config,
    node: &str,
    name: &str,
    data: Map<String, Value>,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let asker = Asker::connect(config, "request").await?;
    let (event, reply) = asker.ask(node, name, data, timeout).await?;
    eprintln!(
        "reply {} from {} (signed by {}), correlation_id {}",
        reply.event_name,
        reply.source,
        event.signer,
        reply.correlation_id.as_deref().unwrap_or("-")
    );
    let shown = if json {
        serde_json::to_string(&reply)?
    } else {
        serde_json::to_string_pretty(&reply.payload)?
    };
    if command::is_ok(&reply) {
        println!("{shown}");
        Ok(())
    } else {
        if json {
            println!("{shown}");
        }
        bail!("{}", error_of(&reply))
    }
}

/// Who may answer: the reply names this command (result name, correlation and causation
/// ids), and its signer is a trust anchor or a node whose chain verifies up to
/// `trust.root_keys` and names the reply's `source`; an `ok` reply comes from the target
/// itself (a hub only ever answers with an error, e.g. `node_offline`).
fn check_reply(
    config: &Config,
    command: &Envelope,
    target: &str,
    event: &SignedEvent,
    reply: &Envelope,
    chain: Option<&str>,
) -> anyhow::Result<()> {
    if reply.event_name != command::result_name(&command.event_name)
        || reply.correlation_id != command.correlation_id
        || reply.causation_id.as_deref() != Some(command.event_id.as_str())
    {
        bail!("the reply is not for this command (its name or ids differ); ignored");
    }
    if !config.trust.root_keys.contains(&event.signer) {
        let text =
            chain.context("the reply carries no token chain: its signer cannot be trusted")?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| anyhow!("the reply's token chain is not base64url: {e}"))?;
        let mut verifier = Verifier::new(config.trust.root_keys.clone());
        verifier.skew = config.trust.clock_skew;
        let now = UnixTime(OffsetDateTime::now_utc().unix_timestamp());
        let grant = verifier
            .verify_bytes(&bytes, now)
            .map_err(|e| anyhow!("the reply's signer is not trusted: {e}"))?;
        if grant.node_key() != &event.signer || grant.node_id() != reply.source {
            bail!(
                "the reply is signed by node `{}`'s key but claims to come from `{}`",
                grant.node_id(),
                reply.source
            );
        }
    }
    if command::is_ok(reply) && reply.source != target {
        bail!(
            "an `ok` reply from `{}`, not from `{target}`: ignored",
            reply.source
        );
    }
    Ok(())
}

/// `publish EVENT`.
pub async fn publish(
    config: &Config,
    event_name: &str,
    data: Map<String, Value>,
    cbor: bool,
) -> anyhow::Result<()> {
    if !nexus_federation::subject::is_valid_event_name(event_name) {
        bail!("{event_name:?} is not an event name: two or more dot-separated tokens of [a-z0-9_-], e.g. booking.created");
    }
    let (role, link) = match (config.node.mode, &config.uplink, &config.local) {
        (Mode::Member | Mode::Hub, Some(uplink), _) => ("uplink", uplink),
        (Mode::Root, _, Some(local)) => ("local", local),
        _ => bail!("the config has no NATS link to publish on"),
    };
    let key = load_secret(&config.node.key)?;
    let chain = read_token(config)?;
    let envelope = Envelope::new(
        event_name,
        &config.node.id,
        config.node.tenant.as_deref(),
        data,
        OffsetDateTime::now_utc(),
    );
    let encoding = if cbor { Encoding::Cbor } else { Encoding::Json };
    let event = SignedEvent::seal(&envelope, encoding, &key).map_err(|e| anyhow!("{e}"))?;
    let link = connect(
        role,
        link,
        &format!("nexus-agent publish {}", config.node.id),
    )
    .await?;
    if let Some(chain) = chain {
        // The next tier verifies the event against this node's chain: present it first.
        let store = trust::bucket(&link, trust::CHAINS_BUCKET, config.node.mode == Mode::Root)
            .await
            .map_err(|e| {
                anyhow!(
                    "the next tier is not ready to verify events ({} bucket: {e}): is its agent \
                     running? ([{role}] url in the config)",
                    trust::CHAINS_BUCKET
                )
            })?;
        store
            .put(trust::key_id(&key.public()), chain.into())
            .await
            .map_err(|e| anyhow!("cannot present the token chain: {e}"))?;
    }
    let ack = link
        .jetstream()
        .send_publish(
            ingress_subject(&event.subject),
            PublishMessage::build()
                .payload(event.body.clone())
                .headers(event.headers()),
        )
        .await
        .map_err(|e| anyhow!("cannot publish: {e}"))?
        .await
        .map_err(|e| anyhow!("the next tier did not acknowledge the event: {e}"))?;
    eprintln!(
        "published {} on {} (stream {}, seq {}{})",
        event.event_id,
        event.subject,
        ack.stream,
        ack.sequence,
        if ack.duplicate { ", duplicate" } else { "" }
    );
    println!("{}", event.event_id);
    Ok(())
}
