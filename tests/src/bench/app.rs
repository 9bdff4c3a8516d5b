//! A local app on the member's own NATS, as the benchmarks play it: requests through the
//! member's subject bridge (`[[bridge.up]]`), each answered once the event is fsynced in
//! the member's outbox, driven a number at a time.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The app's message `n`: a small JSON object (~70 B).
pub fn payload(n: usize) -> bytes::Bytes {
    format!(r#"{{"n": {n}, "booking_id": "b-{n}", "seats": 2, "note": "bench"}}"#).into()
}

/// Requests [`payload`]`(n)` on `subject`; panics unless the bridge answers `ok`. While
/// the bridge is not subscribed yet (its own connection, set up after the member's first
/// heartbeat), `no responders` is asked again (`crate::request_answered`): only the
/// warm-up request can meet that.
pub async fn request(app: &async_nats::Client, subject: String, n: usize) {
    let answer = crate::request_answered(app, &subject, payload(n), Duration::from_secs(30)).await;
    let body: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    assert_eq!(body["ok"], true, "{body}");
}

/// Sends the messages of `range` with `send`, `in_flight` at a time, each group starting no
/// sooner than `spacing` after the previous one; returns when each was sent, by `n`.
pub async fn drive<F, Fut>(
    range: Range<usize>,
    in_flight: usize,
    spacing: Duration,
    send: F,
) -> HashMap<usize, Instant>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sent = Arc::new(Mutex::new(HashMap::with_capacity(range.len())));
    let indices: Vec<usize> = range.collect();
    let mut pace = tokio::time::interval(spacing.max(Duration::from_nanos(1)));
    for chunk in indices.chunks(in_flight.max(1)) {
        if !spacing.is_zero() {
            pace.tick().await;
        }
        futures::future::join_all(chunk.iter().map(|&n| {
            let sent = Arc::clone(&sent);
            let future = send(n);
            async move {
                sent.lock().expect("lock").insert(n, Instant::now());
                future.await;
            }
        }))
        .await;
    }
    Arc::try_unwrap(sent)
        .map(|m| m.into_inner().expect("lock"))
        .unwrap_or_default()
}
