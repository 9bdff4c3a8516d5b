//! Routing at a hub: a command for one of its children is verified here, fails at once if
//! the child went silent, and is otherwise requested again on this node's NATS, where the
//! child listens; the child's answer goes back unchanged.

use std::time::Duration;

use nexus_federation::refusal::{Reason, Rejection};
use nexus_federation::Link;
use time::OffsetDateTime;

use super::reply::plain_error;
use super::CommandService;

/// What a hub keeps for itself of the caller's deadline, so its own error arrives first.
const ROUTE_MARGIN: Duration = Duration::from_millis(200);

impl CommandService {
    /// Hub: a command for a child. Unknown children are someone else's (silence); a child
    /// gone silent fails at once; otherwise the verified command is requested again on
    /// this node's NATS and the child's answer passed back unchanged.
    pub(super) async fn route(
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
}
