//! The optional Prometheus listener (`[metrics] listen`): `/metrics` in the OpenMetrics
//! text format, `/healthz` (the process answers) and `/readyz` (healthy: no cause of
//! `degraded`), on HTTP/1.
//!
//! Every figure is read at scrape time from the counters the subsystems keep anyway (the
//! outbox's, the links', the ingress', the IoT bridge's, the heartbeat's causes); only the
//! command latencies are recorded for the metrics ([`CommandMetrics`]). Names, units and
//! help are listed in docs/operations.md.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nexus_federation::bridge::BridgeCounters;
use nexus_federation::deadletter::DeadLetters;
use nexus_federation::ingress::IngressCounters;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::uplink::UplinkTotals;
use nexus_iot_bridge::Reason as IotReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::commands::{HEALTH, PING, ROTATE, TRACE};
use crate::heartbeat::Heartbeat;

/// The OpenMetrics text format's content type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A request's head must arrive within this (a slow or idle client is dropped).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Refusals by stage and reason since the start (every stage's, as the refusal handler
/// sees them). Both labels come from fixed sets of names, so the map stays small.
#[derive(Debug, Clone, Default)]
pub struct RefusalCounts(Arc<Mutex<BTreeMap<(&'static str, &'static str), u64>>>);

impl RefusalCounts {
    /// Counts one refusal.
    pub fn add(&self, stage: &'static str, reason: &'static str) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((stage, reason))
            .or_default() += 1;
    }

    fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

type CommandLabels = [(&'static str, &'static str); 2];
type Latencies = Family<CommandLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// How long this node took to answer the commands it handled: by command (`agent.ping`,
/// `agent.health`, `agent.token.rotate`, `agent.trace`, `app` for `[[bridge.down]]` deliveries, `routed`
/// for a hub's routing to a member, `other`) and outcome (`ok`, `refused`).
#[derive(Debug, Clone)]
pub struct CommandMetrics(Latencies);

impl Default for CommandMetrics {
    fn default() -> Self {
        Self(Family::new_with_constructor(latency_histogram))
    }
}

impl CommandMetrics {
    /// Records a command handled in `elapsed`.
    pub fn observe(&self, command: &'static str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "refused" };
        self.0
            .get_or_create(&[("command", command), ("outcome", outcome)])
            .observe(elapsed.as_secs_f64());
    }

    /// The label of a command by name (the subject's command part): a fixed set.
    pub fn label(command: &str) -> &'static str {
        let is = |name: &str| {
            command == name
                || command
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        if is(PING) {
            PING
        } else if is(HEALTH) {
            HEALTH
        } else if is(ROTATE) {
            ROTATE
        } else if is(TRACE) {
            TRACE
        } else if command.starts_with("agent.") {
            "other"
        } else {
            "app"
        }
    }
}

/// What `/metrics` reads.
#[derive(Debug, Clone)]
pub struct Sources {
    /// This node's heartbeat: outbox, links, IoT bridge, children, causes.
    pub heartbeat: Heartbeat,
    /// The ingress (hub, root).
    pub ingress: Option<Arc<IngressCounters>>,
    /// The uplink's pump.
    pub uplink: Option<Arc<UplinkTotals>>,
    /// The subject bridge (`[[bridge.up]]`).
    pub bridge: Option<Arc<BridgeCounters>>,
    /// Refusals of every stage.
    pub refusals: RefusalCounts,
    /// The dead-letter store (read for its size).
    pub dead_letters: Option<DeadLetters>,
    /// Command latencies.
    pub commands: CommandMetrics,
}

/// The listener: serves until `shutdown`.
pub struct Server {
    /// Where it listens.
    pub listen: SocketAddr,
    /// What it reports.
    pub sources: Sources,
}

