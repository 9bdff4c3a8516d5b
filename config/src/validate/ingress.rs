//! `[ingress]`: the JetStream stream a hub or root takes its children's traffic from, with
//! JetStream's own rule (`duplicate_window <= max_age`) and ours: the window must hold a
//! redelivery over the onward link ([`Reader::redelivery_window`], called from
//! [`Reader::config`](super::Reader::config) once the links are read).

use super::reader::{Reader, Section};
use super::schema::{
    BATCH, BATCH_RANGE, INGRESS_CONSUMER, INGRESS_DUPLICATE_WINDOW, INGRESS_LANDED_TTL,
    INGRESS_MAX_AGE, INGRESS_MAX_BYTES, INGRESS_MAX_DELIVER, INGRESS_MAX_DELIVER_RANGE,
    INGRESS_STREAM, REPLICAS, REPLICAS_RANGE,
};
use crate::error::ErrorKind;
use crate::model::{IngressConfig, LinkConfig};
use crate::source;

impl Reader<'_> {
    /// `[ingress]`: every key optional; `duplicate_window` may not exceed `max_age`.
    pub(super) fn ingress(&mut self, s: &Section<'_>) -> IngressConfig {
        let stream = self.jetstream_name(s, "stream", INGRESS_STREAM);
        let consumer = self.jetstream_name(s, "consumer", INGRESS_CONSUMER);
        let max_bytes = self.integer(s, "max_bytes", 1..=i128::from(i64::MAX));
        let max_age = self.duration(s, "max_age", INGRESS_MAX_AGE);
        let duplicate_window = self.duration(s, "duplicate_window", INGRESS_DUPLICATE_WINDOW);
        if duplicate_window > max_age {
            // nats-server refuses such a stream; say so now rather than at startup, on the
            // key the operator wrote.
            let set = |key: &str| s.dict.and_then(|d| d.get(key)).is_some();
            let (key, message) = if set("duplicate_window") || !set("max_age") {
                (
                    "duplicate_window",
                    format!(
                        "{} is longer than ingress.max_age ({}); JetStream requires \
                         duplicate_window <= max_age",
                        humantime::format_duration(duplicate_window),
                        humantime::format_duration(max_age)
                    ),
                )
            } else {
                (
                    "max_age",
                    format!(
                        "{} is shorter than ingress.duplicate_window ({}, the default); \
                         JetStream requires duplicate_window <= max_age: raise max_age or \
                         set duplicate_window",
                        humantime::format_duration(max_age),
                        humantime::format_duration(duplicate_window)
                    ),
                )
            };
            let origin = s
                .dict
                .and_then(|d| d.get(key))
                .map(|v| source::origin_of(self.figment, v, &[s.name.as_str(), key]))
                .unwrap_or_else(|| self.fallback.clone());
            self.push(
                ErrorKind::InvalidValue,
                origin,
                &format!("{}.{key}", s.name),
                message,
            );
        }
        let batch = self.integer(s, "batch", BATCH_RANGE);
        let max_deliver = self.integer(s, "max_deliver", INGRESS_MAX_DELIVER_RANGE);
        let landed_ttl = self.duration(s, "landed_ttl", INGRESS_LANDED_TTL);
        let replicas = self.replicas(s, "the ingress stream and the key-value buckets");
        IngressConfig {
            stream,
            consumer,
            max_bytes: max_bytes
                .and_then(|v| i64::try_from(v).ok())
                .unwrap_or(INGRESS_MAX_BYTES),
            max_age,
            duplicate_window,
            batch: batch.and_then(|v| usize::try_from(v).ok()).unwrap_or(BATCH),
            max_deliver: max_deliver
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(INGRESS_MAX_DELIVER),
            landed_ttl,
            replicas,
        }
    }

    /// `replicas` of `[ingress]` or `[landing]`: how many servers of a JetStream cluster
    /// keep `what`, 1..=5 (JetStream's own bound). Whether the server can place that many is
    /// known only at run time, where a refusal is logged naming the key.
    pub(super) fn replicas(&mut self, s: &Section<'_>, what: &str) -> usize {
        let number = self.integer(s, "replicas", i128::MIN..=i128::MAX);
        match number {
            Some(n) if REPLICAS_RANGE.contains(&n) => usize::try_from(n).unwrap_or(REPLICAS),
            Some(n) => {
                let origin = self.origin_or_fallback(s, "replicas");
                self.push(
                    ErrorKind::InvalidValue,
                    origin,
                    &format!("{}.replicas", s.name),
                    format!(
                        "{n} is out of range: use {} to {} (how many servers of a JetStream \
                         cluster keep {what}: 1 on a single nats-server, 3 or 5 on a cluster of \
                         at least that many servers)",
                        REPLICAS_RANGE.start(),
                        REPLICAS_RANGE.end()
                    ),
                );
                REPLICAS
            }
            None => REPLICAS,
        }
    }

    /// A copy of an event this node forwarded but could not record as done (a crash, a lost
    /// acknowledgement) is delivered again and must reach the next stream while it still
    /// drops the repeated event_id: `ingress.duplicate_window` must cover what
    /// [`IngressConfig::ack_wait`] and the onward link's `request_timeout` add up to.
    pub(super) fn redelivery_window(
        &mut self,
        s: &Section<'_>,
        ingress: &IngressConfig,
        onward: &str,
        link: &LinkConfig,
    ) {
        let needed = IngressConfig::min_duplicate_window(link.request_timeout);
        if ingress.duplicate_window >= needed
            || self.reported(&format!("{}.duplicate_window", s.name))
        {
            return;
        }
        let origin = self.origin_or_fallback(s, "duplicate_window");
        self.push(
            ErrorKind::InvalidValue,
            origin,
            &format!("{}.duplicate_window", s.name),
            format!(
                "{} is shorter than a redelivery needs: a message forwarded but not yet \
                 acknowledged when the agent crashed (or whose acknowledgement was lost) comes \
                 back after the consumer's ack wait (a quarter of the window, at most 30s) plus up to \
                 {onward}.request_timeout ({}), and must still be inside the window to be \
                 dropped as a copy. Set duplicate_window to at least {} ({} x \
                 {onward}.request_timeout), or lower {onward}.request_timeout",
                humantime::format_duration(ingress.duplicate_window),
                humantime::format_duration(link.request_timeout),
                humantime::format_duration(needed),
                IngressConfig::WINDOW_PER_REQUEST_TIMEOUT,
            ),
        );
    }
}
