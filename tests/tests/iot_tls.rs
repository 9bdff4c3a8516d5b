//! The IoT bridge over `mqtts://`: rustls with the process' ring provider (rumqttc without
//! its aws-lc-rs default), a custom CA, against a real mosquitto TLS listener.

use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nexus_config::{IotConfig, MetricRule, MqttProtocol, PayloadFormat, SensorRule, TlsConfig};
use nexus_e2e::{mosquitto_client_bin, wait_until, Mosquitto};
use nexus_federation::Outbox;
use nexus_iot_bridge::{Bridge, Stats};
use nexus_policies::SecretKey;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

/// A CA and a server certificate for 127.0.0.1, written into `dir`: (ca, cert, key) paths.
fn pki(dir: &Path) -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "iot test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf params");
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf cert");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path.display().to_string()
    };
    (
        write("ca.pem", &ca_cert.pem()),
        write("server.pem", &leaf_cert.pem()),
        write("server-key.pem", &leaf_key.serialize_pem()),
    )
}

fn bridge_config(port: u16, ca_file: &str, protocol: MqttProtocol) -> IotConfig {
    IotConfig {
        url: format!("mqtts://127.0.0.1:{port}"),
        host: "127.0.0.1".into(),
        port,
        tls: Some(TlsConfig {
            ca_file: Some(ca_file.into()),
            client_cert: None,
            server_name: None,
        }),
        client_id: "nexus-tls-test".into(),
        username: None,
        password: None,
        protocol,
        session_expiry: Duration::from_secs(3600),
        qos: 1,
        keep_alive: Duration::from_secs(30),
        reconnect_max_delay: Duration::from_millis(500),
        max_payload: 65536,
        queue: 64,
        sensors: vec![SensorRule {
            topic: "sensors/{sensor_id}/{metric}".into(),
            payload: PayloadFormat::Number,
            metrics: vec![MetricRule {
                name: "temperature".into(),
                pointer: "/temperature".into(),
                unit: "°C".into(),
            }],
            time: None,
        }],
    }
}

/// Over mqtts:// with the broker's CA in `ca_file`, the bridge connects (no crypto-provider
/// panic: one provider, ring, in the process), subscribes, and stores a reading published
/// on the broker's plain listener as a signed event in the outbox.
#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_reads_sensors_over_mqtts_with_a_custom_ca() {
    reads_over_mqtts(MqttProtocol::V311).await;
}

/// The same with MQTT 5: the same rustls configuration under rumqttc's v5 client.
#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_reads_sensors_over_mqtts_with_a_custom_ca_over_mqtt5() {
    reads_over_mqtts(MqttProtocol::V5).await;
}

async fn reads_over_mqtts(protocol: MqttProtocol) {
    nexus_federation::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = pki(dir.path());
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let broker = Mosquitto::start_with_config(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    ));
    let outbox = Outbox::in_memory(1 << 20);
    let bridge = Bridge::new(
        bridge_config(tls_port, &ca, protocol),
        "edge-tls",
        "salon-001",
        SecretKey::from_seed(&[5; 32]).expect("key"),
        outbox.clone(),
        None,
    )
    .expect("bridge");
    let stats: std::sync::Arc<Stats> = bridge.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(bridge.run(shutdown.clone()));
    wait_until("the bridge is connected over TLS", DEADLINE, async || {
        stats.connected.load(Ordering::Relaxed)
    })
    .await;
    // The subscription follows the ConnAck: publish until one reading got through.
    wait_until("a reading is stored", DEADLINE, async || {
        let out = std::process::Command::new(mosquitto_client_bin("mosquitto_pub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port().to_string(),
                "-q",
                "1",
            ])
            .args(["-t", "sensors/tls-1/temperature", "-m", "19.5"])
            .output()
            .expect("mosquitto_pub");
        assert!(out.status.success());
        tokio::time::sleep(Duration::from_millis(200)).await;
        stats.events.load(Ordering::Relaxed) > 0
    })
    .await;
    let batch = outbox.next_batch(10).await;
    assert_eq!(batch[0].1.subject, "nexus.salon-001.iot.sensor_data");
    shutdown.cancel();
    task.await
        .expect("bridge stops")
        .expect("bridge stops cleanly");
}
