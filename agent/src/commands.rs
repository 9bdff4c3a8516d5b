//! Commands to this node, and (hub) to its members.
//!
//! Where each mode listens (see `nexus_federation::command` for the wire contract):
//! - member: `_nexus.cmd.{id}.>` on the uplink (its hub's NATS);
//! - hub: `_nexus.cmd.>` on the uplink (the root's NATS): its own commands, and its known
//!   children's, which it verifies and requests again on its own NATS, where the member
//!   listens; plus `_nexus.cmd.{id}.>` on its own NATS;
//! - root: `_nexus.cmd.{id}.>` on its own NATS.
//!
//! A command for this node is verified (signature, shape, freshness, replay, issuer's
//! grant) and then answered by a built-in (`agent.ping`, `agent.health`,
//! `agent.token.rotate`) or by a local app: the first `[[bridge.down]]` rule whose
//! `command` pattern matches names the local subject it is requested on. The app's answer
//! becomes the signed `{command}.result` reply, which also travels up as an event (through
//! the outbox). A refused command is answered with an error, dead-lettered and audited.
//! A command for a child that went silent fails at once with `node_offline`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt as _;
use nexus_config::{DownRule, Mode};
use nexus_federation::bridge::decode_object;
use nexus_federation::command::{self, OpenedCommand, ReplayGuard};
use nexus_federation::envelope::Envelope;
use nexus_federation::outbox::Priority;
use nexus_federation::ratelog::RateLimitedLog;
use nexus_federation::refusal::{Reason, RefusalSink, Rejection};
use nexus_federation::subject;
use nexus_federation::trust::{self, Admitted, Gatekeeper, OwnChain};
use nexus_federation::uplink::{Presentation, PresentationSlot};
use nexus_federation::{Link, Outbox};
use nexus_policies::{Chain, Role, SecretKey};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::heartbeat::{Children, Heartbeat};

/// Commands handled at once; more wait in the listener's queue.
const IN_FLIGHT: usize = 64;
/// Commands waiting per listener for a handler, by count and by bytes. Beyond either, a
/// command is dropped unanswered (its caller times out) and the drop is logged: a flood
/// of commands cannot fill a small box's memory, and the listener keeps reading, so the
/// client's own subscription buffer stays empty.
const WAITING: usize = 1024;
const WAITING_BYTES: usize = 4 * 1024 * 1024;
/// Commands remembered against replay.
const REPLAY_CAPACITY: usize = 10_000;
/// What a hub keeps for itself of the caller's deadline, so its own error arrives first.
const ROUTE_MARGIN: Duration = Duration::from_millis(200);

/// The built-in command names.
pub const PING: &str = "agent.ping";
/// Answers with a fresh heartbeat payload.
pub const HEALTH: &str = "agent.health";
/// Replaces this node's token.
pub const ROTATE: &str = "agent.token.rotate";

/// What token rotation needs.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// `node.token`: where the chain lives (none: a root without a token refuses).
    pub path: Option<PathBuf>,
    /// The chain presented upward.
    pub presentation: PresentationSlot,
    /// This node's chain, as the bridge, the command checks and the revocation watch see it.
    pub own: OwnChain,
    /// The next tier's NATS: the new chain is put in its registry before the answer.
    pub next_hop: Link,
}

/// The command service of one node.
#[derive(Debug, Clone)]
pub struct CommandService {
    /// This node's id.
    pub node_id: String,
    /// This node's mode.
    pub mode: Mode,
    /// This node's tenant.
    pub tenant: Option<String>,
    /// The key that signs replies.
    pub key: SecretKey,
    /// Verifies issuers' chains (and revocations).
    pub gatekeeper: Arc<Gatekeeper>,
    /// `trust.clock_skew`.
    pub skew: Duration,
    /// The parent's NATS.
    pub uplink: Option<Link>,
    /// This node's own NATS.
    pub local: Option<Link>,
    /// `[[bridge.down]]`.
    pub down: Vec<DownRule>,
    /// Where app replies are queued to travel up.
    pub outbox: Outbox,
    /// Where refusals go: logged, dead letters, audit (`Stage::Command`; shared by every
    /// listener).
    pub refusals: RefusalSink,
    /// The watch over children (hub: routing).
    pub children: Option<Children>,
    /// Answers `agent.ping` and `agent.health`.
    pub heartbeat: Heartbeat,
    /// `agent.token.rotate`.
    pub rotation: Rotation,
    /// Commands seen (shared by every listener).
    pub replay: Arc<Mutex<ReplayGuard>>,
    /// Quiet logs (shared): commands dropped unanswered.
    pub log: Arc<Mutex<RateLimitedLog>>,
    /// When this agent started: commands issued earlier are refused (the replay guard is
    /// in memory, so a restart must not reopen the window of older commands).
    pub started_wall: OffsetDateTime,
}

