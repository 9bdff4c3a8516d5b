//! `nexus-agent run`: builds the subsystems a mode needs and supervises them.
//!
//! One shutdown story: a root `CancellationToken` (a child per subsystem) and a
//! `TaskTracker`, both in the [`Supervisor`]. SIGINT/SIGTERM cancel it; then every
//! subsystem drains within the grace period. The uplink has a token of its own, cancelled
//! right after the others (after a fault: once the last heartbeat is queued), so that its
//! one last bounded try upstream includes that heartbeat.
//!
//! # When a subsystem stops on its own
//! Every subsystem returns `Result<(), SubsystemError>` (`Ok` when asked to stop). One
//! that stops on its own — an `Err`, a panic, or an `Ok` before shutdown — is logged at
//! ERROR with its name and cause and recorded; from then on heartbeats say
//! `status: "degraded"` and name it in `causes` (`crate::supervisor`). What the agent does
//! then is what it always did:
//! - it shuts down, for every cause but one: the other subsystems are cancelled, a last
//!   heartbeat naming the cause is queued before the uplink stops (so the parent learns why
//!   the node went away), and `run` fails (exit 1; systemd restarts the agent);
//! - it keeps running without the subsystem when its set-up failed for good
//!   (`SubsystemError::SetUp`, e.g. `[iot.tls]` files that rustls refuses): a restart would
//!   fail the same way, and forwarding, commands and heartbeats still work.
//!
//! # Layout
//! - [`run`]: start-up (key, data dir, trust, links, outbox), the mode's assembly, then
//!   [`shut_down`].
//! - Per mode: [`member`] (the IoT bridge), [`hub`] (ingress onward to the parent),
//!   [`root`] (landing streams, ingress into them); hub and root share [`verifier`] (the
//!   watch over children, the chain registry watch, the ingress).
//! - Shared pieces: [`Links::connect`] (NATS links, next hop); [`Node::start`] (trust
//!   state and what every mode runs: [`Node::spawn_uplink`], [`Node::spawn_audits`] for
//!   refusals and outbox losses, [`Node::spawn_revocations`]);
//!   [`up_bridge`] (`[[bridge.up]]`); [`heartbeat`]; [`commands`]; [`open_outbox`],
//!   [`open_dead_letters`], [`ensure_landing`].
//! - [`shut_down`]: [`stop_requested`] (signals, systemd), the last heartbeat after a
//!   fault, [`drain`] (the grace period, last flush), the result. Supervision itself
//!   (faults, what stops the agent): `crate::supervisor`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nexus_config::{Config, Mode};
use nexus_events::Registry;
use nexus_federation::backoff::{Backoff, Retry};
use nexus_federation::bridge::{BridgeCounters, UpBridge};
use nexus_federation::clock::TrustClock;
use nexus_federation::deadletter::DeadLetters;
use nexus_federation::envelope::MAX_ENVELOPE_BYTES;
use nexus_federation::ingress::{Contract, Destination, Ingress, IngressCounters, Landing};
use nexus_federation::ratelog::RateLimitedLog;
use nexus_federation::refusal::{RefusalSink, RejectedMessage, Stage};
use nexus_federation::revocation;
use nexus_federation::trust::{Gatekeeper, OwnChain};
use nexus_federation::uplink::{PresentationSlot, Uplink, UplinkTotals};
use nexus_federation::{Link, Outbox, OutboxOptions, WhenFull};
use nexus_iot_bridge::{Bridge, Stats as IotStats};
use nexus_policies::{Chain, RevocationList, SecretKey};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::children::{self, Children, StatusReporter, STATUS_EVENT};
use crate::commands::{CommandService, Rotation, TraceSources};
use crate::health::Vitals;
use crate::heartbeat::{Heartbeat, HostProbe, EVENT_NAME};
use crate::keygen::load_secret;
use crate::losses::LossAuditor;
use crate::metrics::{self, CommandMetrics, RefusalCounts};
use crate::page::{self, Board};
use crate::rejections::RejectionHandler;
use crate::remote_config::apply::Applier;
use crate::remote_config::relay::{Journal, Relay};
use crate::remote_config::state::{file_hash, Files};
use crate::remote_config::Report;
use crate::supervisor::Supervisor;
use crate::trust_setup::TrustSetup;
use crate::update::install::Installer;
use crate::update::waves::Waves;

