//! Tests of the test-support library itself: the servers it starts are real, restart keeps
//! what it promises, and nothing outlives its handle.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use nexus_e2e::{
    assert_eventually, collect_until, mosquitto_client_bin, pid_exists, wait_until, AgentProcess,
    Mosquitto, NatsServer,
};

const DEADLINE: Duration = Duration::from_secs(10);

/// A started server takes a client's subscription and delivers a publish to it.
#[tokio::test]
async fn a_nats_server_carries_a_publish_to_a_subscriber() {
    let server = NatsServer::start();
    assert!(server.url().starts_with("nats://127.0.0.1:"));
    assert!(server.is_running());

    let client = server.client().await;
    let mut sub = client.subscribe("e2e.hello").await.expect("subscribe");
    client
        .publish("e2e.hello", "hi".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    let got = collect_until("one message on e2e.hello", &mut sub, DEADLINE, |m| {
        !m.is_empty()
    })
    .await;
    assert_eq!(&got[0].payload[..], b"hi");
}

/// Text given to `start_with_config` reaches the server's config file and takes effect.
#[tokio::test]
async fn extra_config_text_takes_effect() {
    let server = NatsServer::start_with_config("max_payload: 4096");
    let client = server.client().await;
    assert_eq!(client.server_info().max_payload, 4096);
}

/// The builder's server name and JetStream options land in the config the server runs.
#[tokio::test]
async fn builder_options_take_effect() {
    let server = NatsServer::builder()
        .server_name("e2e-named")
        .sync_always()
        .jetstream_option("max_memory_store: 64MB")
        .start();
    let client = server.client().await;
    assert_eq!(client.server_info().server_name, "e2e-named");
    let config = std::fs::read_to_string(server.config_path()).expect("config");
    assert!(config.contains("sync_interval: always"), "{config}");
    assert!(server.log_tail(200).contains("e2e-named"));
}

/// After a graceful restart the server is on the same port and JetStream still has the
/// stream and the message acked before the restart.
#[tokio::test]
async fn a_restarted_nats_server_keeps_its_port_and_jetstream_data() {
    let server = NatsServer::start();
    let port = server.port();
    let old_pid = server.pid();
    publish_one_to_a_stream(&server).await;

    server.restart();

    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), old_pid);
    assert_stream_has_one_message(&server).await;
}

/// A SIGKILLed server (with `sync_interval: always`) comes back, after a stop, on the same
/// port with its acked data; while stopped it is not running and refuses connections.
#[tokio::test]
async fn a_killed_nats_server_restarts_with_its_acked_data() {
    let server = NatsServer::builder().sync_always().start();
    publish_one_to_a_stream(&server).await;

    server.kill();
    assert!(!server.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_err());

    server.restart();
    assert_stream_has_one_message(&server).await;
}

/// Dropping the handle kills the server and reaps it: the pid is gone.
#[test]
fn dropping_a_nats_server_leaves_no_process() {
    let server = NatsServer::start();
    let pid = server.pid().expect("running server has a pid");
    let dir = server.dir().to_path_buf();
    assert!(pid_exists(pid));

    drop(server);

    assert!(
        !pid_exists(pid),
        "nats-server pid {pid} still exists after drop"
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists(), "temp dir {} not removed", dir.display());
}

/// A retained message published with mosquitto_pub is received by mosquitto_sub.
#[test]
fn mosquitto_carries_a_message_between_its_own_clients() {
    let broker = Mosquitto::start();
    assert!(broker.url().starts_with("mqtt://127.0.0.1:"));

    // Retained, so the subscriber gets it whenever it subscribes: no race, no sleep.
    mosquitto_pub(&broker, "e2e/hello", "hi");
    assert_eq!(mosquitto_sub_one(&broker, "e2e/hello"), "hi");
}

/// A gracefully restarted broker is on the same port and still has its persisted state.
#[test]
fn a_restarted_mosquitto_keeps_its_port_and_retained_messages() {
    let broker = Mosquitto::start();
    let port = broker.port();
    mosquitto_pub(&broker, "e2e/kept", "still here");

    broker.restart();

    assert_eq!(broker.port(), port);
    assert!(broker.is_running());
    assert_eq!(mosquitto_sub_one(&broker, "e2e/kept"), "still here");
}

/// Dropping the handle kills the broker and reaps it.
#[test]
fn dropping_mosquitto_leaves_no_process() {
    let broker = Mosquitto::start();
    let pid = broker.pid().expect("running broker has a pid");
    assert!(pid_exists(pid));

    drop(broker);

    assert!(
        !pid_exists(pid),
        "mosquitto pid {pid} still exists after drop"
    );
}

