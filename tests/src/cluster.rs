//! A JetStream cluster of real nats-servers on loopback, as a clustered root runs on
//! (docs/deploy-root-cluster.md): each server with `sync_interval: always`, a client port
//! and a route port of its own choosing, routes to the others, and a store of its own.
//!
//! The servers start one after the other, each with routes to those before it (so no port
//! is guessed); once every route port is known, every server's config lists all the others,
//! which is what a restart uses. The first server has no one to route to yet, but a
//! clustered JetStream refuses to start without a configured route: it gets a route to
//! [`NO_ROUTE_PORT`], where nothing listens, until its first restart (the others connect to
//! it, and gossip completes the mesh). [`NatsCluster::kill`] and [`NatsCluster::restart`] take one
//! server down like a crash and bring it back on the same ports with the same store. The
//! cluster also says which server leads a stream, and asks a leader to step down.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::Value;

use crate::nats::{NatsServer, NATS_START_DEADLINE};

/// The cluster's name (`cluster { name }`).
pub const CLUSTER_NAME: &str = "nexus-root";
/// The route of the first server while it is alone: a privileged port nothing listens on
/// (connections are refused at once, and nats-server reports that once).
pub const NO_ROUTE_PORT: u16 = 1;

/// Three or more JetStream servers routed to each other. Dropping it kills every server
/// still owned only by it.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Arc<NatsServer>>,
}

impl NatsCluster {
    /// Starts `size` servers named `node-a`, `node-b`, … and waits until each serves
    /// JetStream (the cluster has elected its JetStream leader); panics with a server's log
    /// tail otherwise.
    pub fn start(size: usize) -> NatsCluster {
        assert!(
            (1..=26).contains(&size),
            "a cluster of 1 to 26 servers, not {size}"
        );
        let nodes: Vec<Arc<NatsServer>> = (0..size)
            .map(|i| {
                let name = format!("node-{}", char::from(b'a' + i as u8));
                Arc::new(NatsServer::prepare(
                    NatsServer::builder()
                        .server_name(&name)
                        .cluster(CLUSTER_NAME)
                        .sync_always(),
                ))
            })
            .collect();
        let mut route_ports = Vec::with_capacity(size);
        for node in &nodes {
            node.set_routes(if route_ports.is_empty() {
                vec![NO_ROUTE_PORT]
            } else {
                route_ports.clone()
            });
            let pid = node.spawn();
            node.wait_listening(pid);
            route_ports.push(node.cluster_port());
        }
        for node in &nodes {
            let own = node.cluster_port();
            node.set_routes(route_ports.iter().copied().filter(|p| *p != own).collect());
            node.write_config();
        }
        for node in &nodes {
            node.wait_ready();
        }
        NatsCluster { nodes }
    }

    /// Every server, in start order.
    pub fn nodes(&self) -> &[Arc<NatsServer>] {
        &self.nodes
    }

    /// Server `index` (panics if there is none).
    pub fn node(&self, index: usize) -> &Arc<NatsServer> {
        &self.nodes[index]
    }

    /// Every server's client URL, comma-separated (what a `[local]` `url` lists).
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        urls.join(",")
    }

    /// The index of the server named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.server_name() == Some(name))
    }

    /// SIGKILLs server `index` (a crash); its ports and store are kept.
    pub fn kill(&self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts server `index` again on the same ports with the same store, routed to the
    /// others, and waits until it serves JetStream.
    pub fn restart(&self, index: usize) {
        self.nodes[index].restart();
    }

    /// A client that knows every server (it reconnects to another when one dies).
    pub async fn client(&self) -> async_nats::Client {
        let url = self.url();
        let urls: Vec<String> = self.nodes.iter().map(|n| n.url()).collect();
        let connect = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(urls);
        match tokio::time::timeout(NATS_START_DEADLINE, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!("cannot connect to {url}: {e}"),
            Err(_) => panic!("connecting to {url} timed out"),
        }
    }

    /// The index of the server leading `stream` now, with the stream's replica count as
    /// its config says and how many peers (leader included) it has; `Err` with what was seen
    /// while it has no leader (an election) or cannot be read.
    pub async fn stream_placement(
        &self,
        js: &jetstream::Context,
        stream: &str,
    ) -> Result<Placement, String> {
        let mut handle = js
            .get_stream(stream)
            .await
            .map_err(|e| format!("stream {stream}: {e}"))?;
        let info = handle
            .info()
            .await
            .map_err(|e| format!("stream {stream}: {e}"))?;
        let cluster = info
            .cluster
            .as_ref()
            .ok_or_else(|| format!("stream {stream} has no cluster info"))?;
        let leader = cluster
            .leader
            .as_deref()
            .ok_or_else(|| format!("stream {stream} has no leader now"))?;
        let leader = self
            .index_of(leader)
            .ok_or_else(|| format!("stream {stream} is led by unknown server {leader}"))?;
        Ok(Placement {
            leader,
            replicas: info.config.num_replicas,
            peers: 1 + cluster.replicas.len(),
            current: 1 + cluster
                .replicas
                .iter()
                .filter(|p| p.current && !p.offline)
                .count(),
        })
    }

    /// Asks the leader of `stream` to step down (`$JS.API.STREAM.LEADER.STEPDOWN.<stream>`),
    /// and waits (bounded) until another server leads it; returns the new leader's index.
    pub async fn step_down(
        &self,
        client: &async_nats::Client,
        stream: &str,
        deadline: Duration,
    ) -> Result<usize, String> {
        let js = jetstream::new(client.clone());
        let before = self.stream_placement(&js, stream).await?.leader;
        let reply = client
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                "".into(),
            )
            .await
            .map_err(|e| format!("step-down request for {stream}: {e}"))?;
        let answer: Value = serde_json::from_slice(&reply.payload)
            .map_err(|e| format!("step-down answer for {stream} is not JSON: {e}"))?;
        if answer.get("success") != Some(&Value::Bool(true)) {
            return Err(format!("step-down of {stream} refused: {answer}"));
        }
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let seen = match self.stream_placement(&js, stream).await {
                Ok(placement) if placement.leader != before => return Ok(placement.leader),
                Ok(_) => format!("{stream} still led by {before}"),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= end {
                return Err(format!(
                    "no new leader of {stream} within {deadline:?}: {seen}"
                ));
            }
            tokio::time::sleep(crate::wait::POLL_INTERVAL).await;
        }
    }
}

/// Where a stream lives in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The index of the server leading it.
    pub leader: usize,
    /// `num_replicas` of its config.
    pub replicas: usize,
    /// The servers keeping it (the leader and its followers, reachable or not).
    pub peers: usize,
    /// Of those, the ones up to date with the leader (the leader included).
    pub current: usize,
}
