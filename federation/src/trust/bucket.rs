//! The federation's key-value buckets (`NEXUS_CHAINS`, `NEXUS_TRUST`): opened on a link, and
//! created only by the tier that owns the server.

use async_nats::jetstream::kv;

use crate::link::Link;

/// Opens a key-value bucket of the federation on `link`; with `create`, creates it when it
/// does not exist (only the tier that owns the server does that; the tier below waits).
pub async fn bucket(link: &Link, name: &str, create: bool) -> Result<kv::Store, async_nats::Error> {
    let js = link.jetstream();
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(error) if !create => Err(error.into()),
        Err(_) => Ok(js
            .create_key_value(kv::Config {
                bucket: name.to_owned(),
                history: 1,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?),
    }
}