/// `wait_until` returns the value the check produced once it is ready.
#[tokio::test]
async fn wait_until_returns_the_first_ready_value() {
    let mut calls = 0;
    let value = wait_until("the third call", DEADLINE, async || {
        calls += 1;
        (calls == 3).then_some(calls * 10)
    })
    .await;
    assert_eq!(value, 30);
    assert_eventually!(calls == 3);
}

/// `wait_until` gives up at the deadline and says what it waited for and what it last saw.
#[tokio::test]
#[should_panic(expected = "waiting until the impossible; last seen: \"not yet\"")]
async fn wait_until_panics_with_what_it_waited_for() {
    wait_until("the impossible", Duration::from_millis(100), async || {
        Err::<(), _>("not yet")
    })
    .await;
}

/// `collect_until` fails at the deadline listing the messages that did arrive.
#[tokio::test]
#[should_panic(expected = "e2e.seen: only this")]
async fn collect_until_panics_with_what_it_received() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut sub = client.subscribe("e2e.seen").await.expect("subscribe");
    client
        .publish("e2e.seen", "only this".into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    collect_until("two messages", &mut sub, Duration::from_millis(500), |m| {
        m.len() >= 2
    })
    .await;
}

/// The agent wrapper runs `PROGRAM run -c NAME.toml`, logs to NAME.log, stops with SIGTERM,
/// restarts appending to the log, and leaves no process behind when dropped.
#[tokio::test]
async fn an_agent_process_runs_stops_restarts_and_is_reaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stand_in = dir.path().join("stand-in.sh");
    std::fs::write(
        &stand_in,
        "#!/bin/sh\n\
         trap 'echo got-term; exit 0' TERM\n\
         echo \"stand-in $* rust_log=${RUST_LOG:-unset}\"\n\
         while :; do sleep 0.05; done\n",
    )
    .expect("write stand-in");
    make_executable(&stand_in);

    let agent =
        AgentProcess::spawn_program(&stand_in, "member", "[node]\nid = \"m\"\n", dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("member.toml")).expect("config"),
        "[node]\nid = \"m\"\n"
    );
    let config = dir.path().join("member.toml");
    let expected = format!("stand-in run -c {} rust_log=unset", config.display());
    assert_eventually!(agent.log().contains(&expected));

    let status = agent
        .terminate(DEADLINE)
        .expect("stand-in exits on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!agent.is_running());
    assert!(agent.log().contains("got-term"));

    agent.restart();
    assert_eventually!(agent.log().matches("stand-in run").count() == 2);
    let pid = agent.pid().expect("restarted agent has a pid");
    agent.kill();
    assert!(!pid_exists(pid));

    agent.restart();
    let pid = agent.pid().expect("restarted agent has a pid");
    drop(agent);
    assert!(!pid_exists(pid), "agent pid {pid} still exists after drop");
}

async fn publish_one_to_a_stream(server: &NatsServer) {
    let js = jetstream::new(server.client().await);
    js.create_stream(jetstream::stream::Config {
        name: "E2E".to_owned(),
        subjects: vec!["e2e.stream.>".to_owned()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    js.publish("e2e.stream.one", "kept".into())
        .await
        .expect("publish")
        .await
        .expect("PubAck");
}

async fn assert_stream_has_one_message(server: &NatsServer) {
    let js = jetstream::new(server.client().await);
    let mut stream = js
        .get_stream("E2E")
        .await
        .expect("stream survives the restart");
    assert_eq!(stream.info().await.expect("stream info").state.messages, 1);
    let msg = stream.get_raw_message(1).await.expect("message 1");
    assert_eq!(&msg.payload[..], b"kept");
}

fn mosquitto_pub(broker: &Mosquitto, topic: &str, message: &str) {
    let out = Command::new(mosquitto_client_bin("mosquitto_pub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-q",
            "1",
            "-r",
        ])
        .args(["-t", topic, "-m", message])
        .output()
        .expect("run mosquitto_pub");
    assert!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One message on `topic`; mosquitto_sub's own `-W` bounds the wait.
fn mosquitto_sub_one(broker: &Mosquitto, topic: &str) -> String {
    let out = Command::new(mosquitto_client_bin("mosquitto_sub"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-q",
            "1",
        ])
        .args(["-t", topic, "-C", "1", "-W", "10"])
        .output()
        .expect("run mosquitto_sub");
    assert!(
        out.status.success(),
        "mosquitto_sub got nothing ({}): {}\nbroker log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        broker.log_tail(20)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A server that cannot start fails at once with its own complaint, not at the deadline.
#[test]
#[should_panic(expected = "nats-server exited during startup")]
fn a_nats_server_with_a_broken_config_fails_with_its_log() {
    NatsServer::start_with_config("this is { not valid");
}