/// Local messages buffered per `[[bridge.up]]` subscription before the client drops them.
const BRIDGE_BUFFER: usize = 1024;
/// How often silent children are looked for (at most; the heartbeat interval if shorter):
/// a child is reported within `offline_after` plus this.
const STATUS_TICK: Duration = Duration::from_secs(1);

/// How long subsystems get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1800);

/// How long the last heartbeat after a fault may take to be queued (part of the grace).
const LAST_HEARTBEAT_WITHIN: Duration = Duration::from_millis(300);

/// Runs the agent until a signal or a subsystem failure. `Ok` means a clean shutdown.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let node = &config.node;
    let key = load_secret(&node.key)?;
    info!(
        node_id = %node.id,
        mode = %node.mode,
        public_key = %key.public(),
        version = env!("NEXUS_AGENT_VERSION"),
        "Starting nexus-agent."
    );
    for warning in config.warnings() {
        warn!(key = %warning.key, "Config: {}", warning.message);
    }
    std::fs::create_dir_all(&node.data_dir)
        .with_context(|| format!("cannot create node.data_dir {}", node.data_dir.display()))?;
    let trust = TrustSetup::load(&config, &key)?;
    let events = Arc::new(
        Registry::load(config.events.registry.as_deref())
            .context("cannot load the event registry (events.registry)")?,
    );
    info!(
        entries = events.len(),
        hash = %events.hash(),
        "Event registry loaded."
    );
    let links = Links::connect(&config).await?;
    let outbox = open_outbox(&config)?;
    let node = Node::start(config, key, &trust, links, outbox);
    let parts = match node.config.node.mode {
        Mode::Member => member(&node)?,
        Mode::Hub => hub(&node)?,
        Mode::Root => root(&node, &events)?,
    };
    let config_report = Report::default();
    let update_report = Report::default();
    let heartbeat = heartbeat(
        &node,
        started,
        &parts,
        &events,
        config_report.clone(),
        update_report.clone(),
    );
    remote_config(&node, started, config_report);
    updates(&node, started, &parts, update_report);
    let bridge = up_bridge(&node, &events).await?;
    let latencies = CommandMetrics::default();
    commands(
        &node,
        parts.children.clone(),
        heartbeat.clone(),
        latencies.clone(),
    );
    if let Some(listen) = node.config.metrics.listen {
        let server = metrics::Server {
            listen,
            sources: metrics::Sources {
                heartbeat: heartbeat.clone(),
                ingress: parts.ingress.clone(),
                uplink: Some(Arc::clone(&node.uplink_totals)),
                bridge,
                refusals: node.refusal_counts.clone(),
                dead_letters: open_dead_letters(&node.config),
                commands: latencies,
            },
        };
        node.supervisor.spawn("metrics", |token| server.run(token));
    }
    if let (Some(listen), Some(board)) = (node.config.page.listen, parts.board.clone()) {
        let server = page_server(
            &node.config,
            listen,
            board.with_heartbeat(heartbeat.clone()),
        )?;
        node.supervisor.spawn("page", |token| server.run(token));
    }
    node.supervisor
        .spawn("heartbeat", |token| heartbeat.clone().run(token));
    shut_down(node, &heartbeat).await
}

/// The fleet page's server: its token read from `page.token_file`, its TLS from
/// `page.cert_file` and `page.key_file`.
fn page_server(
    config: &nexus_config::Config,
    listen: std::net::SocketAddr,
    board: Board,
) -> anyhow::Result<page::Server> {
    let token = match &config.page.token_file {
        None => None,
        Some(path) => {
            let bytes = nexus_config::read_capped(path, 4096)
                .with_context(|| format!("cannot read page.token_file {}", path.display()))?;
            let token = String::from_utf8(bytes)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .with_context(|| {
                    format!(
                        "page.token_file {} holds no token: write one line of printable text",
                        path.display()
                    )
                })?;
            Some(token)
        }
    };
    let tls = match &config.page.tls {
        None => None,
        Some(tls) => Some(
            nexus_tls::server_config("page", &tls.cert_file, &tls.key_file)
                .context("cannot set up the fleet page's HTTPS")?,
        ),
    };
    Ok(page::Server {
        listen,
        board,
        token,
        tls,
    })
}