/// The commands of one listener waiting for a handler, bounded by [`WAITING`] and
/// [`WAITING_BYTES`].
#[derive(Debug, Default)]
struct Waiting {
    messages: VecDeque<async_nats::Message>,
    bytes: usize,
    /// Commands dropped since the agent started.
    dropped: u64,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Queues `message`; `false` (it is dropped, and counted) when the queue is full.
    fn push(&mut self, message: async_nats::Message) -> bool {
        let size = message.length;
        if self.messages.len() >= WAITING || self.bytes.saturating_add(size) > WAITING_BYTES {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        self.bytes += size;
        self.messages.push_back(message);
        true
    }

    fn pop(&mut self) -> Option<async_nats::Message> {
        let message = self.messages.pop_front()?;
        self.bytes = self.bytes.saturating_sub(message.length);
        Some(message)
    }
}

/// How a listener treats what it hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listen {
    /// Only commands for this node.
    Own,
    /// Commands for this node, and routing to children (hub on its uplink).
    OwnAndChildren,
}

impl CommandService {
    /// Empty replay and log state, shared by the listeners.
    pub fn shared_state() -> (Arc<Mutex<ReplayGuard>>, Arc<Mutex<RateLimitedLog>>) {
        (
            Arc::new(Mutex::new(ReplayGuard::new(REPLAY_CAPACITY))),
            Arc::new(Mutex::new(RateLimitedLog::new(Duration::from_secs(60)))),
        )
    }

