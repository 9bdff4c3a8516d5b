//! `nexus-agent run`: builds the subsystems a mode needs and supervises them.
//!
//! One shutdown story: a root `CancellationToken` (a child per subsystem) and a
//! `TaskTracker`. SIGINT/SIGTERM cancel it; so does the first subsystem that exits on its
//! own (reported as an error). Then every subsystem drains within the grace period.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nexus_config::{Config, Mode};
use nexus_federation::bridge::UpBridge;
use nexus_federation::deadletter::DeadLetters;
use nexus_federation::envelope::MAX_ENVELOPE_BYTES;
use nexus_federation::ingress::{Destination, Ingress, Landing};
use nexus_federation::refusal::{RefusalSink, Stage};
use nexus_federation::revocation;
use nexus_federation::trust::OwnChain;
use nexus_federation::uplink::{PresentationSlot, Uplink};
use nexus_federation::{Link, Outbox, OutboxOptions, WhenFull};
use nexus_iot_bridge::Bridge;
use nexus_policies::Chain;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::commands::{CommandService, Rotation};
use crate::heartbeat::{Children, Heartbeat, HostProbe, EVENT_NAME};
use crate::keygen::load_secret;
use crate::losses::LossAuditor;
use crate::rejections::RejectionHandler;
use crate::trust_setup::TrustSetup;

/// Local messages buffered per `[[bridge.up]]` subscription before the client drops them.
const BRIDGE_BUFFER: usize = 1024;

/// How long subsystems get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1800);

