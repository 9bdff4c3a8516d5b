//! A child process we own: signals, bounded waits, no zombies.
//!
//! Every helper in this crate that runs a real program keeps it in a [`Proc`]: the handle is
//! behind a mutex so that a server shared by several tasks (`Arc<NatsServer>`) can still be
//! stopped and restarted through `&self`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often a bounded wait looks at a child again.
const POLL: Duration = Duration::from_millis(10);

/// Owns at most one running child process; `None` while stopped.
#[derive(Debug, Default)]
pub(crate) struct Proc {
    child: Mutex<Option<Child>>,
}

impl Proc {
    /// Takes ownership of a freshly spawned child, replacing (and reaping) any previous one.
    pub(crate) fn set(&self, child: Child) {
        let old = self.lock().replace(child);
        if let Some(mut old) = old {
            let _ = kill_and_reap(&mut old);
        }
    }

    /// The running child's pid, if any.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    /// Whether the child exists and has not exited (reaps it if it has).
    pub(crate) fn is_running(&self) -> bool {
        self.exit_status().is_none() && self.lock().is_some()
    }

    /// The exit status if the child has exited; `None` while it runs or when there is none.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        let mut guard = self.lock();
        let child = guard.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits up to `grace` for the exit; returns the status, or `None` if the
    /// child is still running after `grace` (it is left running) or there was no child.
    pub(crate) fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        let mut guard = self.lock();
        let child = guard.as_mut()?;
        if let Ok(Some(status)) = child.try_wait() {
            guard.take();
            return Some(status);
        }
        signal(child, Signal::SIGTERM);
        let status = wait_bounded(child, grace);
        if status.is_some() {
            guard.take();
        }
        status
    }

    /// SIGTERM, then SIGKILL after `grace`; always leaves no process and no zombie behind.
    pub(crate) fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.terminate(grace) {
            return Some(status);
        }
        self.kill()
    }

    /// SIGKILL and reap; returns the exit status if there was a child.
    pub(crate) fn kill(&self) -> Option<ExitStatus> {
        let mut child = self.lock().take()?;
        kill_and_reap(&mut child)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock (a failed assertion in a test) must not turn every
        // later Drop into a second panic: the data is a plain handle, still valid.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `sig` to the child; a child that is already gone is not an error.
fn signal(child: &Child, sig: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Waits up to `limit` for the child to exit.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// SIGKILL + wait: the wait is what removes the zombie. `None` only if the wait failed, which
/// means the child was already reaped: nothing is left either way.
fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    let _ = child.kill();
    child.wait().ok()
}

/// Whether a process with this pid exists (a zombie counts as existing).
pub fn pid_exists(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence and permission without sending anything.
    kill(Pid::from_raw(raw), None).is_ok()
}

/// Opens `path` for appending (creating it), for a child's stdout/stderr.
pub(crate) fn append_log(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open log file {}: {e}", path.display()))
}

/// The whole file as (lossy) UTF-8; empty if it does not exist.
pub(crate) fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last `n` lines of a file (reads at most its last 256 KiB).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    const MAX: u64 = 256 * 1024;
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX)));
        let _ = f.read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
