//! What the agent needs from its trust configuration at start: its own token chain (to
//! present upward), the trust clock, and the revocations it already knows.

use std::sync::Arc;

use anyhow::Context as _;
use nexus_config::Config;
use nexus_federation::clock::TrustClock;
use nexus_federation::revocation;
use nexus_federation::trust::{self, Gatekeeper};
use nexus_federation::uplink::Presentation;
use nexus_policies::token::{Chain, RevocationList, RevocationSet, Verifier};
use nexus_policies::SecretKey;
use tracing::{info, warn};

/// The trust state of a starting agent.
#[derive(Debug)]
pub struct TrustSetup {
    /// This node's chain, presented to the tier above on every connection.
    pub presentation: Option<Presentation>,
    /// The clock of token checks.
    pub clock: Arc<TrustClock>,
    /// The revocation list persisted from an earlier run.
    pub revocations: Option<RevocationList>,
    revoked: RevocationSet,
}

impl TrustSetup {
    /// Reads the token chain and the persisted revocations; says how the own token stands.
    pub fn load(config: &Config, key: &SecretKey) -> anyhow::Result<Self> {
        let node = &config.node;
        let clock = Arc::new(TrustClock::new(Some(node.data_dir.join("clock.lkg"))));
        let (revocations, revoked) = match revocation::load(
            &config.trust.revocations_file,
            &config.trust.root_keys,
        ) {
            Some((list, set)) => {
                info!(revoked = set.len(), path = %config.trust.revocations_file.display(), "Revocation list loaded.");
                (Some(list), set)
            }
            None => (None, RevocationSet::default()),
        };
        let presentation = match &node.token {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read node.token {}", path.display()))?;
                let chain = Chain::decode(&bytes).with_context(|| {
                    format!("node.token {} is not a token chain", path.display())
                })?;
                let mut verifier = Verifier::new(config.trust.root_keys.clone());
                verifier.skew = config.trust.clock_skew;
                verifier.revoked = revoked.clone();
                match clock.now() {
                    Ok(now) => match verifier.verify_chain(chain.tokens(), now) {
                        Ok(grant) => {
                            let days = (grant.expires().0 - now.0) / 86_400;
                            info!(token_id = %grant.leaf_id(), expires_in_days = days, "Own token verified.");
                        }
                        Err(error) => {
                            warn!(%error, path = %path.display(), "Own token does not verify: the tier above will refuse this node's events until it is replaced.")
                        }
                    },
                    Err(error) => {
                        warn!(%error, "Cannot check the own token's validity until the clock syncs.")
                    }
                }
                let presentation = Presentation {
                    key_id: trust::key_id(&key.public()),
                    chain: bytes.into(),
                };
                Some(presentation)
            }
            None => None,
        };
        Ok(Self {
            presentation,
            clock,
            revocations,
            revoked,
        })
    }

    /// The admission checks of a hub or root.
    pub fn gatekeeper(&self, config: &Config) -> Arc<Gatekeeper> {
        Arc::new(Gatekeeper::new(
            config.trust.root_keys.clone(),
            config.trust.clock_skew,
            config.acl.rules().cloned(),
            self.revoked.clone(),
            Arc::clone(&self.clock),
        ))
    }
}