/// This node's NATS links, and where its own events go.
struct Links {
    /// The parent's NATS (member, hub).
    uplink: Option<Link>,
    /// This node's own NATS (hub, root; optional for a member).
    local: Option<Link>,
    /// Where this node's own events go: the parent's ingress, or (root) its own.
    next_hop: Link,
    /// How this agent names itself to its NATS servers.
    client_name: String,
}

impl Links {
    /// Connects (or starts connecting: a link starts without its server) what is configured.
    async fn connect(config: &Config) -> anyhow::Result<Self> {
        let node = &config.node;
        let client_name = format!("nexus-agent {} {}", node.mode, node.id);
        let uplink = match &config.uplink {
            Some(link) => Some(Link::connect("uplink", link, &client_name).await?),
            None => None,
        };
        let local = match &config.local {
            Some(link) => Some(Link::connect("local", link, &client_name).await?),
            None => None,
        };
        let next_hop = match (node.mode, &uplink, &local) {
            (Mode::Member | Mode::Hub, Some(uplink), _) => uplink.clone(),
            (Mode::Root, _, Some(local)) => local.clone(),
            // Validation guarantees these sections; say so plainly if that ever breaks.
            _ => anyhow::bail!(
                "mode {} lacks the NATS link it needs (config validation should have caught this)",
                node.mode
            ),
        };
        Ok(Self {
            uplink,
            local,
            next_hop,
            client_name,
        })
    }

    /// Every NATS link this node has (what a health gate waits for).
    fn all(&self) -> Vec<Link> {
        self.uplink
            .iter()
            .chain(self.local.iter())
            .cloned()
            .collect()
    }

    /// This node's own NATS, which a hub and a root must have.
    fn local(&self, mode: Mode) -> anyhow::Result<Link> {
        self.local.clone().with_context(|| {
            format!("mode {mode} lacks [local] (config validation should have caught this)")
        })
    }
}

/// What every mode shares once started: identity, links, outbox, trust and supervision.
struct Node {
    config: Config,
    /// This node's signing key.
    key: SecretKey,
    links: Links,
    outbox: Outbox,
    /// Admission checks: every mode verifies commands; hubs and roots also their
    /// children's traffic.
    gatekeeper: Arc<Gatekeeper>,
    /// This node's current chain (replaced by rotation).
    own: OwnChain,
    /// The chain the uplink presents (replaced by rotation).
    presentation: PresentationSlot,
    /// Refusals of every stage (ingress, subject bridge, commands): dead letters + audit.
    refusals: mpsc::Sender<RejectedMessage>,
    supervisor: Supervisor,
    /// Stops the uplink; cancelled after everything else (see [`shut_down`]).
    uplink_stop: CancellationToken,
    /// The clock of token checks (the heartbeat reports it unsynced).
    clock: Arc<TrustClock>,
    /// Refusals by stage and reason (metrics).
    refusal_counts: RefusalCounts,
    /// The uplink's counters (metrics).
    uplink_totals: Arc<UplinkTotals>,
}

impl Node {
    /// Sets up the trust state and starts what every mode runs: the uplink, the refusal
    /// handler, the outbox-loss auditor and the revocation watch.
    fn start(
        config: Config,
        key: SecretKey,
        trust: &TrustSetup,
        links: Links,
        outbox: Outbox,
    ) -> Self {
        // Fail closed: a token that does not decode grants nothing (TrustSetup refuses to
        // start with one anyway).
        let own = match &trust.presentation {
            Some(p) => OwnChain::new(Chain::decode(&p.chain).ok()),
            None => OwnChain::anchor(),
        };
        let (refusals, refusals_rx) = mpsc::channel(1024);
        let node = Self {
            gatekeeper: trust.gatekeeper(&config),
            presentation: PresentationSlot::new(trust.presentation.clone()),
            own,
            refusals,
            supervisor: Supervisor::new(),
            uplink_stop: CancellationToken::new(),
            clock: Arc::clone(&trust.clock),
            refusal_counts: RefusalCounts::default(),
            uplink_totals: Arc::default(),
            config,
            key,
            links,
            outbox,
        };
        node.spawn_uplink();
        node.spawn_audits(refusals_rx);
        node.spawn_revocations(trust.revocations.clone());
        node
    }

