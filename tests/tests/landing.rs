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

mod landed_record {
    //! The root's record of landed sequence numbers (`nexus_federation::landed`) on a real
    //! nats-server, shared by two root instances as two `Landed` handles on one bucket.

    use std::time::Duration;

    use nexus_e2e::{wait_until, NatsServer};
    use nexus_federation::landed::{Landed, LandedKey, LANDED_SEQ_BUCKET};
    use nexus_federation::Link;

    const WINDOW: Duration = Duration::from_millis(400);

    async fn link(nats: &NatsServer) -> Link {
        nexus_federation::tls::install_crypto_provider();
        let config = nexus_config::LinkConfig {
            url: nats.url(),
            ping_interval: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            reconnect_max_delay: Duration::from_millis(250),
            jetstream_domain: None,
            inbox_prefix: None,
            tls: None,
        };
        Link::connect("local", &config, "e2e-landed")
            .await
            .expect("link")
    }

    fn seq(record: &str, seq: u64) -> LandedKey {
        LandedKey::Seq {
            record: record.to_owned(),
            seq,
        }
    }

    async fn seen(landed: &Landed, keys: &[LandedKey]) -> Vec<bool> {
        landed.seen(&keys.iter().collect::<Vec<_>>()).await
    }

    /// Instance A lands 1..=100 (but not 50) of one source and 1..=3 of another; after its
    /// flush, instance B, which never saw them, recognizes every one and nothing else. Both
    /// then land different numbers of the same record at once: the bucket ends up with the
    /// union (compare-and-set, merged on conflict), and a record that was never flushed
    /// counts as not landed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_share_one_record_of_what_landed() {
        let nats = NatsServer::start();
        let link = link(&nats).await;
        let ttl = Duration::from_secs(3600);
        let a = wait_until(
            "instance A opens the buckets",
            Duration::from_secs(20),
            async || Landed::open(&link, ttl, WINDOW, 1).await.ok(),
        )
        .await;
        let b = Landed::open(&link, ttl, WINDOW, 1)
            .await
            .expect("instance B");
        let r1 = "edge-01.0190f5a0-0000-7000-8000-000000000001";
        let r2 = "edge-02.0190f5a0-0000-7000-8000-000000000002";
        let landed: Vec<LandedKey> = (1..=100)
            .filter(|n| *n != 50)
            .map(|n| seq(r1, n))
            .chain((1..=3).map(|n| seq(r2, n)))
            .collect();
        assert_eq!(a.record(&landed.iter().collect::<Vec<_>>()).await, 0);
        assert!(
            seen(&b, &[seq(r1, 7)]).await == [false],
            "nothing is written before the flush"
        );
        assert_eq!(a.flush().await, 0, "every record is written");
        // B read r1 just now (a miss): it reads it again once a quarter window has passed.
        tokio::time::sleep(WINDOW / 4).await;
        let probe: Vec<LandedKey> = [1, 49, 50, 51, 100, 101]
            .iter()
            .map(|n| seq(r1, *n))
            .chain([seq(r2, 3), seq(r2, 4)])
            .collect();
        assert_eq!(
            seen(&b, &probe).await,
            [true, true, false, true, true, false, true, false]
        );

        // Both instances land numbers of r2 concurrently.
        let from_a: Vec<LandedKey> = (4..=10).map(|n| seq(r2, n)).collect();
        let from_b: Vec<LandedKey> = (11..=20).chain([50]).map(|n| seq(r2, n)).collect();
        a.record(&from_a.iter().collect::<Vec<_>>()).await;
        b.record(&from_b.iter().collect::<Vec<_>>()).await;
        let (fa, fb) = tokio::join!(a.flush(), b.flush());
        assert_eq!((fa, fb), (0, 0), "both flushes write (merging on conflict)");
        let js = link.jetstream();
        let bucket = js.get_key_value(LANDED_SEQ_BUCKET).await.expect("bucket");
        let stored = bucket.get(r2).await.expect("get").expect("record");
        assert_eq!(std::str::from_utf8(&stored).expect("utf-8"), "1-20,50");
        let stored = bucket.get(r1).await.expect("get").expect("record");
        assert_eq!(std::str::from_utf8(&stored).expect("utf-8"), "1-49,51-100");
    }
}
