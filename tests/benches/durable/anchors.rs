//! The anchors: what the harness itself achieves on the same servers and the same core,
//! for the agent's figures to be read against (the module doc of `main.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt as _;
use nexus_e2e::bench::events;
use nexus_e2e::{wait_until, NatsCluster};
use nexus_federation::{subject, SignedEvent};
use nexus_policies::{keys, PublicKey, Signature};
use tokio::time::Instant;

use super::{rate, server, to_ingress, DEADLINE, HOP_BATCH, SETUP_DEADLINE};

/// The signed events into one file stream with `window` PubAcks in flight; events/s.
pub async fn raw_publish(events: Arc<Vec<SignedEvent>>, window: usize, durable: bool) -> f64 {
    let server = server(durable);
    publish_into(server.client().await, 1, &events, window).await
}

/// [`raw_publish`] into a stream of three replicas on a three-server cluster
/// (`sync_interval: always`, as a clustered root runs on).
pub async fn raw_publish_replicated(events: Arc<Vec<SignedEvent>>, window: usize) -> f64 {
    let cluster = NatsCluster::start(3);
    publish_into(cluster.client().await, 3, &events, window).await
}

async fn publish_into(
    client: async_nats::Client,
    replicas: usize,
    events: &[SignedEvent],
    window: usize,
) -> f64 {
    let js = jetstream::new(client);
    let config = stream::Config {
        name: "RAW".into(),
        subjects: vec!["nexus.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        num_replicas: replicas,
        ..Default::default()
    };
    // A cluster that has just formed may not place three replicas yet: asked again.
    wait_until("the stream is created", SETUP_DEADLINE, async || {
        js.get_or_create_stream(config.clone()).await
    })
    .await;
    let start = Instant::now();
    events::publish_window(&js, events, window, |e| e.subject.clone()).await;
    rate(events.len(), start.elapsed())
}

/// A plain async-nats hop (module doc); events/s from the consumer's start until OUT
/// acknowledged every message.
pub async fn hop(events: Arc<Vec<SignedEvent>>, durable: bool) -> f64 {
    let (a, b) = (server(durable), server(durable));
    let (js_a, js_b) = (
        jetstream::new(a.client().await),
        jetstream::new(b.client().await),
    );
    for (js, name) in [(&js_a, "IN"), (&js_b, "OUT")] {
        js.create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{}.>", subject::INGRESS_PREFIX)],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("stream");
    }
    events::publish_window(&js_a, &events, 1024, to_ingress).await;
    let consumer = js_a
        .get_stream("IN")
        .await
        .expect("IN")
        .create_consumer(pull::Config {
            durable_name: Some("hop".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: (HOP_BATCH * 4) as i64,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let start = Instant::now();
    let mut chunks = consumer
        .messages()
        .await
        .expect("messages")
        .ready_chunks(HOP_BATCH);
    let mut forwarded = 0;
    while forwarded < events.len() {
        let chunk = tokio::time::timeout(DEADLINE, chunks.next())
            .await
            .expect("IN delivers")
            .expect("the consumer does not end");
        let batch: Vec<_> = chunk.into_iter().map(|m| m.expect("a message")).collect();
        let mut acks = Vec::with_capacity(batch.len());
        for message in &batch {
            let mut publish =
                jetstream::message::PublishMessage::build().payload(message.payload.clone());
            if let Some(headers) = &message.headers {
                publish = publish.headers(headers.clone());
            }
            acks.push(
                js_b.send_publish(message.subject.to_string(), publish)
                    .await
                    .expect("publish"),
            );
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            ack.expect("PubAck");
        }
        for message in &batch {
            message.ack().await.expect("ack");
        }
        forwarded += batch.len();
    }
    rate(forwarded, start.elapsed())
}

/// Best of three rounds of `round` over the events, events/s on this (one) thread.
fn best_of_three(events: &[SignedEvent], round: impl Fn(&[SignedEvent])) -> f64 {
    (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            round(events);
            events.len() as f64 / start.elapsed().as_secs_f64().max(f64::EPSILON)
        })
        .fold(0.0, f64::max)
}

pub fn verify_single(events: &[SignedEvent]) -> f64 {
    best_of_three(events, |events| {
        for event in events {
            event
                .signer
                .verify(&event.body, &event.signature)
                .expect("verifies");
        }
    })
}

pub fn verify_batch(events: &[SignedEvent], batch: usize) -> f64 {
    best_of_three(events, |events| {
        for chunk in events.chunks(batch) {
            let items: Vec<(&[u8], &Signature, &PublicKey)> = chunk
                .iter()
                .map(|e| (&e.body[..], &e.signature, &e.signer))
                .collect();
            keys::verify_batch(&items).expect("the batch verifies");
        }
    })
}