impl Server {
    /// Binds and serves. A port that cannot be bound is a set-up failure: the node runs
    /// on without metrics and says so in its heartbeat.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let listener = TcpListener::bind(self.listen).await.map_err(|e| {
            SubsystemError::SetUp(format!(
                "cannot listen on metrics.listen {}: {e}; pick a free port or remove \
                 [metrics]",
                self.listen
            ))
        })?;
        info!(listen = %self.listen, "Serving /metrics, /healthz and /readyz.");
        let sources = Arc::new(self.sources);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            // Cancel safety: `acquire_owned` and `accept` lose nothing when dropped (a
            // connection not yet accepted stays in the kernel's backlog).
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
                        warn!(%error, "Cannot accept a metrics connection.");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let sources = Arc::clone(&sources);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let sources = Arc::clone(&sources);
                    async move { Ok::<_, Infallible>(respond(&sources, request).await) }
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
                            debug!(%peer, %error, "Metrics connection ended with an error.");
                        }
                    }
                    _ = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
                }
                drop(permit);
            });
        }
    }
}

async fn respond(sources: &Sources, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let body = render(sources).await;
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let causes = sources.heartbeat.causes();
            if causes.is_empty() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                let lines: String = causes
                    .iter()
                    .map(|c| format!("{} {}: {}\n", c.kind, c.subsystem, c.cause))
                    .collect();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("degraded\n{lines}"),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz and /readyz are served\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The exposition of everything [`Sources`] reads, now.
pub async fn render(sources: &Sources) -> String {
    // The dead-letter store is SQLite: read it off the async threads.
    let dead_letters = match sources.dead_letters.clone() {
        Some(store) => tokio::task::spawn_blocking(move || store.stats().ok())
            .await
            .ok()
            .flatten()
            .map(|stats| (stats.entries, stats.bytes)),
        None => None,
    };
    let snapshot = Snapshot {
        sources: sources.clone(),
        dead_letters,
    };
    let mut registry = Registry::with_prefix("nexus");
    registry.register_with_unit(
        "command_duration",
        "Time to answer a command handled by this node",
        Unit::Seconds,
        sources.commands.0.clone(),
    );
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        warn!(%error, "Cannot encode the metrics.");
    }
    out
}

/// The figures of one scrape.
#[derive(Debug)]
struct Snapshot {
    sources: Sources,
    dead_letters: Option<(u64, u64)>,
}