    /// Listens where the mode says until `shutdown` (a failed subscription is retried, so
    /// it always ends `Ok`).
    pub async fn run(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), nexus_federation::subsystem::SubsystemError> {
        let own = subject::command_subject(&self.node_id, ">");
        let all = format!("{}.>", subject::COMMAND_PREFIX);
        let mut listeners = Vec::new();
        match self.mode {
            Mode::Member => {
                if let Some(uplink) = &self.uplink {
                    listeners.push((uplink.clone(), own.clone(), Listen::Own));
                }
            }
            Mode::Hub => {
                if let Some(uplink) = &self.uplink {
                    listeners.push((uplink.clone(), all, Listen::OwnAndChildren));
                }
                if let Some(local) = &self.local {
                    listeners.push((local.clone(), own.clone(), Listen::Own));
                }
            }
            Mode::Root => {
                if let Some(local) = &self.local {
                    listeners.push((local.clone(), own.clone(), Listen::Own));
                }
            }
        }
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        for (link, pattern, listen) in listeners {
            let service = self.clone();
            let shutdown = shutdown.clone();
            let permits = Arc::clone(&permits);
            let tasks = tracker.clone();
            tracker.spawn(async move {
                service
                    .listen(link, pattern, listen, permits, tasks, shutdown)
                    .await;
            });
        }
        tracker.close();
        shutdown.cancelled().await;
        // In-flight commands finish within their own (short) deadlines or are dropped at
        // exit; their issuers time out.
        let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait()).await;
        Ok(())
    }

    async fn listen(
        self,
        link: Link,
        pattern: String,
        listen: Listen,
        permits: Arc<Semaphore>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        if !link.wait_connected(&shutdown).await {
            return;
        }
        // One queue group per node: instances of one hub or root share the work (each
        // command is handled once), different nodes each get their copy.
        let group = format!("nexus-agent.{}", self.node_id);
        let mut waiting = Waiting::default();
        while !shutdown.is_cancelled() {
            // The client subscribes again by itself after a reconnect; this loop covers a
            // subscription that ends anyway.
            let mut subscription = match link
                .client()
                .queue_subscribe(pattern.clone(), group.clone())
                .await
            {
                Ok(subscription) => subscription,
                Err(error) => {
                    warn!(%error, subject = %pattern, link = link.role(), "Cannot subscribe to commands; retrying.");
                    if !nexus_federation::backoff::sleep(Duration::from_secs(1), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            info!(subject = %pattern, link = link.role(), "Listening for commands.");
            loop {
                // Cancel safety: a dropped `next` loses nothing; a dropped `acquire_owned`
                // only gives up its place in the semaphore's queue.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    permit = Arc::clone(&permits).acquire_owned(), if !waiting.is_empty() => {
                        let Ok(permit) = permit else { return };
                        if let Some(message) = waiting.pop() {
                            self.dispatch(&tasks, &link, message, listen, permit);
                        }
                    }
                    message = subscription.next() => {
                        let Some(message) = message else { break };
                        // In arrival order: straight to a handler only if none waits ahead.
                        if waiting.is_empty() {
                            match Arc::clone(&permits).try_acquire_owned() {
                                Ok(permit) => {
                                    self.dispatch(&tasks, &link, message, listen, permit);
                                    continue;
                                }
                                Err(TryAcquireError::Closed) => return,
                                Err(TryAcquireError::NoPermits) => {}
                            }
                        }
                        let subject = message.subject.clone();
                        if !waiting.push(message) {
                            self.dropped(&subject, &waiting);
                        }
                    }
                }
            }
        }
    }

    /// Hands a command to a handler task holding `permit`.
    fn dispatch(
        &self,
        tasks: &TaskTracker,
        link: &Link,
        message: async_nats::Message,
        listen: Listen,
        permit: OwnedSemaphorePermit,
    ) {
        let service = self.clone();
        let link = link.clone();
        tasks.spawn(async move {
            service.handle(&link, message, listen).await;
            drop(permit);
        });
    }

    /// Logs (rate-limited) a command dropped because too many wait.
    fn dropped(&self, subject: &async_nats::Subject, waiting: &Waiting) {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(suppressed) = log.check("commands_waiting_full", Instant::now()) {
            warn!(
                %subject,
                waiting = waiting.messages.len(),
                waiting_bytes = waiting.bytes,
                dropped = waiting.dropped,
                suppressed,
                "Too many commands waiting ({IN_FLIGHT} being handled, at most {WAITING} or {WAITING_BYTES} bytes waiting): dropped unanswered, its caller times out."
            );
        }
    }

    async fn handle(&self, link: &Link, message: async_nats::Message, listen: Listen) {
        let Some(reply_to) = message.reply.clone() else {
            debug!(subject = %message.subject, "Command without a reply subject; ignored.");
            return;
        };
        let target = subject::parse_command_subject(message.subject.as_str()).map(|(n, _)| n);
        let for_me = target == Some(self.node_id.as_str());
        if !for_me {
            if listen == Listen::OwnAndChildren {
                if let Some(target) = target {
                    let target = target.to_owned();
                    self.route(link, &message, &target, reply_to).await;
                }
            }
            return;
        }
        let (headers, body) = match self.answer(&message).await {
            Ok(reply) => reply,
            Err((rejection, envelope)) => {
                self.refusals.refuse(&message, &rejection);
                match envelope {
                    Some(command) => self.error_reply(&command, &rejection),
                    None => plain_error(&rejection),
                }
            }
        };
        self.respond(link, reply_to, headers, body).await;
    }

    /// Verifies a command for this node and answers it.
    async fn answer(
        &self,
        message: &async_nats::Message,
    ) -> Result<(async_nats::HeaderMap, Bytes), Refused> {
        let command = self.verify(message, Some(self.tenant.as_deref()))?;
        let outcome = match command.name.as_str() {
            PING => Ok(self.ping()),
            HEALTH => Ok(self.heartbeat.snapshot()),
            ROTATE => self.rotate(&command.envelope.payload).await,
            name if name.starts_with("agent.") => Err(Rejection::new(
                Reason::UnknownCommand,
                format!("`{name}` is not a built-in command (agent.ping, agent.health, agent.token.rotate)"),
            )),
            _ => return Ok(self.deliver(&command).await),
        };
        let reply = command::reply_envelope(
            &command.envelope,
            &self.node_id,
            None,
            outcome.map_err(|r| (r.reason.as_str(), r.detail)),
            OffsetDateTime::now_utc(),
        );
        Ok(self.sign(&reply))
    }

    /// Every check of a command that needs no action: shape and signature, freshness,
    /// replay, the issuer's grant (`target_tenant` as in `Gatekeeper::admit_command`).
    fn verify(
        &self,
        message: &async_nats::Message,
        target_tenant: Option<Option<&str>>,
    ) -> Result<OpenedCommand, Refused> {
        let command = command::open(
            message.subject.as_str(),
            message.headers.as_ref(),
            message.payload.clone(),
        )
        .map_err(|r| (r, None))?;
        let with = |r: Rejection| (r, Some(Box::new(command.envelope.clone())));
        let now = self.gatekeeper.now().map_err(with)?;
        command::check_fresh(&command, now, self.skew).map_err(with)?;
        let skew = time::Duration::try_from(self.skew).unwrap_or(time::Duration::MAX);
        if command
            .issued()
            .checked_add(skew)
            .is_some_and(|t| t < self.started_wall)
        {
            return Err(with(Rejection::new(
                Reason::CommandStale,
                "issued before this agent started; send it again",
            )));
        }
        let admitted = self
            .gatekeeper
            .admit_command(
                &command.event,
                &command.envelope,
                command.chain.as_ref(),
                &command.subject,
                target_tenant,
            )
            .map_err(with)?;
        // Only a node above this one in the tree (or a root) commands it: a hub's token
        // grants `_nexus.cmd.>`, but a sibling hub is not this node's ancestor.
        if let Admitted::Node(grant) = &admitted {
            if grant.role() != Role::Root && !self.rotation.own.has_ancestor(grant.node_key()) {
                return Err(with(Rejection::new(
                    Reason::CommandNotAllowed,
                    format!(
                        "node `{}` is not above node `{}` in the tree",
                        grant.node_id(),
                        self.node_id
                    ),
                )));
            }
        }
        let until = Instant::now() + command.remaining(now) + self.skew;
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&command.envelope.event_id, until, Instant::now())
            .map_err(with)?;
        Ok(command)
    }

    fn ping(&self) -> Map<String, Value> {
        let mut payload = Map::new();
        payload.insert("node_id".into(), json!(self.node_id));
        payload.insert("mode".into(), json!(self.mode.as_str()));
        payload.insert("agent_version".into(), json!(env!("CARGO_PKG_VERSION")));
        payload.insert(
            "uptime_secs".into(),
            json!(self.heartbeat.started.elapsed().as_secs()),
        );
        payload
    }

    /// `agent.token.rotate {"token": "<chain, base64url>"}`: the new chain must verify up
    /// to a trust anchor now and be this node's (id, key, role, tenant); then it replaces
    /// the old one on disk (atomically), upward and in the bridge's checks.
    async fn rotate(&self, payload: &Map<String, Value>) -> Result<Map<String, Value>, Rejection> {
        let Some(path) = &self.rotation.path else {
            return Err(Rejection::new(
                Reason::NoToken,
                "this node runs without node.token (a trust anchor): nothing to rotate",
            ));
        };
        let text = payload
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Rejection::new(
                    Reason::Malformed,
                    "expected {\"token\": \"<token chain file, base64url>\"}",
                )
            })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| {
                Rejection::new(Reason::Malformed, format!("token is not base64url: {e}"))
            })?;
        let chain = Chain::decode(&bytes).map_err(|e| Rejection::from(&e))?;
        let grant = self.gatekeeper.verify_now(&chain)?;
        let own_key = self.key.public();
        let role = match self.mode {
            Mode::Member => Role::Member,
            Mode::Hub => Role::Hub,
            Mode::Root => Role::Root,
        };
        let problem = if grant.node_id() != self.node_id {
            Some(format!("the token is for node `{}`", grant.node_id()))
        } else if grant.node_key() != &own_key {
            Some("the token is for another key than this node's".to_owned())
        } else if grant.role() != role {
            Some(format!(
                "the token is for a {}, this node is a {}",
                grant.role(),
                role
            ))
        } else if self
            .rotation
            .own
            .parent_key()
            .is_some_and(|parent| chain.leaf().claims().issuer_key != parent)
        {
            Some("the token is issued by another parent than the current one".to_owned())
        } else if self.tenant.is_some() && grant.tenant() != self.tenant.as_deref() {
            Some(format!(
                "the token is for tenant {:?}, this node is tenant {:?}",
                grant.tenant(),
                self.tenant
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Rejection::new(Reason::TokenNotMine, problem));
        }
        nexus_federation::fsutil::write_atomically(path, &bytes, 0o644).map_err(|e| {
            Rejection::new(
                Reason::Io,
                format!("cannot write node.token {}: {e}", path.display()),
            )
        })?;
        // Presented to the next tier before the answer, so that its registry already
        // holds the new chain when the caller goes on (and revokes the old one).
        let key_id = trust::key_id(&own_key);
        let bytes = Bytes::from(bytes);
        if let Ok(registry) =
            trust::bucket(&self.rotation.next_hop, trust::CHAINS_BUCKET, false).await
        {
            if let Err(error) = registry.put(&key_id, bytes.clone()).await {
                warn!(%error, "Cannot present the new token chain yet; the uplink presents it with its next batch.");
            }
        }
        self.rotation.own.set(chain);
        self.rotation.presentation.set(Presentation {
            key_id,
            chain: bytes,
        });
        let expires = OffsetDateTime::from_unix_timestamp(grant.expires().0)
            .map(nexus_federation::envelope::format_ts)
            .unwrap_or_default();
        info!(token_id = %grant.leaf_id(), %expires, path = %path.display(), "Token rotated.");
        let mut answer = Map::new();
        answer.insert("token_id".into(), json!(grant.leaf_id().to_string()));
        answer.insert("expires".into(), json!(expires));
        Ok(answer)
    }

    /// Requests the command from the local app its `[[bridge.down]]` rule names; the
    /// answer is signed, queued to travel up, and returned.
    async fn deliver(&self, command: &OpenedCommand) -> (async_nats::HeaderMap, Bytes) {
        let now = OffsetDateTime::now_utc();
        let outcome = self.ask_app(command, now).await;
        let ok = outcome.is_ok();
        let reply = command::reply_envelope(
            &command.envelope,
            &self.node_id,
            if ok { self.tenant.as_deref() } else { None },
            outcome.map_err(|r| (r.reason.as_str(), r.detail)),
            OffsetDateTime::now_utc(),
        );
        match command::reply_message(&reply, &self.key) {
            Ok((headers, body, event)) => {
                let headers = self.with_chain(headers);
                if ok && !self.rotation.own.allows(&event.subject) {
                    warn!(subject = %event.subject, "This node's token does not grant a command's result event: the caller gets the reply, but it does not travel up.");
                } else if ok {
                    if let Err(error) = self.outbox.push(event, Priority::Control).await {
                        warn!(%error, command = %command.name, "Cannot queue a command's result event; the caller still gets the reply.");
                    }
                }
                (headers, body)
            }
            Err(error) => plain_error(&Rejection::new(Reason::Internal, error)),
        }
    }

    async fn ask_app(
        &self,
        command: &OpenedCommand,
        now: OffsetDateTime,
    ) -> Result<Map<String, Value>, Rejection> {
        let (rule, local_subject) = self
            .down
            .iter()
            .find_map(|rule| rule.rewrite.apply(&command.name).map(|s| (rule, s)))
            .ok_or_else(|| {
                Rejection::new(
                    Reason::UnknownCommand,
                    format!(
                        "no [[bridge.down]] rule on node `{}` takes `{}`",
                        self.node_id, command.name
                    ),
                )
            })?;
        let Some(local) = &self.local else {
            return Err(Rejection::new(
                Reason::UnknownCommand,
                "this node has no [local] NATS",
            ));
        };
        let timeout = rule.timeout.min(command.remaining(now));
        if timeout.is_zero() {
            return Err(Rejection::new(
                Reason::CommandExpired,
                "no time left to ask the app",
            ));
        }
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = &command.envelope.correlation_id {
            headers.insert("Nexus-Correlation-Id", id.as_str());
        }
        headers.insert("Nexus-Command-Id", command.envelope.event_id.as_str());
        headers.insert("Nexus-Issuer", command.envelope.source.as_str());
        let body = serde_json::to_vec(&command.envelope.payload)
            .map_err(|e| Rejection::new(Reason::Internal, e.to_string()))?;
        // The reply subject marks the request as the agent's own delivery: an up rule
        // taking the same subject leaves it to the app (command::is_own_delivery).
        let request = async_nats::Request::new()
            .payload(body.into())
            .headers(headers)
            .inbox(command::delivery_inbox())
            .timeout(Some(timeout));
        let answer = local
            .client()
            .send_request(local_subject.clone(), request)
            .await
            .map_err(|error| match error.kind() {
                async_nats::client::RequestErrorKind::NoResponders => Rejection::new(
                    Reason::NoLocalResponder,
                    format!("no local app answers on `{local_subject}`"),
                ),
                async_nats::client::RequestErrorKind::TimedOut => Rejection::new(
                    Reason::Timeout,
                    format!(
                        "the local app on `{local_subject}` did not answer within {} ms",
                        timeout.as_millis()
                    ),
                ),
                _ => Rejection::new(Reason::LocalUnavailable, error.to_string()),
            })?;
        if let Some(error) = answer
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error"))
        {
            return Err(Rejection::new(Reason::AppError, error.as_str().to_owned()));
        }
        let content_type = answer
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str().trim().to_owned());
        decode_object(&answer.payload, content_type.as_deref())
            .map_err(|r| Rejection::new(Reason::BadAppReply, r.detail))
    }

    /// Hub: a command for a child. Unknown children are someone else's (silence); a child
    /// gone silent fails at once; otherwise the verified command is requested again on
    /// this node's NATS and the child's answer passed back unchanged.
    async fn route(
        &self,
        uplink: &Link,
        message: &async_nats::Message,
        target: &str,
        reply_to: async_nats::Subject,
    ) {
        let Some(children) = &self.children else {
            return;
        };
        let Some(online) = children.online(target) else {
            return;
        };
        let Some(local) = &self.local else { return };
        let command = match self.verify(message, None) {
            Ok(command) => command,
            Err((rejection, envelope)) => {
                self.refusals.refuse(message, &rejection);
                let (headers, body) = match envelope {
                    Some(envelope) => self.error_reply(&envelope, &rejection),
                    None => plain_error(&rejection),
                };
                self.respond(uplink, reply_to, headers, body).await;
                return;
            }
        };
        if !online {
            let offline = Rejection::new(
                Reason::NodeOffline,
                format!(
                    "node `{target}` is offline: hub `{}` has not heard its heartbeat lately",
                    self.node_id
                ),
            );
            let (headers, body) = self.error_reply(&command.envelope, &offline);
            self.respond(uplink, reply_to, headers, body).await;
            return;
        }
        let remaining = command
            .remaining(OffsetDateTime::now_utc())
            .saturating_sub(ROUTE_MARGIN)
            .max(Duration::from_millis(100));
        let mut request = async_nats::Request::new()
            .payload(message.payload.clone())
            .timeout(Some(remaining));
        if let Some(headers) = message.headers.clone() {
            request = request.headers(headers);
        }
        let (headers, body) = match local
            .client()
            .send_request(message.subject.clone(), request)
            .await
        {
            Ok(answer) => (answer.headers.unwrap_or_default(), answer.payload),
            Err(error) => {
                let failure = match error.kind() {
                    async_nats::client::RequestErrorKind::NoResponders => Rejection::new(
                        Reason::NodeUnreachable,
                        format!(
                            "node `{target}` is not listening for commands on hub `{}`",
                            self.node_id
                        ),
                    ),
                    async_nats::client::RequestErrorKind::TimedOut => Rejection::new(
                        Reason::Timeout,
                        format!(
                            "node `{target}` did not answer within {} ms",
                            remaining.as_millis()
                        ),
                    ),
                    _ => Rejection::new(Reason::HubUnavailable, error.to_string()),
                };
                self.error_reply(&command.envelope, &failure)
            }
        };
        self.respond(uplink, reply_to, headers, body).await;
    }

    fn error_reply(
        &self,
        command: &Envelope,
        failure: &Rejection,
    ) -> (async_nats::HeaderMap, Bytes) {
        let reply = command::reply_envelope(
            command,
            &self.node_id,
            None,
            Err((failure.reason.as_str(), failure.detail.clone())),
            OffsetDateTime::now_utc(),
        );
        self.sign(&reply)
    }

    /// Signs a reply and adds this node's chain, so the caller can tell who answered.
    fn sign(&self, reply: &Envelope) -> (async_nats::HeaderMap, Bytes) {
        match command::reply_message(reply, &self.key) {
            Ok((headers, body, _)) => (self.with_chain(headers), body),
            Err(error) => plain_error(&Rejection::new(Reason::Internal, error)),
        }
    }

    fn with_chain(&self, mut headers: async_nats::HeaderMap) -> async_nats::HeaderMap {
        if let Some(chain) = self.rotation.own.bytes() {
            headers.insert(command::HDR_CHAIN, URL_SAFE_NO_PAD.encode(chain).as_str());
        }
        headers
    }

    async fn respond(
        &self,
        link: &Link,
        reply_to: async_nats::Subject,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) {
        if let Err(error) = link
            .client()
            .publish_with_headers(reply_to, headers, body)
            .await
        {
            debug!(%error, "Cannot send a command reply.");
        }
    }
}

