//! The live fleet page of a hub or the root (`[page] listen`): `/` (the page, its
//! `page.js` and `page.css`, written for this agent and embedded in the binary),
//! `/events` (server-sent events: a `snapshot` of every row, then each second an `update`
//! with the rows that changed) and `/api/fleet` (every row, JSON). Read-only.
//!
//! With `token_file`, every request must carry the token: `Authorization: Bearer …`, or
//! the cookie that opening `/?token=…` once sets (a browser's `EventSource` cannot send
//! headers). With `cert_file` and `key_file` it is served over HTTPS.

mod board;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE,
    WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nexus_federation::subsystem::SubsystemError;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use board::Board;

const HTML: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("page.js");
const STYLE: &str = include_str!("page.css");
/// The cookie holding the token in a browser.
const COOKIE_NAME: &str = "nexus_page_token";
/// Connections served at once (each open page holds one for its event stream).
const MAX_CONNECTIONS: usize = 32;
/// A request's head (and a TLS handshake) must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an open page is sent the rows that changed.
const UPDATE_EVERY: Duration = Duration::from_secs(1);
/// A comment line is sent at least this often, so that proxies keep the stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The listener: serves until `shutdown`.
pub struct Server {
    /// Where it listens.
    pub listen: SocketAddr,
    /// What it shows.
    pub board: Board,
    /// The bearer token asked of every request, if any.
    pub token: Option<String>,
    /// HTTPS, if configured.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Server {
    /// Binds and serves. A port that cannot be bound is a set-up failure: the node runs
    /// on without the page and says so in its heartbeat.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let listener = TcpListener::bind(self.listen).await.map_err(|e| {
            SubsystemError::SetUp(format!(
                "cannot listen on page.listen {}: {e}; pick a free port or remove [page]",
                self.listen
            ))
        })?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        info!(listen = %self.listen, "Serving the fleet page at {scheme}://{}/.", self.listen);
        let acceptor = self.tls.map(TlsAcceptor::from);
        let shared = Arc::new(Shared {
            board: self.board,
            token: self.token,
            secure: acceptor.is_some(),
            shutdown: shutdown.clone(),
        });
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            // Cancel safety: neither `acquire_owned` nor `accept` loses anything when
            // dropped (a connection not yet accepted stays in the kernel's backlog).
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                permit = Arc::clone(&permits).acquire_owned() => permit,
            };
            let Ok(permit) = permit else { return Ok(()) };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        warn!(%error, "Cannot accept a fleet page connection.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let shared = Arc::clone(&shared);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => serve(stream, peer, shared).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => serve(stream, peer, shared).await,
                            Ok(Err(error)) => {
                                debug!(%peer, %error, "Fleet page TLS handshake failed.");
                            }
                            Err(_) => debug!(%peer, "Fleet page TLS handshake timed out."),
                        }
                    }
                }
                drop(permit);
            });
        }
    }
}

struct Shared {
    board: Board,
    token: Option<String>,
    secure: bool,
    shutdown: CancellationToken,
}

async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(respond(&shared, &request)) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%peer, %error, "Fleet page connection ended with an error.");
            }
        }
        _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
    }
}

fn respond(shared: &Shared, request: &Request<Incoming>) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the fleet page is read-only: only GET and HEAD are served\n",
        );
    }
    let path = request.uri().path();
    if let Some(expected) = &shared.token {
        // `/?token=…`: checked, kept in a cookie, and taken out of the address bar.
        if let Some(given) = query_token(request.uri().query()) {
            if !same(given.as_bytes(), expected.as_bytes()) {
                return unauthorized();
            }
            let secure = if shared.secure { "; Secure" } else { "" };
            let cookie =
                format!("{COOKIE_NAME}={given}; Path=/; HttpOnly; SameSite=Strict{secure}");
            let mut response = empty(StatusCode::SEE_OTHER);
            let headers = response.headers_mut();
            headers.insert(LOCATION, HeaderValue::from_static("./"));
            if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                headers.insert(SET_COOKIE, cookie);
            }
            return response;
        }
        if !authorized(request, expected) {
            return unauthorized();
        }
    }
    match path {
        "/" | "/index.html" => asset(HTML, "text/html; charset=utf-8"),
        "/page.js" => asset(SCRIPT, "text/javascript; charset=utf-8"),
        "/page.css" => asset(STYLE, "text/css; charset=utf-8"),
        "/api/fleet" => {
            let rows: Vec<Value> = shared
                .board
                .rows()
                .into_iter()
                .map(|(_, row)| row)
                .collect();
            let body = message(shared.board.own_id(), rows, &[]).to_string();
            let mut response = Response::new(full(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            secure_headers(response)
        }
        "/events" => events(shared),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the fleet page is /, its live rows /events, all rows /api/fleet\n",
        ),
    }
}

