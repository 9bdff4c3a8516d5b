//! Supervision: every subsystem runs in its own task under a child of the root shutdown
//! token, and how it ended is judged here.
//!
//! A subsystem returns `Ok` when asked to stop (`nexus_federation::subsystem`). Anything
//! else — an `Err`, a panic, or an `Ok` before shutdown — is a *fault*: logged at ERROR with
//! the subsystem's name and cause, and recorded in [`Faults`], which the heartbeat reports
//! (`status: "degraded"`, `causes`). Then, by the cause ([`stops_agent`]):
//! - the agent shuts down (every other cause): `run` cancels everything, sends a last
//!   heartbeat naming the cause, and exits 1, so that systemd restarts it;
//! - or it keeps running without that subsystem ([`SubsystemError::SetUp`]: a set-up that
//!   failed for good, which a restart would only repeat).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use nexus_federation::subsystem::SubsystemError;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

/// A subsystem that stopped on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The subsystem's name (`iot`, `uplink`, `ingress`, …).
    pub subsystem: &'static str,
    /// Why it stopped.
    pub cause: SubsystemError,
    /// When the supervisor saw it stop.
    pub at: OffsetDateTime,
}

impl Fault {
    /// Whether this fault shuts the agent down (see [`stops_agent`]).
    pub fn stops_agent(&self) -> bool {
        stops_agent(&self.cause)
    }
}

/// Whether a subsystem stopping for `cause` shuts the agent down. Only a set-up that
/// failed for good does not: restarting would fail the same way, and the rest of the
/// node (forwarding, commands, heartbeats) still works, reporting itself degraded.
pub fn stops_agent(cause: &SubsystemError) -> bool {
    !matches!(cause, SubsystemError::SetUp(_))
}

/// The faults of this run, in the order they happened (shared with the heartbeat).
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<Fault>>>);

impl Faults {
    /// Adds a fault.
    pub fn record(&self, fault: Fault) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(fault);
    }

    /// Every fault so far.
    pub fn list(&self) -> Vec<Fault> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first fault that shut the agent down, if any.
    pub fn stopping(&self) -> Option<Fault> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|fault| fault.stops_agent())
            .cloned()
    }
}

/// Spawns subsystems and judges how they end (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    faults: Faults,
}

impl Supervisor {
    /// A supervisor with nothing running yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The root shutdown token: cancelled by a signal or by a fault that stops the agent.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The faults so far (shared).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Runs the subsystem that `start` makes from a child of the shutdown token.
    pub fn spawn<F, Fut>(&self, name: &'static str, start: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), SubsystemError>> + Send + 'static,
    {
        let token = self.shutdown.child_token();
        self.spawn_with(name, token.clone(), start(token));
    }

    /// Runs `task`, which stops when `token` is cancelled: a token the caller cancels
    /// itself (the uplink, which is stopped last so that it takes the last heartbeat along).
    pub fn spawn_with<Fut>(&self, name: &'static str, token: CancellationToken, task: Fut)
    where
        Fut: Future<Output = Result<(), SubsystemError>> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let faults = self.faults.clone();
        self.tracker.spawn(async move {
            // With `panic = "abort"` (release builds) a panic ends the process before this
            // sees it; in other builds it is a fault like any other.
            let cause = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(Ok(())) if token.is_cancelled() => return,
                Ok(Ok(())) => SubsystemError::Returned,
                Ok(Err(cause)) => cause,
                Err(panic) => SubsystemError::panicked(&*panic),
            };
            let fault = Fault {
                subsystem: name,
                cause,
                at: OffsetDateTime::now_utc(),
            };
            let cause = &fault.cause;
            let kind = cause.kind();
            if fault.stops_agent() {
                error!(subsystem = name, kind, %cause, "Subsystem stopped unexpectedly; shutting the agent down.");
                faults.record(fault);
                shutdown.cancel();
            } else {
                error!(subsystem = name, kind, %cause, "Subsystem stopped; the agent keeps running without it, reporting itself degraded.");
                faults.record(fault);
            }
        });
    }

    /// No more subsystems will be spawned.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Resolves once every subsystem has ended (after [`Supervisor::close`]).
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn finished(supervisor: &Supervisor) {
        supervisor.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), supervisor.wait())
            .await
            .expect("every subsystem ended");
    }

    /// A subsystem that ends `Ok` on shutdown is no fault.
    #[tokio::test]
    async fn a_clean_stop_is_no_fault() {
        let supervisor = Supervisor::new();
        supervisor.spawn("quiet", |token| async move {
            token.cancelled().await;
            Ok(())
        });
        supervisor.shutdown().cancel();
        finished(&supervisor).await;
        assert!(supervisor.faults().list().is_empty());
    }

    /// An error, a panic and an `Ok` before shutdown are recorded with their causes; all
    /// three stop the agent.
    #[tokio::test]
    async fn errors_panics_and_early_returns_are_faults_that_stop_the_agent() {
        for (start, cause) in [
            (0, SubsystemError::StoreClosed("outbox")),
            (1, SubsystemError::Panicked("boom".into())),
            (2, SubsystemError::Returned),
        ] {
            let supervisor = Supervisor::new();
            supervisor.spawn("pump", move |_token| async move {
                match start {
                    0 => Err(SubsystemError::StoreClosed("outbox")),
                    1 => panic!("boom"),
                    _ => Ok(()),
                }
            });
            finished(&supervisor).await;
            assert!(
                supervisor.shutdown().is_cancelled(),
                "{cause}: the agent stops"
            );
            let faults = supervisor.faults().list();
            assert_eq!(faults.len(), 1);
            assert_eq!((faults[0].subsystem, &faults[0].cause), ("pump", &cause));
            assert_eq!(supervisor.faults().stopping(), Some(faults[0].clone()));
        }
    }

    /// A set-up that failed for good is recorded, and the rest keeps running.
    #[tokio::test]
    async fn a_failed_set_up_leaves_the_agent_running() {
        let supervisor = Supervisor::new();
        supervisor.spawn("iot", |_token| async {
            Err(SubsystemError::SetUp("bad TLS".into()))
        });
        supervisor.spawn("uplink", |token| async move {
            token.cancelled().await;
            Ok(())
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while supervisor.faults().list().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the fault is recorded");
        assert!(
            !supervisor.shutdown().is_cancelled(),
            "the agent keeps running"
        );
        assert_eq!(supervisor.faults().stopping(), None);
        supervisor.shutdown().cancel();
        finished(&supervisor).await;
        assert_eq!(
            supervisor.faults().list().len(),
            1,
            "a clean stop adds nothing"
        );
    }
}
