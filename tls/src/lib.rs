//! TLS client settings: one crypto provider, and the `rustls::ClientConfig` of a connection
//! built from its `[….tls]` section (the NATS links' `[uplink.tls]` / `[local.tls]`, the IoT
//! bridge's `[iot.tls]`).
//!
//! This crate owns reading the CA bundle, the client certificate and key (once, at set-up,
//! with errors that name the config key and the file), the verifier that checks
//! `server_name` instead of the host connected to, and the record of why a server's
//! certificate was refused. It must not know which client uses the config: no NATS or MQTT
//! client, no async runtime, no wire format (`tests/tests/layering.rs` checks its
//! dependencies). What is NATS-specific about TLS (URL schemes, the warning for links in
//! clear, the probe of a server that offers no TLS) is `nexus_federation::tls`'.
//!
//! Why the agent builds the `ClientConfig` itself instead of handing async-nats the paths
//! (`add_root_certificates`, `add_client_certificate`):
//! - async-nats reads those files lazily, on every connect attempt, inside its retry loop: a
//!   missing CA file or a key that does not match its certificate would become an endless
//!   "cannot connect" instead of a refusal at start naming the file and its config key;
//! - async-nats checks the server's certificate against the URL's host, always. An agent that
//!   reaches its hub by IP address (`tls://10.1.2.3:4222`) but whose certificate names
//!   `nats.internal` needs `server_name`: here a verifier that wraps webpki's own (chain,
//!   validity, EKU, signatures — all unchanged) checks that name instead of the URL's host;
//! - async-nats reports a failed connect attempt to its event callback by kind only
//!   (`IO error`), losing why: the same wrapper records why webpki refused the server's
//!   certificate ([`CertFailures`]), and the link adds it to the error it logs and shows.
//!
//! The files are read once, when the link is set up: a rotated certificate or key takes
//! effect at the agent's next start.
//!
//! Crypto provider (see docs/pitfalls.md, "rustls crypto provider"): exactly one, ring, in the
//! whole binary. [`install_crypto_provider`] makes it the process default at start; the
//! configs built here name it explicitly as well, so they never depend on that call.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nexus_config::TlsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why the TLS settings of a link cannot be used. Every variant names the config key
/// (`uplink.tls.ca_file`) and, where there is one, the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or unreadable.
    #[error("{key} = {}: cannot read it: {source}", path.display())]
    Read {
        /// The config key, e.g. `uplink.tls.ca_file`.
        key: String,
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not PEM, or holds nothing of what it should (no certificate, no key), or
    /// a certificate in it is unusable.
    #[error("{key} = {}: {problem}", path.display())]
    BadPem {
        /// The config key.
        key: String,
        /// The configured path.
        path: PathBuf,
        /// What is wrong, for the operator.
        problem: String,
    },
    /// The client key does not belong to the client certificate (or is of a kind rustls
    /// cannot sign with).
    #[error(
        "{key} = {} does not fit {cert_key} = {}: {problem}",
        path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        /// The key's config key (`uplink.tls.key_file`).
        key: String,
        /// The key file.
        path: PathBuf,
        /// The certificate's config key (`uplink.tls.cert_file`).
        cert_key: String,
        /// The certificate file.
        cert_path: PathBuf,
        /// rustls' reason.
        problem: String,
    },
    /// No `ca_file`, and the system has no CA certificates to check the server with.
    #[error(
        "{key} is not set and no system CA certificates were found{problem}; set {key} to the \
         PEM bundle of the CA that signs the server's certificate"
    )]
    NoSystemRoots {
        /// The config key (`uplink.tls.ca_file`).
        key: String,
        /// What loading the system store reported, if anything (starts with `: `).
        problem: String,
    },
    /// `server_name` is neither a DNS name nor an IP address.
    #[error("{key} = {name:?} is not a valid DNS name or IP address")]
    ServerName {
        /// The config key (`uplink.tls.server_name`).
        key: String,
        /// The configured name.
        name: String,
    },
    /// rustls refused the assembled settings (should not happen with the ring provider).
    #[error("rustls refused the settings: {problem}")]
    Setup {
        /// rustls' reason.
        problem: String,
    },
}

