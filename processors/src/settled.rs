//! The settled orders of one partition: the latest [`Attribution`] emitted for each order, a
//! [`KeyedState`] (in memory, or on disk in `<state_dir>/settled.redb`) with
//! `tributary.attributions` as its changelog. How the store is written, flushed and restored is
//! the runtime's ([`tributary_runtime::state`]); this module adds what is the processor's own.
//!
//! **Expiry.** An order whose last change (`Attribution::last_changed_ms`, event time) lies before
//! the processor's horizon leaves the state ([`SettledOrders::expire`]); the processor writes a
//! tombstone for it on the changelog. On disk, an index by the day of each row's last change
//! (`changed/<partition>`: (day, order key) → ()) lets expiry read only the days before the
//! horizon, never the whole table; an entry whose row has changed since is stale and is dropped.

use std::collections::HashMap;

use redb::{TableDefinition, WriteTransaction};
use tributary_runtime::changelog::Change;
use tributary_runtime::state::{Changelogged, KeyedState};
pub use tributary_runtime::state::{StateStore, StateStoreError};
use tributary_schemas::topics::order_key;
use tributary_schemas::Attribution;

/// A day of event time, the unit of expiry.
pub const DAY_MS: i64 = 86_400_000;

/// The store's name: `<state_dir>/settled.redb`, tables `settled/<partition>`.
pub const STORE_NAME: &str = "settled";

/// The day an order last changed, as the expiry index files it.
fn changed_day(record: &Attribution) -> i64 {
    record.last_changed_ms().div_euclid(DAY_MS)
}

/// The expiry index of a partition: (day of last change, order key) → ().
fn index_table(partition: i32) -> String {
    format!("changed/{partition}")
}

/// Whether the partition's rows are indexed for expiry: false for rows written by a release
/// before the index (they are rebuilt from the changelog, which indexes them).
pub fn indexed(store: &StateStore, partition: i32) -> Result<bool, StateStoreError> {
    let tx = store.database().begin_read()?;
    let name = index_table(partition);
    match tx.open_table(TableDefinition::<(i64, &str), ()>::new(&name)) {
        Ok(_) => Ok(true),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(store.len(partition)? == 0),
        Err(error) => Err(error.into()),
    }
}

