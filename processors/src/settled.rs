//! The settled orders of one partition: the latest [`Attribution`] emitted for each order, kept in
//! memory or in an embedded on-disk store with `tributary.attributions` as its changelog.
//!
//! **On disk** (`processor.state_dir`): one redb database per processor (`settled.redb`), a table
//! per partition (`settled/<partition>`: order key → the Avro record) and, beside the rows, the
//! changelog offset they reflect (`changelog_next`). Orders touched since the last flush are kept
//! in memory; a flush (at a checkpoint, after every record produced so far is acknowledged)
//! writes them and the changelog's end in one transaction, then forgets them, so memory holds
//! only what changed between two checkpoints plus redb's page cache. A restart reads only the
//! changelog after `changelog_next`; a missing or unreadable database is rebuilt from the whole
//! changelog. The store never runs ahead of the changelog: only acknowledged records are written.
//!
//! **Expiry.** An order whose last change (`Attribution::last_changed_ms`, event time) lies before
//! the processor's horizon leaves the state ([`SettledOrders::expire`]); the processor writes a
//! tombstone for it on the changelog. On disk, an index by the day of each row's last change
//! (`changed/<partition>`: (day, order key) → ()) lets expiry read only the days before the
//! horizon, never the whole table; an entry whose row has changed since is stale and is dropped.
//!
//! redb, not RocksDB or fjall: pure Rust (no C++ build on a 2-core machine), a single file, ACID
//! transactions with the offset committed beside the rows, and a bounded page cache.
//!
//! **In memory** (no `state_dir`): every settled order stays in `recent`; a restart rebuilds the
//! partition from the whole changelog. This is what the embedded broker uses: its log lives only
//! as long as the process, so a store on disk would outlive the log it mirrors.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTableMetadata, TableDefinition};
use tributary_runtime::changelog::Change;
use tributary_schemas::topics::order_key;
use tributary_schemas::{Attribution, AvroRecord, CodecError};

/// A read-only snapshot of one partition's table.
type Snapshot = redb::ReadOnlyTable<&'static str, &'static [u8]>;

/// The changelog offset each partition's table reflects.
const OFFSETS: TableDefinition<u32, i64> = TableDefinition::new("changelog_next");

/// A day of event time, the unit of expiry.
pub const DAY_MS: i64 = 86_400_000;

/// The day an order last changed, as the expiry index files it.
fn changed_day(record: &Attribution) -> i64 {
    record.last_changed_ms().div_euclid(DAY_MS)
}

/// Page cache of the on-disk store, in bytes.
const CACHE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    /// Boxed: redb's error is large, and this one travels in every `Result` of the processor.
    #[error("state store: {0}")]
    Store(Box<redb::Error>),
    #[error("state store {path}: {message}")]
    Io { path: String, message: String },
    /// A row this release cannot read: the store is rebuilt from the changelog.
    #[error("state store row: {0}")]
    Codec(#[from] CodecError),
}

