//! `[outbox]` and `[dead_letter]`: the bounds and policies of the node's two local stores.

use std::num::NonZeroU32;

use super::reader::{Reader, Section};
use super::schema::{
    BATCH, BATCH_RANGE, DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_ENTRIES, OUTBOX_MAX_BYTES,
};
use crate::model::{DeadLetterConfig, OutboxConfig, WhenFull};

impl Reader<'_> {
    /// `[outbox]`: every key optional.
    pub(super) fn outbox(&mut self, s: &Section<'_>) -> OutboxConfig {
        let max_bytes = self.integer(s, "max_bytes", 1..=i128::from(u64::MAX));
        let batch = self.integer(s, "batch", BATCH_RANGE);
        let when_full = match self.optional_text(s, "when_full") {
            None => WhenFull::default(),
            Some(g) => self.choice(g, "a policy").unwrap_or_default(),
        };
        let max_age = self.optional_duration(s, "max_age");
        let drain_rate = self
            .integer(s, "drain_rate", 1..=i128::from(u32::MAX))
            .and_then(|v| u32::try_from(v).ok())
            .and_then(NonZeroU32::new);
        OutboxConfig {
            max_bytes: max_bytes
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(OUTBOX_MAX_BYTES),
            batch: batch.and_then(|v| usize::try_from(v).ok()).unwrap_or(BATCH),
            when_full,
            max_age,
            drain_rate,
        }
    }

    /// `[dead_letter]`: every key optional.
    pub(super) fn dead_letter(&mut self, s: &Section<'_>) -> DeadLetterConfig {
        let max_bytes = self.integer(s, "max_bytes", 1..=i128::from(u64::MAX));
        let max_entries = self.integer(s, "max_entries", 1..=i128::from(u64::MAX));
        DeadLetterConfig {
            max_bytes: max_bytes
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(DEAD_LETTER_MAX_BYTES),
            max_entries: max_entries
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(DEAD_LETTER_MAX_ENTRIES),
        }
    }
}
