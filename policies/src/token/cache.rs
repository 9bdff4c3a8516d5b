//! The verification cache: "a chain is verified once, then cached".

use std::collections::HashMap;
use std::sync::Arc;

use super::chain::{Chain, ChainKey};
use super::revocation::RevocationSet;
use super::verify::{VerifiedGrant, Verifier};
use crate::clock::UnixTime;
use crate::error::TokenError;

/// Default number of chains remembered.
pub const DEFAULT_CACHE_CAPACITY: usize = 1024;

/// A bounded cache of verified chains.
///
/// It remembers the [`VerifiedGrant`] of a chain under the chain's [`ChainKey`] (SHA-256
/// of its exact token bytes). Signatures and attenuation are facts of the bytes and are
/// not re-checked on a hit; what can change is: the trust anchors (rotation), the
/// revocation set, and the time. Those are re-checked against the verifier on every hit
/// (a few comparisons), so a revoked, expired or no-longer-anchored chain stops being
/// served at once, and its entry is dropped. Failures are not cached.
///
/// Bounded: at capacity, expired entries go first, then the least recently used one.
#[derive(Debug)]
pub struct ChainCache {
    capacity: usize,
    entries: HashMap<ChainKey, Entry>,
    /// A use counter standing in for recency (no clock reads here).
    tick: u64,
}

#[derive(Debug)]
struct Entry {
    grant: Arc<VerifiedGrant>,
    last_used: u64,
}

impl Default for ChainCache {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_CAPACITY)
    }
}

impl ChainCache {
    /// A cache holding at most `capacity` chains (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            tick: 0,
        }
    }

    /// The grant of `chain` at `now`: from the cache after a cheap re-check, or verified
    /// in full by `verifier` and remembered.
    pub fn verify(
        &mut self,
        verifier: &Verifier,
        chain: &Chain,
        now: UnixTime,
    ) -> Result<Arc<VerifiedGrant>, TokenError> {
        self.tick += 1;
        let key = chain.key();
        if let Some(entry) = self.entries.get_mut(&key) {
            return match verifier.recheck(&entry.grant, now) {
                Ok(()) => {
                    entry.last_used = self.tick;
                    Ok(Arc::clone(&entry.grant))
                }
                // Not yet valid may become valid: keep the entry. Anything else is final.
                Err(e @ TokenError::NotYetValid { .. }) => Err(e),
                Err(e) => {
                    self.entries.remove(&key);
                    Err(e)
                }
            };
        }
        let grant = Arc::new(verifier.verify_chain(chain.tokens(), now)?);
        if self.entries.len() >= self.capacity {
            self.make_room(verifier, now);
        }
        self.entries.insert(
            key,
            Entry {
                grant: Arc::clone(&grant),
                last_used: self.tick,
            },
        );
        Ok(grant)
    }

    fn make_room(&mut self, verifier: &Verifier, now: UnixTime) {
        let skew = verifier.skew;
        self.entries
            .retain(|_, e| now < e.grant.expires().saturating_add(skew));
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
    }

    /// Drops every entry whose chain contains a revoked id; returns how many. (Hits
    /// re-check revocation anyway; this frees the memory at once.)
    pub fn invalidate_revoked(&mut self, revoked: &RevocationSet) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| !e.grant.token_ids().any(|id| revoked.contains(&id)));
        before - self.entries.len()
    }

    /// Forgets `chain` (its node is gone, or it was replaced); whether it was remembered.
    pub fn forget(&mut self, chain: &Chain) -> bool {
        self.entries.remove(&chain.key()).is_some()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many chains are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `chain` is remembered (it may still fail the re-check).
    pub fn contains(&self, chain: &Chain) -> bool {
        self.entries.contains_key(&chain.key())
    }
}