macro_rules! from_redb {
    ($($error:ty),*) => {$(
        impl From<$error> for StateStoreError {
            fn from(error: $error) -> Self {
                Self::Store(Box::new(error.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The on-disk store of a processor: one file for all its partitions.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Database>,
}

impl StateStore {
    /// Opens `<dir>/settled.redb`, creating it if missing. A file that does not open (damaged, or
    /// another format) is moved aside to `settled.redb.damaged` and a new one is created: the
    /// changelog rebuilds it.
    pub fn open(dir: &Path) -> Result<Self, StateStoreError> {
        let io = |e: std::io::Error| StateStoreError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("settled.redb");
        let open = || {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
        };
        let db = match open() {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StateStoreError::Io {
                    path: path.display().to_string(),
                    message: "held by another process: give each processor its own state_dir"
                        .into(),
                })
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "state store does not open; rebuilding it from the changelog");
                std::fs::rename(&path, dir.join("settled.redb.damaged")).map_err(io)?;
                open()?
            }
        };
        Ok(Self { db: Arc::new(db) })
    }

    fn table(partition: i32) -> String {
        format!("settled/{partition}")
    }

    fn index(partition: i32) -> String {
        format!("changed/{partition}")
    }

    /// Whether the partition's rows are indexed for expiry: false for rows written by a release
    /// before the index (they are rebuilt from the changelog, which indexes them).
    pub fn indexed(&self, partition: i32) -> Result<bool, StateStoreError> {
        let tx = self.db.begin_read()?;
        let name = Self::index(partition);
        match tx.open_table(TableDefinition::<(i64, &str), ()>::new(&name)) {
            Ok(_) => Ok(true),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(self.len(partition)? == 0),
            Err(error) => Err(error.into()),
        }
    }

    /// Keys the expiry index files under a day before `day` (stale entries included).
    fn changed_before(&self, partition: i32, day: i64) -> Result<Vec<String>, StateStoreError> {
        let name = Self::index(partition);
        let tx = self.db.begin_read()?;
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

    /// The changelog offset the partition's table reflects; `None` for a partition never stored.
    pub fn changelog_next(&self, partition: i32) -> Result<Option<i64>, StateStoreError> {
        let tx = self.db.begin_read()?;
        let offsets = match tx.open_table(OFFSETS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        Ok(offsets.get(partition as u32)?.map(|v| v.value()))
    }

    /// Forgets a partition (its rows and offset), before it is rebuilt from the whole changelog.
    pub fn clear(&self, partition: i32) -> Result<(), StateStoreError> {
        let name = Self::table(partition);
        let tx = self.db.begin_write()?;
        tx.delete_table(TableDefinition::<&str, &[u8]>::new(&name))
            .map_err(redb::Error::from)?;
        tx.delete_table(TableDefinition::<(i64, &str), ()>::new(&Self::index(
            partition,
        )))
        .map_err(redb::Error::from)?;
        tx.open_table(OFFSETS)?.remove(partition as u32)?;
        tx.commit()?;
        Ok(())
    }

    /// A snapshot of the partition's table to read from until the next write (`None`: no table
    /// yet). One snapshot serves many reads: opening one per read costs more than the read.
    fn snapshot(&self, partition: i32) -> Result<Option<Snapshot>, StateStoreError> {
        let name = Self::table(partition);
        match self
            .db
            .begin_read()?
            .open_table(TableDefinition::<&str, &[u8]>::new(&name))
        {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes `rows`, deletes `expired` and the index entries of days before `index_below`, and
    /// records the changelog offset all this reflects, in one transaction.
    fn write(
        &self,
        partition: i32,
        rows: &HashMap<String, Attribution>,
        expired: &HashSet<String>,
        index_below: Option<i64>,
        changelog_next: i64,
    ) -> Result<(), StateStoreError> {
        let index_name = Self::index(partition);
        let name = Self::table(partition);
        let mut tx = self.db.begin_write()?;
        // Written to the file without waiting for the disk (fsync): a killed process loses
        // nothing, and a machine crash only takes the store back to an earlier consistent commit
        // (rows and offset move together), whose tail the changelog still holds.
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut table = tx.open_table(TableDefinition::<&str, &[u8]>::new(&name))?;
            let mut index = tx.open_table(TableDefinition::<(i64, &str), ()>::new(&index_name))?;
            if let Some(day) = index_below {
                index.retain_in::<(i64, &str), _>(..(day, ""), |_, _| false)?;
            }
            // Deletions first: a key both expired and written again is kept.
            for key in expired {
                table.remove(key.as_str())?;
            }
            for (key, record) in rows {
                table.insert(key.as_str(), record.to_avro()?.as_slice())?;
                index.insert((changed_day(record), key.as_str()), ())?;
            }
            tx.open_table(OFFSETS)?
                .insert(partition as u32, changelog_next)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Settled orders stored for `partition`.
    pub fn len(&self, partition: i32) -> Result<u64, StateStoreError> {
        let name = Self::table(partition);
        let tx = self.db.begin_read()?;
        match tx.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
            Ok(table) => Ok(table.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(error) => Err(error.into()),
        }
    }
}

/// Flush at the latest this long after the previous one…
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// …or once this many orders are held in memory.
const FLUSH_ORDERS: usize = 20_000;

/// The settled orders of one partition.
pub struct SettledOrders {
    /// Orders read or changed since the last flush; every settled order without a disk store.
    recent: HashMap<String, Attribution>,
    /// Orders expired since the last flush, deleted from disk by the next one.
    expired: HashSet<String>,
    /// Index entries of days before this are dropped by the next flush.
    index_below: Option<i64>,
    disk: Option<(StateStore, i32)>,
    /// What the store held at the last flush, read until the next one (`None`: not opened yet).
    snapshot: Option<Option<Snapshot>>,
    flushed_at: std::time::Instant,
}

impl Default for SettledOrders {
    fn default() -> Self {
        Self {
            recent: HashMap::new(),
            expired: HashSet::new(),
            index_below: None,
            disk: None,
            snapshot: None,
            flushed_at: std::time::Instant::now(),
        }
    }
}

impl std::fmt::Debug for SettledOrders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettledOrders")
            .field("recent", &self.recent.len())
            .field("on_disk", &self.disk.is_some())
            .finish()
    }
}

impl SettledOrders {
    /// In memory, from changelog records in offset order (the highest revision of each wins; a
    /// tombstone deletes).
    pub fn from_changes(changes: impl IntoIterator<Item = Change<Attribution>>) -> Self {
        let mut settled = Self::default();
        for change in changes {
            match change {
                Change::Put(record) => {
                    let key = order_key(&record.shop_domain, record.order_id);
                    if settled
                        .recent
                        .get(&key)
                        .is_none_or(|current| current.revision < record.revision)
                    {
                        settled.recent.insert(key, record);
                    }
                }
                Change::Delete(key) => {
                    settled
                        .recent
                        .remove(String::from_utf8_lossy(&key).as_ref());
                }
            }
        }
        settled
    }

    /// Backed by `store`'s table of `partition`.
    pub fn on_disk(store: StateStore, partition: i32) -> Self {
        Self {
            disk: Some((store, partition)),
            ..Self::default()
        }
    }

    /// Takes a changelog record read during a restore: the highest revision of each order wins.
    pub fn absorb(&mut self, record: Attribution) -> Result<(), StateStoreError> {
        let key = order_key(&record.shop_domain, record.order_id);
        let newer = self
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
        self.recent.remove(key);
        if self.disk.is_some() {
            self.expired.insert(key.to_owned());
        }
    }

    /// The order's latest record, loaded from disk if needed, to read or change in place.
    pub fn get_mut(&mut self, key: &str) -> Result<Option<&mut Attribution>, StateStoreError> {
        if !self.recent.contains_key(key) {
            let Some(record) = self.stored(key)? else {
                return Ok(None);
            };
            self.recent.insert(key.to_owned(), record);
        }
        Ok(self.recent.get_mut(key))
    }

    /// The order's row on disk as of the last flush (`None` without a disk store, and for an
    /// order expired since).
    fn stored(&mut self, key: &str) -> Result<Option<Attribution>, StateStoreError> {
        let Some((store, partition)) = &self.disk else {
            return Ok(None);
        };
        if self.expired.contains(key) {
            return Ok(None);
        }
        if self.snapshot.is_none() {
            self.snapshot = Some(store.snapshot(*partition)?);
        }
        let Some(Some(table)) = &self.snapshot else {
            return Ok(None);
        };
        // Everything written since the snapshot is still in `recent`, so it is current.
        let Some(row) = table.get(key)? else {
            return Ok(None);
        };
        Ok(Some(Attribution::from_avro(row.value())?))
    }

    /// Removes every order that last changed before `horizon_ms` (event time, the start of a
    /// day) and returns their keys, sorted, for the changelog's tombstones. On disk, only the
    /// index's days before the horizon are read; the rows go at the next flush.
    pub fn expire(&mut self, horizon_ms: i64) -> Result<Vec<String>, StateStoreError> {
        let mut gone: Vec<String> = self
            .recent
            .iter()
            .filter(|(_, record)| record.last_changed_ms() < horizon_ms)
            .map(|(key, _)| key.clone())
            .collect();
        if let Some((store, partition)) = self.disk.clone() {
            let day = horizon_ms.div_euclid(DAY_MS);
            for key in store.changed_before(partition, day)? {
                // A row in memory is newer than its index entry, and was judged above.
                if self.recent.contains_key(&key) {
                    continue;
                }
                if self
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
            self.recent.remove(key);
            if self.disk.is_some() {
                self.expired.insert(key.clone());
            }
        }
        Ok(gone)
    }

    fn get(&mut self, key: &str) -> Result<Option<&Attribution>, StateStoreError> {
        Ok(self.get_mut(key)?.map(|record| &*record))
    }

    pub fn insert(&mut self, key: String, record: Attribution) {
        self.expired.remove(&key);
        self.recent.insert(key, record);
    }

    /// Orders held in memory now.
    pub fn in_memory(&self) -> usize {
        self.recent.len()
    }

    /// Settled orders in all (stored and in memory; an estimate between flushes).
    pub fn len(&self) -> usize {
        match &self.disk {
            Some((store, partition)) => store.len(*partition).unwrap_or_default() as usize,
            None => self.recent.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it is time to write what waits in memory: always when `stopping`, else every
    /// few seconds or once enough orders wait (finding the changelog's end costs a round trip to
    /// the broker, so a flush is not made at every checkpoint).
    pub fn wants_flush(&self, stopping: bool) -> bool {
        self.disk.is_some()
            && !(self.recent.is_empty() && self.expired.is_empty())
            && (stopping
                || self.recent.len() >= FLUSH_ORDERS
                || self.flushed_at.elapsed() >= FLUSH_INTERVAL)
    }

    /// Lets go of the read snapshot (the next read opens a new one).
    pub fn release_snapshot(&mut self) {
        self.snapshot = None;
    }

    /// Writes what changed to disk with the changelog offset it reflects, then forgets it. Call
    /// only once every record emitted so far is acknowledged. Without a disk store, nothing.
    pub fn flush(&mut self, changelog_next: i64) -> Result<(), StateStoreError> {
        if let Some((store, partition)) = &self.disk {
            self.snapshot = None;
            store.write(
                *partition,
                &self.recent,
                &self.expired,
                self.index_below,
                changelog_next,
            )?;
            self.recent.clear();
            self.expired.clear();
            self.index_below = None;
            self.flushed_at = std::time::Instant::now();
        }
        Ok(())
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
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.changelog_next(3).unwrap(), None);
        let mut settled = SettledOrders::on_disk(store.clone(), 3);
        settled.absorb(record(1, 2)).unwrap();
        settled.absorb(record(1, 1)).unwrap(); // an older revision never wins
        settled.absorb(record(2, 1)).unwrap();
        settled.flush(42).unwrap();
        assert_eq!(settled.in_memory(), 0);
        drop((settled, store));

        let store = StateStore::open(dir.path()).unwrap();
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
        let store = StateStore::open(dir.path()).unwrap();
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
            store.changed_before(0, 3).unwrap().is_empty(),
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
        let store = StateStore::open(dir.path()).unwrap();
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
        assert!(store.indexed(0).unwrap());
    }

    #[test]
    fn rows_stored_before_the_expiry_index_are_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert!(
            store.indexed(0).unwrap(),
            "nothing stored, nothing to index"
        );
        let tx = store.db.begin_write().unwrap();
        tx.open_table(TableDefinition::<&str, &[u8]>::new(&StateStore::table(0)))
            .unwrap()
            .insert("k", b"v".as_slice())
            .unwrap();
        tx.commit().unwrap();
        assert!(!store.indexed(0).unwrap());
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("settled.redb"), b"not a database").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.changelog_next(0).unwrap(), None);
        assert!(dir.path().join("settled.redb.damaged").exists());
    }
}
