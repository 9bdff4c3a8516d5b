//! What the outbox gives up on purpose: Bulk events dropped to make room
//! (`outbox.when_full = "drop_oldest"`, or rows found unreadable) and events expired
//! (`outbox.max_age`). Each kind is logged as a WARN and announced as a
//! `nexus._core.audit.outbox_loss` event — the first loss at once, then at most once a
//! minute per kind, with what was given up since the previous announcement. The
//! heartbeat's `outbox.dropped` and `outbox.expired` carry the totals.
//!
//! An announcement names exactly which events of this node's order are gone: the
//! `epoch` and the `seq` numbers given up, as ranges `[[first, last], …]` (events stored
//! without a number, from before numbering, are counted in `unnumbered`). The outbox keeps
//! what it gave up on disk until the audit announcing it is stored (in the same
//! transaction), so a crash delays an announcement but never loses it. One audit carries
//! at most [`MAX_RANGES`] ranges of one epoch; more are announced in several audits, one
//! right after the other, each with its own `count`.

use std::time::{Duration, Instant};

use nexus_federation::outbox::{LossKind, Losses, OutboxStats, Priority};
use nexus_federation::{Encoding, Envelope, Outbox};
use nexus_policies::SecretKey;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The event name of outbox loss audits.
pub const AUDIT_OUTBOX_LOSS: &str = "audit.outbox_loss";
/// The most ranges one audit carries (each is ~25 bytes of JSON: an audit stays under
/// ~16 KiB).
pub const MAX_RANGES: usize = 512;
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

/// One kind of loss and when it was last announced.
#[derive(Debug)]
struct Kind {
    kind: LossKind,
    /// What it means, for the log.
    why: &'static str,
    last: Option<Instant>,
}

impl Kind {
    fn new(kind: LossKind, why: &'static str) -> Self {
        Self {
            kind,
            why,
            last: None,
        }
    }

