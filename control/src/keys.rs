//! The master key's lifecycle, for operators: `tributary keys init|rotate|reseal`.
//!
//! Only these commands create or change a key; services load it and refuse to start without one.
//! A rotation loses nothing: `rotate` puts a new key first in the ring and keeps the old one, so
//! both open; once every service has restarted with the ring, `reseal` seals every store's secrets
//! again under the new key and publishes them, and `--retire` then drops the old key.
//!
//! A reseal runs beside a live control plane. Kafka has no compare-and-set, so it checks its own
//! writes instead: after publishing, it reads the topic again, and a store changed by someone else
//! between the reseal's read and its write (which the write overwrote with older content) is
//! published again from that newer record, re-sealed. It repeats until every store's latest record
//! is sealed under the current key and none of its writes is the latest over a change it
//! overwrote. What it cannot see: a change it overwrote that a third write, made after it from its
//! stale record, carried on (that writer read the overwritten state), and a change compaction
//! removed before the re-read. Reseal when connections are quiet to avoid both.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tributary_runtime::secrets::{access_token_purpose, webhook_secret_purpose, MasterKey};
use tributary_schemas::topics;
use tributary_schemas::Store;

use rdkafka::producer::FutureProducer;
use tributary_runtime::control::follow_table;
use tributary_runtime::kafka::{producer_config, publish_record, publish_tombstone};

/// The store with each secret sealed again under the ring's current key.
///
/// Errors: a secret that opens under no key of the ring.
pub fn resealed(mut store: Store, key: &MasterKey) -> anyhow::Result<Store> {
    let domain = store.domain.clone();
    let purpose = webhook_secret_purpose(&domain);
    for sealed in &mut store.webhook_secrets_sealed {
        *sealed = key
            .reseal(&purpose, sealed)
            .with_context(|| format!("{domain}: a webhook secret"))?;
    }
    if let Some(admin) = &mut store.admin {
        admin.access_token_sealed = key
            .reseal(&access_token_purpose(&domain), &admin.access_token_sealed)
            .with_context(|| format!("{domain}: the Admin API access token"))?;
    }
    Ok(store)
}

/// Whether every secret of the store is sealed under the ring's current key.
fn sealed_under_current(store: &Store, key: &MasterKey) -> bool {
    let purpose = webhook_secret_purpose(&store.domain);
    store
        .webhook_secrets_sealed
        .iter()
        .all(|sealed| key.sealed_under_current(&purpose, sealed))
        && store.admin.as_ref().is_none_or(|admin| {
            key.sealed_under_current(
                &access_token_purpose(&store.domain),
                &admin.access_token_sealed,
            )
        })
}

/// One key's records on the stores topic, oldest first: (offset, the store or `None` for a
/// tombstone).
type History = Vec<(i64, Option<Store>)>;

/// What this reseal wrote for a key: the offset of the record its latest write was based on, and
/// the offsets of all its writes, the latest last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub base: i64,
    pub ours: Vec<i64>,
}

/// What a key needs next, given its history and what this reseal wrote for it (if anything): the
/// record to publish (resealed by the caller; `None`: a tombstone) and the offset it is based on.
/// `None` when the key is done: its latest record is sealed under the current key, and no one
/// else's write lies between the base of ours and ours.
pub fn next_write(
    history: &History,
    written: Option<&Written>,
    key: &MasterKey,
) -> Option<(i64, Option<Store>)> {
    let (latest_offset, latest) = history.last()?;
    if let Some(Written { base, ours }) = written {
        if ours.last() == Some(latest_offset) {
            // Ours is the latest: did someone else write between our read and our write?
            let overwritten = history.iter().rev().find(|(offset, _)| {
                offset > base && offset < latest_offset && !ours.contains(offset)
            })?;
            return Some(overwritten.clone());
        }
    }
    match latest {
        Some(store) if sealed_under_current(store, key) => None,
        Some(store) => Some((*latest_offset, Some(store.clone()))),
        None => None,
    }
}

