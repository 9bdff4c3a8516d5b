//! systemd's notify protocol with the real agent process: the test binds the datagram socket
//! systemd would (`NOTIFY_SOCKET`), asks for a watchdog (`WATCHDOG_USEC`) and reads what the
//! agent sends: `READY=1` once it runs, `WATCHDOG=1` at half the period, `STOPPING=1` on
//! SIGTERM.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nexus_e2e::{fleet, Fleet, Launch};

const STARTUP: Duration = Duration::from_secs(30);

/// The next datagram within `deadline`, as text; panics with `what` if none arrives.
fn receive(socket: &UnixDatagram, what: &str, deadline: Duration) -> String {
    socket
        .set_read_timeout(Some(deadline))
        .expect("set a read timeout");
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification ({what}) within {deadline:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn launch(socket: OsString, watchdog_usec: u64) -> Launch {
    Launch {
        env: vec![
            ("NOTIFY_SOCKET".into(), socket),
            ("WATCHDOG_USEC".into(), watchdog_usec.to_string().into()),
        ],
        ..Launch::default()
    }
}

/// A path socket: READY=1, then watchdog pings at half the period, then STOPPING=1 on
/// SIGTERM, and the agent exits cleanly.
#[test]
fn the_agent_notifies_ready_pings_the_watchdog_and_says_stopping() {
    let fleet = Fleet::new();
    let path = fleet.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    // 600 ms: the agent pings every 300 ms.
    let member = fleet.spawn_with(
        fleet::MEMBER,
        "",
        &launch(path.clone().into_os_string(), 600_000),
    );

    let first = receive(&socket, "READY=1", STARTUP);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first notification is readiness, got {first:?}; log:\n{}",
        member.log()
    );

    // Pings keep coming while the agent runs.
    for n in 0..3 {
        let message = receive(&socket, "WATCHDOG=1", Duration::from_secs(5));
        assert_eq!(message, "WATCHDOG=1", "ping #{n}");
    }

    let status = member
        .terminate(Duration::from_secs(2))
        .expect("the agent stops within 2 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    // Pings sent before the signal may still be queued; STOPPING=1 follows them.
    let stopping = (0..20)
        .map(|_| receive(&socket, "STOPPING=1", Duration::from_secs(2)))
        .find(|m| m != "WATCHDOG=1")
        .expect("a notification other than pings");
    assert!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "got {stopping:?}"
    );
}

/// An abstract socket name (`@…`, what systemd itself passes) works as well; without
/// WATCHDOG_USEC there are no pings.
#[test]
fn an_abstract_notify_socket_gets_readiness_and_no_pings_without_a_watchdog() {
    use std::os::linux::net::SocketAddrExt as _;
    let fleet = Fleet::new();
    let name = format!("nexus-e2e-notify-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("abstract address");
    let socket = UnixDatagram::bind_addr(&address).expect("bind the abstract socket");
    let member = fleet.spawn_with(
        fleet::MEMBER,
        "",
        &Launch {
            env: vec![("NOTIFY_SOCKET".into(), format!("@{name}").into())],
            ..Launch::default()
        },
    );
    let first = receive(&socket, "READY=1", STARTUP);
    assert!(first.lines().any(|l| l == "READY=1"), "got {first:?}");

    let status = member
        .terminate(Duration::from_secs(2))
        .expect("the agent stops within 2 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    let next = receive(&socket, "STOPPING=1", Duration::from_secs(2));
    assert!(
        next.lines().any(|l| l == "STOPPING=1"),
        "without WATCHDOG_USEC the next notification is STOPPING=1, got {next:?}"
    );
}