    /// What is kept and announced about lost traffic: refusals of every stage (dead
    /// letters + audit) and events the outbox drops (drop_oldest) or expires (max_age):
    /// WARN + audit.
    fn spawn_audits(&self, refusals: mpsc::Receiver<RejectedMessage>) {
        let handler = RejectionHandler {
            node_id: self.config.node.id.clone(),
            key: self.key.clone(),
            outbox: self.outbox.clone(),
            dead_letters: open_dead_letters(&self.config),
            counts: self.refusal_counts.clone(),
        };
        self.supervisor
            .spawn("rejections", |token| handler.run(refusals, token));
        let losses = LossAuditor {
            node_id: self.config.node.id.clone(),
            key: self.key.clone(),
            outbox: self.outbox.clone(),
        };
        self.supervisor
            .spawn("outbox losses", |token| losses.run(token));
    }

    /// The pump from the outbox to the next hop, under a token of its own.
    fn spawn_uplink(&self) {
        let config = &self.config;
        let max_backoff = config
            .uplink
            .as_ref()
            .or(config.local.as_ref())
            .map_or(Duration::from_secs(10), |l| l.reconnect_max_delay);
        let pump = Uplink::new(
            self.links.next_hop.clone(),
            self.outbox.clone(),
            config.outbox.batch,
            max_backoff,
        )
        .with_presentation(self.presentation.clone())
        .with_totals(Arc::clone(&self.uplink_totals));
        let token = self.uplink_stop.clone();
        self.supervisor
            .spawn_with("uplink", token.clone(), async move {
                pump.run(token).await.map(drop)
            });
    }

    /// The watch for revocation lists: from the parent, or (root) this node's own NATS;
    /// hubs and roots pass them down on their own NATS.
    fn spawn_revocations(&self, initial: Option<RevocationList>) {
        let mode = self.config.node.mode;
        let source = match mode {
            Mode::Root => self.links.local.clone(),
            _ => self.links.uplink.clone(),
        };
        let Some(source) = source else { return };
        let sync = revocation::Sync {
            source,
            republish: self.links.local.clone().filter(|_| mode != Mode::Member),
            anchors: self.config.trust.root_keys.clone(),
            path: self.config.trust.revocations_file.clone(),
            owns_source: mode == Mode::Root,
            gatekeeper: Some(Arc::clone(&self.gatekeeper)),
            own: self.own.clone(),
        };
        self.supervisor
            .spawn("revocations", |token| sync.run(initial, token));
    }
}

/// What a mode's assembly adds for the heartbeat and the commands to report on.
#[derive(Default)]
struct ModeParts {
    /// The watch over children (hub, root).
    children: Option<Children>,
    /// The IoT bridge's counters (member with `[iot]`).
    iot: Option<Arc<IotStats>>,
    /// The ingress' counters (hub, root).
    ingress: Option<Arc<IngressCounters>>,
    /// What the fleet page shows (hub, root).
    board: Option<Board>,
}

/// A member: the IoT bridge when `[iot]` is set (MQTT sensor messages → signed
/// iot.sensor_data events in the outbox; refused messages in the dead-letter store).
fn member(node: &Node) -> anyhow::Result<ModeParts> {
    let Some(iot) = &node.config.iot else {
        return Ok(ModeParts::default());
    };
    // Validation requires node.tenant with [iot].
    let tenant = node
        .config
        .node
        .tenant
        .as_deref()
        .context("[iot] needs node.tenant (config validation should have caught this)")?;
    let bridge = Bridge::new(
        iot.clone(),
        &node.config.node.id,
        tenant,
        node.key.clone(),
        node.outbox.clone(),
        open_dead_letters(&node.config),
    )
    .context("cannot set up the IoT bridge")?;
    let stats = bridge.stats();
    node.supervisor.spawn("iot", |token| bridge.run(token));
    Ok(ModeParts {
        children: None,
        iot: Some(stats),
        ingress: None,
        board: None,
    })
}

/// A hub: verifies its members' traffic and forwards it to its parent, to whose chain
/// registry it also presents its members' rotated chains.
fn hub(node: &Node) -> anyhow::Result<ModeParts> {
    let local = node.links.local(Mode::Hub)?;
    let parent = node.links.next_hop.clone();
    let destination = Destination::Parent(parent.clone());
    Ok(verifier(node, local, destination, Some(parent), None, None))
}

