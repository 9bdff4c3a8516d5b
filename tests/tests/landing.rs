//! Landing streams per domain at the root: every event lands in the journal
//! (`NEXUS_EVENTS`, the dedup point), and each domain stream keeps what its subjects select,
//! with its own retention — even where the domains' subjects overlap, which JetStream
//! refuses for streams that own subjects. Events are published with the real
//! `nexus-agent publish` from the member's config and travel member → hub → root.

use std::time::Duration;

use async_nats::jetstream;
use nexus_e2e::{agent_bin, fleet, wait_until, Fleet};

const DEADLINE: Duration = Duration::from_secs(30);

/// Messages a stream holds on `filter` (0 while it does not exist).
async fn count(js: &jetstream::Context, stream: &str, filter: &str) -> u64 {
    let Ok(stream) = js.get_stream(stream).await else {
        return 0;
    };
    let Ok(subjects) = stream.info_with_subjects(filter).await else {
        return 0;
    };
    use futures::StreamExt as _;
    subjects
        .filter_map(|s| async move { s.ok() })
        .fold(0, |sum, (_, n)| async move { sum + n as u64 })
        .await
}

async fn publish(fleet: &Fleet, config: &std::path::Path, event: &str, data: &str) -> String {
    let out = tokio::process::Command::new(agent_bin())
        .args(["publish", event, "--data", data, "-c"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("nexus-agent publish runs");
    assert!(
        out.status.success(),
        "publish {event} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fleet;
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn default_domains_split_core_and_iot_events_out_of_the_journal() {
    let fleet = Fleet::new();
    let _root = fleet.spawn(fleet::ROOT, "");
    let _hub = fleet.spawn(fleet::HUB, "");
    let member = fleet.spawn(fleet::MEMBER, "");
    let js = jetstream::new(
        async_nats::connect(fleet.root_nats.url())
            .await
            .expect("root nats"),
    );
    let heartbeats = format!("nexus._core.edge.health.{}", fleet::MEMBER);
    wait_until("member heartbeats reach NEXUS_CORE", DEADLINE, async || {
        count(&js, "NEXUS_CORE", &heartbeats).await > 0
    })
    .await;
    let reading = publish(
        &fleet,
        member.config_path(),
        "iot.sensor_data",
        r#"{"sensor_id": "t-1", "metric": "temperature", "value": 21.5, "unit": "°C", "timestamp_unix": 1763900000}"#,
    )
    .await;
    assert_eq!(reading.len(), 36, "prints the event id: {reading}");
    publish(
        &fleet,
        member.config_path(),
        "booking.created",
        r#"{"booking_id": "b-1"}"#,
    )
    .await;

    let iot = "nexus.salon-001.iot.sensor_data";
    let booking = "nexus.salon-001.booking.created";
    wait_until("the reading is in NEXUS_IOT", DEADLINE, async || {
        count(&js, "NEXUS_IOT", iot).await == 1
    })
    .await;
    wait_until("the booking is in the journal", DEADLINE, async || {
        count(&js, "NEXUS_EVENTS", booking).await == 1
    })
    .await;
    // Sourcing is asynchronous: wait until each domain has caught up with the journal (which
    // holds the booking by now), so that the zeros below mean "not selected", not "late".
    for domain in ["NEXUS_CORE", "NEXUS_IOT"] {
        wait_until(
            &format!("{domain} caught up with the journal"),
            DEADLINE,
            async || {
                let Ok(mut stream) = js.get_stream(domain).await else {
                    return false;
                };
                stream.info().await.is_ok_and(|info| {
                    !info.sources.is_empty() && info.sources.iter().all(|s| s.lag == 0)
                })
            },
        )
        .await;
    }
    // Each domain holds only what it selects; the journal holds everything.
    assert_eq!(count(&js, "NEXUS_IOT", &heartbeats).await, 0);
    assert_eq!(count(&js, "NEXUS_IOT", booking).await, 0);
    assert_eq!(count(&js, "NEXUS_CORE", iot).await, 0);
    assert_eq!(count(&js, "NEXUS_CORE", booking).await, 0);
    assert_eq!(count(&js, "NEXUS_EVENTS", iot).await, 1);
    assert!(count(&js, "NEXUS_EVENTS", &heartbeats).await > 0);
    // Retention per domain, as documented for the defaults.
    let days = |d: u64| Duration::from_secs(d * 86_400);
    for (name, max_age) in [
        ("NEXUS_EVENTS", days(30)),
        ("NEXUS_CORE", days(90)),
        ("NEXUS_IOT", days(30)),
    ] {
        let mut stream = js.get_stream(name).await.expect("stream exists");
        let info = stream.info().await.expect("info");
        assert_eq!(info.config.max_age, max_age, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_domains_replace_the_defaults_and_may_overlap() {
    let fleet = Fleet::new();
    let _root = fleet.spawn(
        fleet::ROOT,
        concat!(
            "[landing]\nmax_age = \"10d\"\n\n",
            "[[landing.domains]]\nname = \"NEXUS_BOOKING\"\nsubjects = [\"nexus.*.booking.>\"]\nmax_age = \"365d\"\n\n",
            "[[landing.domains]]\nname = \"NEXUS_TENANTS\"\nsubjects = [\"nexus.salon-001.>\"]\nmax_age = \"3d\"\nmax_bytes = 10000000\n",
        ),
    );
    let _hub = fleet.spawn(fleet::HUB, "");
    let member = fleet.spawn(fleet::MEMBER, "");
    let js = jetstream::new(
        async_nats::connect(fleet.root_nats.url())
            .await
            .expect("root nats"),
    );
    // Publishing needs the hub's ingress ready: the member's heartbeats landing say it is.
    let heartbeats = format!("nexus._core.edge.health.{}", fleet::MEMBER);
    wait_until("member heartbeats land", DEADLINE, async || {
        count(&js, "NEXUS_EVENTS", &heartbeats).await > 0
    })
    .await;
    let booking = "nexus.salon-001.booking.created";
    publish(
        &fleet,
        member.config_path(),
        "booking.created",
        r#"{"booking_id": "b-9"}"#,
    )
    .await;
    wait_until(
        "the booking is in both overlapping domains",
        DEADLINE,
        async || {
            count(&js, "NEXUS_BOOKING", booking).await == 1
                && count(&js, "NEXUS_TENANTS", booking).await == 1
        },
    )
    .await;
    assert!(
        js.get_stream("NEXUS_IOT").await.is_err(),
        "the defaults are replaced"
    );
    let mut journal = js.get_stream("NEXUS_EVENTS").await.expect("journal");
    assert_eq!(
        journal.info().await.expect("info").config.max_age,
        Duration::from_secs(10 * 86_400)
    );
    let mut tenants = js.get_stream("NEXUS_TENANTS").await.expect("domain");
    let config = tenants.info().await.expect("info").config.clone();
    assert_eq!(config.max_age, Duration::from_secs(3 * 86_400));
    assert_eq!(config.max_bytes, 10_000_000);
    assert!(config.subjects.is_empty(), "a domain owns no subjects");
}
