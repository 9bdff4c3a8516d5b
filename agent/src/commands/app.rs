//! Delivery to local apps: a command no built-in takes is requested on the local subject
//! its first matching `[[bridge.down]]` rule names; the app's answer becomes the signed
//! `{command}.result` reply, which also travels up as an event (through the outbox).

use bytes::Bytes;
use nexus_federation::bridge::decode_object;
use nexus_federation::command::{self, OpenedCommand};
use nexus_federation::outbox::Priority;
use nexus_federation::refusal::{Reason, Rejection};
use nexus_federation::{Encoding, NatsProvenance as _};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tracing::warn;

use super::CommandService;

impl CommandService {
    /// Requests the command from the local app its `[[bridge.down]]` rule names; the
    /// answer is signed, queued to travel up, and returned.
    pub(super) async fn deliver(&self, command: &OpenedCommand) -> (async_nats::HeaderMap, Bytes) {
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
        // A result that travels up is numbered in this node's order like every event it
        // creates: the caller gets the very event that was queued. One that cannot be
        // queued is signed for the caller alone, unnumbered.
        let subject = reply.subject();
        if ok && !self.rotation.own.allows(&subject) {
            warn!(%subject, "This node's token does not grant a command's result event: the caller gets the reply, but it does not travel up.");
        } else if ok {
            let seal = reply.clone().into_sealer(Encoding::Json, self.key.clone());
            match self.outbox.push_numbered(seal, Priority::Control).await {
                Ok(queued) => {
                    return (self.with_chain(queued.event.headers()), queued.event.body);
                }
                Err(error) => {
                    warn!(%error, command = %command.name, "Cannot queue a command's result event; the caller still gets the reply.");
                }
            }
        }
        self.sign(&reply)
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
}