/// The root: creates the landing streams, then verifies its children's traffic (and its
/// own events) and lands it.
fn root(node: &Node, events: &Arc<Registry>) -> anyhow::Result<ModeParts> {
    let local = node.links.local(Mode::Root)?;
    let config = &node.config;
    let landing = Landing::new(&config.landing, config.ingress.duplicate_window);
    let destination = Destination::Landing(local.clone());
    // What lands is checked against the registry ([events] unknown / invalid).
    let contract = Contract {
        registry: Arc::clone(events),
        unknown: config.events.unknown,
        invalid: config.events.invalid,
    };
    Ok(verifier(
        node,
        local,
        destination,
        None,
        Some(landing),
        Some(contract),
    ))
}

/// Hubs and the root: the watch over children (heard through their verified heartbeats),
/// the chain registry watch (presenting rotated chains to `parent`, if any) and the
/// ingress, which sends what it verified to `destination` once `landing` (root) exists.
fn verifier(
    node: &Node,
    local: Link,
    destination: Destination,
    parent: Option<Link>,
    landing: Option<Landing>,
    contract: Option<Contract>,
) -> ModeParts {
    let config = &node.config;
    let destination_link = match &destination {
        Destination::Parent(link) | Destination::Landing(link) => link.clone(),
    };
    let children = Children::new(&config.node.id, config.heartbeat.offline_after);
    let watch = children.clone();
    let own_id = config.node.id.clone();
    let board = Board::new(
        &config.node.id,
        config.node.mode.as_str(),
        Some(children.clone()),
        None,
    );
    // The page shows the board; a rollout's waves read it (children's versions).
    let shown = (config.page.listen.is_some() || !config.trust.release_keys.is_empty())
        .then(|| board.clone());
    let ingress = Ingress::new(
        local.clone(),
        config.ingress.clone(),
        destination,
        MAX_ENVELOPE_BYTES,
        Arc::clone(&node.gatekeeper),
    )
    .with_observer(Arc::new(move |envelope, parent, stored| {
        if let Some(board) = &shown {
            board.observe(envelope, parent, stored);
        }
        if envelope.source == own_id {
            return;
        }
        if envelope.event_name == EVENT_NAME {
            watch.heard_stored(&envelope.source, parent, stored);
        } else if envelope.event_name == STATUS_EVENT {
            children::note_report(&watch, envelope);
        }
    }))
    .with_refusals(RefusalSink::new(
        Stage::Ingress,
        Some(node.refusals.clone()),
    ));
    let ingress = match contract {
        Some(contract) => ingress.with_contract(contract),
        None => ingress,
    };
    let reporter = StatusReporter {
        node_id: config.node.id.clone(),
        key: node.key.clone(),
        outbox: node.outbox.clone(),
        children: children.clone(),
        tick: config.heartbeat.interval.min(STATUS_TICK),
        destination: Some(destination_link),
    };
    node.supervisor
        .spawn("node status", |token| reporter.run(token));
    let ingress_counters = ingress.counters();
    let gatekeeper = Arc::clone(&node.gatekeeper);
    let registry_link = local.clone();
    node.supervisor.spawn("chain registry", |token| {
        nexus_federation::trust::watch_registry(registry_link, gatekeeper, parent, token)
    });
    node.supervisor.spawn("ingress", |token| async move {
        if let Some(landing) = landing {
            if !ensure_landing(&local, &landing, &token).await {
                return Ok(());
            }
        }
        ingress.run(token).await
    });
    ModeParts {
        children: Some(children),
        iot: None,
        ingress: Some(ingress_counters),
        board: Some(board),
    }
}

/// This node's heartbeat, reporting on what the mode built and on the supervisor's faults.
fn heartbeat(
    node: &Node,
    started: Instant,
    parts: &ModeParts,
    events: &Registry,
    config_report: Report,
    update_report: Report,
) -> Heartbeat {
    let config = &node.config;
    Heartbeat {
        events_registry: events.hash(),
        config: Some(config_report),
        update: Some(update_report),
        node_id: config.node.id.clone(),
        mode: config.node.mode,
        key: node.key.clone(),
        interval: config.heartbeat.interval,
        uplink: node.links.uplink.clone(),
        local: node.links.local.clone(),
        outbox: node.outbox.clone(),
        children: parts.children.clone(),
        started,
        host: HostProbe::new(),
        iot: parts.iot.clone(),
        faults: node.supervisor.faults().clone(),
        vitals: Some(Vitals {
            limits: config.health.clone(),
            outbox_max_bytes: config.outbox.max_bytes,
            data_dir: config.node.data_dir.clone(),
            own: node.own.clone(),
            clock: Arc::clone(&node.clock),
        }),
    }
}