/// One message of the stream (and the body of `/api/fleet`).
fn message(node: &str, rows: Vec<Value>, gone: &[String]) -> Value {
    json!({
        "node": node,
        "now_ms": board::unix_ms(OffsetDateTime::now_utc()),
        "rows": rows,
        "gone": gone,
    })
}

/// The event stream of one open page.
fn events(shared: &Shared) -> Response<Body> {
    let state = EventState {
        board: shared.board.clone(),
        shutdown: shared.shutdown.clone(),
        sent: std::collections::HashMap::new(),
        first: true,
        quiet: Duration::ZERO,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let frame = state.next().await?;
        Some((Ok::<_, Infallible>(Frame::data(frame)), state))
    });
    let stream: Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>> =
        Box::pin(stream);
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    secure_headers(response)
}

struct EventState {
    board: Board,
    shutdown: CancellationToken,
    /// Each row's fingerprint as last sent.
    sent: std::collections::HashMap<String, u64>,
    first: bool,
    quiet: Duration,
}

impl EventState {
    /// The next chunk of the stream: the snapshot first, then the changed rows each
    /// second (or a keep-alive comment); `None` at shutdown.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if !self.first {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(UPDATE_EVERY) => {}
                }
            }
            let rows = self.board.rows();
            let mut changed = Vec::new();
            let mut present = std::collections::HashSet::with_capacity(rows.len());
            for (id, row) in rows {
                let fingerprint = board::fingerprint(&row);
                if self.sent.get(&id) != Some(&fingerprint) {
                    self.sent.insert(id.clone(), fingerprint);
                    changed.push(row);
                }
                present.insert(id);
            }
            let gone: Vec<String> = self
                .sent
                .keys()
                .filter(|id| !present.contains(*id))
                .cloned()
                .collect();
            for id in &gone {
                self.sent.remove(id);
            }
            let event = if self.first { "snapshot" } else { "update" };
            if self.first || !changed.is_empty() || !gone.is_empty() {
                self.first = false;
                self.quiet = Duration::ZERO;
                let data = message(self.board.own_id(), changed, &gone);
                return Some(Bytes::from(format!("event: {event}\ndata: {data}\n\n")));
            }
            self.quiet += UPDATE_EVERY;
            if self.quiet >= KEEPALIVE {
                self.quiet = Duration::ZERO;
                return Some(Bytes::from_static(b": keep-alive\n\n"));
            }
        }
    }
}

/// The token of `?token=…`, if the query has one.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
}

/// Whether the request carries `expected` as a bearer token or in the page's cookie.
fn authorized(request: &Request<Incoming>, expected: &str) -> bool {
    let headers = request.headers();
    let bearer = headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("Bearer "));
    let cookies = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='));
    let mut given = bearer.chain(cookies);
    given.any(|token| same(token.trim().as_bytes(), expected.as_bytes()))
}

/// Equality in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response<Body> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "this fleet page asks for its token (page.token_file): open /?token=… once in the \
         browser, or send Authorization: Bearer …\n",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    secure_headers(response)
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(response)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = asset(body, "text/plain; charset=utf-8");
    *response.status_mut() = status;
    response
}

/// Nothing cached, nothing sniffed, no script or style but the page's own, no framing, no
/// referrer (the first address may carry the token).
fn secure_headers(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!same(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!same(b"abcdefghijklmnop", b"abcdefghijklmno"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn the_query_token_is_found_among_other_parameters() {
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz"));
        assert_eq!(query_token(Some("tokens=1")), None);
        assert_eq!(query_token(None), None);
    }
}
