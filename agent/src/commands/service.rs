//! The command service's listeners: where each mode listens, the bounded queue of commands
//! waiting for a handler, and dispatch (a command for this node is verified and answered,
//! one for a child routed, any other ignored).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use nexus_config::Mode;
use nexus_federation::command;
use nexus_federation::refusal::{Reason, Rejection};
use nexus_federation::subject;
use nexus_federation::Link;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::reply::plain_error;
use super::{CommandService, Refused, HEALTH, PING, ROTATE, TRACE};
use crate::metrics::CommandMetrics;

/// Commands handled at once; more wait in the listener's queue.
const IN_FLIGHT: usize = 64;
/// Commands waiting per listener for a handler, by count and by bytes. Beyond either, a
/// command is dropped unanswered (its caller times out) and the drop is logged: a flood
/// of commands cannot fill a small box's memory, and the listener keeps reading, so the
/// client's own subscription buffer stays empty.
const WAITING: usize = 1024;
const WAITING_BYTES: usize = 4 * 1024 * 1024;

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
        let started = Instant::now();
        let parsed = subject::parse_command_subject(message.subject.as_str());
        let target = parsed.map(|(node, _)| node);
        let for_me = target == Some(self.node_id.as_str());
        if !for_me {
            if listen == Listen::OwnAndChildren {
                if let Some(target) = target {
                    let target = target.to_owned();
                    self.route(link, &message, &target, reply_to).await;
                    self.latencies.observe("routed", true, started.elapsed());
                }
            }
            return;
        }
        let label = parsed.map_or("other", |(_, command)| CommandMetrics::label(command));
        let (ok, (headers, body)) = match self.answer(&message).await {
            Ok(reply) => (true, reply),
            Err((rejection, envelope)) => {
                self.refusals.refuse(&message, &rejection);
                let reply = match envelope {
                    Some(command) => self.error_reply(&command, &rejection),
                    None => plain_error(&rejection),
                };
                (false, reply)
            }
        };
        self.respond(link, reply_to, headers, body).await;
        self.latencies.observe(label, ok, started.elapsed());
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
            TRACE => self.trace(&command.envelope.payload).await,
            name if name.starts_with("agent.") => Err(Rejection::new(
                Reason::UnknownCommand,
                format!("`{name}` is not a built-in command (agent.ping, agent.health, agent.token.rotate, agent.trace)"),
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