/// Desired config from the tier above (every mode; `crate::remote_config`), and (hub) the
/// copy of the root's documents for this site, (hub, root) the announcement of documents
/// this node issues. Off without a config file (nothing to replace).
fn remote_config(node: &Node, started: Instant, report: Report) {
    let config = &node.config;
    let Some(path) = config.source.clone() else {
        return;
    };
    let mode = config.node.mode;
    let (source, owns_source) = match mode {
        Mode::Root => (node.links.local.clone(), true),
        _ => (node.links.uplink.clone(), false),
    };
    let Some(source) = source else { return };
    let running = std::fs::read(&path).unwrap_or_default();
    let applier = Applier {
        config: config.clone(),
        files: Files::new(&path),
        running_hash: file_hash(&running),
        source: source.clone(),
        owns_source,
        key: node.key.clone(),
        own: node.own.clone(),
        links: node.links.all(),
        faults: node.supervisor.faults().clone(),
        outbox: node.outbox.clone(),
        restart: node.supervisor.shutdown().clone(),
        report,
        started,
    };
    node.supervisor
        .spawn("remote config", |token| applier.run(token));
    let Some(local) = node.links.local.clone().filter(|_| mode != Mode::Member) else {
        return;
    };
    if mode == Mode::Hub {
        let relay = Relay {
            source,
            local: local.clone(),
            node_id: config.node.id.clone(),
            anchors: config.trust.root_keys.clone(),
        };
        node.supervisor
            .spawn("config relay", |token| relay.run(token));
    }
    let journal = Journal {
        local,
        node_id: config.node.id.clone(),
        key: node.key.clone(),
        outbox: node.outbox.clone(),
        mark: config.node.data_dir.join("config-issued.rev"),
    };
    node.supervisor
        .spawn("config journal", |token| journal.run(token));
}

/// Agent updates (`crate::update`): a member or hub installs what the tier above starts;
/// a hub or the root runs the rollout's waves for its children (with `trust.release_keys`).
fn updates(node: &Node, started: Instant, parts: &ModeParts, report: Report) {
    let config = &node.config;
    if let Some(source) = node.links.uplink.clone() {
        let installer = Installer {
            node_id: config.node.id.clone(),
            data_dir: config.node.data_dir.clone(),
            source,
            anchors: config.trust.root_keys.clone(),
            release_keys: config.trust.release_keys.clone(),
            gate: config.updates.gate,
            links: node.links.all(),
            faults: node.supervisor.faults().clone(),
            restart: node.supervisor.shutdown().clone(),
            report,
            started,
        };
        node.supervisor
            .spawn("updates", |token| installer.run(token));
    }
    let (Some(local), Some(board)) = (node.links.local.clone(), parts.board.clone()) else {
        return;
    };
    if config.node.mode == Mode::Member || config.trust.release_keys.is_empty() {
        return;
    }
    let waves = Waves {
        node_id: config.node.id.clone(),
        data_dir: config.node.data_dir.clone(),
        source: node.links.uplink.clone(),
        local,
        anchors: config.trust.root_keys.clone(),
        release_keys: config.trust.release_keys.clone(),
        board,
    };
    node.supervisor.spawn("rollout", |token| waves.run(token));
}

/// Local apps' subjects up (`[[bridge.up]]`); validation requires `[local]` and a tenant.
/// Returns the bridge's counters, if it runs.
async fn up_bridge(
    node: &Node,
    events: &Arc<Registry>,
) -> anyhow::Result<Option<Arc<BridgeCounters>>> {
    let config = &node.config;
    let (false, Some(local), Some(tenant)) = (
        config.bridge.up.is_empty(),
        &node.links.local,
        config.node.tenant.as_deref(),
    ) else {
        return Ok(None);
    };
    // Its own connection, with a small per-subscription buffer: a burst from an app
    // cannot fill the box's memory (what overflows is dropped, and its requests go
    // unanswered, so the app retries).
    let bridge_link = match &config.local {
        Some(link) => {
            let name = format!("{} bridge", node.links.client_name);
            Link::connect_bounded("local", link, &name, BRIDGE_BUFFER).await?
        }
        None => local.clone(),
    };
    let bridge = UpBridge {
        local: bridge_link,
        rules: config.bridge.up.clone(),
        node_id: config.node.id.clone(),
        tenant: tenant.to_owned(),
        key: node.key.clone(),
        outbox: node.outbox.clone(),
        max_payload: config.bridge.max_payload,
        acl: config.acl.clone(),
        grants: node.own.clone(),
        refusals: RefusalSink::new(Stage::Bridge, Some(node.refusals.clone())),
        counters: Arc::default(),
        events: Arc::clone(events),
    };
    let counters = Arc::clone(&bridge.counters);
    node.supervisor.spawn("bridge", |token| bridge.run(token));
    Ok(Some(counters))
}

