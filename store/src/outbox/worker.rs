//! The writer thread: the only owner of the outbox's connection, doing group commit.
//!
//! Requests arrive on an unbounded std channel (each caller awaits its own reply, so a
//! caller has at most one request queued; the channel cannot grow beyond the number of
//! waiting callers). The thread takes every request that is waiting — up to
//! [`MAX_GROUP`] — applies the writes (pushes and acks, in arrival order) in ONE transaction
//! with one fsync, and only then answers them. While it fsyncs, new requests queue up and
//! form the next group: concurrency turns into larger groups, not more fsyncs. Reads are
//! answered after the group's commit, so they see it.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use nexus_wire::provenance::SignedEvent;
use tokio::sync::{oneshot, watch};
use tracing::warn;

use super::store::{Batch, PushOutcome, Snapshot, Store, Write};
use super::{LossKind, Losses, Numbered, OutboxError, Seal, Waiting};
use crate::sqlite::StoreError;

/// The most requests one group commit takes.
pub(crate) const MAX_GROUP: usize = 1024;

/// A request to the writer thread.
pub(crate) enum Command {
    Push {
        event: Box<SignedEvent>,
        priority: super::Priority,
        reply: oneshot::Sender<Result<u64, OutboxError>>,
    },
    PushNew {
        seal: Seal,
        priority: super::Priority,
        settles: Vec<i64>,
        reply: oneshot::Sender<Result<Numbered, OutboxError>>,
    },
    Losses {
        kind: LossKind,
        max_ranges: usize,
        reply: oneshot::Sender<Result<Option<Losses>, StoreError>>,
    },
    Ack {
        seqs: Vec<u64>,
        reply: oneshot::Sender<()>,
    },
    Read {
        max: usize,
        bulk_max: usize,
        reply: oneshot::Sender<Result<Batch, StoreError>>,
    },
    Find {
        event_id: String,
        reply: oneshot::Sender<Result<Option<Waiting>, StoreError>>,
    },
}

impl Command {
    /// The event of a push that could not be handed over.
    pub(crate) fn into_event(self) -> Option<Box<SignedEvent>> {
        match self {
            Command::Push { event, .. } => Some(event),
            _ => None,
        }
    }
}

enum Reply {
    Push(oneshot::Sender<Result<u64, OutboxError>>),
    PushNew(oneshot::Sender<Result<Numbered, OutboxError>>),
    Ack(oneshot::Sender<()>),
}

/// A read, answered after the group's writes are committed.
enum Read {
    Batch {
        max: usize,
        bulk_max: usize,
        reply: oneshot::Sender<Result<Batch, StoreError>>,
    },
    Losses {
        kind: LossKind,
        max_ranges: usize,
        reply: oneshot::Sender<Result<Option<Losses>, StoreError>>,
    },
    Find {
        event_id: String,
        reply: oneshot::Sender<Result<Option<Waiting>, StoreError>>,
    },
}

/// Runs until every handle is gone (the channel disconnects); what is queued by then is
/// still committed and answered.
pub(crate) fn run(
    mut store: Store,
    commands: Receiver<Command>,
    snapshot: watch::Sender<Snapshot>,
    expiry_tick: Option<Duration>,
) {
    let publish = |store: &Store| {
        let now = store.snapshot();
        snapshot.send_if_modified(|current| {
            let changed = *current != now;
            *current = now;
            changed
        });
    };
    loop {
        let first = match expiry_tick {
            Some(tick) => match commands.recv_timeout(tick) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(error) = store.expire() {
                        warn!(%error, "Cannot expire old outbox entries; will retry.");
                    }
                    publish(&store);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match commands.recv() {
                Ok(command) => command,
                Err(_) => break,
            },
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match commands.try_recv() {
                Ok(command) => group.push(command),
                Err(_) => break,
            }
        }
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        let mut reads = Vec::new();
        for command in group {
            match command {
                Command::Push {
                    event,
                    priority,
                    reply,
                } => {
                    writes.push(Write::Push { event, priority });
                    replies.push(Reply::Push(reply));
                }
                Command::PushNew {
                    seal,
                    priority,
                    settles,
                    reply,
                } => {
                    writes.push(Write::PushNew {
                        seal: Some(seal),
                        priority,
                        settles,
                    });
                    replies.push(Reply::PushNew(reply));
                }
                Command::Ack { seqs, reply } => {
                    writes.push(Write::Ack(seqs));
                    replies.push(Reply::Ack(reply));
                }
                Command::Read {
                    max,
                    bulk_max,
                    reply,
                } => reads.push(Read::Batch {
                    max,
                    bulk_max,
                    reply,
                }),
                Command::Losses {
                    kind,
                    max_ranges,
                    reply,
                } => reads.push(Read::Losses {
                    kind,
                    max_ranges,
                    reply,
                }),
                Command::Find { event_id, reply } => reads.push(Read::Find { event_id, reply }),
            }
        }
        if !writes.is_empty() {
            let result = store.commit(&mut writes);
            publish(&store);
            answer(writes, replies, result);
        }
        for read in reads {
            // A dropped receiver means the caller stopped waiting: nothing was removed.
            match read {
                Read::Batch {
                    max,
                    bulk_max,
                    reply,
                } => {
                    if let Err(error) = store.expire() {
                        warn!(%error, "Cannot expire old outbox entries; will retry.");
                    }
                    let result = store.read(max, bulk_max);
                    publish(&store);
                    let _ = reply.send(result);
                }
                Read::Losses {
                    kind,
                    max_ranges,
                    reply,
                } => {
                    let _ = reply.send(store.losses(kind, max_ranges));
                }
                Read::Find { event_id, reply } => {
                    let _ = reply.send(store.find(&event_id));
                }
            }
        }
    }
}