/// Runs the agent until a signal or a subsystem failure. `Ok` means a clean shutdown.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let node = &config.node;
    let key = load_secret(&node.key)?;
    info!(
        node_id = %node.id,
        mode = %node.mode,
        public_key = %key.public(),
        version = env!("CARGO_PKG_VERSION"),
        "Starting nexus-agent."
    );
    for warning in config.warnings() {
        warn!(key = %warning.key, "Config: {}", warning.message);
    }
    std::fs::create_dir_all(&node.data_dir)
        .with_context(|| format!("cannot create node.data_dir {}", node.data_dir.display()))?;
    let trust = TrustSetup::load(&config, &key)?;
    let client_name = format!("nexus-agent {} {}", node.mode, node.id);
    let uplink = match &config.uplink {
        Some(link) => Some(Link::connect("uplink", link, &client_name).await?),
        None => None,
    };
    let local = match &config.local {
        Some(link) => Some(Link::connect("local", link, &client_name).await?),
        None => None,
    };
    // Where this node's own events go: the parent's ingress, or (root) its own.
    let next_hop = match (node.mode, &uplink, &local) {
        (Mode::Member | Mode::Hub, Some(uplink), _) => uplink.clone(),
        (Mode::Root, _, Some(local)) => local.clone(),
        // Validation guarantees these sections; say so plainly if that ever breaks.
        _ => anyhow::bail!(
            "mode {} lacks the NATS link it needs (config validation should have caught this)",
            node.mode
        ),
    };

    let next_hop_for_commands = next_hop.clone();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let failed = Arc::new(AtomicBool::new(false));
    let outbox = open_outbox(&config)?;
    let max_backoff = config
        .uplink
        .as_ref()
        .or(config.local.as_ref())
        .map_or(Duration::from_secs(10), |l| l.reconnect_max_delay);

    let presentation = PresentationSlot::new(trust.presentation.clone());
    // Fail closed: a token that does not decode grants nothing (TrustSetup refuses to
    // start with one anyway).
    let own = match &trust.presentation {
        Some(p) => OwnChain::new(Chain::decode(&p.chain).ok()),
        None => OwnChain::anchor(),
    };
    supervise(&tracker, &shutdown, &failed, "uplink", {
        let pump = Uplink::new(next_hop, outbox.clone(), config.outbox.batch, max_backoff)
            .with_presentation(presentation.clone());
        let token = shutdown.child_token();
        async move {
            pump.run(token).await;
        }
    });

    // Every mode verifies commands; hubs and roots also their children's traffic.
    let gatekeeper = trust.gatekeeper(&config);
    // Refusals of every stage (ingress, subject bridge, commands): dead letters + audit.
    let (refusals_tx, refusals_rx) = mpsc::channel(1024);
    let handler = RejectionHandler {
        node_id: node.id.clone(),
        key: key.clone(),
        outbox: outbox.clone(),
        dead_letters: open_dead_letters(&config),
    };
    supervise(
        &tracker,
        &shutdown,
        &failed,
        "rejections",
        handler.run(refusals_rx, shutdown.child_token()),
    );
    // Events the outbox drops (drop_oldest) or expires (max_age): WARN + audit.
    let losses = LossAuditor {
        node_id: node.id.clone(),
        key: key.clone(),
        outbox: outbox.clone(),
    };
    supervise(
        &tracker,
        &shutdown,
        &failed,
        "outbox losses",
        losses.run(shutdown.child_token()),
    );
    let revocation_source = match node.mode {
        Mode::Root => local.clone(),
        _ => uplink.clone(),
    };
    if let Some(source) = revocation_source {
        let sync = revocation::Sync {
            source,
            republish: local.clone().filter(|_| node.mode != Mode::Member),
            anchors: config.trust.root_keys.clone(),
            path: config.trust.revocations_file.clone(),
            owns_source: node.mode == Mode::Root,
            gatekeeper: Some(Arc::clone(&gatekeeper)),
            own: own.clone(),
        };
        let initial = trust.revocations.clone();
        supervise(
            &tracker,
            &shutdown,
            &failed,
            "revocations",
            sync.run(initial, shutdown.child_token()),
        );
    }

    let children = match (node.mode, &local) {
        (Mode::Hub | Mode::Root, Some(local)) => {
            let children = Children::new(config.heartbeat.offline_after);
            let destination = match (node.mode, &uplink) {
                (Mode::Hub, Some(uplink)) => Destination::Parent(uplink.clone()),
                _ => Destination::Landing(local.clone()),
            };
            let watch = children.clone();
            let own_id = node.id.clone();
            let ingress = Ingress::new(
                local.clone(),
                config.ingress.clone(),
                destination,
                MAX_ENVELOPE_BYTES,
                Arc::clone(&gatekeeper),
            )
            .with_observer(Arc::new(move |envelope| {
                if envelope.event_name == EVENT_NAME && envelope.source != own_id {
                    watch.heard(&envelope.source, Instant::now());
                }
            }));
            let ingress =
                ingress.with_refusals(RefusalSink::new(Stage::Ingress, Some(refusals_tx.clone())));
            supervise(
                &tracker,
                &shutdown,
                &failed,
                "chain registry",
                nexus_federation::trust::watch_registry(
                    local.clone(),
                    Arc::clone(&gatekeeper),
                    uplink.clone().filter(|_| node.mode == Mode::Hub),
                    shutdown.child_token(),
                ),
            );
            let token = shutdown.child_token();
            let landing_link = (node.mode == Mode::Root).then(|| local.clone());
            let landing = Landing::new(&config.landing, config.ingress.duplicate_window);
            supervise(&tracker, &shutdown, &failed, "ingress", async move {
                if let Some(link) = landing_link {
                    if !ensure_landing(&link, &landing, &token).await {
                        return;
                    }
                }
                ingress.run(token).await;
            });
            Some(children)
        }
        _ => None,
    };

    // The IoT bridge (member): MQTT sensor messages → signed iot.sensor_data events in the
    // outbox; refused messages in the dead-letter store.
    let mut iot_stats = None;
    if let (Mode::Member, Some(iot)) = (node.mode, &config.iot) {
        // Validation requires node.tenant with [iot].
        let tenant = node
            .tenant
            .as_deref()
            .context("[iot] needs node.tenant (config validation should have caught this)")?;
        let bridge = Bridge::new(
            iot.clone(),
            &node.id,
            tenant,
            key.clone(),
            outbox.clone(),
            open_dead_letters(&config),
        )
        .context("cannot set up the IoT bridge")?;
        iot_stats = Some(bridge.stats());
        supervise(
            &tracker,
            &shutdown,
            &failed,
            "iot",
            bridge.run(shutdown.child_token()),
        );
    }

    let heartbeat = Heartbeat {
        node_id: node.id.clone(),
        mode: node.mode,
        key: key.clone(),
        interval: config.heartbeat.interval,
        uplink: uplink.clone(),
        local: local.clone(),
        outbox: outbox.clone(),
        children: children.clone(),
        started,
        host: HostProbe::new(),
        iot: iot_stats,
    };

    // Local apps' subjects up ([[bridge.up]]); validation requires [local] and a tenant.
    if let (false, Some(local), Some(tenant)) =
        (config.bridge.up.is_empty(), &local, node.tenant.as_deref())
    {
        // Its own connection, with a small per-subscription buffer: a burst from an app
        // cannot fill the box's memory (what overflows is dropped, and its requests go
        // unanswered, so the app retries).
        let bridge_link = match &config.local {
            Some(link) => {
                Link::connect_bounded(
                    "local",
                    link,
                    &format!("{client_name} bridge"),
                    BRIDGE_BUFFER,
                )
                .await?
            }
            None => local.clone(),
        };
        let bridge = UpBridge {
            local: bridge_link,
            rules: config.bridge.up.clone(),
            node_id: node.id.clone(),
            tenant: tenant.to_owned(),
            key: key.clone(),
            outbox: outbox.clone(),
            max_payload: config.bridge.max_payload,
            acl: config.acl.clone(),
            grants: own.clone(),
            refusals: RefusalSink::new(Stage::Bridge, Some(refusals_tx.clone())),
            counters: Arc::default(),
        };
        supervise(
            &tracker,
            &shutdown,
            &failed,
            "bridge",
            bridge.run(shutdown.child_token()),
        );
    }

    // Commands to this node (built-ins, [[bridge.down]]) and, at a hub, to its members.
    let (replay, log) = CommandService::shared_state();
    let commands = CommandService {
        node_id: node.id.clone(),
        mode: node.mode,
        tenant: node.tenant.clone(),
        key: key.clone(),
        gatekeeper: Arc::clone(&gatekeeper),
        skew: config.trust.clock_skew,
        uplink: uplink.clone(),
        local: local.clone(),
        down: config.bridge.down.clone(),
        outbox: outbox.clone(),
        refusals: RefusalSink::new(Stage::Command, Some(refusals_tx)),
        children,
        heartbeat: heartbeat.clone(),
        rotation: Rotation {
            path: node.token.clone(),
            presentation,
            own,
            next_hop: next_hop_for_commands,
        },
        started_wall: time::OffsetDateTime::now_utc(),
        replay,
        log,
    };
    supervise(
        &tracker,
        &shutdown,
        &failed,
        "commands",
        commands.run(shutdown.child_token()),
    );

    supervise(
        &tracker,
        &shutdown,
        &failed,
        "heartbeat",
        heartbeat.run(shutdown.child_token()),
    );
    tracker.close();
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
    let started = Instant::now();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
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
    for link in uplink.iter().chain(local.iter()) {
        let _ = tokio::time::timeout(rest, link.client().flush()).await;
    }
    let pending = outbox.stats();
    info!(
        outbox_depth = pending.depth,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Stopped."
    );
    if failed.load(Ordering::SeqCst) {
        anyhow::bail!("a subsystem stopped unexpectedly (see the log above)");
    }
    Ok(())
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

/// Spawns a subsystem; if it returns before shutdown was requested, that is a failure:
/// it is reported and everything else is cancelled.
fn supervise<F>(
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
    failed: &Arc<AtomicBool>,
    name: &'static str,
    task: F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let shutdown = shutdown.clone();
    let failed = Arc::clone(failed);
    tracker.spawn(async move {
        task.await;
        if !shutdown.is_cancelled() {
            error!(
                subsystem = name,
                "Subsystem stopped unexpectedly; shutting the agent down."
            );
            failed.store(true, Ordering::SeqCst);
            shutdown.cancel();
        }
    });
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
/// them: the error is logged once, e.g. a stream of that name with other subjects).
async fn ensure_landing(link: &Link, landing: &Landing, shutdown: &CancellationToken) -> bool {
    let backoff = nexus_federation::backoff::Backoff::new(
        Duration::from_millis(200),
        Duration::from_secs(10),
    );
    let mut attempt = 0;
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
            Err(error) if attempt == 0 => {
                warn!(journal = %landing.journal, %error, "Cannot create the landing streams; retrying.")
            }
            Err(_) => {}
        }
        let delay = backoff.delay_now(attempt);
        attempt += 1;
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
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
