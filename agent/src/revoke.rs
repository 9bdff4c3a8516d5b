//! `nexus-agent token revoke`: extend the fleet's signed revocation list and publish it.
//!
//! The list lives in the `revocations` key of the root's `NEXUS_TRUST` bucket; every hub
//! and member watches it from the tier above (see `nexus_federation::revocation`). This
//! command reads the current list (verifying it against the signing root key), adds the
//! ids, signs a new list with a later `issued_at`, and writes it back only if the key is
//! still at the revision it read (the KV store's compare-and-set). When another writer got
//! in between — two operators revoking at once — it reads again, merges again and retries,
//! so no revocation is ever overwritten. With `--out`, the list is also written to a file.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use nexus_federation::trust::{REVOCATIONS_KEY, TRUST_BUCKET};
use nexus_policies::token::{RevocationList, TokenId};
use nexus_policies::{SecretKey, UnixTime};

use crate::keygen::load_secret;

/// How many times the list is read, merged and written before giving up, when other
/// writers keep changing it in between. Each round lets at least one writer through, so
/// this many revocations at once still all succeed.
const MAX_ATTEMPTS: usize = 32;
/// How long to wait for the root's NATS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds `ids` to the revocation list on `server` (and/or in `out`), signed by `key`.
/// The command line requires at least one of `server` and `out`.
pub async fn revoke(
    key: &Path,
    ids: &[TokenId],
    server: Option<&str>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let key = load_secret(key)?;
    let list = match server {
        Some(url) => {
            let store = open_bucket(url).await?;
            publish(&store, &key, ids)
                .await
                .with_context(|| format!("cannot publish the revocation list on {url}"))?
        }
        None => extend(&key, ids, None)?,
    };
    if let Some(path) = out {
        std::fs::write(path, list.encode())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "Revocation list now names {} token(s), issued at {}.",
        list.ids().len(),
        list.issued_at().0
    );
    for id in ids {
        println!("{id}");
    }
    Ok(())
}

/// The `NEXUS_TRUST` bucket on `url`, created if the root has not yet.
async fn open_bucket(url: &str) -> anyhow::Result<kv::Store> {
    let shown = nexus_config::redact_url(url);
    let client = async_nats::ConnectOptions::new()
        .name("nexus-agent token revoke")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {shown}"))?;
    let js = async_nats::jetstream::new(client);
    if let Ok(store) = js.get_key_value(TRUST_BUCKET).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: TRUST_BUCKET.to_owned(),
            history: 1,
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Someone else (the root agent, another revoke) may have created it meanwhile.
        Err(error) => js.get_key_value(TRUST_BUCKET).await.map_err(|_| {
            anyhow!(error).context(format!("cannot open the {TRUST_BUCKET} bucket on {shown}"))
        }),
    }
}

/// Reads the current list, merges `ids` in and writes the result if nobody else wrote in
/// between; otherwise again, up to [`MAX_ATTEMPTS`] times. Returns the list written.
async fn publish(
    store: &kv::Store,
    key: &SecretKey,
    ids: &[TokenId],
) -> anyhow::Result<RevocationList> {
    for _ in 0..MAX_ATTEMPTS {
        let entry = store
            .entry(REVOCATIONS_KEY)
            .await
            .context("cannot read the current revocation list")?;
        // A deleted or purged key holds no list: it is created again.
        let current = entry.filter(|entry| entry.operation == Operation::Put);
        let list = extend(key, ids, current.as_ref().map(|entry| &entry.value[..]))?;
        let bytes = Bytes::from(list.encode());
        let written = match &current {
            Some(entry) => store
                .update(REVOCATIONS_KEY, bytes, entry.revision)
                .await
                .map_err(|e| (e.kind() == UpdateErrorKind::WrongLastRevision, anyhow!(e))),
            None => store
                .create(REVOCATIONS_KEY, bytes)
                .await
                .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, anyhow!(e))),
        };
        match written {
            Ok(_) => return Ok(list),
            // Another writer got in between: read and merge again.
            Err((true, _)) => {}
            Err((false, error)) => return Err(error),
        }
    }
    bail!(
        "the list changed {MAX_ATTEMPTS} times while this command was extending it (other \
         revocations at the same time?); these ids were not added: run the command again"
    )
}

/// A new list naming `ids` and every id of `current` (which must be signed by `key`),
/// issued strictly after `current`.
fn extend(
    key: &SecretKey,
    ids: &[TokenId],
    current: Option<&[u8]>,
) -> anyhow::Result<RevocationList> {
    let mut revoked: Vec<TokenId> = Vec::new();
    for id in ids {
        if !revoked.contains(id) {
            revoked.push(*id);
        }
    }
    let mut previous_at = 0;
    if let Some(bytes) = current {
        let current =
            RevocationList::decode(bytes).context("the current revocation list is malformed")?;
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
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Strictly later than the list it replaces, even with a clock that went backwards.
    let issued_at = UnixTime(now.max(previous_at.saturating_add(1)));
    RevocationList::issue(revoked, issued_at, key).context("cannot sign the revocation list")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_list_keeps_every_id_of_the_current_one_and_is_issued_later() {
        let key = SecretKey::from_seed(&[7; 32]).expect("key");
        let first = extend(&key, &[TokenId([1; 16]), TokenId([1; 16])], None).expect("first");
        assert_eq!(first.ids(), &[TokenId([1; 16])]);
        let second = extend(&key, &[TokenId([2; 16])], Some(&first.encode())).expect("second");
        assert!(second.ids().contains(&TokenId([1; 16])));
        assert!(second.ids().contains(&TokenId([2; 16])));
        assert!(second.issued_at() > first.issued_at());

        let other = SecretKey::from_seed(&[8; 32]).expect("key");
        let refused = extend(&other, &[TokenId([3; 16])], Some(&second.encode()))
            .expect_err("a list signed by another key is not replaced");
        assert!(
            format!("{refused:#}").contains("not signed by this key"),
            "{refused:#}"
        );
    }
}
