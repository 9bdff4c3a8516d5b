//! The uplink pump: outbox → JetStream publish on the next tier's ingress → PubAck → ack.
//!
//! Members and hubs point it at their parent's NATS; the root points it at its own, so that
//! its own events are verified and landed by its ingress like everybody else's.
//!
//! An event leaves the outbox only after the next tier's JetStream acknowledged storing it.
//! `publish()` returning or `flush()` resolving proves nothing (the client drops its write
//! buffer on reconnect), so they are never taken as delivery.
//!
//! While the link is down the pump waits for it instead of queueing into the client (whose
//! publish blocks once ~2048 commands are pending): the outbox is the only queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, Retry};
use crate::headers::NatsProvenance as _;
use crate::link::Link;
use crate::outbox::Outbox;
use crate::provenance::SignedEvent;
use crate::ratelog::RateLimitedLog;
use crate::subject;
use crate::subsystem::SubsystemError;
use crate::trust;

/// The pump that drains an outbox into a link.
#[derive(Debug)]
pub struct Uplink {
    link: Link,
    outbox: Outbox,
    batch: usize,
    backoff: Backoff,
    presentation: PresentationSlot,
    totals: Arc<UplinkTotals>,
}

/// The uplink's counters as it runs, shared (for metrics).
#[derive(Debug, Default)]
pub struct UplinkTotals {
    /// Events acknowledged by the next tier.
    pub acked: AtomicU64,
    /// Of those, reported as duplicates (already stored).
    pub duplicates: AtomicU64,
    /// Failed publish attempts (each will be retried).
    pub failures: AtomicU64,
}

impl UplinkTotals {
    fn set(&self, counters: &UplinkCounters) {
        self.acked.store(counters.acked, Ordering::Relaxed);
        self.duplicates
            .store(counters.duplicates, Ordering::Relaxed);
        self.failures.store(counters.failures, Ordering::Relaxed);
    }
}

/// This node's token chain, presented to the next tier once per connection.
#[derive(Debug, Clone)]
pub struct Presentation {
    /// The key it is presented under ([`trust::key_id`] of this node's key).
    pub key_id: String,
    /// The encoded chain.
    pub chain: bytes::Bytes,
}

/// This node's current chain, shared with whoever replaces it (token rotation): the
/// uplink presents a replaced chain again before its next batch.
#[derive(Debug, Clone, Default)]
pub struct PresentationSlot(Arc<RwLock<(u64, Option<Presentation>)>>);

impl PresentationSlot {
    /// A slot holding `presentation`.
    pub fn new(presentation: Option<Presentation>) -> Self {
        Self(Arc::new(RwLock::new((0, presentation))))
    }

    /// Replaces the chain; the uplink presents it before sending anything else.
    pub fn set(&self, presentation: Presentation) {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        slot.0 += 1;
        slot.1 = Some(presentation);
    }

    /// The current chain and its generation.
    pub fn get(&self) -> (u64, Option<Presentation>) {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counters of one uplink, for status and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    /// Events acknowledged by the next tier.
    pub acked: u64,
    /// Of those, how many the next tier reported as duplicates (already stored).
    pub duplicates: u64,
    /// Failed publish attempts (each will be retried).
    pub failures: u64,
}

impl Uplink {
    /// A pump sending at most `batch` events before awaiting their acks.
    pub fn new(link: Link, outbox: Outbox, batch: usize, max_backoff: Duration) -> Self {
        Self {
            link,
            outbox,
            batch: batch.max(1),
            backoff: Backoff::new(Duration::from_millis(100), max_backoff),
            presentation: PresentationSlot::default(),
            totals: Arc::default(),
        }
    }

    /// Keeps the counters in `totals` as the pump runs.
    pub fn with_totals(mut self, totals: Arc<UplinkTotals>) -> Self {
        self.totals = totals;
        self
    }

    /// Presents `presentation` in the next tier's `NEXUS_CHAINS` bucket on every
    /// connection, before any event is sent on it.
    pub fn with_presentation(mut self, presentation: PresentationSlot) -> Self {
        self.presentation = presentation;
        self
    }