/// Keys the expiry index files under a day before `day` (stale entries included).
fn changed_before(
    store: &StateStore,
    partition: i32,
    day: i64,
) -> Result<Vec<String>, StateStoreError> {
    let name = index_table(partition);
    let tx = store.database().begin_read()?;
    let index = match tx.open_table(TableDefinition::<(i64, &str), ()>::new(&name)) {
        Ok(index) => index,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    let mut keys = Vec::new();
    for entry in index.range::<(i64, &str)>(..(day, ""))? {
        keys.push(entry?.0.value().1.to_owned());
    }
    Ok(keys)
}

/// Files `rows` in the expiry index and drops its entries of days before `index_below`, in the
/// flush's transaction.
fn write_index(
    tx: &WriteTransaction,
    partition: i32,
    rows: &HashMap<String, Attribution>,
    index_below: Option<i64>,
) -> Result<(), StateStoreError> {
    let name = index_table(partition);
    let mut index = tx.open_table(TableDefinition::<(i64, &str), ()>::new(&name))?;
    if let Some(day) = index_below {
        index.retain_in::<(i64, &str), _>(..(day, ""), |_, _| false)?;
    }
    for (key, record) in rows {
        index.insert((changed_day(record), key.as_str()), ())?;
    }
    Ok(())
}

/// The settled orders of one partition.
#[derive(Debug, Default)]
pub struct SettledOrders {
    rows: KeyedState<Attribution>,
    /// Index entries of days before this are dropped by the next flush.
    index_below: Option<i64>,
}

impl SettledOrders {
    /// In memory, from changelog records in offset order (the highest revision of each wins; a
    /// tombstone deletes).
    pub fn from_changes(changes: impl IntoIterator<Item = Change<Attribution>>) -> Self {
        let mut settled = Self::default();
        for change in changes {
            match change {
                // In memory a read never fails.
                Change::Put(record) => settled.absorb(record).unwrap_or_default(),
                Change::Delete(key) => settled.absorb_tombstone(&String::from_utf8_lossy(&key)),
            }
        }
        settled
    }

    /// Backed by `store`'s table of `partition`.
    pub fn on_disk(store: StateStore, partition: i32) -> Self {
        <Self as Changelogged>::open(Some(&store), partition)
    }

    /// Takes a changelog record read during a restore: the highest revision of each order wins.
    pub fn absorb(&mut self, record: Attribution) -> Result<(), StateStoreError> {
        let key = order_key(&record.shop_domain, record.order_id);
        let newer = self
            .rows
            .get(&key)?
            .is_none_or(|current| current.revision < record.revision);
        if newer {
            // Through `insert`: a record after a tombstone of the same key brings the order back.
            self.insert(key, record);
        }
        Ok(())
    }

    /// Takes a tombstone read during a restore: the order has expired.
    pub fn absorb_tombstone(&mut self, key: &str) {
        self.rows.remove(key);
    }

    /// The order's latest record, loaded from disk if needed, to read or change in place.
    pub fn get_mut(&mut self, key: &str) -> Result<Option<&mut Attribution>, StateStoreError> {
        self.rows.get_mut(key)
    }

    /// Removes every order that last changed before `horizon_ms` (event time, the start of a
    /// day) and returns their keys, sorted, for the changelog's tombstones. On disk, only the
    /// index's days before the horizon are read; the rows go at the next flush.
    pub fn expire(&mut self, horizon_ms: i64) -> Result<Vec<String>, StateStoreError> {
        let mut gone: Vec<String> = self
            .rows
            .recent()
            .filter(|(_, record)| record.last_changed_ms() < horizon_ms)
            .map(|(key, _)| key.clone())
            .collect();
        if let Some((store, partition)) = self.rows.disk().cloned() {
            let day = horizon_ms.div_euclid(DAY_MS);
            let in_memory: std::collections::HashSet<&String> =
                self.rows.recent().map(|(key, _)| key).collect();
            let mut on_disk = Vec::new();
            for key in changed_before(&store, partition, day)? {
                // A row in memory is newer than its index entry, and was judged above.
                if !in_memory.contains(&key) {
                    on_disk.push(key);
                }
            }
            for key in on_disk {
                if self
                    .rows
                    .stored(&key)?
                    .is_some_and(|record| record.last_changed_ms() < horizon_ms)
                {
                    gone.push(key);
                }
            }
            self.index_below = Some(day);
        }
        gone.sort_unstable();
        gone.dedup();
        for key in &gone {
            self.rows.remove(key);
        }
        Ok(gone)
    }

    pub fn insert(&mut self, key: String, record: Attribution) {
        self.rows.insert(key, record);
    }

    /// Settled orders in all: on disk, those stored at the last flush; in memory, every one.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Changelogged for SettledOrders {
    fn open(store: Option<&StateStore>, partition: i32) -> Self {
        Self {
            rows: KeyedState::open(store, partition),
            index_below: None,
        }
    }

    fn in_memory(&self) -> usize {
        self.rows.in_memory()
    }

    fn wants_flush(&self, stopping: bool) -> bool {
        self.rows.wants_flush(stopping)
    }

    fn release_snapshot(&mut self) {
        self.rows.release_snapshot();
    }

    /// Writes the rows that changed, with the expiry index, in one transaction.
    fn flush(&mut self, changelog_next: i64) -> Result<(), StateStoreError> {
        let index_below = self.index_below;
        let partition = self.rows.disk().map(|(_, partition)| *partition);
        self.rows
            .flush_with(changelog_next, |tx, rows| match partition {
                Some(partition) => write_index(tx, partition, rows, index_below),
                None => Ok(()),
            })?;
        // Only once written: a failed flush sweeps the index again next time.
        self.index_below = None;
        Ok(())
    }

    fn changelog_next(&self) -> Option<i64> {
        self.rows.changelog_next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use tributary_schemas::{AttributionSource, RefundStatus};

    fn record(order_id: u64, revision: u64) -> Attribution {
        Attribution {
            shop_domain: "s.myshopify.com".into(),
            order_id,
            revision,
            order_name: format!("#{order_id}"),
            created_at_ms: 1,
            latest_updated_at_ms: 1,
            latest_triggered_at_ms: 1,
            settled_updated_at_ms: 1,
            financial_status: None,
            cancelled: false,
            outcome: tributary_schemas::Outcome::Unattributed,
            source: AttributionSource::Unattributed,
            reason: String::new(),
            advocate_id: None,
            advocate_identifier: None,
            code: None,
            customer_email: None,
            customer_id: None,
            currency: "USD".into(),
            gross: Decimal::new(1000, 2),
            presentment_currency: "USD".into(),
            presentment_gross: Decimal::new(1000, 2),
            refunded: Decimal::ZERO,
            net: Decimal::new(1000, 2),
            refund_status: RefundStatus::None,
            refund_ids: Vec::new(),
            recent_delivery_ids: Vec::new(),
            input_offset: 0,
            rewards: Vec::new(),
            changed_at_ms: 0,
        }
    }

    #[test]
    fn a_flush_survives_a_reopen_and_memory_holds_only_what_changed_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), STORE_NAME).unwrap();
        assert_eq!(store.changelog_next(3).unwrap(), None);
        let mut settled = SettledOrders::on_disk(store.clone(), 3);
        settled.absorb(record(1, 2)).unwrap();
        settled.absorb(record(1, 1)).unwrap(); // an older revision never wins
        settled.absorb(record(2, 1)).unwrap();
        settled.flush(42).unwrap();
        assert_eq!(settled.in_memory(), 0);
        drop((settled, store));

        let store = StateStore::open(dir.path(), STORE_NAME).unwrap();
        assert_eq!(store.changelog_next(3).unwrap(), Some(42));
        assert_eq!(store.len(3).unwrap(), 2);
        let mut settled = SettledOrders::on_disk(store.clone(), 3);
        let key = order_key("s.myshopify.com", 1);
        assert_eq!(settled.get_mut(&key).unwrap().map(|r| r.revision), Some(2));
        assert_eq!(settled.in_memory(), 1);
        assert!(SettledOrders::on_disk(store.clone(), 4)
            .get_mut(&key)
            .unwrap()
            .is_none());
        store.clear(3).unwrap();
        assert_eq!(
            (store.changelog_next(3).unwrap(), store.len(3).unwrap()),
            (None, 0)
        );
    }

    fn changed_on(order_id: u64, day: i64) -> Attribution {
        Attribution {
            changed_at_ms: day * DAY_MS + 1,
            ..record(order_id, 1)
        }
    }

    #[test]
    fn expiry_reads_only_days_before_the_horizon_and_deletes_at_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), STORE_NAME).unwrap();
        let mut settled = SettledOrders::on_disk(store.clone(), 0);
        for (id, day) in [(1, 1), (2, 5), (3, 1)] {
            settled.absorb(changed_on(id, day)).unwrap();
        }
        settled.flush(10).unwrap();
        // Order 3 changes on day 9: its day-1 index entry is stale.
        let key = |id| order_key("s.myshopify.com", id);
        let three = settled.get_mut(&key(3)).unwrap().unwrap();
        three.changed_at_ms = 9 * DAY_MS;
        settled.flush(11).unwrap();

        assert_eq!(settled.expire(3 * DAY_MS).unwrap(), vec![key(1)]);
        assert!(
            settled.get_mut(&key(1)).unwrap().is_none(),
            "gone before the flush"
        );
        assert!(settled.wants_flush(true));
        settled.flush(12).unwrap();
        assert_eq!(store.len(0).unwrap(), 2);
        assert!(
            changed_before(&store, 0, 3).unwrap().is_empty(),
            "index swept"
        );
        // Nothing more to expire at the same horizon; a later one takes order 2.
        assert!(settled.expire(3 * DAY_MS).unwrap().is_empty());
        assert_eq!(settled.expire(6 * DAY_MS).unwrap(), vec![key(2)]);
        settled.flush(13).unwrap();
        drop(settled);
        let mut reopened = SettledOrders::on_disk(store.clone(), 0);
        assert!(reopened.get_mut(&key(2)).unwrap().is_none());
        assert_eq!(
            reopened.get_mut(&key(3)).unwrap().map(|r| r.changed_at_ms),
            Some(9 * DAY_MS)
        );
    }

    #[test]
    fn a_tombstone_deletes_in_memory_and_on_disk() {
        let key = order_key("s.myshopify.com", 1);
        let memory = SettledOrders::from_changes([
            Change::Put(record(1, 1)),
            Change::Delete(key.clone().into_bytes()),
            Change::Put(record(2, 1)),
        ]);
        assert_eq!(memory.len(), 1);

        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), STORE_NAME).unwrap();
        let mut settled = SettledOrders::on_disk(store.clone(), 0);
        settled.absorb(record(1, 1)).unwrap();
        settled.flush(1).unwrap();
        settled.absorb_tombstone(&key);
        assert!(settled.get_mut(&key).unwrap().is_none());
        settled.flush(2).unwrap();
        assert_eq!(store.len(0).unwrap(), 0);
        // A record after a tombstone within one chunk brings the order back, on disk too.
        settled.absorb(record(1, 2)).unwrap();
        settled.flush(3).unwrap();
        settled.absorb_tombstone(&key);
        settled.absorb(record(1, 3)).unwrap();
        settled.flush(4).unwrap();
        assert_eq!(store.len(0).unwrap(), 1);
        assert!(indexed(&store, 0).unwrap());
    }

    #[test]
    fn rows_stored_before_the_expiry_index_are_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), STORE_NAME).unwrap();
        assert!(
            indexed(&store, 0).unwrap(),
            "nothing stored, nothing to index"
        );
        let tx = store.database().begin_write().unwrap();
        tx.open_table(TableDefinition::<&str, &[u8]>::new("settled/0"))
            .unwrap()
            .insert("k", b"v".as_slice())
            .unwrap();
        tx.commit().unwrap();
        assert!(!indexed(&store, 0).unwrap());
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("settled.redb"), b"not a database").unwrap();
        let store = StateStore::open(dir.path(), STORE_NAME).unwrap();
        assert_eq!(store.changelog_next(0).unwrap(), None);
        assert!(dir.path().join("settled.redb.damaged").exists());
    }
}
