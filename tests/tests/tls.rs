//! TLS links against a real nats-server: mutual TLS, refusals, and the `server_name` override.
//!
//! The certificates are made here with rcgen (a CA, a server certificate signed by it, a client
//! certificate signed by it), written to a temp dir and given to nats-server's `tls { }` block
//! and to [`Link::connect`] through `LinkConfig.tls`, exactly as an operator's files would be.
//! Refusals are asserted on the link's observable state (an error recorded, never connected),
//! waited for with deadlines, never slept for.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nexus_config::{ClientCert, LinkConfig, TlsConfig};
use nexus_e2e::{agent_bin, collect_until, fleet, wait_until, Fleet, NatsServer};
use nexus_federation::link::LinkError;
use nexus_federation::tls::TlsError;
use nexus_federation::Link;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Connects, handshakes and round trips on a loaded 2-core CI box.
const DEADLINE: Duration = Duration::from_secs(15);

/// A certificate authority that signs the test's certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses, as subjectAltNames) with
    /// `usage` as its only extended key usage: `(certificate PEM, key PEM)`.
    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().map_or("client", |n| n));
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// The PEM files of one test, in a temp dir that lives as long as this.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: Ca::new("nexus-e2e test CA"),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    }

    fn ca_file(&self) -> PathBuf {
        self.write("ca.pem", &self.ca.pem)
    }

    /// A server certificate for `names`, signed by the CA: `(cert_file, key_file)`.
    fn server_cert(&self, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.ca.leaf(names, ExtendedKeyUsagePurpose::ServerAuth);
        (
            self.write("server.pem", &cert),
            self.write("server-key.pem", &key),
        )
    }

    /// A client certificate signed by the CA.
    fn client_cert(&self) -> ClientCert {
        let (cert, key) = self
            .ca
            .leaf(&["member-1"], ExtendedKeyUsagePurpose::ClientAuth);
        ClientCert {
            cert_file: self.write("client.pem", &cert),
            key_file: self.write("client-key.pem", &key),
        }
    }

    /// A nats-server (no JetStream: these tests need core NATS only) that requires TLS with
    /// the given server certificate and, under `verify: true`, a client certificate signed
    /// by the CA.
    fn server(&self, names: &[&str]) -> NatsServer {
        let (cert_file, key_file) = self.server_cert(names);
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        NatsServer::builder()
            .jetstream(false)
            .extra(&format!(
                "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n  timeout: 2\n}}",
                q(&cert_file),
                q(&key_file),
                q(&self.ca_file()),
            ))
            .start()
    }
}

fn link_config(url: String, tls: Option<TlsConfig>) -> LinkConfig {
    LinkConfig {
        url,
        ping_interval: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        reconnect_max_delay: Duration::from_millis(250),
        jetstream_domain: None,
        inbox_prefix: None,
        tls,
    }
}

async fn connect(config: &LinkConfig) -> Link {
    nexus_federation::tls::install_crypto_provider();
    Link::connect("uplink", config, "nexus-e2e-tls")
        .await
        .expect("the link is set up (connecting happens in the background)")
}

