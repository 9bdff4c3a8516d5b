//! The watch over a hub's or the root's children, heard through their verified
//! heartbeats, and the node status events it makes of them.
//!
//! A node reports on the children it is the parent of: a hub on its members, the root on
//! its hubs (and on members whose token the root issued). A child silent for
//! `offline_after` is reported `offline` once, and `online` again when it is heard. The
//! root also watches the members behind its hubs (their heartbeats pass its ingress): when
//! a member falls silent together with its hub, the root cannot tell whether the member
//! is down, so it reports it `unknown`; if the hub comes back and the member stays silent
//! for `offline_after` more, and the hub did not report it, the root reports it `offline`.
//!
//! Reports are `edge.node_status` events signed by the reporting node, queued in its
//! outbox like its heartbeats ([`StatusReporter`]). Per-child state is bounded: children
//! silent far longer than `offline_after` are forgotten, and at most [`MAX_CHILDREN`] are
//! watched.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nexus_federation::outbox::Priority;
use nexus_federation::subsystem::SubsystemError;
use nexus_federation::{Encoding, Envelope, Link, Outbox, OutboxError};
use nexus_policies::SecretKey;
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The event name of node status reports.
pub const STATUS_EVENT: &str = "edge.node_status";

/// Most children watched: at the cap, the one silent longest is forgotten to make room (a
/// fleet far larger than this is served by more hubs).
const MAX_CHILDREN: usize = 100_000;
/// A child silent for this many `offline_after`s, and at least [`FORGET_AFTER_MIN`], is
/// gone: it is forgotten (counted in `forgotten`, no longer among the offline).
const FORGET_AFTER_OFFLINES: u32 = 120;
/// See [`FORGET_AFTER_OFFLINES`].
const FORGET_AFTER_MIN: Duration = Duration::from_secs(3600);
/// Most status changes waiting to be queued (a reporter that cannot keep up drops the
/// oldest; the census in the heartbeat stays right).
const MAX_PENDING: usize = 10_000;

/// A child's status as its parent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Heard within `offline_after`.
    Online,
    /// Silent for longer, its parent running.
    Offline,
    /// Silent together with its parent: whether it runs cannot be told.
    Unknown,
}

impl NodeStatus {
    /// The payload's `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Unknown => "unknown",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(Self::Online),
            "offline" => Some(Self::Offline),
            "unknown" => Some(Self::Unknown),
            _ => None,
        }
    }
}

/// A change of a child's status, to be reported.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// The child.
    pub node_id: String,
    /// Its new status.
    pub status: NodeStatus,
    /// When it was last heard (wall clock).
    pub last_seen: OffsetDateTime,
    /// How long it had been silent when the change was seen (zero when back online).
    pub silent: Duration,
    /// Its parent, when that is not the reporting node (a member behind a hub, at the
    /// root).
    pub via: Option<String>,
}

/// The last heartbeat of every child, by node id (a child that rotated its key is the same
/// child), to tell online from silent ones; bounded, and forgetting children long gone.
#[derive(Debug, Clone)]
pub struct Children {
    own_id: String,
    offline_after: Duration,
    forget_after: Duration,
    capacity: usize,
    watch: Arc<Mutex<Watch>>,
    changed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Watch {
    seen: HashMap<String, ChildState>,
    /// Children forgotten since the start (gone, or pushed out at the cap).
    forgotten: u64,
    /// Status changes not yet taken by the reporter, oldest first.
    pending: VecDeque<StatusChange>,
    /// Changes dropped at [`MAX_PENDING`].
    dropped: u64,
    /// Until when this node cannot hear its children (its ingress does not read while
    /// the next hop is down): silences are not reported meanwhile.
    blind_until: Option<Instant>,
}

#[derive(Debug)]
struct ChildState {
    last: Instant,
    last_wall: OffsetDateTime,
    via: Option<String>,
    /// What was last reported of it (by this node, or by its parent as seen here).
    reported: NodeStatus,
    /// Whether that report was its parent's (seen here), not this node's: its return is
    /// then the parent's to report too.
    by_parent: bool,
    /// When it was last heard again after a report of silence.
    back_at: Option<Instant>,
}

/// What the watch says about the children now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Heard within `offline_after`.
    pub online: usize,
    /// Silent longer than that (and not unknown), not yet forgotten.
    pub offline: usize,
    /// Silent together with their own parent.
    pub unknown: usize,
    /// Forgotten since the start: silent far longer, or pushed out at the cap.
    pub forgotten: u64,
}

