//! `agent.trace {"event_id": "…"}`: where this node has the event — waiting in its outbox,
//! kept as a dead letter (with the reason), in its ingress stream (hub, root), landed in
//! the journal (root). `nexus-agent trace` asks every tier and puts the answers together.
//!
//! The streams are searched from the event's creation time (an event id is a UUIDv7,
//! whose first 48 bits are its creation time in ms), a minute earlier for clock skew, by
//! the `Nats-Msg-Id` header every durable hop sets to the event id; a search stops after
//! [`MAX_SCAN`] messages or [`SCAN_TIME`] and says so.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt as _;
use nexus_federation::deadletter::DeadLetters;
use nexus_federation::provenance::HDR_MSG_ID;
use nexus_federation::refusal::{Reason, Rejection};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::CommandService;

/// The trace command's name.
pub const TRACE: &str = "agent.trace";
/// Most messages one stream search reads.
pub const MAX_SCAN: u64 = 200_000;
/// Longest one stream search takes.
pub const SCAN_TIME: Duration = Duration::from_secs(3);
/// How far before the event's creation time a search starts (clock skew between tiers).
const SKEW: Duration = Duration::from_secs(60);

/// Where a node looks for an event besides its outbox.
#[derive(Debug, Clone, Default)]
pub struct TraceSources {
    /// This node's dead-letter store.
    pub dead_letters: Option<DeadLetters>,
    /// Its ingress stream (hub, root).
    pub ingress: Option<String>,
    /// The journal (root).
    pub journal: Option<String>,
}

/// The creation time of a UUIDv7 event id, if it is one.
pub fn uuid_v7_time(event_id: &str) -> Option<OffsetDateTime> {
    let hex: String = event_id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || hex.as_bytes().get(12) != Some(&b'7') {
        return None;
    }
    let ms = u64::from_str_radix(hex.get(..12)?, 16).ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

impl CommandService {
    pub(super) async fn trace(
        &self,
        payload: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Rejection> {
        let event_id = payload
            .get("event_id")
            .and_then(Value::as_str)
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= 64
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            .ok_or_else(|| {
                Rejection::new(
                    Reason::Malformed,
                    "expected {\"event_id\": \"<the event's id, a UUID>\"}",
                )
            })?
            .to_owned();
        let mut answer = Map::new();
        answer.insert("node_id".into(), json!(self.node_id));
        answer.insert("mode".into(), json!(self.mode.as_str()));
        answer.insert(
            "outbox".into(),
            match self.outbox.find(&event_id).await {
                Ok(Some(waiting)) => json!({
                    "waiting": true,
                    "queued_at": OffsetDateTime::from_unix_timestamp_nanos(i128::from(waiting.enqueued_ms) * 1_000_000)
                        .map(nexus_federation::envelope::format_ts)
                        .unwrap_or_default(),
                    "priority": if waiting.control { "control" } else { "bulk" },
                }),
                Ok(None) => json!({"waiting": false}),
                Err(error) => json!({"error": error.to_string()}),
            },
        );
        let letters = match self.tracing.dead_letters.clone() {
            Some(store) => {
                let id = event_id.clone();
                match tokio::task::spawn_blocking(move || store.find_event(&id)).await {
                    Ok(Ok(found)) => Value::Array(
                        found
                            .iter()
                            .map(|d| {
                                json!({
                                    "stage": d.stage,
                                    "reason": d.reason,
                                    "detail": d.detail,
                                    "attempts": d.attempts,
                                    "last_at": nexus_federation::envelope::format_ts(d.last_at),
                                })
                            })
                            .collect(),
                    ),
                    Ok(Err(error)) => json!({"error": error.to_string()}),
                    Err(error) => json!({"error": error.to_string()}),
                }
            }
            None => Value::Array(Vec::new()),
        };
        answer.insert("dead_letters".into(), letters);
        let since = uuid_v7_time(&event_id).map(|t| t - SKEW);
        for (key, stream) in [
            ("ingress", &self.tracing.ingress),
            ("journal", &self.tracing.journal),
        ] {
            if let (Some(stream), Some(local)) = (stream, &self.local) {
                let found = search(local.jetstream(), stream, &event_id, since).await;
                answer.insert(key.into(), found);
            }
        }
        Ok(answer)
    }
}

/// Looks for `event_id` in `stream` from `since` (the start without it).
async fn search(
    js: &async_nats::jetstream::Context,
    stream: &str,
    event_id: &str,
    since: Option<OffsetDateTime>,
) -> Value {
    let deadline = tokio::time::Instant::now() + SCAN_TIME;
    type Found = (Option<(u64, OffsetDateTime)>, u64, bool);
    let result = tokio::time::timeout_at(deadline, async {
        let stream_handle = js.get_stream(stream).await.map_err(|e| e.to_string())?;
        let consumer = stream_handle
            .create_consumer(pull::OrderedConfig {
                deliver_policy: match since {
                    Some(start_time) => DeliverPolicy::ByStartTime { start_time },
                    None => DeliverPolicy::All,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer = consumer;
        let pending = consumer
            .info()
            .await
            .map_err(|e| e.to_string())?
            .num_pending;
        if pending == 0 {
            return Ok::<Found, String>((None, 0, true));
        }
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut scanned = 0u64;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            scanned += 1;
            let info = message.info().map_err(|e| e.to_string())?;
            let (seq, stored, left) = (info.stream_sequence, info.published, info.pending);
            let matches = message
                .headers
                .as_ref()
                .and_then(|h| h.get(HDR_MSG_ID))
                .is_some_and(|v| v.as_str() == event_id);
            if matches {
                return Ok((Some((seq, stored)), scanned, true));
            }
            if left == 0 {
                return Ok((None, scanned, true));
            }
            if scanned >= MAX_SCAN {
                return Ok((None, scanned, false));
            }
        }
        Ok((None, scanned, false))
    })
    .await;
    match result {
        Ok(Ok((Some((seq, stored)), _, _))) => json!({
            "stream": stream,
            "found": true,
            "sequence": seq,
            "stored_at": nexus_federation::envelope::format_ts(stored),
        }),
        Ok(Ok((None, scanned, complete))) => json!({
            "stream": stream,
            "found": false,
            "scanned": scanned,
            "complete": complete,
        }),
        Ok(Err(error)) => json!({"stream": stream, "error": error}),
        Err(_) => json!({
            "stream": stream,
            "found": false,
            "complete": false,
            "error": format!("the search took longer than {SCAN_TIME:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_v7_tells_when_its_event_was_made() {
        let t = uuid_v7_time("0192f3a1-7c2e-7d40-8f00-0123456789ab").expect("a v7 id");
        assert_eq!(t.unix_timestamp_nanos() / 1_000_000, 0x0192_f3a1_7c2e);
        assert_eq!(
            uuid_v7_time("0192f3a1-7c2e-4d40-8f00-0123456789ab"),
            None,
            "v4"
        );
        assert_eq!(uuid_v7_time("not-an-id"), None);
    }
}
