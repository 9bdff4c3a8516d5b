//! Waiting on conditions with deadlines instead of sleeping.
//!
//! Tests never sleep to synchronise: they poll a condition ([`wait_until`],
//! [`assert_eventually!`](crate::assert_eventually)) or read messages until what they expect has
//! arrived ([`collect_until`]), and fail with what they saw when the deadline passes.

use std::fmt::Debug;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// The deadline [`assert_eventually!`](crate::assert_eventually) uses.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// How often [`wait_until`] checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a [`wait_until`] check returns: `true`, `Some(v)` or `Ok(v)` means done.
pub trait Outcome {
    /// What [`wait_until`] returns once the check is done.
    type Value;
    /// `Ok(value)` when done; otherwise `Err` with what was seen, if there is anything to say
    /// (it is shown when the deadline passes).
    fn into_result(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// Calls `check` every [`POLL_INTERVAL`] until it returns `true` / `Some(v)` / `Ok(v)`, and
/// returns that value; panics with `what` (and the last `Err` seen) once `deadline` has passed.
/// A check that hangs is cut off at the deadline too.
///
/// ```no_run
/// # async fn f(server: &nexus_e2e::NatsServer) {
/// use std::time::Duration;
/// nexus_e2e::wait_until("server is back", Duration::from_secs(5), async || server.is_running()).await;
/// # }
/// ```
pub async fn wait_until<R: Outcome>(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> R,
) -> R::Value {
    let start = Instant::now();
    let end = start + deadline;
    let mut last: Option<String> = None;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match tokio::time::timeout_at(end, check()).await {
            Ok(outcome) => match outcome.into_result() {
                Ok(value) => return value,
                Err(seen) => last = seen.or(last),
            },
            Err(_) => last = Some("the check itself was still running at the deadline".to_owned()),
        }
        if Instant::now() + POLL_INTERVAL > end {
            panic!(
                "timed out after {:?} ({tries} checks) waiting until {what}{}",
                start.elapsed(),
                last.map(|l| format!("; last seen: {l}"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until a boolean expression (which may `.await`) holds, or panics naming it.
///
/// `assert_eventually!(cond)` uses [`DEFAULT_DEADLINE`];
/// `assert_eventually!(cond, within = Duration::from_secs(3))` another one. Must be used in
/// an async context; it evaluates to `()`.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, within = $crate::DEFAULT_DEADLINE)
    };
    ($cond:expr, within = $deadline:expr $(,)?) => {
        $crate::wait_until(
            concat!("`", stringify!($cond), "` holds"),
            $deadline,
            async || -> bool { $cond },
        )
        .await
    };
}

/// Receives messages from `stream` until `done` holds over everything received so far, and
/// returns them all; panics with `what` and a summary of what arrived once `deadline` passes
/// (or the stream ends first).
///
/// Works with an `async_nats::Subscriber` (`&mut sub`) or any stream of messages.
pub async fn collect_until<S>(
    what: &str,
    stream: &mut S,
    deadline: Duration,
    mut done: impl FnMut(&[async_nats::Message]) -> bool,
) -> Vec<async_nats::Message>
where
    S: Stream<Item = async_nats::Message> + Unpin,
{
    let end = Instant::now() + deadline;
    let mut seen = Vec::new();
    loop {
        if done(&seen) {
            return seen;
        }
        match tokio::time::timeout_at(end, stream.next()).await {
            Ok(Some(msg)) => seen.push(msg),
            Ok(None) => panic!("stream ended before {what}; received {}", summarize(&seen)),
            Err(_) => panic!(
                "timed out after {deadline:?} waiting for {what}; received {}",
                summarize(&seen)
            ),
        }
    }
}

/// Parses a message payload as JSON; panics with the payload text if it is not JSON.
pub fn payload_json(msg: &async_nats::Message) -> serde_json::Value {
    serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
        panic!(
            "payload on {} is not JSON ({e}): {}",
            msg.subject,
            String::from_utf8_lossy(&msg.payload)
        )
    })
}

/// `N messages:` then one line per message (subject and the start of the payload).
fn summarize(msgs: &[async_nats::Message]) -> String {
    const SHOW: usize = 20;
    const PAYLOAD: usize = 700;
    let mut out = format!("{} message(s)", msgs.len());
    for msg in msgs.iter().take(SHOW) {
        let text = String::from_utf8_lossy(&msg.payload);
        let cut: String = text.chars().take(PAYLOAD).collect();
        let more = if text.chars().count() > PAYLOAD {
            "…"
        } else {
            ""
        };
        out.push_str(&format!("\n  {}: {cut}{more}", msg.subject));
    }
    if msgs.len() > SHOW {
        out.push_str(&format!("\n  … and {} more", msgs.len() - SHOW));
    }
    out
}

/// A request to a subscriber that may still be subscribing (a bridge that runs on its own
/// connection, set up after the heartbeat a test waits for): while the server answers
/// `no responders` — nobody received the request, so asking again has no side effect — it is
/// asked again, until `deadline`. Any other failure panics with the subject.
pub async fn request_answered(
    client: &async_nats::Client,
    subject: &str,
    body: bytes::Bytes,
    deadline: Duration,
) -> async_nats::Message {
    let give_up = Instant::now() + deadline;
    loop {
        match client.request(subject.to_owned(), body.clone()).await {
            Ok(answer) => return answer,
            Err(error)
                if error.kind() == async_nats::RequestErrorKind::NoResponders
                    && Instant::now() < give_up =>
            {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(error) => panic!("no answer on {subject}: {error}"),
        }
    }
}

/// Every message on a subject of a NATS server, as JSON envelopes in arrival order,
/// collected by a subscriber in the background (subscribed before [`Seen::watch`] returns).
#[derive(Debug, Clone, Default)]
pub struct Seen(std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>);

impl Seen {
    /// Subscribes to `subject` on `server`.
    pub async fn watch(server: &crate::NatsServer, subject: &str) -> Self {
        let client = server.client().await;
        let mut subscriber = client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        let seen = Self::default();
        let sink = seen.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(message) = subscriber.next().await {
                sink.0.lock().expect("lock").push(payload_json(&message));
            }
        });
        seen
    }

    /// Everything so far.
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.0.lock().expect("lock").clone()
    }

    /// How many so far.
    pub fn len(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// Whether nothing came yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payloads after the first `from`.
    pub fn since(&self, from: usize) -> Vec<serde_json::Value> {
        self.all()
            .into_iter()
            .skip(from)
            .map(|envelope| envelope["payload"].clone())
            .collect()
    }

    /// The last payload, if any.
    pub fn last_payload(&self) -> Option<serde_json::Value> {
        self.0
            .lock()
            .expect("lock")
            .last()
            .map(|envelope| envelope["payload"].clone())
    }
}
