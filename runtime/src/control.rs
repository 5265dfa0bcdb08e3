//! Control topics read as tables: every record from the beginning, then follow new ones; and
//! [`Control`], stores and advocates indexed as attribution and writeback look them up.
//!
//! Stores and advocates reach ingest and the processors this way (like a Kafka Streams
//! `GlobalKTable`). A component waits until it has caught up to the high watermarks seen at start
//! before it handles traffic, so a restart never runs on half-loaded control data.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::kafka::{client_config, partitions_of, TopicError};
use tributary_schemas::{topics, AvroRecord};
use tributary_schemas::{Advocate, AdvocateStatus, Store, StoreStatus};

/// Follows a control topic in the background; returns once it has caught up.
pub async fn follow_table<T, F>(
    bootstrap: &str,
    topic: &'static str,
    shutdown: &CancellationToken,
    apply: F,
) -> Result<Arc<AtomicBool>, TopicError>
where
    T: AvroRecord + 'static,
    F: FnMut(&str, Option<T>, i64) + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let bootstrap = bootstrap.to_owned();
    let shutdown = shutdown.clone();
    let healthy = Arc::new(AtomicBool::new(false));
    let health = healthy.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            Err(error) = follow::<T, F>(&bootstrap, topic, apply, tx, health) => {
                tracing::error!(topic, %error, "control topic reader could not start");
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(60), rx).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(TopicError::NotCaughtUp(topic, "its reader stopped")),
        Err(_) => return Err(TopicError::NotCaughtUp(topic, "60 s passed")),
    }
    Ok(healthy)
}

/// Stores and advocates, followed in the background; returns once both have caught up. Both
/// followers count in `readiness`.
pub async fn follow_stores_and_advocates(
    bootstrap: &str,
    shutdown: &CancellationToken,
    readiness: &crate::ops::Readiness,
) -> Result<Arc<RwLock<Control>>, TopicError> {
    let control = Arc::new(RwLock::new(Control::default()));
    let stores = control.clone();
    let stores_followed = follow_table::<Store, _>(
        bootstrap,
        topics::STORES,
        shutdown,
        move |key, store, offset| {
            stores
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply_store(key, store, offset);
        },
    )
    .await?;
    readiness.track("stores topic", stores_followed);
    let advocates = control.clone();
    let advocates_followed = follow_table::<Advocate, _>(
        bootstrap,
        topics::ADVOCATES,
        shutdown,
        move |key, advocate, _| {
            advocates
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .apply_advocate(key, advocate)
        },
    )
    .await?;
    readiness.track("advocates topic", advocates_followed);
    Ok(control)
}

/// How often a follower checks that the broker answers while its topic is quiet.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Reads `topic` from the beginning and calls `apply(key, record, offset)` for each record (`None`
/// for a tombstone). A record that does not decode is never taken for a deletion: the table keeps the
/// last value it could read for that key, and the record is logged and counted
/// (`tributary_control_unreadable_total`). `caught_up` fires once every partition has been read up
/// to its high watermark at start.
///
/// Runs until the task is dropped; it returns only if it cannot start. A consumer error (a broker
/// away) never stops it: it is logged and counted (`tributary_control_follower_errors_total`),
/// `healthy` turns false, and the follower goes on where it was once the broker answers. `healthy`
/// is true after a record or a successful probe of the broker (every 5 s) and false after an
/// error, so readiness can show a table that may be stale.
pub async fn follow<T, F>(
    bootstrap_servers: &str,
    topic: &str,
    mut apply: F,
    caught_up: oneshot::Sender<()>,
    healthy: Arc<AtomicBool>,
) -> Result<(), TopicError>
where
    T: AvroRecord,
    F: FnMut(&str, Option<T>, i64),
{
    let consumer: Arc<StreamConsumer> = Arc::new(
        client_config(bootstrap_servers)
            .set("group.id", "tributary-control-reader")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?,
    );
    let (assignment, mut remaining) = start_positions(&consumer, topic)?;
    consumer.assign(&assignment)?;
    let probed = assignment.elements().first().map(|e| e.partition());
    let mut caught_up = Some(caught_up);
    let mut probe = tokio::time::interval(PROBE_INTERVAL);
    loop {
        if remaining.is_empty() {
            if let Some(tx) = caught_up.take() {
                healthy.store(true, Ordering::SeqCst);
                let _ = tx.send(());
            }
        }
        let received = tokio::select! {
            received = consumer.recv() => received,
            _ = probe.tick() => {
                if caught_up.is_none() {
                    let answered = broker_answers(&consumer, topic, probed).await;
                    healthy.store(answered, Ordering::SeqCst);
                }
                continue;
            }
        };
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                healthy.store(false, Ordering::SeqCst);
                metrics::counter!("tributary_control_follower_errors_total", "topic" => topic.to_owned())
                    .increment(1);
                tracing::warn!(topic, %error, "control topic follower: consumer error; going on once the broker answers");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if caught_up.is_none() {
            healthy.store(true, Ordering::SeqCst);
        }
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        match message.payload().map(T::from_avro) {
            None => apply(&key, None, message.offset()),
            Some(Ok(record)) => apply(&key, Some(record), message.offset()),
            Some(Err(error)) => {
                metrics::counter!("tributary_control_unreadable_total", "topic" => topic.to_owned())
                    .increment(1);
                tracing::error!(topic, %key, partition = message.partition(), offset = message.offset(), %error,
                    "control record does not decode; the last readable value for its key is kept");
            }
        }
        if let Some(high) = remaining.get(&message.partition()) {
            if message.offset() + 1 >= *high {
                remaining.remove(&message.partition());
            }
        }
    }
}

