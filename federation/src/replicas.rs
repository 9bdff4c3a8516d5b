//! Replicas on a JetStream cluster: how many servers keep each stream and key-value bucket a
//! hub or root creates on its own NATS (`ingress.replicas`, `landing.replicas`).
//!
//! Streams are created or updated with the configured count (`create_or_update_stream`:
//! JetStream changes a stream's replicas in place, copying it to the new peers itself). A
//! key-value bucket that exists is scaled the same way, through its stream `KV_<bucket>`,
//! keeping its other settings: `get_key_value` alone would return an existing one-replica
//! bucket as it is. When the server refuses the count (a single server asked for 3, a
//! cluster with too few servers up), the error says which config key set it and what to do.

use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
use async_nats::jetstream::{self, kv, ErrorCode};
use tracing::info;

/// Opens the bucket `config.bucket`, creating it with `config` when it does not exist, and
/// gives an existing one `config.num_replicas` replicas (its other settings are kept). `key`
/// is the config key the replica count comes from, named when the server refuses it.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    config: kv::Config,
    key: &str,
) -> Result<kv::Store, String> {
    let name = config.bucket.clone();
    let replicas = config.num_replicas.max(1);
    let store = match js.get_key_value(&name).await {
        Ok(store) => store,
        Err(_) => match js.create_key_value(config).await {
            Ok(store) => return Ok(store),
            // Another instance (or the revocation watch) may have created it meanwhile.
            Err(error) => js
                .get_key_value(&name)
                .await
                .map_err(|_| explain(&error, &format!("KV bucket {name}"), key, replicas))?,
        },
    };
    let mut stream = store.stream.cached_info().config.clone();
    if stream.num_replicas.max(1) != replicas {
        let from = stream.num_replicas.max(1);
        stream.num_replicas = replicas;
        js.update_stream(&stream)
            .await
            .map_err(|e| explain(&e, &format!("KV bucket {name}"), key, replicas))?;
        info!(bucket = %name, from, to = replicas, "Key-value bucket scaled to the configured replicas.");
    }
    Ok(store)
}

/// `error` of creating or updating `what` with `replicas` replicas, followed by what the
/// refusal means and how to fix it when the server refused the replica count set by `key`.
pub fn explain(
    error: &(dyn std::error::Error + 'static),
    what: &str,
    key: &str,
    replicas: usize,
) -> String {
    let refusal = refusal_of(error);
    match refusal
        .as_ref()
        .and_then(|r| hint(r.error_code(), key, replicas))
    {
        // The server's own words once (the client's error repeats them), then the fix.
        Some(hint) => format!(
            "{what}: refused by the server: {}: {hint}",
            refusal.map_or_else(String::new, |r| r.to_string())
        ),
        None => format!("{what}: {error}"),
    }
}

/// What a refusal with `code` means for `key = replicas`, if it is about the replicas.
fn hint(code: ErrorCode, key: &str, replicas: usize) -> Option<String> {
    match code {
        ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED => Some(format!(
            "{key} = {replicas}, but this nats-server is not part of a JetStream cluster and \
             keeps one copy only: set {key} = 1, or run a JetStream cluster of at least \
             {replicas} servers (docs/deploy-root-cluster.md)"
        )),
        ErrorCode::CLUSTER_NO_PEERS | ErrorCode::INSUFFICIENT_RESOURCES => Some(format!(
            "{key} = {replicas} needs {replicas} JetStream servers of the cluster up, each with \
             room in its store: start the missing servers (the agent keeps retrying), or lower \
             {key}"
        )),
        ErrorCode::STREAM_REPLICAS_NOT_UPDATABLE => Some(format!(
            "this nats-server cannot change the replicas of an existing stream: upgrade it, \
             or set {key} back to the stream's current count"
        )),
        _ => None,
    }
}

/// The JetStream API error somewhere in `error`'s chain (the server's refusal), if any.
fn refusal_of(error: &(dyn std::error::Error + 'static)) -> Option<jetstream::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(error) = error.downcast_ref::<CreateStreamError>() {
            if let CreateStreamErrorKind::JetStream(error) = error.kind() {
                return Some(error);
            }
        }
        if let Some(error) = error.downcast_ref::<jetstream::Error>() {
            return Some(error.clone());
        }
        next = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_the_replica_count_name_the_key_and_the_fix() {
        let single = hint(
            ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
            "ingress.replicas",
            3,
        )
        .expect("a hint");
        assert!(
            single.contains("ingress.replicas = 3") && single.contains("set ingress.replicas = 1"),
            "{single}"
        );
        let few = hint(ErrorCode::INSUFFICIENT_RESOURCES, "landing.replicas", 3).expect("a hint");
        assert!(
            few.contains("needs 3 JetStream servers") && few.contains("lower landing.replicas"),
            "{few}"
        );
        assert_eq!(
            hint(ErrorCode::STREAM_NOT_FOUND, "ingress.replicas", 3),
            None
        );
    }

    #[test]
    fn the_code_is_found_in_the_error_the_client_returns() {
        let refusal: jetstream::Error = serde_json::from_str(
            r#"{"code":500,"err_code":10074,"description":"replicas > 1 not supported in non-clustered mode"}"#,
        )
        .expect("a JetStream error");
        let error = CreateStreamError::new(CreateStreamErrorKind::JetStream(refusal));
        let text = explain(&error, "stream NEXUS_INGRESS", "ingress.replicas", 3);
        assert!(
            text.starts_with(
                "stream NEXUS_INGRESS: refused by the server: replicas > 1 not supported in \
                 non-clustered mode (code 500, error code 10074): ingress.replicas = 3, but"
            ) && text.contains("set ingress.replicas = 1"),
            "{text}"
        );
        let other = CreateStreamError::new(CreateStreamErrorKind::TimedOut);
        assert_eq!(
            explain(&other, "stream X", "ingress.replicas", 3),
            "stream X: jetstream request timed out"
        );
    }
}