/// Commands to this node (built-ins, `[[bridge.down]]`) and, at a hub, to its members.
fn commands(
    node: &Node,
    children: Option<Children>,
    heartbeat: Heartbeat,
    latencies: CommandMetrics,
) {
    let config = &node.config;
    let (replay, log) = CommandService::shared_state();
    let commands = CommandService {
        node_id: config.node.id.clone(),
        mode: config.node.mode,
        tenant: config.node.tenant.clone(),
        key: node.key.clone(),
        gatekeeper: Arc::clone(&node.gatekeeper),
        skew: config.trust.clock_skew,
        uplink: node.links.uplink.clone(),
        local: node.links.local.clone(),
        down: config.bridge.down.clone(),
        outbox: node.outbox.clone(),
        refusals: RefusalSink::new(Stage::Command, Some(node.refusals.clone())),
        children,
        heartbeat,
        rotation: Rotation {
            path: config.node.token.clone(),
            presentation: node.presentation.clone(),
            own: node.own.clone(),
            next_hop: node.links.next_hop.clone(),
        },
        started_wall: time::OffsetDateTime::now_utc(),
        tracing: TraceSources {
            dead_letters: open_dead_letters(config),
            ingress: (config.node.mode != Mode::Member).then(|| config.ingress.stream.clone()),
            journal: (config.node.mode == Mode::Root).then(|| config.landing.stream.clone()),
        },
        latencies,
        replay,
        log,
    };
    node.supervisor
        .spawn("commands", |token| commands.run(token));
}

/// Waits for a signal or a fault that stops the agent, then stops everything within the
/// grace period: the other subsystems first, then (after a fault, once a last heartbeat
/// naming it is queued) the uplink, which gives what is queued one last bounded try.
async fn shut_down(node: Node, heartbeat: &Heartbeat) -> anyhow::Result<()> {
    let supervisor = &node.supervisor;
    supervisor.close();
    stop_requested(supervisor.shutdown()).await;
    let started = Instant::now();
    if supervisor.faults().stopping().is_some() {
        // The parent hears why this node goes away.
        let mut warned = false;
        let last = heartbeat.beat(&mut warned);
        if tokio::time::timeout(LAST_HEARTBEAT_WITHIN, last)
            .await
            .is_err()
        {
            warn!("Cannot queue the last heartbeat in time; the parent will not hear why.");
        }
    }
    node.uplink_stop.cancel();
    drain(&node, started).await;
    if let Some(fault) = supervisor.faults().stopping() {
        anyhow::bail!(
            "subsystem {} stopped unexpectedly: {} (see the log above)",
            fault.subsystem,
            fault.cause
        );
    }
    Ok(())
}

/// Tells systemd the agent is ready, waits for SIGINT/SIGTERM or `shutdown` (a fault),
/// then cancels `shutdown` and tells systemd the agent is stopping.
async fn stop_requested(shutdown: &CancellationToken) {
    // The signal handlers are in place before systemd hears READY=1.
    let signals = shutdown_signal();
    let systemd = crate::sdnotify::Notifier::from_env();
    systemd.ready(shutdown.child_token());
    // Cancel safety: both branches only wait; the subsystems run in their own tasks.
    tokio::select! {
        signal = signals => info!(%signal, "Shutting down."),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    systemd.stopping();
}

/// Waits for the subsystems (what is left of the grace period since `started`), gives
/// the links' buffers a last flush, and says so.
async fn drain(node: &Node, started: Instant) {
    let grace = SHUTDOWN_GRACE.saturating_sub(started.elapsed());
    if tokio::time::timeout(grace, node.supervisor.wait())
        .await
        .is_err()
    {
        warn!(
            grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
            "Subsystems did not finish in time; exiting anyway."
        );
    }
    // Whatever the client still buffers gets a last chance to reach the socket.
    let rest = SHUTDOWN_GRACE
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(100));
    for link in node.links.uplink.iter().chain(node.links.local.iter()) {
        let _ = tokio::time::timeout(rest, link.client().flush()).await;
    }
    let pending = node.outbox.stats();
    info!(
        outbox_depth = pending.depth,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Stopped."
    );
}