/// Whether the broker answers a watermark query for `partition` of `topic` within 3 s.
async fn broker_answers(
    consumer: &Arc<StreamConsumer>,
    topic: &str,
    partition: Option<i32>,
) -> bool {
    let Some(partition) = partition else {
        return true;
    };
    let (consumer, topic) = (consumer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_watermarks(&topic, partition, Duration::from_secs(3))
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

/// Assigns every partition at the beginning; returns the partitions that hold records, with their
/// high watermark.
fn start_positions(
    consumer: &StreamConsumer,
    topic: &str,
) -> Result<(TopicPartitionList, HashMap<i32, i64>), TopicError> {
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for partition in partitions_of(consumer, topic)? {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            remaining.insert(partition, high);
        }
    }
    Ok((assignment, remaining))
}

/// Codes compare after trimming and uppercasing.
pub fn normalize_code(code: &str) -> String {
    code.trim().to_uppercase()
}

/// Identifiers (share links) compare case-insensitively.
pub fn normalize_identifier(identifier: &str) -> String {
    identifier.trim().to_lowercase()
}

/// One store's advocates, by id, code and identifier.
///
/// The indexes keep every advocate that claims a code or identifier, not only the last one
/// written: updating or removing one advocate never unmaps what another still holds (a code
/// moved from ALICE to BOB stays BOB's whichever record comes last). Loading refuses one code on
/// two active advocates (`tributary advocates load`); should the topic hold such a pair anyway,
/// the lookup answers the active claimant with the smallest id, the same in every process.
#[derive(Debug, Default)]
pub struct ShopAdvocates {
    by_id: HashMap<String, Advocate>,
    ids_by_code: HashMap<String, BTreeSet<String>>,
    ids_by_identifier: HashMap<String, BTreeSet<String>>,
}

impl ShopAdvocates {
    fn upsert(&mut self, advocate: Advocate) {
        self.remove(&advocate.id.clone());
        for code in &advocate.codes {
            claim(&mut self.ids_by_code, normalize_code(code), &advocate.id);
        }
        let identifier = normalize_identifier(&advocate.identifier);
        claim(&mut self.ids_by_identifier, identifier, &advocate.id);
        self.by_id.insert(advocate.id.clone(), advocate);
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            for code in &old.codes {
                release(&mut self.ids_by_code, &normalize_code(code), id);
            }
            release(
                &mut self.ids_by_identifier,
                &normalize_identifier(&old.identifier),
                id,
            );
        }
    }

    /// The first active advocate among `ids`.
    fn active(&self, ids: Option<&BTreeSet<String>>) -> Option<&Advocate> {
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .find(|a| a.status == AdvocateStatus::Active)
    }

    /// The advocate with this id, active or not.
    pub fn by_id(&self, id: &str) -> Option<&Advocate> {
        self.by_id.get(id)
    }

    /// Every advocate of the store.
    pub fn all(&self) -> impl Iterator<Item = &Advocate> {
        self.by_id.values()
    }

    /// The active advocate owning `code` (any case, surrounding spaces ignored).
    pub fn by_code(&self, code: &str) -> Option<&Advocate> {
        self.active(self.ids_by_code.get(&normalize_code(code)))
    }

    /// The active advocate whose identifier is `identifier` (any case).
    pub fn by_identifier(&self, identifier: &str) -> Option<&Advocate> {
        self.active(
            self.ids_by_identifier
                .get(&normalize_identifier(identifier)),
        )
    }
}

fn claim(index: &mut HashMap<String, BTreeSet<String>>, value: String, id: &str) {
    index.entry(value).or_default().insert(id.to_owned());
}

