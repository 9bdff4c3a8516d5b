//! `nexus-agent token revoke`: extend the fleet's signed revocation list and publish it.
//!
//! The list lives in the `revocations` key of the root's `NEXUS_TRUST` bucket; every hub
//! and member watches it from the tier above (see `nexus_federation::revocation`). This
//! command reads the current list (verifying it against the signing root key), adds the
//! ids, signs a new list with a later `issued_at`, and puts it back. With `--out`, the list
//! is also written to a file.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use nexus_federation::trust::{REVOCATIONS_KEY, TRUST_BUCKET};
use nexus_policies::token::{RevocationList, TokenId};
use nexus_policies::UnixTime;

use crate::keygen::load_secret;

/// Adds `ids` to the revocation list on `server` (and/or in `out`), signed by `key`.
pub async fn revoke(
    key: &Path,
    ids: &[String],
    server: Option<&str>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    if server.is_none() && out.is_none() {
        bail!("nothing to do: give --server URL (the root's NATS) and/or --out FILE");
    }
    let key = load_secret(key)?;
    let mut revoked: Vec<TokenId> = Vec::new();
    for id in ids {
        let parsed: TokenId = id.parse().map_err(|_| {
            anyhow::anyhow!(
                "`{id}` is not a token id (as printed by `token issue` and `token inspect`)"
            )
        })?;
        revoked.push(parsed);
    }
    let store = match server {
        Some(url) => {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(5))
                .connect(url)
                .await
                .with_context(|| format!("cannot connect to {url}"))?;
            let js = async_nats::jetstream::new(client);
            let store = match js.get_key_value(TRUST_BUCKET).await {
                Ok(store) => store,
                Err(_) => js
                    .create_key_value(async_nats::jetstream::kv::Config {
                        bucket: TRUST_BUCKET.to_owned(),
                        history: 1,
                        storage: async_nats::jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("cannot open the {TRUST_BUCKET} bucket on {url}"))?,
            };
            Some(store)
        }
        None => None,
    };
    let mut previous_at = 0;
    if let Some(store) = &store {
        if let Some(bytes) = store
            .get(REVOCATIONS_KEY)
            .await
            .context("cannot read the current revocation list")?
        {
            let current = RevocationList::decode(&bytes)
                .context("the current revocation list is malformed")?;
            current.verify(&[key.public()]).context(
                "the current revocation list is not signed by this key; refusing to replace it",
            )?;
            previous_at = current.issued_at().0;
            for id in current.ids() {
                if !revoked.contains(id) {
                    revoked.push(*id);
                }
            }
        }
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Strictly later than the list it replaces, even with a clock that went backwards.
    let issued_at = UnixTime(now.max(previous_at + 1));
    let list = RevocationList::issue(revoked.clone(), issued_at, &key)
        .context("cannot sign the revocation list")?;
    let bytes = list.encode();
    if let Some(path) = out {
        std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(store) = &store {
        store
            .put(REVOCATIONS_KEY, Bytes::from(bytes))
            .await
            .context("cannot publish the revocation list")?;
    }
    eprintln!(
        "Revocation list now names {} token(s), issued at {}.",
        revoked.len(),
        issued_at.0
    );
    for id in ids {
        println!("{id}");
    }
    Ok(())
}
