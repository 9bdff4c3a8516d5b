//! The contract of a long-running subsystem (a pump, a watcher, the IoT bridge, …):
//! `run(…, shutdown: CancellationToken) -> Result<(), SubsystemError>`.
//!
//! `Ok` is the normal end: `shutdown` was cancelled and the subsystem drained. An `Err`
//! says why it stopped on its own, so that whoever supervises it can log the cause and
//! report it (the agent names it in its heartbeat). Passing failures that a retry can
//! fix (a server away, a publish refused) are not causes: the subsystem retries them
//! itself ([`crate::backoff::Retry`]) and only gives up on what retrying cannot fix.

use std::any::Any;

/// Why a subsystem stopped before it was asked to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubsystemError {
    /// It could not be set up, and trying again would not help (e.g. TLS files that are
    /// PEM, so the config check let them through, but that rustls refuses).
    #[error("set-up failed: {0}")]
    SetUp(String),
    /// A store it writes to was closed under it (the outbox's writer is gone). What it
    /// had not stored is left where it came from (an unacked MQTT message stays with the
    /// broker).
    #[error("the {0} is closed")]
    StoreClosed(&'static str),
    /// A channel it reads from was closed before shutdown: whatever fed it is gone.
    #[error("its {0} channel closed")]
    ChannelClosed(&'static str),
    /// It panicked; the panic was caught by whoever awaited it.
    #[error("panicked: {0}")]
    Panicked(String),
    /// It returned `Ok` although shutdown had not been asked for.
    #[error("returned before shutdown without a cause")]
    Returned,
}

impl SubsystemError {
    /// A caught panic, with its message when it has one (`panic!("…")` gives a `&str` or
    /// a `String`).
    pub fn panicked(payload: &(dyn Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Self::Panicked(message)
    }

    /// A stable name of the kind of cause (`set_up`, `store_closed`, `channel_closed`,
    /// `panicked`, `returned`), for heartbeats and whoever reads them.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SetUp(_) => "set_up",
            Self::StoreClosed(_) => "store_closed",
            Self::ChannelClosed(_) => "channel_closed",
            Self::Panicked(_) => "panicked",
            Self::Returned => "returned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_keeps_its_message() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 7)).expect_err("panics");
        assert_eq!(
            SubsystemError::panicked(&*caught),
            SubsystemError::Panicked("boom 7".into())
        );
        let caught = std::panic::catch_unwind(|| panic!("static")).expect_err("panics");
        assert_eq!(
            SubsystemError::panicked(&*caught).to_string(),
            "panicked: static"
        );
    }

    #[test]
    fn causes_read_as_sentences_and_have_stable_kinds() {
        let cause = SubsystemError::StoreClosed("outbox");
        assert_eq!(cause.to_string(), "the outbox is closed");
        assert_eq!(cause.kind(), "store_closed");
        assert_eq!(
            SubsystemError::ChannelClosed("refusals").to_string(),
            "its refusals channel closed"
        );
        assert_eq!(SubsystemError::SetUp("x".into()).kind(), "set_up");
    }
}
