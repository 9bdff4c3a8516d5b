//! TLS on NATS links: the client settings of `nexus-tls`, and what is NATS-specific about
//! them — which URLs ask for TLS (`tls://`, `wss://`), the warning for links that travel in
//! clear, and the probe that tells why a link that requires TLS cannot get past a server's
//! handshake.

pub use nexus_tls::{client_config, install_crypto_provider, CertFailures, LinkTls, TlsError};

/// Whether any URL of a comma-separated list asks for TLS (`tls://`, `wss://`).
pub fn url_requires_tls(urls: &str) -> bool {
    urls.split(',').any(|url| {
        let url = url.trim();
        scheme(url).is_some_and(|s| s.eq_ignore_ascii_case("tls") || s.eq_ignore_ascii_case("wss"))
    })
}

/// The hosts of a comma-separated URL list that would be reached in clear, loopback hosts
/// left out. Without TLS settings (`tls_configured` false): `nats://` and `ws://` URLs, and
/// URLs without a scheme (async-nats treats them as `nats://`). With TLS settings, `nats://`
/// is upgraded to TLS, but async-nats never upgrades a `ws://` URL (only `wss://` is TLS).
pub fn plaintext_remote_hosts(urls: &str, tls_configured: bool) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .filter(|url| match scheme(url) {
            Some(s) if s.eq_ignore_ascii_case("ws") => true,
            Some(s) if s.eq_ignore_ascii_case("nats") => !tls_configured,
            Some(_) => false,
            None => !tls_configured,
        })
        .filter_map(url_host)
        .filter(|host| !is_loopback_host(host))
        .map(str::to_owned)
        .collect()
}

fn scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// The host of one URL: `nats://user:pw@[::1]:4222/x` → `::1`; `host:4222` → `host`.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split_once(']').map(|(host, _)| host)?
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    (!host.is_empty()).then_some(host)
}

/// The servers of `urls` (`nats://` or `tls://`) that answer in clear with an `INFO` that
/// offers no TLS (`tls_required` and `tls_available` both absent or false), as `host:port`.
/// A link that requires TLS never gets past such a server's handshake, and async-nats says
/// only "IO error": this tells why. A server that cannot be reached, or answers anything
/// else, is not listed (the connect error already says what is wrong).
pub async fn servers_without_tls(urls: &str, timeout: std::time::Duration) -> Vec<String> {
    let mut plain = Vec::new();
    for url in urls.split(',').map(str::trim) {
        if !matches!(scheme(url), Some(s) if s.eq_ignore_ascii_case("nats") || s.eq_ignore_ascii_case("tls"))
        {
            continue;
        }
        let Some(host) = url_host(url) else { continue };
        let port = url_port(url).unwrap_or(4222);
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let info = tokio::time::timeout(timeout, first_line(&address)).await;
        if let Ok(Some(line)) = info {
            if offers_no_tls(&line) {
                plain.push(address);
            }
        }
    }
    plain
}

/// The first line a server sends (at most 4 KiB), if it can be read.
async fn first_line(address: &str) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let mut line = Vec::with_capacity(512);
    let mut buffer = [0u8; 512];
    while !line.contains(&b'\n') && line.len() < 4096 {
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            break;
        }
        line.extend_from_slice(&buffer[..n]);
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    String::from_utf8(line[..end].to_vec()).ok()
}

/// Whether a NATS `INFO {…}` line offers no TLS at all.
fn offers_no_tls(line: &str) -> bool {
    let Some(json) = line.trim_end().strip_prefix("INFO ") else {
        return false;
    };
    let Ok(info) = serde_json::from_str::<serde_json::Value>(json) else {
        return false;
    };
    let flag = |key: &str| info.get(key).and_then(serde_json::Value::as_bool) == Some(true);
    !flag("tls_required") && !flag("tls_available")
}

/// The port of one URL, if written: `nats://user:pw@[::1]:4223/x` → 4223.
fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let port = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once("]:")?.1,
        None => host_port.rsplit_once(':')?.1,
    };
    port.parse().ok()
}

/// Whether `host` is this machine: `localhost` (and `*.localhost`, RFC 6761), 127.0.0.0/8,
/// `::1` and `::ffff:127.x.y.z`. Any other name may resolve elsewhere and is not.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost")
        || host
            .rsplit_once('.')
            .is_some_and(|(_, last)| last.eq_ignore_ascii_case("localhost"))
    {
        return true;
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => v4.is_loopback(),
        Ok(std::net::IpAddr::V6(v6)) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "agent.localhost",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback_host(host), "{host} is loopback");
        }
    }

    #[test]
    fn other_hosts_are_not_loopback() {
        for host in [
            "10.0.0.1",
            "192.168.1.10",
            "128.0.0.1",
            "0.0.0.0",
            "::",
            "fe80::1",
            "::ffff:10.0.0.1",
            "hub.example.com",
            "localhost.example.com",
            "mylocalhost",
            "127.0.0.1.example.com",
        ] {
            assert!(!is_loopback_host(host), "{host} is not loopback");
        }
    }

    #[test]
    fn hosts_are_taken_from_urls() {
        assert_eq!(url_host("nats://127.0.0.1:4222"), Some("127.0.0.1"));
        assert_eq!(
            url_host("nats://u:p@hub.example.com:4222"),
            Some("hub.example.com")
        );
        assert_eq!(url_host("tls://[::1]:4222"), Some("::1"));
        assert_eq!(url_host("ws://tok@[fe80::1]:80/path"), Some("fe80::1"));
        assert_eq!(url_host("hub:4222"), Some("hub"));
        assert_eq!(url_host("hub"), Some("hub"));
        assert_eq!(url_host("nats://"), None);
        assert_eq!(url_host("nats://[::1"), None);
    }

    #[test]
    fn only_remote_plain_urls_are_reported() {
        assert!(plaintext_remote_hosts("nats://127.0.0.1:4222", false).is_empty());
        assert!(plaintext_remote_hosts("nats://localhost:4222,ws://[::1]:80", false).is_empty());
        assert!(plaintext_remote_hosts("tls://hub.example.com:4222", false).is_empty());
        assert!(plaintext_remote_hosts("wss://hub.example.com", false).is_empty());
        let mixed = "nats://u:secret@10.0.0.5:4222, tls://b:1,ws://c,127.0.0.1:4222,d:1";
        assert_eq!(
            plaintext_remote_hosts(mixed, false),
            vec!["10.0.0.5", "c", "d"]
        );
        assert_eq!(
            plaintext_remote_hosts("hub.example.com:4222", false),
            vec!["hub.example.com"]
        );
    }

    #[test]
    fn with_tls_settings_only_ws_urls_stay_plain() {
        let mixed = "nats://10.0.0.5:4222,tls://b:1,ws://c,wss://d,e:1";
        assert_eq!(plaintext_remote_hosts(mixed, true), vec!["c"]);
    }

    #[test]
    fn tls_urls_are_recognised() {
        assert!(url_requires_tls("tls://a:1"));
        assert!(url_requires_tls("nats://a:1, TLS://b:1"));
        assert!(url_requires_tls("wss://a"));
        assert!(!url_requires_tls("nats://a:1,ws://b"));
    }
}