impl Children {
    /// A watch by `own_id` that calls a child offline after `offline_after` of silence,
    /// and forgets it after [`FORGET_AFTER_OFFLINES`] times that (at least
    /// [`FORGET_AFTER_MIN`]).
    pub fn new(own_id: &str, offline_after: Duration) -> Self {
        let forget_after = offline_after
            .saturating_mul(FORGET_AFTER_OFFLINES)
            .max(FORGET_AFTER_MIN);
        Self::with_bounds(own_id, offline_after, forget_after, MAX_CHILDREN)
    }

    /// A watch with its bounds given: children forgotten after `forget_after` of silence,
    /// at most `capacity` watched.
    pub fn with_bounds(
        own_id: &str,
        offline_after: Duration,
        forget_after: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            own_id: own_id.to_owned(),
            offline_after,
            forget_after: forget_after.max(offline_after),
            capacity: capacity.max(1),
            watch: Arc::default(),
            changed: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a verified heartbeat of `node_id` stored by this tier's ingress at `stored`
    /// (wall clock), whose token `parent` issued (`None`: a trust anchor did).
    pub fn heard_stored(&self, node_id: &str, parent: Option<&str>, stored: OffsetDateTime) {
        let now = Instant::now();
        let age = (OffsetDateTime::now_utc() - stored)
            .try_into()
            .unwrap_or(Duration::ZERO);
        let at = now.checked_sub(age).unwrap_or(now);
        self.heard_at(node_id, parent, at, stored, now);
    }

    /// [`Self::heard_at`] of a heartbeat stored `now`.
    #[cfg(test)]
    pub fn heard(&self, node_id: &str, parent: Option<&str>, now: Instant, wall: OffsetDateTime) {
        self.heard_at(node_id, parent, now, wall, now);
    }

    /// Records a heartbeat of `node_id` stored at `at` (`wall` on the wall clock), read at
    /// `now`. One older than what is known changes nothing; one older than `offline_after`
    /// (a backlog read late) moves the last-seen time but does not bring a silent child
    /// back.
    pub fn heard_at(
        &self,
        node_id: &str,
        parent: Option<&str>,
        at: Instant,
        wall: OffsetDateTime,
        now: Instant,
    ) {
        let via = parent.filter(|p| *p != self.own_id);
        let mut watch = self.lock();
        if let Some(state) = watch.seen.get_mut(node_id) {
            if state.via.as_deref() != via {
                state.via = via.map(str::to_owned);
            }
            if at <= state.last {
                return;
            }
            let (before, before_wall) = (state.last, state.last_wall);
            state.last = at;
            state.last_wall = wall;
            let was = state.reported;
            if was == NodeStatus::Online || now.saturating_duration_since(at) > self.offline_after {
                return;
            }
            info!(node_id, was = was.as_str(), "Child is back online.");
            state.reported = NodeStatus::Online;
            state.back_at = Some(now);
            if std::mem::take(&mut state.by_parent) {
                return;
            }
            let change = StatusChange {
                node_id: node_id.to_owned(),
                status: NodeStatus::Online,
                last_seen: before_wall,
                silent: at.saturating_duration_since(before),
                via: via.map(str::to_owned),
            };
            watch.push(change);
            drop(watch);
            self.changed.notify_one();
            return;
        }
        if watch.seen.len() >= self.capacity {
            let silent = watch
                .seen
                .iter()
                .min_by_key(|(_, state)| state.last)
                .map(|(id, _)| id.clone());
            if let Some(silent) = silent {
                watch.seen.remove(&silent);
                watch.forgotten += 1;
                warn!(node_id = %silent, capacity = self.capacity, "Too many children to watch; forgetting the one silent longest.");
            }
        }
        info!(node_id, via, "Child seen for the first time.");
        watch.seen.insert(
            node_id.to_owned(),
            ChildState {
                last: at,
                last_wall: wall,
                via: via.map(str::to_owned),
                reported: NodeStatus::Online,
                by_parent: false,
                back_at: None,
            },
        );
    }

    /// This node cannot hear its children until `until` (its own next hop is down, so its
    /// ingress does not read): their silence is counted unknown and not reported.
    pub fn blind(&self, until: Instant) {
        let mut watch = self.lock();
        watch.blind_until = Some(watch.blind_until.map_or(until, |u| u.max(until)));
    }

    /// Records a status report about `node_id` by `reporter` (an `edge.node_status` event
    /// of another node, seen at the root): the child's own parent speaks for it, so this
    /// node does not report it again.
    pub fn noted(&self, node_id: &str, status: NodeStatus, reporter: &str) {
        let mut watch = self.lock();
        if let Some(state) = watch.seen.get_mut(node_id) {
            if state.via.as_deref() == Some(reporter) && status != NodeStatus::Online {
                state.reported = status;
                state.by_parent = true;
            }
        }
    }

    /// Marks silent children offline or unknown (queuing a change for each newly so),
    /// forgets those silent for `forget_after`; returns the census.
    pub fn census_at(&self, now: Instant) -> Census {
        let offline_after = self.offline_after;
        let silent_for = |state: &ChildState| now.saturating_duration_since(state.last);
        let mut watch = self.lock();
        // The parents the watched children are behind, and whether each is silent and
        // when it came back.
        let vias: HashSet<&String> = watch.seen.values().filter_map(|s| s.via.as_ref()).collect();
        let parents: HashMap<String, (bool, Option<Instant>)> = vias
            .into_iter()
            .filter_map(|id| {
                watch
                    .seen
                    .get(id)
                    .map(|s| (id.clone(), (silent_for(s) > offline_after, s.back_at)))
            })
            .collect();
        let blind = watch.blind_until.is_some_and(|until| now < until);
        let (mut online, mut offline, mut unknown, mut gone) = (0, 0, 0, 0);
        let mut changes = Vec::new();
        watch.seen.retain(|node_id, state| {
            let silent = silent_for(state);
            if silent > self.forget_after {
                gone += 1;
                info!(node_id = %node_id, silent_secs = silent.as_secs(), "Child silent far longer than offline_after; forgotten.");
                return false;
            }
            if silent <= offline_after {
                online += 1;
                return true;
            }
            if blind && state.reported == NodeStatus::Online {
                unknown += 1;
                return true;
            }
            let next = match &state.via {
                None => Some(NodeStatus::Offline),
                Some(via) => match parents.get(via) {
                    // Its parent is silent too: nobody can tell.
                    Some((true, _)) => Some(NodeStatus::Unknown),
                    // Its parent is back, and has been for `offline_after`, without this
                    // child or a report of it: it is offline.
                    Some((false, back_at))
                        if state.reported == NodeStatus::Unknown
                            && back_at.is_none_or(|at| {
                                now.saturating_duration_since(at) > offline_after
                            }) =>
                    {
                        Some(NodeStatus::Offline)
                    }
                    // Its parent runs and has not reported it for twice `offline_after` (a
                    // parent that restarted never heard it): it is offline.
                    Some((false, _))
                        if state.reported == NodeStatus::Online
                            && silent > offline_after.saturating_mul(2) =>
                    {
                        Some(NodeStatus::Offline)
                    }
                    // Its parent watches it and reports it.
                    _ => None,
                },
            };
            let status = match next {
                Some(status) if status != state.reported && state.reported != NodeStatus::Offline => {
                    let level = status.as_str();
                    warn!(node_id = %node_id, silent_secs = silent.as_secs(), status = level, "Child went silent; reporting it.");
                    state.reported = status;
                    state.by_parent = false;
                    changes.push(StatusChange {
                        node_id: node_id.clone(),
                        status,
                        last_seen: state.last_wall,
                        silent,
                        via: state.via.clone(),
                    });
                    status
                }
                _ => state.reported,
            };
            if status == NodeStatus::Unknown {
                unknown += 1;
            } else {
                offline += 1;
            }
            true
        });
        watch.forgotten += gone;
        let notify = !changes.is_empty();
        for change in changes {
            watch.push(change);
        }
        let census = Census {
            online,
            offline,
            unknown,
            forgotten: watch.forgotten,
        };
        drop(watch);
        if notify {
            self.changed.notify_one();
        }
        census
    }

    /// The census now.
    pub fn census(&self) -> Census {
        self.census_at(Instant::now())
    }

    /// The status changes not yet reported, oldest first.
    pub fn take_changes(&self) -> Vec<StatusChange> {
        self.lock().pending.drain(..).collect()
    }

    /// Whether `node_id` is a child heard before (and not forgotten), and if so whether it
    /// is online now.
    pub fn online(&self, node_id: &str) -> Option<bool> {
        self.lock()
            .seen
            .get(node_id)
            .map(|state| state.last.elapsed() <= self.offline_after)
    }

    /// A watched child's status now, as reported (or about to be): online while heard
    /// within `offline_after`; else what was reported of it, `unknown` while that is
    /// still `online` (this node cannot hear it, or the next look has not run yet).
    pub fn status(&self, node_id: &str) -> Option<NodeStatus> {
        self.lock().seen.get(node_id).map(|state| {
            if state.last.elapsed() <= self.offline_after {
                NodeStatus::Online
            } else if state.reported == NodeStatus::Online {
                NodeStatus::Unknown
            } else {
                state.reported
            }
        })
    }

    /// How many children are watched.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().seen.len()
    }
}