    /// Puts this node's chain into the next tier's registry if this connection has not
    /// seen it yet. `presented` remembers the connection (by its `since`) and the chain's
    /// generation it was put on.
    async fn present(
        &self,
        presented: &mut Option<(time::OffsetDateTime, u64)>,
        log: &mut RateLimitedLog,
    ) -> bool {
        let (generation, presentation) = self.presentation.get();
        let Some(presentation) = presentation else {
            return true;
        };
        let since = self.link.state().since;
        if *presented == Some((since, generation)) {
            return true;
        }
        let result = match trust::bucket(&self.link, trust::CHAINS_BUCKET, false).await {
            Ok(store) => store
                .put(&presentation.key_id, presentation.chain.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(error) => Err(format!(
                "bucket {} not available yet: {error}",
                trust::CHAINS_BUCKET
            )),
        };
        match result {
            Ok(()) => {
                debug!(key_id = %presentation.key_id, "Token chain presented to the next tier.");
                *presented = Some((since, generation));
                true
            }
            Err(error) => {
                if let Some(suppressed) = log.check("present", Instant::now()) {
                    warn!(%error, suppressed, "Cannot present the token chain to the next tier yet; events wait in the outbox.");
                }
                false
            }
        }
    }

    /// Runs until `shutdown`. On shutdown, what is already queued gets one last bounded try
    /// while the link is up. It has no cause to stop on its own (failed sends are
    /// retried), so it always ends `Ok`, with its counters.
    pub async fn run(self, shutdown: CancellationToken) -> Result<UplinkCounters, SubsystemError> {
        let mut counters = UplinkCounters::default();
        let mut log = RateLimitedLog::new(Duration::from_secs(60));
        let mut retry = Retry::new(self.backoff);
        let mut presented = None;
        loop {
            // The batch is read only once the link is up, and read again after an outage:
            // a batch held across an outage would go out ignoring what happened to the
            // outbox meanwhile (priorities, drop_oldest, expiry).
            if !self.link.wait_connected(&shutdown).await {
                break;
            }
            // Cancel safety: `next_batch` removes nothing; `wait_connected` only watches.
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                batch = self.outbox.next_batch(self.batch) => batch,
            };
            if !self.link.state().connected {
                continue;
            }
            let failed = if self.present(&mut presented, &mut log).await {
                self.send(&batch, &mut counters, &mut log).await
            } else {
                batch.len()
            };
            self.totals.set(&counters);
            if failed == 0 {
                retry.reset();
                continue;
            }
            if !retry.wait(&shutdown).await {
                break;
            }
        }
        self.drain_on_shutdown(&mut counters, &mut log).await;
        Ok(counters)
    }

    async fn drain_on_shutdown(&self, counters: &mut UplinkCounters, log: &mut RateLimitedLog) {
        let pending = self.outbox.stats().depth;
        if pending == 0 || !self.link.state().connected {
            if pending > 0 {
                info!(
                    pending,
                    "Shutting down with events not yet acknowledged upstream."
                );
            }
            return;
        }
        let batch = self.outbox.next_batch(self.batch).await;
        self.send(&batch, counters, log).await;
        let left = self.outbox.stats().depth;
        debug!(sent = batch.len(), left, "Flushed the outbox on shutdown.");
    }

    /// Publishes a batch and waits for every ack; returns how many failed.
    async fn send(
        &self,
        batch: &[(u64, SignedEvent)],
        counters: &mut UplinkCounters,
        log: &mut RateLimitedLog,
    ) -> usize {
        let js = self.link.jetstream();
        let mut pending = Vec::with_capacity(batch.len());
        for (seq, event) in batch {
            let message = PublishMessage::build()
                .payload(event.body.clone())
                .headers(event.headers());
            match js
                .send_publish(subject::ingress_subject(&event.subject), message)
                .await
            {
                Ok(ack) => pending.push((*seq, ack)),
                Err(error) => {
                    note_failure(log, error.kind(), &error.to_string());
                    counters.failures += 1;
                }
            }
        }
        let sent = pending.len();
        let (seqs, acks): (Vec<u64>, Vec<_>) = pending.into_iter().unzip();
        let results = join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await;
        let mut acked = Vec::with_capacity(sent);
        for (seq, result) in seqs.into_iter().zip(results) {
            match result {
                Ok(ack) => {
                    counters.acked += 1;
                    counters.duplicates += u64::from(ack.duplicate);
                    acked.push(seq);
                }
                Err(error) => {
                    note_failure(log, error.kind(), &error.to_string());
                    counters.failures += 1;
                }
            }
        }
        self.outbox.ack(&acked).await;
        batch.len() - acked.len()
    }
}

fn note_failure(log: &mut RateLimitedLog, kind: PublishErrorKind, error: &str) {
    let cause = format!("{kind:?}");
    if let Some(suppressed) = log.check(&cause, Instant::now()) {
        let hint = match kind {
            PublishErrorKind::StreamNotFound => {
                "no ingress stream answers yet (is the next tier's agent running? through a \
                 leaf node: is its link to the next tier's server up?)"
            }
            PublishErrorKind::TimedOut => "the next tier did not acknowledge in time",
            _ => "publish failed",
        };
        warn!(%error, suppressed, hint, "Uplink publish failed; events stay in the outbox and will be retried.");
    }
}
