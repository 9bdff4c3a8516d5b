//! The outbox: signed events waiting for the next tier's durable acknowledgement.
//!
//! Invariants:
//! - an event leaves the outbox only through [`Outbox::ack`], which the uplink calls after
//!   a JetStream PubAck for it (never after a mere publish or flush);
//! - events are handed out oldest first; a batch that was not acked is handed out again;
//! - the total body bytes never exceed `max_bytes`: [`Outbox::push`] gives the event back
//!   (`OutboxFull`) instead of growing.
//!
//! This implementation keeps events in memory: it is bounded and ordered, but it does not
//! survive a crash or a restart. The crash-safe on-disk store replaces it behind the same
//! interface.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::provenance::SignedEvent;

/// Why an event was not taken; the event is given back.
#[derive(Debug, thiserror::Error)]
#[error("outbox full: {bytes} of {max_bytes} bytes used, event {} refused", .event.event_id)]
pub struct OutboxFull {
    /// The refused event.
    pub event: Box<SignedEvent>,
    /// Bytes in use.
    pub bytes: u64,
    /// The bound.
    pub max_bytes: u64,
}

/// Depth and size, for heartbeats and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Events waiting.
    pub depth: u64,
    /// Their body bytes.
    pub bytes: u64,
}

/// A cloneable handle to the outbox.
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_bytes: u64,
    state: Mutex<State>,
    /// Woken on every push; `notify_one` keeps a permit, so a push between the emptiness
    /// check and the wait is never missed.
    pushed: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    bytes: u64,
    queue: VecDeque<(u64, SignedEvent)>,
}

impl Outbox {
    /// An empty outbox bounded to `max_bytes` of event bodies.
    pub fn in_memory(max_bytes: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_bytes,
                state: Mutex::new(State::default()),
                pushed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue half-updated (every
        // mutation is a single push/retain), so a poisoned lock is still consistent.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends an event; returns its sequence number, or gives it back when full.
    pub fn push(&self, event: SignedEvent) -> Result<u64, OutboxFull> {
        let size = event.body.len() as u64;
        let mut state = self.state();
        if state.bytes + size > self.inner.max_bytes {
            return Err(OutboxFull {
                event: Box::new(event),
                bytes: state.bytes,
                max_bytes: self.inner.max_bytes,
            });
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.bytes += size;
        state.queue.push_back((seq, event));
        drop(state);
        self.inner.pushed.notify_one();
        Ok(seq)
    }

    /// The oldest `max` events, waiting until there is at least one.
    ///
    /// Cancel safety: nothing is removed here, so dropping the future loses nothing.
    pub async fn next_batch(&self, max: usize) -> Vec<(u64, SignedEvent)> {
        loop {
            {
                let state = self.state();
                if !state.queue.is_empty() {
                    return state.queue.iter().take(max).cloned().collect();
                }
            }
            self.inner.pushed.notified().await;
        }
    }

    /// Removes the events with these sequence numbers (acknowledged by the next tier).
    pub fn ack(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        let mut state = self.state();
        let mut freed = 0;
        state.queue.retain(|(seq, event)| {
            let acked = seqs.contains(seq);
            if acked {
                freed += event.body.len() as u64;
            }
            !acked
        });
        state.bytes -= freed;
    }

    /// Depth and bytes now.
    pub fn stats(&self) -> OutboxStats {
        let state = self.state();
        OutboxStats {
            depth: state.queue.len() as u64,
            bytes: state.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Encoding, Envelope};
    use nexus_policies::SecretKey;

    fn event(n: u8) -> SignedEvent {
        let key = SecretKey::from_seed(&[1; 32]).expect("key");
        let mut payload = serde_json::Map::new();
        payload.insert("n".into(), n.into());
        let envelope = Envelope::new(
            "edge.health",
            "edge-01",
            None,
            payload,
            time::OffsetDateTime::UNIX_EPOCH,
        );
        SignedEvent::seal(&envelope, Encoding::Json, &key).expect("seal")
    }

    #[tokio::test]
    async fn batches_come_oldest_first_and_stay_until_acked() {
        let outbox = Outbox::in_memory(1 << 20);
        let seqs: Vec<u64> = (0..5)
            .map(|n| outbox.push(event(n)).expect("room"))
            .collect();
        let batch = outbox.next_batch(3).await;
        assert_eq!(batch.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs[..3]);
        // Not acked: handed out again.
        assert_eq!(outbox.next_batch(3).await.len(), 3);
        outbox.ack(&seqs[..2]);
        let batch = outbox.next_batch(10).await;
        assert_eq!(batch.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs[2..]);
        assert_eq!(outbox.stats().depth, 3);
    }

    #[tokio::test]
    async fn a_full_outbox_gives_the_event_back() {
        let one = event(0).body.len() as u64;
        let outbox = Outbox::in_memory(one * 2);
        outbox.push(event(0)).expect("room");
        outbox.push(event(1)).expect("room");
        let third = event(2);
        let full = outbox.push(third.clone()).expect_err("full");
        assert_eq!(*full.event, third, "the refused event is given back whole");
        assert_eq!(
            outbox.stats(),
            OutboxStats {
                depth: 2,
                bytes: one * 2
            }
        );
        let seqs: Vec<u64> = outbox
            .next_batch(1)
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        outbox.ack(&seqs);
        assert!(outbox.push(event(2)).is_ok(), "acking frees room");
    }

    #[tokio::test]
    async fn a_waiting_batch_wakes_on_push() {
        let outbox = Outbox::in_memory(1 << 20);
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.next_batch(8).await.len() }
        });
        tokio::task::yield_now().await;
        outbox.push(event(0)).expect("room");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
        assert_eq!(got, 1);
    }
}