/// A refused command: why, and its envelope when it could be read (to reply to it).
type Refused = (Rejection, Option<Box<Envelope>>);

/// An unsigned error reply, for a message too broken to answer with an envelope.
fn plain_error(failure: &Rejection) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nexus-Error", failure.reason.as_str());
    let body = json!({"code": failure.reason.as_str(), "message": failure.detail}).to_string();
    (headers, Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize, payload: usize) -> async_nats::Message {
        let subject = format!("_nexus.cmd.edge-01.agent.ping.{n}");
        async_nats::Message {
            length: subject.len() + payload,
            subject: subject.into(),
            reply: None,
            payload: Bytes::from(vec![0u8; payload]),
            headers: None,
            status: None,
            description: None,
        }
    }

    #[test]
    fn waiting_commands_are_bounded_by_count_kept_in_order_and_drops_are_counted() {
        let mut waiting = Waiting::default();
        for n in 0..WAITING {
            assert!(waiting.push(message(n, 10)), "command {n} fits");
        }
        assert!(!waiting.push(message(WAITING, 10)), "the queue is full");
        assert_eq!(waiting.dropped, 1);
        let first = waiting.pop().expect("a command");
        assert!(first.subject.as_str().ends_with(".ping.0"), "oldest first");
        assert!(waiting.push(message(WAITING + 1, 10)), "room again");
        let mut count = 0;
        while waiting.pop().is_some() {
            count += 1;
        }
        assert_eq!(count, WAITING);
        assert_eq!(waiting.bytes, 0);
        assert!(waiting.is_empty());
    }

    #[test]
    fn waiting_commands_are_bounded_by_bytes() {
        let mut waiting = Waiting::default();
        let big = WAITING_BYTES / 4;
        for n in 0..3 {
            assert!(waiting.push(message(n, big)));
        }
        // The fourth would pass the byte bound (its subject adds to its size).
        assert!(!waiting.push(message(3, big)));
        assert_eq!(waiting.dropped, 1);
        assert!(waiting.bytes <= WAITING_BYTES);
        // Small commands still fit beside the big ones.
        assert!(waiting.push(message(4, 10)));
        waiting.pop();
        assert!(waiting.push(message(5, big)), "freed bytes are reusable");
    }
}