/// Writes one metric family: `name` (without `nexus_`, the unit or `_total`), its help, its
/// unit, and one sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    samples: Vec<(Vec<(&str, &str)>, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(first) = samples.first() else {
        return Ok(());
    };
    let metric_type = first.1.metric_type();
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), metric_type)?;
    if let [(labels, value)] = samples.as_slice() {
        if labels.is_empty() {
            return value.encode(metric);
        }
    }
    for (labels, value) in &samples {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: f64) -> ConstGauge<f64> {
    ConstGauge::new(value)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.sources;
        let heartbeat = &s.heartbeat;
        let node = heartbeat.node_id.as_str();
        let version = env!("NEXUS_AGENT_VERSION");
        family(
            &mut e,
            "agent_info",
            "This agent: node id, mode and version (always 1)",
            None,
            vec![(
                vec![
                    ("node_id", node),
                    ("mode", heartbeat.mode.as_str()),
                    ("version", version),
                ],
                gauge(1.0),
            )],
        )?;
        family(
            &mut e,
            "uptime",
            "Time since the agent started",
            Some(Unit::Seconds),
            vec![(vec![], gauge(heartbeat.started.elapsed().as_secs_f64()))],
        )?;

        // Health: the causes of degraded, one series per kind present.
        let causes = heartbeat.causes();
        family(
            &mut e,
            "degraded",
            "1 when the node reports itself degraded (see nexus_degraded_cause)",
            None,
            vec![(vec![], gauge(if causes.is_empty() { 0.0 } else { 1.0 }))],
        )?;
        family(
            &mut e,
            "degraded_cause",
            "A cause of degraded now (1), by kind and subsystem; see docs/operations.md",
            None,
            causes
                .iter()
                .map(|c| {
                    (
                        vec![("kind", c.kind), ("subsystem", c.subsystem)],
                        gauge(1.0),
                    )
                })
                .collect(),
        )?;

        // Events forwarded, duplicates, failures: the uplink's and the ingress'.
        let mut forwarded = Vec::new();
        let mut duplicates = Vec::new();
        let mut failures = Vec::new();
        if let Some(up) = &s.uplink {
            let stage = vec![("stage", "uplink")];
            forwarded.push((stage.clone(), counter(up.acked.load(Ordering::Relaxed))));
            duplicates.push((
                stage.clone(),
                counter(up.duplicates.load(Ordering::Relaxed)),
            ));
            failures.push((stage, counter(up.failures.load(Ordering::Relaxed))));
        }
        if let Some(ingress) = &s.ingress {
            let stage = vec![("stage", "ingress")];
            forwarded.push((
                stage.clone(),
                counter(ingress.forwarded.load(Ordering::Relaxed)),
            ));
            duplicates.push((
                stage.clone(),
                counter(ingress.duplicates.load(Ordering::Relaxed)),
            ));
            failures.push((stage, counter(ingress.failures.load(Ordering::Relaxed))));
            family(
                &mut e,
                "events_received",
                "Events taken from the ingress stream (children's traffic)",
                None,
                vec![(
                    vec![("stage", "ingress")],
                    counter(ingress.received.load(Ordering::Relaxed)),
                )],
            )?;
        }
        family(
            &mut e,
            "events_forwarded",
            "Events acknowledged by the next hop (uplink: the parent's ingress; ingress: the \
             parent, or the landing at the root)",
            None,
            forwarded,
        )?;
        family(
            &mut e,
            "events_duplicates",
            "Of the events forwarded, those the next hop already had (deduplicated)",
            None,
            duplicates,
        )?;
        family(
            &mut e,
            "events_forward_failures",
            "Failed attempts to forward (each is retried)",
            None,
            failures,
        )?;
        family(
            &mut e,
            "events_rejected",
            "Messages refused, by stage and reason (each kept as a dead letter and audited)",
            None,
            s.refusals
                .snapshot()
                .into_iter()
                .map(|((stage, reason), n)| {
                    (vec![("stage", stage), ("reason", reason)], counter(n))
                })
                .collect(),
        )?;
        if let Some(bridge) = &s.bridge {
            family(
                &mut e,
                "bridge_messages",
                "Local apps' messages on [[bridge.up]] subjects: taken, and queued as events",
                None,
                vec![
                    (
                        vec![("result", "received")],
                        counter(bridge.received.load(Ordering::Relaxed)),
                    ),
                    (
                        vec![("result", "queued")],
                        counter(bridge.forwarded.load(Ordering::Relaxed)),
                    ),
                ],
            )?;
        }

        // The outbox.
        let outbox = heartbeat.outbox.stats();
        family(
            &mut e,
            "outbox_events",
            "Events waiting in the outbox for the next tier's acknowledgement",
            None,
            vec![(vec![], gauge(outbox.depth as f64))],
        )?;
        family(
            &mut e,
            "outbox",
            "Body bytes waiting in the outbox",
            Some(Unit::Bytes),
            vec![(vec![], gauge(outbox.bytes as f64))],
        )?;
        family(
            &mut e,
            "outbox_oldest_age",
            "Age of the oldest event waiting in the outbox (0 when empty)",
            Some(Unit::Seconds),
            vec![(vec![], gauge(outbox.oldest_age_secs as f64))],
        )?;
        family(
            &mut e,
            "outbox_dropped",
            "Events given up: dropped to make room (drop_oldest) or undecodable",
            None,
            vec![(vec![], counter(outbox.dropped))],
        )?;
        family(
            &mut e,
            "outbox_expired",
            "Events given up for being older than outbox.max_age",
            None,
            vec![(vec![], counter(outbox.expired))],
        )?;

        // Links.
        let links: Vec<(&str, _)> = [("uplink", &heartbeat.uplink), ("local", &heartbeat.local)]
            .into_iter()
            .filter_map(|(name, link)| link.as_ref().map(|l| (name, l)))
            .collect();
        family(
            &mut e,
            "link_up",
            "1 while the NATS connection is up, by link",
            None,
            links
                .iter()
                .map(|(name, link)| {
                    let up = if link.state().connected { 1.0 } else { 0.0 };
                    (vec![("link", *name)], gauge(up))
                })
                .collect(),
        )?;
        family(
            &mut e,
            "link_connects",
            "Connections made, by link (the first and every reconnect)",
            None,
            links
                .iter()
                .map(|(name, link)| {
                    let connects = link.client().statistics().connects.load(Ordering::Relaxed);
                    (vec![("link", *name)], counter(connects))
                })
                .collect(),
        )?;

        // The IoT bridge.
        if let Some(iot) = &heartbeat.iot {
            let (connected, _) = iot.connection();
            family(
                &mut e,
                "mqtt_up",
                "1 while the IoT bridge is connected to its MQTT broker",
                None,
                vec![(vec![], gauge(if connected { 1.0 } else { 0.0 }))],
            )?;
            family(
                &mut e,
                "mqtt_messages",
                "MQTT messages: received from the broker, queued as events, dropped (QoS 0, \
                 queue full)",
                None,
                vec![
                    (
                        vec![("result", "received")],
                        counter(iot.received.load(Ordering::Relaxed)),
                    ),
                    (
                        vec![("result", "queued")],
                        counter(iot.events.load(Ordering::Relaxed)),
                    ),
                    (
                        vec![("result", "dropped_qos0")],
                        counter(iot.dropped_qos0.load(Ordering::Relaxed)),
                    ),
                ],
            )?;
            family(
                &mut e,
                "mqtt_rejected",
                "MQTT messages refused (dead-lettered), by reason",
                None,
                IotReason::ALL
                    .iter()
                    .map(|&reason| {
                        (
                            vec![("reason", reason.as_str())],
                            counter(iot.rejected(reason)),
                        )
                    })
                    .collect(),
            )?;
            family(
                &mut e,
                "mqtt_rule_events",
                "Events queued from MQTT messages, by [[iot.sensors]] rule (its index from 0 \
                 and topic)",
                None,
                iot.rules()
                    .map(|(index, topic, n)| (vec![("rule", index), ("topic", topic)], counter(n)))
                    .collect(),
            )?;
        }

        // Dead letters.
        if let Some((entries, bytes)) = self.dead_letters {
            family(
                &mut e,
                "dead_letters",
                "Messages kept in the dead-letter store (nexus-agent dlq list)",
                None,
                vec![(vec![], gauge(entries as f64))],
            )?;
            family(
                &mut e,
                "dead_letter",
                "Bytes of the dead-letter store's messages",
                Some(Unit::Bytes),
                vec![(vec![], gauge(bytes as f64))],
            )?;
        }

        // The fleet below this node.
        if let Some(children) = &heartbeat.children {
            let census = children.census();
            family(
                &mut e,
                "fleet_nodes",
                "Children watched through their heartbeats, by status",
                None,
                vec![
                    (vec![("status", "online")], gauge(census.online as f64)),
                    (vec![("status", "offline")], gauge(census.offline as f64)),
                    (vec![("status", "unknown")], gauge(census.unknown as f64)),
                ],
            )?;
            family(
                &mut e,
                "fleet_forgotten",
                "Children forgotten: silent far longer than offline_after, or over the cap",
                None,
                vec![(vec![], counter(census.forgotten))],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_labels_are_a_fixed_set() {
        assert_eq!(CommandMetrics::label("agent.ping"), PING);
        assert_eq!(CommandMetrics::label("agent.ping.7"), PING);
        assert_eq!(CommandMetrics::label("agent.pingpong"), "other");
        assert_eq!(CommandMetrics::label("agent.health"), HEALTH);
        assert_eq!(CommandMetrics::label("agent.token.rotate"), ROTATE);
        assert_eq!(CommandMetrics::label("agent.reboot"), "other");
        assert_eq!(CommandMetrics::label("lights.set"), "app");
    }

    #[test]
    fn refusals_are_counted_by_stage_and_reason() {
        let counts = RefusalCounts::default();
        counts.add("ingress", "bad_signature");
        counts.add("ingress", "bad_signature");
        counts.add("bridge", "acl_denied");
        assert_eq!(
            counts.snapshot(),
            vec![
                (("bridge", "acl_denied"), 1),
                (("ingress", "bad_signature"), 2)
            ]
        );
    }
}
