//! Replies: a command's answer or error as a reply envelope signed by this node with its
//! chain beside it (so the caller can tell who answered), a plain error for a message too
//! broken to answer with an envelope, and sending either to the caller.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use nexus_federation::command;
use nexus_federation::envelope::Envelope;
use nexus_federation::refusal::{Reason, Rejection};
use nexus_federation::Link;
use serde_json::json;
use time::OffsetDateTime;
use tracing::debug;

use super::CommandService;

impl CommandService {
    pub(super) fn error_reply(
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
    pub(super) fn sign(&self, reply: &Envelope) -> (async_nats::HeaderMap, Bytes) {
        match command::reply_message(reply, &self.key) {
            Ok((headers, body, _)) => (self.with_chain(headers), body),
            Err(error) => plain_error(&Rejection::new(Reason::Internal, error)),
        }
    }

    pub(super) fn with_chain(&self, mut headers: async_nats::HeaderMap) -> async_nats::HeaderMap {
        if let Some(chain) = self.rotation.own.bytes() {
            headers.insert(command::HDR_CHAIN, URL_SAFE_NO_PAD.encode(chain).as_str());
        }
        headers
    }

    pub(super) async fn respond(
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

/// An unsigned error reply, for a message too broken to answer with an envelope.
pub(super) fn plain_error(failure: &Rejection) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nexus-Error", failure.reason.as_str());
    let body = json!({"code": failure.reason.as_str(), "message": failure.detail}).to_string();
    (headers, Bytes::from(body))
}