/// Reads every record of the stores topic, by key.
async fn histories(bootstrap: &str) -> anyhow::Result<BTreeMap<String, History>> {
    let table: Arc<Mutex<BTreeMap<String, History>>> = Arc::default();
    let writer = table.clone();
    let shutdown = CancellationToken::new();
    follow_table::<Store, _>(
        bootstrap,
        topics::STORES,
        &shutdown,
        move |key, store, offset| {
            writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.to_owned())
                .or_default()
                .push((offset, store));
        },
    )
    .await?;
    shutdown.cancel();
    let histories = std::mem::take(&mut *table.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(histories)
}

/// Re-seals every store's secrets under `key`'s current key and publishes them, until every
/// store's latest record is sealed under it and no concurrent change was overwritten (see the
/// module's doc); returns how many records were published.
///
/// Errors: a secret that opens under no key of the ring (nothing more is published then), the
/// broker, or a topic that keeps changing for 20 rounds.
pub async fn reseal_stores(bootstrap: &str, key: &MasterKey) -> anyhow::Result<usize> {
    let producer: FutureProducer = producer_config(bootstrap, Duration::from_secs(10)).create()?;
    let mut written: HashMap<String, Written> = HashMap::new();
    let mut published = 0;
    for _ in 0..20 {
        let mut todo = Vec::new();
        for (store_key, history) in histories(bootstrap).await? {
            if let Some((base, record)) = next_write(&history, written.get(&store_key), key) {
                let record = record.map(|store| resealed(store, key)).transpose()?;
                todo.push((store_key, base, record));
            }
        }
        if todo.is_empty() {
            return Ok(published);
        }
        for (store_key, base, record) in todo {
            let (_, at) = match &record {
                Some(store) => publish_record(&producer, topics::STORES, &store_key, store).await?,
                None => publish_tombstone(&producer, topics::STORES, &store_key).await?,
            };
            let entry = written.entry(store_key).or_default();
            entry.base = base;
            entry.ours.push(at);
            published += 1;
        }
    }
    anyhow::bail!("the stores topic kept changing through 20 rounds of re-sealing; run it again")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{store_record, StoreEntry};

    fn store(key: &MasterKey, settle_delay_minutes: u32) -> Store {
        let entry: StoreEntry = toml::from_str(&format!(
            "domain = \"s.myshopify.com\"\nwebhook_secrets = [\"shh\"]\nsettle_delay_minutes = {settle_delay_minutes}"
        ))
        .unwrap();
        store_record(&entry, key)
    }

    #[test]
    fn a_change_made_between_the_reseal_s_read_and_its_write_is_published_again() {
        let old = MasterKey::generate();
        let new = MasterKey::generate();
        let ring =
            MasterKey::from_base64(&format!("{},{}", new.to_base64(), old.to_base64())).unwrap();
        // Offset 3: the store under the old key; the reseal reads it and must write it again.
        let mut history: History = vec![(3, Some(store(&old, 0)))];
        let (base, first) = next_write(&history, None, &ring).unwrap();
        assert_eq!(
            (base, first.as_ref().map(|s| s.settle_delay_minutes)),
            (3, Some(0))
        );
        // Meanwhile the control plane changes the delay (offset 4, sealed under the new key), and
        // the reseal's write of the old content lands after it (offset 5).
        history.push((4, Some(store(&ring, 10))));
        history.push((5, Some(resealed(first.unwrap(), &ring).unwrap())));
        let mut written = Written {
            base: 3,
            ours: vec![5],
        };
        let (base, again) = next_write(&history, Some(&written), &ring).unwrap();
        assert_eq!(
            (base, again.map(|s| s.settle_delay_minutes)),
            (4, Some(10)),
            "the overwritten change comes back"
        );
        // Once that is written, nothing is left to do.
        history.push((6, Some(resealed(store(&ring, 10), &ring).unwrap())));
        (written.base, written.ours) = (4, vec![5, 6]);
        assert_eq!(next_write(&history, Some(&written), &ring), None);
        // A later write under the old key (a service not yet restarted) is re-sealed too; one
        // under the new key is left alone.
        history.push((7, Some(store(&old, 20))));
        assert_eq!(
            next_write(&history, Some(&written), &ring).map(|(b, _)| b),
            Some(7)
        );
        history.push((8, Some(store(&ring, 20))));
        assert_eq!(next_write(&history, Some(&written), &ring), None);
    }
}