impl Watch {
    fn push(&mut self, change: StatusChange) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                warn!(
                    dropped = self.dropped,
                    "Node status changes come faster than they are queued; dropping the oldest."
                );
            }
        }
        self.pending.push_back(change);
    }
}

/// The observer's part at the root: an `edge.node_status` event of another node tells
/// what its parent reported of a child.
pub fn note_report(children: &Children, envelope: &Envelope) {
    let payload = &envelope.payload;
    let (Some(node_id), Some(status)) = (
        payload.get("node_id").and_then(Value::as_str),
        payload
            .get("status")
            .and_then(Value::as_str)
            .and_then(NodeStatus::parse),
    ) else {
        return;
    };
    children.noted(node_id, status, &envelope.source);
}

/// Queues an `edge.node_status` event for every status change of the watch, as soon as it
/// is seen: silences at each tick, returns as they are heard.
#[derive(Debug, Clone)]
pub struct StatusReporter {
    /// The reporting node.
    pub node_id: String,
    /// Its signing key.
    pub key: SecretKey,
    /// Where reports are queued.
    pub outbox: Outbox,
    /// The watch.
    pub children: Children,
    /// How often silences are looked for.
    pub tick: Duration,
    /// Where this node's ingress forwards (hub: the parent; root: its own NATS): while it
    /// is down the ingress does not read, so the children cannot be heard.
    pub destination: Option<Link>,
}

