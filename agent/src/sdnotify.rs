//! systemd's notify protocol, without libsystemd: `READY=1` once the agent runs, `WATCHDOG=1`
//! at half the watchdog period, `STOPPING=1` on shutdown.
//!
//! systemd passes `NOTIFY_SOCKET` (a datagram socket: a path, or an abstract name written
//! with a leading `@`) to services of `Type=notify`, and `WATCHDOG_USEC` (+ `WATCHDOG_PID`)
//! when the unit has `WatchdogSec=`. Without them every call here does nothing, so the agent
//! behaves the same outside systemd. A failed send is logged once and never stops the agent.
//!
//! The watchdog pings come from a task on the agent's async runtime: a runtime that stops
//! scheduling tasks (a deadlock, a blocked worker) stops them, and systemd restarts the agent.

use std::ffi::OsString;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The watchdog is pinged this many times per `WATCHDOG_USEC` (systemd's advice: twice).
const PINGS_PER_PERIOD: u32 = 2;

/// Where systemd listens, if it does.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    address: SocketAddr,
    display: String,
    warned: AtomicBool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    fn from_vars(
        socket: Option<OsString>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Notifier {
        let target = socket.filter(|s| !s.is_empty()).and_then(|socket| {
            let shown = socket.to_string_lossy().into_owned();
            match address(&socket) {
                Ok(address) => Some(Arc::new(Target {
                    address,
                    display: shown,
                    warned: AtomicBool::new(false),
                })),
                Err(error) => {
                    warn!(notify_socket = %shown, %error, "NOTIFY_SOCKET is not a usable socket address; not notifying systemd.");
                    None
                }
            }
        });
        // The watchdog is ours unless WATCHDOG_PID names another process (systemd sets it
        // to the main pid; a child the agent started would inherit the variables).
        let ours = watchdog_pid.is_none_or(|pid| pid.trim().parse::<u32>() == Ok(own_pid));
        let watchdog = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours && target.is_some())
            .map(Duration::from_micros);
        Notifier { target, watchdog }
    }

    /// The watchdog period systemd asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (`KEY=VALUE` lines); nothing without `NOTIFY_SOCKET`.
    pub fn notify(&self, state: &str) {
        let Some(target) = &self.target else {
            return;
        };
        let sent = UnixDatagram::unbound()
            .and_then(|socket| socket.send_to_addr(state.as_bytes(), &target.address));
        match sent {
            Ok(_) => debug!(state, "Notified systemd."),
            Err(error) => {
                if !target.warned.swap(true, Ordering::Relaxed) {
                    warn!(notify_socket = %target.display, %error, "Cannot notify systemd (logged once).");
                }
            }
        }
    }

    /// `READY=1`, and the watchdog pings until `shutdown` if systemd asked for them.
    pub fn ready(&self, shutdown: CancellationToken) {
        self.notify("READY=1\nSTATUS=Running");
        let Some(period) = self.watchdog() else {
            return;
        };
        let every = period / PINGS_PER_PERIOD;
        let notifier = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                // Cancel safety: a tick is only a timer.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => notifier.notify("WATCHDOG=1"),
                }
            }
        });
    }

    /// `STOPPING=1`: systemd then waits for the exit instead of counting a stall.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=Stopping");
    }
}

/// `/run/x/notify` → a path address; `@name` → the abstract name `name` (Linux).
fn address(socket: &std::ffi::OsStr) -> std::io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt as _;
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        Some(b'/') => SocketAddr::from_pathname(socket),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "expected an absolute path or an abstract name starting with '@'",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notifier(socket: Option<&str>, usec: Option<&str>, pid: Option<&str>) -> Notifier {
        Notifier::from_vars(socket.map(OsString::from), usec, pid, 42)
    }

    #[test]
    fn nothing_without_a_socket() {
        let n = notifier(None, Some("30000000"), None);
        assert!(n.target.is_none());
        assert_eq!(n.watchdog(), None, "no watchdog without a socket to ping");
        n.notify("READY=1"); // a no-op, not a panic
    }

    #[test]
    fn path_and_abstract_addresses() {
        let path = notifier(Some("/run/systemd/notify"), None, None);
        let address = &path.target.as_ref().expect("path socket").address;
        assert_eq!(
            address.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_ = notifier(Some("@/org/freedesktop/systemd1/notify/1"), None, None);
        use std::os::linux::net::SocketAddrExt as _;
        let address = &abstract_.target.as_ref().expect("abstract socket").address;
        assert_eq!(
            address.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/1"[..])
        );
        assert!(notifier(Some("relative/path"), None, None).target.is_none());
    }

    #[test]
    fn watchdog_period_only_for_this_process() {
        let socket = Some("/run/notify");
        assert_eq!(
            notifier(socket, Some("30000000"), None).watchdog(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            notifier(socket, Some("30000000"), Some("42")).watchdog(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            notifier(socket, Some("30000000"), Some("7")).watchdog(),
            None
        );
        assert_eq!(notifier(socket, Some("0"), None).watchdog(), None);
        assert_eq!(notifier(socket, Some("soon"), None).watchdog(), None);
    }
}
