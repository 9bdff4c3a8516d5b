//! What happens to a refused message once its stage's refusal sink
//! (`nexus_federation::refusal::RefusalSink`) has counted and logged it: it is kept in the
//! dead-letter store with its reason, and announced as a `nexus._core.audit.rejected`
//! event — at most one per reason per minute, carrying how many refusals it stands for.

use std::time::{Duration, Instant};

use nexus_federation::deadletter::{DeadLetter, DeadLetters};
use nexus_federation::outbox::Priority;
use nexus_federation::ratelog::RateLimitedLog;
use nexus_federation::refusal::RejectedMessage;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::{Encoding, Envelope, Outbox, OutboxError};
use nexus_policies::SecretKey;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

/// The event name of refusal audits.
pub const AUDIT_REJECTED: &str = "audit.rejected";

/// Consumes refusals (ingress, subject bridge, commands).
#[derive(Debug)]
pub struct RejectionHandler {
    /// This node's id (the audit event's source).
    pub node_id: String,
    /// The key that signs audit events.
    pub key: SecretKey,
    /// Where audit events are queued.
    pub outbox: Outbox,
    /// Where refused messages are kept (`None` if the store could not be opened).
    pub dead_letters: Option<DeadLetters>,
    /// Refusals counted by stage and reason (for the metrics).
    pub counts: crate::metrics::RefusalCounts,
}

impl RejectionHandler {
    /// Handles refusals until `shutdown` (then drains what is already queued). Stops with
    /// [`SubsystemError::ChannelClosed`] if every sender is gone before shutdown.
    pub async fn run(
        self,
        mut refusals: mpsc::Receiver<RejectedMessage>,
        shutdown: CancellationToken,
    ) -> Result<(), SubsystemError> {
        let mut audits = RateLimitedLog::new(Duration::from_secs(60));
        loop {
            // Cancel safety: a refusal not yet received stays in the channel.
            let refused = tokio::select! {
                refused = refusals.recv() => refused,
                _ = shutdown.cancelled() => refusals.try_recv().ok(),
            };
            let Some(refused) = refused else {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                return Err(SubsystemError::ChannelClosed("refusals"));
            };
            self.counts
                .add(refused.stage.as_str(), refused.rejection.reason.as_str());
            // Landed anyway (an `audit` policy): nothing to keep, only to report.
            if let Some(store) = self.dead_letters.as_ref().filter(|_| !refused.landed) {
                let mut letter = DeadLetter::new(
                    refused.stage.as_str(),
                    refused.rejection.reason.as_str(),
                    refused.rejection.detail.clone(),
                    &refused.subject,
                    refused.headers.clone(),
                    refused.body.to_vec(),
                    OffsetDateTime::now_utc(),
                );
                // JetStream's delivery count and the time it entered the ingress.
                letter.attempts = refused.attempts.max(1);
                if let Some(first_at) = refused.first_at {
                    letter.first_at = first_at.min(letter.last_at);
                }
                if let Err(error) = store.record(letter).await {
                    if audits.check("dead_letter_store", Instant::now()).is_some() {
                        error!(%error, reason = refused.rejection.reason.as_str(), "Cannot store a refused message in the dead-letter store; it is lost.");
                    }
                }
            }
            if let Some(suppressed) =
                audits.check(refused.rejection.reason.as_str(), Instant::now())
            {
                self.audit(&refused, suppressed).await;
            }
        }
    }

    async fn audit(&self, refused: &RejectedMessage, suppressed: u64) {
        let mut payload = Map::new();
        payload.insert("node_id".into(), json!(self.node_id));
        payload.insert("stage".into(), json!(refused.stage.as_str()));
        payload.insert("reason".into(), json!(refused.rejection.reason.as_str()));
        payload.insert("detail".into(), json!(refused.rejection.detail));
        payload.insert("subject".into(), json!(refused.subject));
        payload.insert(
            "signer".into(),
            refused.signer.as_ref().map_or(Value::Null, |s| json!(s)),
        );
        payload.insert("also_rejected_since_last_audit".into(), json!(suppressed));
        queue_audit(
            &self.node_id,
            &self.key,
            &self.outbox,
            AUDIT_REJECTED,
            payload,
        )
        .await;
    }
}

/// Signs an audit event `event_name` of this node and queues it in the outbox ahead of
/// bulk traffic; a failure is logged (the audit is lost, what it reports is not).
pub async fn queue_audit(
    node_id: &str,
    key: &SecretKey,
    outbox: &Outbox,
    event_name: &str,
    payload: Map<String, Value>,
) {
    let envelope = Envelope::new(
        event_name,
        node_id,
        None,
        payload,
        OffsetDateTime::now_utc(),
    );
    let seal = envelope.into_sealer(Encoding::Json, key.clone());
    match outbox.push_numbered(seal, Priority::Control).await {
        Ok(_) => {}
        Err(OutboxError::Seal(error)) => warn!(%error, event_name, "Cannot build an audit event."),
        Err(error) => warn!(%error, event_name, "Cannot queue an audit event."),
    }
}
