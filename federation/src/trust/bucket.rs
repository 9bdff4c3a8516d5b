//! The federation's key-value buckets (`NEXUS_CHAINS`, `NEXUS_TRUST`): opened on a link, and
//! created only by the tier that owns the server, whose ingress gives them its
//! `ingress.replicas` ([`ensure_bucket`]).

use async_nats::jetstream::kv;

use crate::link::Link;

/// Opens a key-value bucket of the federation on `link`; with `create`, creates it when it
/// does not exist (only the tier that owns the server does that; the tier below waits).
pub async fn bucket(link: &Link, name: &str, create: bool) -> Result<kv::Store, async_nats::Error> {
    open_or_create(
        link,
        kv::Config {
            bucket: name.to_owned(),
            history: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        },
        create,
    )
    .await
}

/// Opens the bucket `config.bucket` on `link`; with `create`, creates it as `config` says
/// when it does not exist.
pub async fn open_or_create(
    link: &Link,
    config: kv::Config,
    create: bool,
) -> Result<kv::Store, async_nats::Error> {
    let js = link.jetstream();
    match js.get_key_value(&config.bucket).await {
        Ok(store) => Ok(store),
        Err(error) if !create => Err(error.into()),
        Err(_) => Ok(js.create_key_value(config).await?),
    }
}

/// Opens a key-value bucket of the federation on this tier's own server (`link`), creating
/// it when it does not exist, kept by `replicas` servers of the cluster (`ingress.replicas`):
/// an existing bucket (created by another path with one replica, or before the setting
/// changed) is scaled to it.
pub async fn ensure_bucket(link: &Link, name: &str, replicas: usize) -> Result<kv::Store, String> {
    let config = kv::Config {
        bucket: name.to_owned(),
        history: 1,
        storage: async_nats::jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    crate::replicas::ensure_bucket(link.jetstream(), config, "ingress.replicas").await
}