fn answer(
    writes: Vec<Write>,
    replies: Vec<Reply>,
    result: Result<Vec<Option<PushOutcome>>, StoreError>,
) {
    match result {
        Ok(outcomes) => {
            for ((write, reply), outcome) in writes.into_iter().zip(replies).zip(outcomes) {
                match (write, reply, outcome) {
                    (Write::Push { .. }, Reply::Push(reply), Some(PushOutcome::Stored(seq))) => {
                        let _ = reply.send(Ok(seq));
                    }
                    (
                        Write::Push { event, .. },
                        Reply::Push(reply),
                        Some(PushOutcome::Full { bytes, max_bytes }),
                    ) => {
                        let _ = reply.send(Err(OutboxError::Full {
                            event: Some(event),
                            bytes,
                            max_bytes,
                        }));
                    }
                    (
                        _,
                        Reply::PushNew(reply),
                        Some(PushOutcome::Numbered {
                            entry,
                            sequence,
                            event,
                        }),
                    ) => {
                        let _ = reply.send(Ok(Numbered {
                            entry,
                            sequence,
                            event: *event,
                        }));
                    }
                    (_, Reply::PushNew(reply), Some(PushOutcome::Full { bytes, max_bytes })) => {
                        let _ = reply.send(Err(OutboxError::Full {
                            event: None,
                            bytes,
                            max_bytes,
                        }));
                    }
                    (_, Reply::PushNew(reply), Some(PushOutcome::Unsealed(error))) => {
                        let _ = reply.send(Err(OutboxError::Seal(error)));
                    }
                    (_, Reply::Ack(reply), _) => {
                        let _ = reply.send(());
                    }
                    (_, Reply::Push(reply), _) => {
                        // Unreachable by construction (one outcome per push); never lose
                        // the caller's wait.
                        let _ = reply.send(Err(OutboxError::Closed { event: None }));
                    }
                    (_, Reply::PushNew(reply), _) => {
                        let _ = reply.send(Err(OutboxError::Closed { event: None }));
                    }
                }
            }
        }
        Err(error) => {
            warn!(%error, writes = writes.len(), "Outbox commit failed; nothing of this group was stored.");
            for (write, reply) in writes.into_iter().zip(replies) {
                match (write, reply) {
                    (Write::Push { event, .. }, Reply::Push(reply)) => {
                        let _ = reply.send(Err(OutboxError::Storage {
                            event: Some(event),
                            source: error.clone(),
                        }));
                    }
                    (_, Reply::PushNew(reply)) => {
                        // Its number was rolled back with the group: the next push uses it.
                        let _ = reply.send(Err(OutboxError::Storage {
                            event: None,
                            source: error.clone(),
                        }));
                    }
                    (_, Reply::Ack(reply)) => {
                        // The events stay and will be sent again: a duplicate, deduplicated
                        // upstream by event_id, never a loss.
                        let _ = reply.send(());
                    }
                    (_, Reply::Push(reply)) => {
                        let _ = reply.send(Err(OutboxError::Closed { event: None }));
                    }
                }
            }
        }
    }
}
