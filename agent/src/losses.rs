//! What the outbox gives up on purpose: Bulk events dropped to make room
//! (`outbox.when_full = "drop_oldest"`, or rows found unreadable) and events expired
//! (`outbox.max_age`). Each kind is logged as a WARN and announced as a
//! `nexus._core.audit.outbox_loss` event — the first loss at once, then at most once a
//! minute per kind, with the count since the previous announcement. The heartbeat's
//! `outbox.dropped` and `outbox.expired` carry the totals.

use std::time::{Duration, Instant};

use nexus_federation::outbox::OutboxStats;
use nexus_federation::Outbox;
use nexus_policies::SecretKey;
use serde_json::{json, Map};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::rejections::queue_audit;

/// The event name of outbox loss audits.
pub const AUDIT_OUTBOX_LOSS: &str = "audit.outbox_loss";
/// At most one announcement per kind this often.
const EVERY: Duration = Duration::from_secs(60);
/// How often the outbox's counters are looked at (a read from memory).
const LOOK: Duration = Duration::from_secs(1);

/// Announces the outbox's losses of this node.
#[derive(Debug)]
pub struct LossAuditor {
    /// This node's id (the audit event's source).
    pub node_id: String,
    /// The key that signs audit events.
    pub key: SecretKey,
    /// The outbox watched, and where the audit events are queued.
    pub outbox: Outbox,
}

/// One kind of loss and what of it was announced.
#[derive(Debug)]
struct Kind {
    name: &'static str,
    /// What it means, for the log.
    why: &'static str,
    announced: u64,
    last: Option<Instant>,
}

impl Kind {
    fn new(name: &'static str, why: &'static str) -> Self {
        Self {
            name,
            why,
            announced: 0,
            last: None,
        }
    }

    /// The count to announce at `now` given the `total` so far, if any: what the total grew
    /// by since the last announcement — at once for the first, then at most once per `every`.
    fn due(&mut self, total: u64, now: Instant, every: Duration) -> Option<u64> {
        let count = total.saturating_sub(self.announced);
        if count == 0
            || self
                .last
                .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return None;
        }
        self.announced = total;
        self.last = Some(now);
        Some(count)
    }
}

impl LossAuditor {
    /// Watches until `shutdown`; then announces what is still unannounced, once. It has no
    /// cause to stop on its own, so it always ends `Ok`.
    pub async fn run(
        self,
        shutdown: CancellationToken,
    ) -> Result<(), nexus_federation::subsystem::SubsystemError> {
        let mut dropped = Kind::new(
            "dropped",
            "the oldest bulk events were dropped to make room (outbox.when_full = \"drop_oldest\"), or rows were unreadable",
        );
        let mut expired = Kind::new("expired", "events older than outbox.max_age were expired");
        let mut look = tokio::time::interval(LOOK);
        look.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let stopping = tokio::select! {
                _ = look.tick() => false,
                _ = shutdown.cancelled() => true,
            };
            let stats = self.outbox.stats();
            let now = Instant::now();
            let every = if stopping { Duration::ZERO } else { EVERY };
            for (kind, total) in [(&mut dropped, stats.dropped), (&mut expired, stats.expired)] {
                if let Some(count) = kind.due(total, now, every) {
                    self.announce(kind, count, total, &stats).await;
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }

    async fn announce(&self, kind: &Kind, count: u64, total: u64, stats: &OutboxStats) {
        let why = kind.why;
        warn!(
            kind = kind.name,
            count,
            total,
            depth = stats.depth,
            bytes = stats.bytes,
            "The outbox gave up events: {why}; they will not reach the next tier."
        );
        let mut payload = Map::new();
        payload.insert("node_id".into(), json!(self.node_id));
        payload.insert("kind".into(), json!(kind.name));
        payload.insert("count".into(), json!(count));
        payload.insert("total".into(), json!(total));
        payload.insert("depth".into(), json!(stats.depth));
        payload.insert("bytes".into(), json!(stats.bytes));
        payload.insert("oldest_age_secs".into(), json!(stats.oldest_age_secs));
        queue_audit(
            &self.node_id,
            &self.key,
            &self.outbox,
            AUDIT_OUTBOX_LOSS,
            payload,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_loss_is_announced_at_once_then_at_most_once_per_period_with_the_sum() {
        let mut kind = Kind::new("dropped", "test");
        let t0 = Instant::now();
        assert_eq!(kind.due(0, t0, EVERY), None, "nothing lost, nothing said");
        assert_eq!(kind.due(3, t0, EVERY), Some(3), "the first loss at once");
        assert_eq!(kind.due(5, t0 + Duration::from_secs(10), EVERY), None);
        assert_eq!(kind.due(9, t0 + Duration::from_secs(59), EVERY), None);
        assert_eq!(
            kind.due(9, t0 + EVERY, EVERY),
            Some(6),
            "what was held back, summed"
        );
        assert_eq!(kind.due(9, t0 + 3 * EVERY, EVERY), None, "no new loss");
        assert_eq!(
            kind.due(10, t0 + 3 * EVERY, Duration::ZERO),
            Some(1),
            "at shutdown, what is left at once"
        );
    }
}