/// Opens `{data_dir}/outbox.db` with the `[outbox]` policy (a damaged file is moved aside
/// and logged by the outbox itself).
fn open_outbox(config: &Config) -> anyhow::Result<Outbox> {
    let path = config.node.data_dir.join("outbox.db");
    let options = OutboxOptions {
        max_bytes: config.outbox.max_bytes,
        when_full: match config.outbox.when_full {
            nexus_config::WhenFull::Reject => WhenFull::Reject,
            nexus_config::WhenFull::DropOldest => WhenFull::DropOldest,
        },
        max_age: config.outbox.max_age,
        drain_rate: config.outbox.drain_rate,
    };
    let outbox = Outbox::open(&path, options)
        .with_context(|| format!("cannot open the outbox at {}", path.display()))?;
    let stats = outbox.stats();
    info!(path = %path.display(), depth = stats.depth, bytes = stats.bytes, "Outbox open.");
    Ok(outbox)
}

/// Opens this node's dead-letter store; a store that cannot be opened is an ERROR (refused
/// messages would be lost) but does not stop the agent from verifying and forwarding.
fn open_dead_letters(config: &Config) -> Option<DeadLetters> {
    let path = config.node.data_dir.join("deadletter.db");
    match DeadLetters::open(
        &path,
        config.dead_letter.max_bytes,
        config.dead_letter.max_entries,
    ) {
        Ok(store) => Some(store),
        Err(error) => {
            error!(path = %path.display(), %error, "Cannot open the dead-letter store: refused messages will only be counted and logged.");
            None
        }
    }
}

/// Creates the root's landing streams, retrying while its NATS is unreachable (or refuses
/// them: the error is logged at once and then once a minute, e.g. a stream of that name with
/// other subjects, or `landing.replicas` more than the cluster can place).
async fn ensure_landing(link: &Link, landing: &Landing, shutdown: &CancellationToken) -> bool {
    let mut retry = Retry::new(Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(10),
    ));
    let mut log = RateLimitedLog::new(Duration::from_secs(60));
    loop {
        if !link.wait_connected(shutdown).await {
            return false;
        }
        match landing.ensure(link).await {
            Ok(()) => {
                let domains: Vec<String> = landing
                    .domains
                    .iter()
                    .map(|d| {
                        let subjects: Vec<&str> = d.subjects.iter().map(|p| p.as_str()).collect();
                        format!("{} ({})", d.name, subjects.join(", "))
                    })
                    .collect();
                info!(journal = %landing.journal, domains = %domains.join("; "), "Landing streams ready.");
                return true;
            }
            Err(error) => {
                if log.check("landing", Instant::now()).is_some() {
                    warn!(journal = %landing.journal, %error, "Cannot create the landing streams; retrying.");
                }
            }
        }
        if !retry.wait(shutdown).await {
            return false;
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves on the first signal.
fn shutdown_signal() -> impl Future<Output = &'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let (mut interrupt, mut term) = match (interrupt, term) {
            (Ok(interrupt), Ok(term)) => (interrupt, term),
            (interrupt, term) => {
                let error = interrupt.err().or(term.err()).map(|e| e.to_string());
                warn!(
                    ?error,
                    "Cannot listen for SIGINT/SIGTERM; only Ctrl-C stops the agent."
                );
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
}

/// Sets up tracing as the config says (`RUST_LOG`, when set, overrides `log.level`).
pub fn init_logging(config: &nexus_config::LogConfig) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let (source, mut directives) = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => ("RUST_LOG", value),
        _ => ("log.level", config.level.clone()),
    };
    // The NATS client logs every (re)connect at INFO; the agent logs link state changes
    // itself, once, so the client is kept to warnings unless asked for explicitly.
    if !directives.contains("async_nats") {
        directives.push_str(",async_nats=warn");
    }
    let filter = EnvFilter::try_new(&directives)
        .with_context(|| format!("{source} = `{directives}` is not a valid log filter"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.format {
        nexus_config::LogFormat::Json => builder.json().flatten_event(true).init(),
        nexus_config::LogFormat::Human => builder.with_target(false).init(),
    }
    Ok(())
}