    /// Whether to announce at `now`, with `waiting` events given up and not announced yet:
    /// at once for the first, then at most once per `every`.
    fn due(&mut self, waiting: u64, now: Instant, every: Duration) -> bool {
        if waiting == 0
            || self
                .last
                .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return false;
        }
        self.last = Some(now);
        true
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
            LossKind::Dropped,
            "the oldest bulk events were dropped to make room (outbox.when_full = \"drop_oldest\"), or rows were unreadable",
        );
        let mut expired = Kind::new(
            LossKind::Expired,
            "events older than outbox.max_age were expired",
        );
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
            for kind in [&mut dropped, &mut expired] {
                if kind.due(stats.unannounced(kind.kind), now, every) {
                    self.announce(kind, &stats).await;
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Announces what `kind` had waiting at `stats`, in as many audits as its ranges need.
    /// What the audits themselves make the outbox give up (an audit that drops a reading
    /// to make room) waits for the next announcement, so this always ends. An audit that
    /// cannot be queued leaves its losses waiting: they are announced later.
    async fn announce(&self, kind: &Kind, stats: &OutboxStats) {
        let mut left = stats.unannounced(kind.kind);
        while left > 0 {
            let losses = match self.outbox.losses(kind.kind, MAX_RANGES).await {
                Ok(Some(losses)) => losses,
                Ok(None) => return,
                Err(error) => {
                    warn!(%error, kind = kind.kind.as_str(), "Cannot read what the outbox gave up; it is announced later.");
                    return;
                }
            };
            let count = losses.count();
            let why = kind.why;
            let total = match kind.kind {
                LossKind::Dropped => stats.dropped,
                LossKind::Expired => stats.expired,
            };
            warn!(
                kind = kind.kind.as_str(),
                count,
                epoch = losses.epoch.as_deref().unwrap_or("-"),
                seqs = %summary(&losses.ranges),
                unnumbered = losses.unnumbered,
                total,
                depth = stats.depth,
                bytes = stats.bytes,
                "The outbox gave up events: {why}; they will not reach the next tier."
            );
            let envelope = Envelope::new(
                AUDIT_OUTBOX_LOSS,
                &self.node_id,
                None,
                payload(&self.node_id, &losses, total, stats),
                OffsetDateTime::now_utc(),
            );
            let seal = envelope.into_sealer(Encoding::Json, self.key.clone());
            if let Err(error) = self
                .outbox
                .push_announcement(&losses, seal, Priority::Control)
                .await
            {
                warn!(%error, kind = kind.kind.as_str(), "Cannot queue an outbox loss audit; what it announces stays recorded and is announced later.");
                return;
            }
            left = left.saturating_sub(count);
        }
    }
}

/// The audit's payload: who, which kind, exactly which events (`epoch`, `ranges`,
/// `unnumbered`, `count`), and the outbox's state.
fn payload(node_id: &str, losses: &Losses, total: u64, stats: &OutboxStats) -> Map<String, Value> {
    let ranges: Vec<Value> = losses
        .ranges
        .iter()
        .map(|(first, last)| json!([first, last]))
        .collect();
    let mut payload = Map::new();
    payload.insert("node_id".into(), json!(node_id));
    payload.insert("kind".into(), json!(losses.kind.as_str()));
    payload.insert("count".into(), json!(losses.count()));
    payload.insert("epoch".into(), json!(losses.epoch));
    payload.insert("ranges".into(), Value::Array(ranges));
    payload.insert("unnumbered".into(), json!(losses.unnumbered));
    payload.insert("total".into(), json!(total));
    payload.insert("depth".into(), json!(stats.depth));
    payload.insert("bytes".into(), json!(stats.bytes));
    payload.insert("oldest_age_secs".into(), json!(stats.oldest_age_secs));
    payload
}

/// `1-40, 42, 50-61` (the first few ranges, for the log).
fn summary(ranges: &[(u64, u64)]) -> String {
    const SHOWN: usize = 8;
    let mut parts: Vec<String> = ranges
        .iter()
        .take(SHOWN)
        .map(|&(first, last)| {
            if first == last {
                first.to_string()
            } else {
                format!("{first}-{last}")
            }
        })
        .collect();
    if ranges.len() > SHOWN {
        parts.push(format!("… ({} ranges)", ranges.len()));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_loss_is_announced_at_once_then_at_most_once_per_period() {
        let mut kind = Kind::new(LossKind::Dropped, "test");
        let t0 = Instant::now();
        assert!(!kind.due(0, t0, EVERY), "nothing lost, nothing said");
        assert!(kind.due(3, t0, EVERY), "the first loss at once");
        assert!(!kind.due(2, t0 + Duration::from_secs(10), EVERY));
        assert!(!kind.due(6, t0 + Duration::from_secs(59), EVERY));
        assert!(kind.due(6, t0 + EVERY, EVERY), "what was held back");
        assert!(!kind.due(0, t0 + 3 * EVERY, EVERY), "no new loss");
        assert!(
            kind.due(1, t0 + 3 * EVERY, Duration::ZERO),
            "at shutdown, what is left at once"
        );
    }

    fn stats() -> OutboxStats {
        OutboxStats {
            depth: 2,
            bytes: 700,
            oldest_age_secs: 5,
            dropped: 9,
            expired: 0,
            unannounced_dropped: 9,
            unannounced_expired: 0,
        }
    }

    /// What a drop_oldest outbox records reaches the audit exactly, and what it announces
    /// is settled; ranges beyond one audit's bound go in the next audit.
    #[tokio::test]
    async fn an_announcement_names_the_exact_numbers_and_settles_them() {
        use nexus_federation::outbox::{OutboxOptions, WhenFull};
        let key = SecretKey::from_seed(&[4; 32]).expect("key");
        let event = |n: u64| {
            let mut payload = Map::new();
            payload.insert("n".into(), json!(n));
            Envelope::new(
                "iot.x",
                "edge-01",
                Some("t"),
                payload,
                OffsetDateTime::UNIX_EPOCH,
            )
        };
        // Room for about three readings, so every further reading drops the oldest.
        let size = {
            let mut e = event(1);
            e.epoch = Some("01932f6e-8a4c-7b3d-9e21-5f0a6b7c8d9e".into());
            e.seq = Some(1);
            e.encode(Encoding::Json).expect("encodes").len() as u64
        };
        let outbox = Outbox::in_memory_with_options(OutboxOptions {
            when_full: WhenFull::DropOldest,
            ..OutboxOptions::new(size * 3 + 20)
        });
        for n in 1..=9 {
            outbox
                .push_numbered(
                    event(n).into_sealer(Encoding::Json, key.clone()),
                    Priority::Bulk,
                )
                .await
                .expect("stored");
        }
        let losses = outbox
            .losses(LossKind::Dropped, MAX_RANGES)
            .await
            .expect("reads")
            .expect("losses");
        assert_eq!(losses.ranges, [(1, 6)]);
        let value = Value::Object(payload("edge-01", &losses, 6, &stats()));
        assert_eq!(value["epoch"], outbox.epoch());
        assert_eq!(value["ranges"], json!([[1, 6]]));
        assert_eq!(
            (value["count"].clone(), value["unnumbered"].clone()),
            (json!(6), json!(0))
        );

        let auditor = LossAuditor {
            node_id: "edge-01".into(),
            key,
            outbox: outbox.clone(),
        };
        let kind = Kind::new(LossKind::Dropped, "test");
        auditor.announce(&kind, &outbox.stats()).await;
        let audits: Vec<Envelope> = outbox
            .next_batch(100)
            .await
            .into_iter()
            .map(|(_, e)| {
                Envelope::decode(
                    &e.body,
                    e.encoding,
                    nexus_federation::envelope::MAX_ENVELOPE_BYTES,
                )
                .expect("decodes")
            })
            .filter(|e| e.event_name == AUDIT_OUTBOX_LOSS)
            .collect();
        assert!(!audits.is_empty());
        assert_eq!(audits[0].payload["ranges"], json!([[1, 6]]));
        assert_eq!(audits[0].seq, Some(10), "the audit is numbered too");
        assert_eq!(summary(&[(1, 6), (8, 8)]), "1-6, 8");
    }
}