/// Waits until the link has recorded a connection error, and checks it never connected
/// meanwhile (a watcher sees every state the link publishes). Returns the error.
async fn refused(link: &Link, what: &str) -> String {
    let ever_connected = Arc::new(AtomicBool::new(link.state().connected));
    let mut states = link.watch();
    let flag = Arc::clone(&ever_connected);
    let watcher = tokio::spawn(async move {
        while states.changed().await.is_ok() {
            if states.borrow_and_update().connected {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });
    let error = wait_until(what, DEADLINE, async || link.state().last_error).await;
    watcher.abort();
    assert!(
        !ever_connected.load(Ordering::SeqCst) && !link.state().connected,
        "{what}: the link connected ({:?})",
        link.state()
    );
    error
}

/// A link with the CA and a client certificate connects under mutual TLS, and carries a
/// publish to a subscriber over it.
#[tokio::test]
async fn a_link_with_the_ca_and_a_client_certificate_connects_under_mutual_tls() {
    let pki = Pki::new();
    let server = pki.server(&["127.0.0.1", "localhost"]);
    let config = link_config(
        server.tls_url(),
        Some(TlsConfig {
            ca_file: Some(pki.ca_file()),
            client_cert: Some(pki.client_cert()),
            server_name: None,
        }),
    );
    let link = connect(&config).await;
    wait_until("the TLS link is connected", DEADLINE, async || {
        let state = link.state();
        if state.connected {
            Ok(())
        } else {
            Err(format!("{state:?}\n{}", server.log_tail(10)))
        }
    })
    .await;
    assert!(link.client().server_info().tls_required);

    let mut sub = link.client().subscribe("e2e.tls").await.expect("subscribe");
    link.client()
        .publish("e2e.tls", "over TLS".into())
        .await
        .expect("publish");
    link.client().flush().await.expect("flush");
    let got = collect_until("the message over TLS", &mut sub, DEADLINE, |m| {
        !m.is_empty()
    })
    .await;
    assert_eq!(&got[0].payload[..], b"over TLS");
}

/// A `nats://` URL with `[uplink.tls]` settings still requires TLS (and gets it).
#[tokio::test]
async fn tls_settings_upgrade_a_nats_url() {
    let pki = Pki::new();
    let server = pki.server(&["127.0.0.1"]);
    let config = link_config(
        server.url(),
        Some(TlsConfig {
            ca_file: Some(pki.ca_file()),
            client_cert: Some(pki.client_cert()),
            server_name: None,
        }),
    );
    let link = connect(&config).await;
    wait_until("the link is connected", DEADLINE, async || {
        link.state().connected
    })
    .await;
}

/// Under `verify: true`, a link without a client certificate is refused.
#[tokio::test]
async fn a_link_without_a_client_certificate_is_refused_under_mutual_tls() {
    let pki = Pki::new();
    let server = pki.server(&["127.0.0.1"]);
    let config = link_config(
        server.tls_url(),
        Some(TlsConfig {
            ca_file: Some(pki.ca_file()),
            client_cert: None,
            server_name: None,
        }),
    );
    let link = connect(&config).await;
    // async-nats reports this one by kind only ("IO error"): the server's alert is in its
    // debug log. The server says why.
    refused(&link, "the link records that it cannot connect").await;
    wait_until(
        "nats-server logs the refused handshake",
        DEADLINE,
        async || {
            let log = server.log_tail(50);
            if log.contains("didn't provide a certificate") {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
}

/// A server whose certificate is signed by a CA other than the configured one is refused.
#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let server = pki.server(&["127.0.0.1"]);
    let other = Ca::new("some other CA");
    let other_ca_file = pki.write("other-ca.pem", &other.pem);
    let config = link_config(
        server.tls_url(),
        Some(TlsConfig {
            ca_file: Some(other_ca_file),
            client_cert: Some(pki.client_cert()),
            server_name: None,
        }),
    );
    let link = connect(&config).await;
    let error = refused(&link, "the link refuses the server's certificate").await;
    assert!(
        error.contains("the server's certificate was refused") && error.contains("UnknownIssuer"),
        "{error}"
    );
}

/// The server's certificate names only `nats.internal`; the URL is an IP address. With
/// `server_name = "nats.internal"` the link connects; without it, it refuses the certificate.
#[tokio::test]
async fn server_name_checks_the_certificate_for_that_name_instead_of_the_url_host() {
    let pki = Pki::new();
    let server = pki.server(&["nats.internal"]);
    let tls = |server_name: Option<&str>| TlsConfig {
        ca_file: Some(pki.ca_file()),
        client_cert: Some(pki.client_cert()),
        server_name: server_name.map(str::to_owned),
    };

    let without = connect(&link_config(server.tls_url(), Some(tls(None)))).await;
    let error = refused(
        &without,
        "the link without server_name refuses the certificate",
    )
    .await;
    assert!(
        error.contains("NotValidForName") || error.contains("not valid for name"),
        "{error}"
    );

    let with = connect(&link_config(
        server.tls_url(),
        Some(tls(Some("nats.internal"))),
    ))
    .await;
    wait_until(
        "the link with server_name is connected",
        DEADLINE,
        async || with.state().connected,
    )
    .await;

    let wrong = connect(&link_config(
        server.tls_url(),
        Some(tls(Some("other.internal"))),
    ))
    .await;
    let error = refused(&wrong, "a server_name the certificate lacks is refused").await;
    assert!(
        error.contains("not valid for name \"other.internal\""),
        "{error}"
    );
}

/// A link with TLS settings refuses a server that does not speak TLS (`require_tls`).
#[tokio::test]
async fn a_tls_link_refuses_a_plain_server() {
    let pki = Pki::new();
    let server = NatsServer::builder().jetstream(false).start();
    let config = link_config(
        server.url(),
        Some(TlsConfig {
            ca_file: Some(pki.ca_file()),
            client_cert: None,
            server_name: None,
        }),
    );
    let link = connect(&config).await;
    refused(&link, "the link refuses to talk in clear").await;
}

/// Which servers of a URL list offer no TLS, read from their INFO line: the plain one is
/// named; a TLS one and a port nobody listens on are not (their errors say what is wrong).
#[tokio::test]
async fn servers_without_tls_are_told_apart_from_tls_and_dead_ones() {
    let pki = Pki::new();
    let plain = NatsServer::builder().jetstream(false).start();
    let secure = pki.server(&["localhost", "127.0.0.1"]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let urls = format!(
        "{},{},nats://127.0.0.1:{dead}",
        plain.url(),
        secure.tls_url()
    );
    let found = nexus_federation::tls::servers_without_tls(&urls, DEADLINE).await;
    assert_eq!(found, [format!("127.0.0.1:{}", plain.port())], "{urls}");
}

/// An agent whose config has an empty `[local.tls]` (TLS required) and a plain server: its
/// log says which server offers no TLS and what to change, not only "IO error"; `check`
/// warns about the empty table before it runs.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_requiring_tls_of_a_plain_server_says_so() {
    let fleet = Fleet::new();
    let root = fleet.spawn(fleet::ROOT, "[local.tls]\n");
    let check = std::process::Command::new(agent_bin())
        .args(["check", "-c"])
        .arg(root.config_path())
        .env_remove("RUST_LOG")
        .output()
        .expect("check runs");
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{said}");
    assert!(said.contains("warning: local.tls:"), "{said}");
    let port = fleet.root_nats.port();
    wait_until(
        "the agent names the server without TLS",
        DEADLINE,
        async || {
            let log = root.log();
            log.contains("This server does not offer TLS")
                && log.contains(&format!("127.0.0.1:{port}"))
        },
    )
    .await;
}

fn tls_error(result: Result<Link, LinkError>) -> TlsError {
    match result {
        Err(LinkError::Tls { source, .. }) => *source,
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("expected a TLS error, the link was set up"),
    }
}

/// Unusable files are refused when the link is set up, with the config key and the file
/// named: missing, not PEM, a key that does not fit the certificate.
#[tokio::test]
async fn unusable_tls_files_are_refused_at_setup_naming_key_and_file() {
    nexus_federation::tls::install_crypto_provider();
    let pki = Pki::new();
    // Nothing listens here: set-up errors come before any connect attempt.
    let url = "tls://127.0.0.1:9".to_owned();
    let setup = async |tls: TlsConfig| {
        tls_error(Link::connect("uplink", &link_config(url.clone(), Some(tls)), "e2e").await)
    };

    let missing = pki.dir.path().join("missing-ca.pem");
    let error = setup(TlsConfig {
        ca_file: Some(missing.clone()),
        ..TlsConfig::default()
    })
    .await;
    assert!(
        matches!(&error, TlsError::Read { key, path, .. } if key == "uplink.tls.ca_file" && *path == missing),
        "{error:?}"
    );
    assert!(error.to_string().contains("uplink.tls.ca_file"), "{error}");
    assert!(error.to_string().contains("missing-ca.pem"), "{error}");

    let garbage = pki.write("garbage.pem", "not a certificate\n");
    let error = setup(TlsConfig {
        ca_file: Some(garbage.clone()),
        ..TlsConfig::default()
    })
    .await;
    assert!(
        matches!(&error, TlsError::BadPem { key, path, .. } if key == "uplink.tls.ca_file" && *path == garbage),
        "{error:?}"
    );

    let client = pki.client_cert();
    let (_, other_key) = pki.ca.leaf(&["x"], ExtendedKeyUsagePurpose::ClientAuth);
    let other_key_file = pki.write("other-key.pem", &other_key);
    let error = setup(TlsConfig {
        ca_file: Some(pki.ca_file()),
        client_cert: Some(ClientCert {
            cert_file: client.cert_file.clone(),
            key_file: other_key_file.clone(),
        }),
        server_name: None,
    })
    .await;
    assert!(
        matches!(&error, TlsError::KeyMismatch { key, path, cert_key, .. }
            if key == "uplink.tls.key_file" && *path == other_key_file && cert_key == "uplink.tls.cert_file"),
        "{error:?}"
    );

    // A certificate where the key should be.
    let error = setup(TlsConfig {
        ca_file: Some(pki.ca_file()),
        client_cert: Some(ClientCert {
            cert_file: client.cert_file.clone(),
            key_file: client.cert_file.clone(),
        }),
        server_name: None,
    })
    .await;
    assert!(
        matches!(&error, TlsError::BadPem { key, .. } if key == "uplink.tls.key_file"),
        "{error:?}"
    );
}