impl StatusReporter {
    /// Reports changes until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SubsystemError> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let changed = Arc::clone(&self.children.changed);
        loop {
            // Cancel safety: a tick and a notification are only wake-ups; the changes
            // stay queued in the watch until taken below.
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    let now = Instant::now();
                    if self.destination.as_ref().is_some_and(|link| !link.state().connected) {
                        self.children.blind(now + self.children.offline_after);
                    }
                    self.children.census_at(now);
                }
                _ = changed.notified() => {}
            }
            for change in self.children.take_changes() {
                self.report(&change).await;
            }
        }
    }

    async fn report(&self, change: &StatusChange) {
        let envelope = Envelope::new(
            STATUS_EVENT,
            &self.node_id,
            None,
            status_payload(&self.node_id, change),
            OffsetDateTime::now_utc(),
        );
        let seal = envelope.into_sealer(Encoding::Json, self.key.clone());
        match self.outbox.push_numbered(seal, Priority::Control).await {
            Ok(_) => {
                debug!(node_id = %change.node_id, status = change.status.as_str(), "Node status queued.")
            }
            Err(OutboxError::Seal(error)) => warn!(%error, "Cannot build a node status event."),
            Err(error) => {
                warn!(%error, node_id = %change.node_id, status = change.status.as_str(), "Cannot queue a node status event; the census in the heartbeat still counts it.");
            }
        }
    }
}

