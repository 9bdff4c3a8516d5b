//! Following a key-value bucket on a link: open a watch, hand each entry over, watch again
//! after every error (with backoff) until shutdown. Trust's revocation lists, desired
//! config and a hub's copy of the root's documents all follow a bucket on the tier above.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::{Backoff, Retry};
use crate::link::Link;
use crate::subsystem::SubsystemError;

/// What the follower does after an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for the next entry.
    More,
    /// Watch again from [`follow`]'s `open` (e.g. the handler could not keep the entry).
    Rewatch,
    /// Stop following (`follow` returns `Ok`).
    Stop,
}

/// What follows a bucket: how to open the watch, what to do with each entry.
pub trait Follower: Send {
    /// What `open` gives beside the watch, lent to every `handle`.
    type With: Send + Sync;

    /// Opens the watch (and whatever `handle` needs beside it); the error says why not.
    fn open(&mut self) -> impl Future<Output = Result<(kv::Watch, Self::With), String>> + Send;

    /// Takes one entry.
    fn handle(&mut self, with: &Self::With, entry: kv::Entry) -> impl Future<Output = Next> + Send;
}

/// Follows `link` until `shutdown` or [`Follower::handle`] says [`Next::Stop`]: waits for
/// the link, opens a watch, gives every entry to the follower. An `open` that fails is said
/// once (at INFO: the bucket may simply not exist yet) until a watch opens; a watch that
/// fails is said at WARN; both are tried again with backoff (0.5 s to 15 s). Always `Ok`.
pub async fn follow<F: Follower>(
    link: &Link,
    what: &str,
    shutdown: &CancellationToken,
    follower: &mut F,
) -> Result<(), SubsystemError> {
    let mut retry = Retry::new(Backoff::new(
        Duration::from_millis(500),
        Duration::from_secs(15),
    ));
    let mut said = false;
    loop {
        if !link.wait_connected(shutdown).await {
            return Ok(());
        }
        match follower.open().await {
            Ok((mut watch, with)) => {
                retry.reset();
                said = false;
                loop {
                    // Cancel safety: an entry not yet yielded stays in the stream.
                    let entry = tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        entry = watch.next() => entry,
                    };
                    match entry {
                        Some(Ok(entry)) => match follower.handle(&with, entry).await {
                            Next::More => {}
                            Next::Rewatch => break,
                            Next::Stop => return Ok(()),
                        },
                        Some(Err(error)) => {
                            warn!(%error, "The watch of {what} failed; watching again.");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(error) if !said => {
                said = true;
                info!(%error, "Cannot watch {what} yet; retrying.");
            }
            Err(_) => {}
        }
        if !retry.wait(shutdown).await {
            return Ok(());
        }
    }
}
