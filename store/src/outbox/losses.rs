//! What the outbox gave up and has not announced yet (see the module docs of [`super`],
//! "Numbers given up").

#[cfg(doc)]
use super::{Outbox, WhenFull};

/// Why the outbox gave events up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LossKind {
    /// Bulk events dropped to make room ([`WhenFull::DropOldest`]), or rows found
    /// unreadable.
    Dropped,
    /// Events older than `max_age`.
    Expired,
}

impl LossKind {
    /// `dropped` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            LossKind::Dropped => "dropped",
            LossKind::Expired => "expired",
        }
    }
}

/// Events the outbox gave up and has not announced yet, of one kind: the numbers of one
/// epoch, and the events that carried none. Read with [`Outbox::losses`]; settled by
/// storing their announcement with [`Outbox::push_announcement`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Losses {
    /// Why they were given up.
    pub kind: LossKind,
    /// The epoch `ranges` are numbers of (`None` when there are none).
    pub epoch: Option<String>,
    /// The `seq`s given up, as ascending, disjoint, non-adjacent inclusive ranges.
    pub ranges: Vec<(u64, u64)>,
    /// Events given up that carried no number (stored by [`Outbox::push`]: events of
    /// other nodes, or stored before numbering existed).
    pub unnumbered: u64,
    /// The `outbox_losses` rows these are.
    pub(super) ids: Vec<i64>,
}

impl Losses {
    /// How many events these are.
    pub fn count(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(first, last)| last - first + 1)
            .sum::<u64>()
            + self.unnumbered
    }
}
