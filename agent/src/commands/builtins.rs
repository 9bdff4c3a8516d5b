//! The built-in commands: `agent.ping` (who and what this node is) and `agent.token.rotate`
//! (a new chain for this node, checked, written, presented upward). `agent.health` is the
//! heartbeat's snapshot.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use nexus_federation::refusal::{Reason, Rejection};
use nexus_federation::trust;
use nexus_federation::uplink::Presentation;
use nexus_policies::Chain;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::CommandService;

impl CommandService {
    pub(super) fn ping(&self) -> Map<String, Value> {
        let mut payload = Map::new();
        payload.insert("node_id".into(), json!(self.node_id));
        payload.insert("mode".into(), json!(self.mode.as_str()));
        payload.insert("agent_version".into(), json!(env!("NEXUS_AGENT_VERSION")));
        payload.insert(
            "uptime_secs".into(),
            json!(self.heartbeat.started.elapsed().as_secs()),
        );
        payload
    }

    /// `agent.token.rotate {"token": "<chain, base64url>"}`: the new chain must verify up
    /// to a trust anchor now and be this node's (id, key, role, tenant); then it replaces
    /// the old one on disk (atomically), upward and in the bridge's checks.
    pub(super) async fn rotate(
        &self,
        payload: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Rejection> {
        let Some(path) = &self.rotation.path else {
            return Err(Rejection::new(
                Reason::NoToken,
                "this node runs without node.token (a trust anchor): nothing to rotate",
            ));
        };
        let text = payload
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Rejection::new(
                    Reason::Malformed,
                    "expected {\"token\": \"<token chain file, base64url>\"}",
                )
            })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| {
                Rejection::new(Reason::Malformed, format!("token is not base64url: {e}"))
            })?;
        let chain = Chain::decode(&bytes).map_err(|e| Rejection::from(&e))?;
        let grant = self.gatekeeper.verify_now(&chain)?;
        let own_key = self.key.public();
        let role = self.mode.role();
        let problem = if grant.node_id() != self.node_id {
            Some(format!("the token is for node `{}`", grant.node_id()))
        } else if grant.node_key() != &own_key {
            Some("the token is for another key than this node's".to_owned())
        } else if grant.role() != role {
            Some(format!(
                "the token is for a {}, this node is a {}",
                grant.role(),
                role
            ))
        } else if self
            .rotation
            .own
            .parent_key()
            .is_some_and(|parent| chain.leaf().claims().issuer_key != parent)
        {
            Some("the token is issued by another parent than the current one".to_owned())
        } else if self.tenant.is_some() && grant.tenant() != self.tenant.as_deref() {
            Some(format!(
                "the token is for tenant {:?}, this node is tenant {:?}",
                grant.tenant(),
                self.tenant
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Rejection::new(Reason::TokenNotMine, problem));
        }
        nexus_federation::fsutil::write_atomically(path, &bytes, 0o644).map_err(|e| {
            Rejection::new(
                Reason::Io,
                format!("cannot write node.token {}: {e}", path.display()),
            )
        })?;
        // Presented to the next tier before the answer, so that its registry already
        // holds the new chain when the caller goes on (and revokes the old one).
        let key_id = trust::key_id(&own_key);
        let bytes = Bytes::from(bytes);
        if let Ok(registry) =
            trust::bucket(&self.rotation.next_hop, trust::CHAINS_BUCKET, false).await
        {
            if let Err(error) = registry.put(&key_id, bytes.clone()).await {
                warn!(%error, "Cannot present the new token chain yet; the uplink presents it with its next batch.");
            }
        }
        self.rotation.own.set(chain);
        self.rotation.presentation.set(Presentation {
            key_id,
            chain: bytes,
        });
        let expires = OffsetDateTime::from_unix_timestamp(grant.expires().0)
            .map(nexus_federation::envelope::format_ts)
            .unwrap_or_default();
        info!(token_id = %grant.leaf_id(), %expires, path = %path.display(), "Token rotated.");
        let mut answer = Map::new();
        answer.insert("token_id".into(), json!(grant.leaf_id().to_string()));
        answer.insert("expires".into(), json!(expires));
        Ok(answer)
    }
}