fn release(index: &mut HashMap<String, BTreeSet<String>>, value: &str, id: &str) {
    if let Some(ids) = index.get_mut(value) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(value);
        }
    }
}

#[derive(Debug, Default)]
pub struct Control {
    stores: HashMap<String, Store>,
    /// The `tributary.stores` offset each store's value came from (a key is always in one
    /// partition): a record the follower reads after this process wrote a newer one itself never
    /// takes the newer one back.
    store_offsets: HashMap<String, i64>,
    advocates: HashMap<String, ShopAdvocates>,
    empty: ShopAdvocates,
}

impl Control {
    /// Applies the store record at `offset` of `tributary.stores` (`None`: a tombstone), unless
    /// the table holds one from a later offset already (written by this process and applied at
    /// once, see [`Self::apply_store`]'s callers). Returns whether it applied.
    pub fn apply_store(&mut self, key: &str, store: Option<Store>, offset: i64) -> bool {
        let key = key.to_ascii_lowercase();
        if self
            .store_offsets
            .get(&key)
            .is_some_and(|&held| offset <= held)
        {
            return false;
        }
        self.store_offsets.insert(key.clone(), offset);
        match store {
            Some(store) => self.stores.insert(key, store),
            None => self.stores.remove(&key),
        };
        true
    }

    /// Applies an advocate record; a tombstone's key is `<shop>/<advocate id>`.
    pub fn apply_advocate(&mut self, key: &str, advocate: Option<Advocate>) {
        match advocate {
            Some(advocate) => self
                .advocates
                .entry(advocate.shop_domain.to_ascii_lowercase())
                .or_default()
                .upsert(advocate),
            None => {
                if let Some((shop, id)) = key.rsplit_once('/') {
                    if let Some(shop) = self.advocates.get_mut(&shop.to_ascii_lowercase()) {
                        shop.remove(id);
                    }
                }
            }
        }
    }

    /// A store whose webhooks are processed: connected and not disconnected.
    pub fn active_store(&self, domain: &str) -> Option<&Store> {
        self.stores
            .get(domain)
            .filter(|s| s.status != StoreStatus::Disconnected)
    }

    /// Every store as last published.
    pub fn stores(&self) -> impl Iterator<Item = &Store> {
        self.stores.values()
    }

    /// A store as last published, whatever its status.
    pub fn store(&self, domain: &str) -> Option<&Store> {
        self.stores.get(domain)
    }

    pub fn advocates(&self, domain: &str) -> &ShopAdvocates {
        self.advocates.get(domain).unwrap_or(&self.empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advocate(id: &str, identifier: &str, codes: &[&str]) -> Advocate {
        Advocate {
            shop_domain: "shop.myshopify.com".into(),
            id: id.into(),
            identifier: identifier.into(),
            first_name: id.into(),
            email: format!("{identifier}@example.org"),
            status: AdvocateStatus::Active,
            codes: codes.iter().map(|c| c.to_string()).collect(),
            updated_at_ms: 0,
        }
    }

    #[test]
    fn a_code_moved_to_another_advocate_stays_with_them_whatever_comes_last() {
        let mut control = Control::default();
        let key = |id: &str| format!("shop.myshopify.com/{id}");
        control.apply_advocate(&key("1"), Some(advocate("1", "alice", &["SPRING10"])));
        // The reproduction: BOB takes the code (first row), ALICE loses it (second row).
        control.apply_advocate(&key("2"), Some(advocate("2", "bob", &["spring10"])));
        control.apply_advocate(&key("1"), Some(advocate("1", "alice", &[])));
        let shop = control.advocates("shop.myshopify.com");
        assert_eq!(shop.by_code("SPRING10").map(|a| a.id.as_str()), Some("2"));
        assert_eq!(
            shop.by_identifier("ALICE").map(|a| a.id.as_str()),
            Some("1")
        );

        // Removing an advocate leaves what another holds; a tombstone removes only its own.
        control.apply_advocate(&key("3"), Some(advocate("3", "bob", &["SPRING10"])));
        control.apply_advocate(&key("2"), None);
        let shop = control.advocates("shop.myshopify.com");
        assert_eq!(shop.by_code("spring10").map(|a| a.id.as_str()), Some("3"));
        assert_eq!(shop.by_identifier("bob").map(|a| a.id.as_str()), Some("3"));

        // An inactive claimant never hides an active one.
        let mut inactive = advocate("0", "old", &["SPRING10"]);
        inactive.status = AdvocateStatus::Inactive;
        control.apply_advocate(&key("0"), Some(inactive));
        let shop = control.advocates("shop.myshopify.com");
        assert_eq!(shop.by_code("SPRING10").map(|a| a.id.as_str()), Some("3"));
    }
}