/// Makes ring the process-wide rustls crypto provider. Call once at the start of `main`,
/// before any TLS is set up; a second call (or a provider installed by someone else) is
/// harmless and ignored.
///
/// Why: rustls panics at the first TLS connect when it cannot pick a provider (two linked,
/// none installed). The binary links ring only (check with
/// `cargo tree -p nexus-agent -e features -i aws-lc-rs`, which must find nothing).
pub fn install_crypto_provider() {
    // Err means a provider is installed already: the one we want, or one chosen on purpose.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider the configs built here use: the process default if one is installed, ring
/// otherwise (never a panic).
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The TLS server side of a listener (the fleet page, `[page]`): the certificate chain of
/// `cert_file` and the key of `key_file`, HTTP/1.1 only. `section` names the config
/// section in errors (`page`).
pub fn server_config(
    section: &str,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&format!("{section}.cert_file"), cert_file)?;
    let key = load_key(&format!("{section}.key_file"), key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup {
            problem: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad_pem(
                &format!("{section}.key_file"),
                key_file,
                format!("does not go with {}: {e}", cert_file.display()),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS client side of one connection: the config to hand its client (async-nats,
/// rumqttc), and where its certificate verifier records why it refused a server.
#[derive(Debug)]
pub struct LinkTls {
    /// For `ConnectOptions::tls_client_config` (NATS), `TlsConfiguration::Rustls` (MQTT).
    pub config: ClientConfig,
    /// The last refusal of a server certificate, until taken.
    pub failures: CertFailures,
}

/// Why the server's certificate was last refused, kept until someone takes it (the link,
/// when it reports the failed attempt). Cloning shares the slot.
#[derive(Debug, Clone, Default)]
pub struct CertFailures(Arc<Mutex<Option<String>>>);

impl CertFailures {
    fn record(&self, why: String) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(why);
        }
    }

    /// The last refusal since the previous call, if any.
    pub fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The TLS client side of the `role` connection (`uplink`, `local` or `iot`: the config
/// section its errors name) with settings `tls`: the CAs
/// of `ca_file` (the system's when unset), the client certificate for mutual TLS when
/// configured, and a check of `server_name` instead of the URL's host when set.
///
/// Reads the files now (they are small; this runs once per link, at start).
pub fn client_config(role: &str, tls: &TlsConfig) -> Result<LinkTls, TlsError> {
    let key = |name: &str| format!("{role}.tls.{name}");
    let provider = provider();
    let roots = Arc::new(match &tls.ca_file {
        Some(path) => load_roots(&key("ca_file"), path)?,
        None => system_roots(&key("ca_file"))?,
    });
    let setup_error = |problem: String| TlsError::Setup { problem };
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| setup_error(e.to_string()))?;
    let expected = match &tls.server_name {
        None => None,
        Some(name) => Some(
            ServerName::try_from(name.as_str())
                .map_err(|_| TlsError::ServerName {
                    key: key("server_name"),
                    name: name.clone(),
                })?
                .to_owned(),
        ),
    };
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| setup_error(e.to_string()))?;
    let failures = CertFailures::default();
    // "dangerous" is rustls' name for any custom verifier; this one is webpki's, unchanged
    // but for the name it checks and the failure it records.
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordingVerifier {
            webpki,
            expected,
            failures: failures.clone(),
        }));
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let cert_key = key("cert_file");
            let chain = load_certs(&cert_key, &client.cert_file)?;
            let private = load_key(&key("key_file"), &client.key_file)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsError::KeyMismatch {
                    key: key("key_file"),
                    path: client.key_file.clone(),
                    cert_key,
                    cert_path: client.cert_file.clone(),
                    problem: e.to_string(),
                })?
        }
    };
    Ok(LinkTls { config, failures })
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.to_owned(),
        path: path.to_owned(),
        source,
    })
}

fn bad_pem(key: &str, path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::BadPem {
        key: key.to_owned(),
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// Every `CERTIFICATE` block of a PEM file, at least one.
fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(key, path, format!("not a valid PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(bad_pem(
            key,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// The CAs of a PEM bundle; every certificate in it must be usable as a trust anchor.
fn load_roots(key: &str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in load_certs(key, path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            bad_pem(
                key,
                path,
                format!(
                    "certificate #{} is not a usable CA certificate: {e}",
                    index + 1
                ),
            )
        })?;
    }
    Ok(roots)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file. The file's bytes are wiped
/// from memory after parsing.
fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = zeroize::Zeroizing::new(read(key, path)?);
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => bad_pem(
            key,
            path,
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY)",
        ),
        e => bad_pem(key, path, format!("not a valid PEM file: {e}")),
    })
}

/// The system's CA certificates (the same store async-nats would use).
fn system_roots(key: &str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let problem = found
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(TlsError::NoSystemRoots {
            key: key.to_owned(),
            problem: if problem.is_empty() {
                String::new()
            } else {
                format!(": {problem}")
            },
        });
    }
    Ok(roots)
}

/// webpki's verifier, checking `expected` (when set) instead of the name the client
/// connected to, and recording why it refused a certificate.
///
/// Everything else is webpki's: the chain up to the configured roots, validity dates, key
/// usage and EKU (serverAuth), handshake signatures.
#[derive(Debug)]
struct RecordingVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    expected: Option<ServerName<'static>>,
    failures: CertFailures,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        connected_to: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = self.expected.as_ref().unwrap_or(connected_to);
        let verdict =
            self.webpki
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now);
        if let Err(error) = &verdict {
            self.failures.record(format!(
                "the server's certificate was refused for {}: {error}",
                name.to_str()
            ));
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}