/// The payload of an `edge.node_status` event.
pub fn status_payload(reporter: &str, change: &StatusChange) -> Map<String, Value> {
    let mut payload = Map::new();
    payload.insert("node_id".into(), json!(change.node_id));
    payload.insert("status".into(), json!(change.status.as_str()));
    payload.insert(
        "last_seen".into(),
        json!(nexus_federation::envelope::format_ts(change.last_seen)),
    );
    payload.insert("silent_secs".into(), json!(change.silent.as_secs()));
    payload.insert("reporter".into(), json!(reporter));
    payload.insert(
        "parent".into(),
        json!(change.via.as_deref().unwrap_or(reporter)),
    );
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "hub-01";
    const ROOT: &str = "root";

    fn wall() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn statuses(children: &Children) -> Vec<(String, &'static str)> {
        children
            .take_changes()
            .into_iter()
            .map(|c| (c.node_id, c.status.as_str()))
            .collect()
    }

    fn pair(node: &str, status: &'static str) -> (String, &'static str) {
        (node.to_owned(), status)
    }

    #[test]
    fn a_silent_child_is_offline_until_heard_again() {
        let children = Children::new(HUB, Duration::from_secs(30));
        let t0 = Instant::now();
        let counts = |c: Census| (c.online, c.offline);
        children.heard("edge-01", Some(HUB), t0, wall());
        children.heard("edge-02", Some(HUB), t0, wall());
        assert_eq!(
            counts(children.census_at(t0 + Duration::from_secs(10))),
            (2, 0)
        );
        children.heard("edge-02", Some(HUB), t0 + Duration::from_secs(20), wall());
        assert_eq!(
            counts(children.census_at(t0 + Duration::from_secs(31))),
            (1, 1)
        );
        children.heard("edge-01", Some(HUB), t0 + Duration::from_secs(40), wall());
        assert_eq!(
            counts(children.census_at(t0 + Duration::from_secs(41))),
            (2, 0)
        );
    }

    /// A silent child is reported offline once however many censuses see it silent, and
    /// online once when heard again.
    #[test]
    fn a_silence_is_reported_once_and_the_return_once() {
        let children = Children::new(HUB, Duration::from_secs(30));
        let t0 = Instant::now();
        children.heard("edge-01", Some(HUB), t0, wall());
        children.census_at(t0 + Duration::from_secs(30));
        assert_eq!(statuses(&children), vec![], "silent, not yet for longer");
        for s in [31, 35, 60, 90] {
            children.census_at(t0 + Duration::from_secs(s));
        }
        let reported = children.take_changes();
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].status, NodeStatus::Offline);
        assert_eq!(reported[0].silent, Duration::from_secs(31));
        assert_eq!(reported[0].via, None, "a direct child");
        children.heard("edge-01", Some(HUB), t0 + Duration::from_secs(91), wall());
        children.heard("edge-01", Some(HUB), t0 + Duration::from_secs(92), wall());
        children.census_at(t0 + Duration::from_secs(93));
        assert_eq!(statuses(&children), vec![pair("edge-01", "online")]);
    }

    /// At the root: a member silent with its hub is unknown, its hub offline; both back
    /// are online; a member that stays silent once its hub is back is offline.
    #[test]
    fn members_silent_with_their_hub_are_unknown_then_offline_if_they_stay_silent() {
        let children = Children::new(ROOT, Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        children.heard(HUB, None, at(0), wall());
        children.heard("edge-01", Some(HUB), at(0), wall());
        children.heard("edge-02", Some(HUB), at(0), wall());
        let census = children.census_at(at(31));
        assert_eq!((census.online, census.offline, census.unknown), (0, 1, 2));
        let mut changes = statuses(&children);
        changes.sort();
        assert_eq!(
            changes,
            vec![
                pair("edge-01", "unknown"),
                pair("edge-02", "unknown"),
                pair(HUB, "offline")
            ]
        );
        // The hub comes back with edge-01's queued heartbeats; edge-02 stays silent.
        children.heard(HUB, None, at(40), wall());
        children.heard("edge-01", Some(HUB), at(40), wall());
        let mut changes = statuses(&children);
        changes.sort();
        assert_eq!(
            changes,
            vec![pair("edge-01", "online"), pair(HUB, "online")]
        );
        children.heard(HUB, None, at(65), wall());
        children.heard("edge-01", Some(HUB), at(65), wall());
        children.census_at(at(70));
        assert_eq!(statuses(&children), vec![], "the hub may still report it");
        children.census_at(at(71));
        assert_eq!(statuses(&children), vec![pair("edge-02", "offline")]);
    }

    /// At the root, a member behind a running hub is the hub's to report; a report by the
    /// hub is taken as said, a report by another node is not.
    #[test]
    fn members_behind_a_running_hub_are_reported_by_the_hub() {
        let children = Children::new(ROOT, Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        children.heard(HUB, None, at(0), wall());
        children.heard("edge-01", Some(HUB), at(0), wall());
        for s in (10..=30).step_by(10) {
            children.heard(HUB, None, at(s), wall());
            children.census_at(at(s));
        }
        children.noted("edge-01", NodeStatus::Offline, HUB);
        for s in (40..=200).step_by(10) {
            children.heard(HUB, None, at(s), wall());
            let census = children.census_at(at(s));
            assert_eq!(census.offline, 1, "at {s} s");
        }
        assert_eq!(statuses(&children), vec![], "the hub said it");
        // The member back: the hub reports that too.
        children.heard("edge-01", Some(HUB), at(201), wall());
        assert_eq!(statuses(&children), vec![]);
        assert_eq!(children.census_at(at(201)).online, 2);

        // A report by a node that is not its parent is not taken: silent with its hub,
        // the member is still unknown to the root.
        children.noted("edge-01", NodeStatus::Offline, "hub-02");
        let census = children.census_at(at(240));
        assert_eq!((census.offline, census.unknown), (1, 1));
        let mut changes = statuses(&children);
        changes.sort();
        assert_eq!(
            changes,
            vec![pair("edge-01", "unknown"), pair(HUB, "offline")]
        );
    }

    /// A member behind a running hub that the hub never reports (it restarted and never
    /// heard it) is reported offline by the root after twice `offline_after`.
    #[test]
    fn a_member_its_running_hub_never_reports_is_reported_by_the_root() {
        let children = Children::new(ROOT, Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        children.heard(HUB, None, at(0), wall());
        children.heard("edge-01", Some(HUB), at(0), wall());
        for s in (10..=60).step_by(10) {
            children.heard(HUB, None, at(s), wall());
            children.census_at(at(s));
        }
        assert_eq!(statuses(&children), vec![]);
        children.census_at(at(61));
        assert_eq!(statuses(&children), vec![pair("edge-01", "offline")]);
    }

    /// While this node cannot hear its children (its next hop is down), their silence is
    /// unknown and not reported; heartbeats read late from the backlog move the last-seen
    /// time without bringing back a child reported silent.
    #[test]
    fn a_blind_node_reports_no_silence_and_a_late_backlog_brings_nobody_back() {
        let children = Children::new(HUB, Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        children.heard("edge-01", None, at(0), wall());
        children.heard("edge-02", None, at(0), wall());
        children.blind(at(60));
        let census = children.census_at(at(45));
        assert_eq!((census.online, census.offline, census.unknown), (0, 0, 2));
        assert_eq!(statuses(&children), vec![]);
        // The next hop is back: the backlog is read; edge-01 ran, edge-02 had died at 5 s.
        children.heard_at("edge-01", None, at(50), wall(), at(55));
        children.heard_at("edge-02", None, at(5), wall(), at(55));
        children.census_at(at(61));
        assert_eq!(statuses(&children), vec![pair("edge-02", "offline")]);
        // A copy of an old heartbeat of edge-02, read now: still offline.
        children.heard_at("edge-02", None, at(10), wall(), at(62));
        assert_eq!(statuses(&children), vec![]);
        assert_eq!(children.census_at(at(62)).offline, 1);
        // A fresh one: back, with how long it was silent.
        children.heard_at("edge-02", None, at(70), wall(), at(70));
        let back = children.take_changes();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].status, NodeStatus::Online);
        assert_eq!(back[0].silent, Duration::from_secs(60));
    }

    #[test]
    fn a_report_names_the_child_its_status_and_when_it_was_last_seen() {
        let change = StatusChange {
            node_id: "edge-01".into(),
            status: NodeStatus::Unknown,
            last_seen: OffsetDateTime::UNIX_EPOCH,
            silent: Duration::from_secs(31),
            via: Some(HUB.into()),
        };
        let payload = Value::Object(status_payload(ROOT, &change));
        assert_eq!(
            payload,
            json!({
                "node_id": "edge-01",
                "status": "unknown",
                "last_seen": "1970-01-01T00:00:00.000Z",
                "silent_secs": 31,
                "reporter": ROOT,
                "parent": HUB,
            })
        );
    }

    /// A child silent far longer than `offline_after` is gone: forgotten, counted as such,
    /// and watched afresh if it ever comes back.
    #[test]
    fn a_child_silent_far_longer_than_offline_after_is_forgotten() {
        let offline_after = Duration::from_secs(30);
        let children = Children::new(HUB, offline_after);
        let forget_after = FORGET_AFTER_MIN.max(offline_after * FORGET_AFTER_OFFLINES);
        let t0 = Instant::now();
        children.heard("edge-01", Some(HUB), t0, wall());
        children.heard("edge-02", Some(HUB), t0, wall());
        let mut now = t0;
        // edge-02 keeps heartbeating; edge-01 stopped.
        while now < t0 + forget_after {
            now += Duration::from_secs(10);
            children.heard("edge-02", Some(HUB), now, wall());
            let census = children.census_at(now);
            let silent_one = usize::from(now <= t0 + offline_after);
            assert_eq!(census.online, 1 + silent_one);
            assert_eq!(census.offline + census.online, 2, "offline until forgotten");
        }
        now += Duration::from_secs(10);
        children.heard("edge-02", Some(HUB), now, wall());
        let census = children.census_at(now);
        assert_eq!((census.online, census.offline, census.forgotten), (1, 0, 1));
        assert_eq!(children.online("edge-01"), None);
        assert_eq!(children.len(), 1);
        children.heard("edge-01", Some(HUB), now, wall());
        let census = children.census_at(now);
        assert_eq!((census.online, census.offline, census.forgotten), (2, 0, 1));
    }

    /// At the cap, a new child takes the place of the one silent longest.
    #[test]
    fn at_the_cap_the_child_silent_longest_makes_room() {
        let children =
            Children::with_bounds(HUB, Duration::from_secs(30), Duration::from_secs(3600), 2);
        let t0 = Instant::now();
        children.heard("edge-01", None, t0, wall());
        children.heard("edge-02", None, t0 + Duration::from_secs(1), wall());
        children.heard("edge-01", None, t0 + Duration::from_secs(2), wall());
        children.heard("edge-03", None, t0 + Duration::from_secs(3), wall());
        assert_eq!(children.len(), 2);
        assert_eq!(children.online("edge-02"), None, "silent longest");
        assert!(children.online("edge-01").is_some());
        assert!(children.online("edge-03").is_some());
        assert_eq!(children.census_at(t0 + Duration::from_secs(4)).forgotten, 1);
    }

    /// The watch is keyed by node id: a child that rotated its key is the same child.
    #[test]
    fn a_child_back_with_a_rotated_key_is_the_same_child() {
        let children = Children::new(HUB, Duration::from_secs(30));
        let t0 = Instant::now();
        children.heard("edge-01", Some(HUB), t0, wall());
        let census = children.census_at(t0 + Duration::from_secs(60));
        assert_eq!((census.online, census.offline), (0, 1));
        // Heartbeats under the new key name the same node (the observer is given `source`).
        children.heard("edge-01", Some(HUB), t0 + Duration::from_secs(61), wall());
        let census = children.census_at(t0 + Duration::from_secs(62));
        assert_eq!((census.online, census.offline), (1, 0));
        assert_eq!(children.len(), 1);
    }

    /// The queue of changes is bounded: the oldest give way.
    #[test]
    fn pending_changes_are_bounded() {
        let children = Children::new(HUB, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..(MAX_PENDING + 10) {
            children.heard(&format!("edge-{i}"), None, t0, wall());
        }
        children.census_at(t0 + Duration::from_secs(2));
        let changes = children.take_changes();
        assert_eq!(changes.len(), MAX_PENDING);
        assert_eq!(children.lock().dropped, 10);
    }
}
