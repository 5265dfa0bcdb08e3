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
//! redb, not RocksDB or fjall: pure Rust (no C++ build on a 2-core machine), a single file, ACID
//! transactions with the offset committed beside the rows, and a bounded page cache.
//!
//! **In memory** (no `state_dir`): every settled order stays in `recent`; a restart rebuilds the
//! partition from the whole changelog. This is what the embedded broker uses: its log lives only
//! as long as the process, so a store on disk would outlive the log it mirrors.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTableMetadata, TableDefinition};
use tributary_schemas::topics::order_key;
use tributary_schemas::{Attribution, AvroRecord, CodecError};

/// A read-only snapshot of one partition's table.
type Snapshot = redb::ReadOnlyTable<&'static str, &'static [u8]>;

/// The changelog offset each partition's table reflects.
const OFFSETS: TableDefinition<u32, i64> = TableDefinition::new("changelog_next");

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

    /// Writes `rows` and the changelog offset they reflect, in one transaction.
    fn write(
        &self,
        partition: i32,
        rows: &HashMap<String, Attribution>,
        changelog_next: i64,
    ) -> Result<(), StateStoreError> {
        let name = Self::table(partition);
        let mut tx = self.db.begin_write()?;
        // Written to the file without waiting for the disk (fsync): a killed process loses
        // nothing, and a machine crash only takes the store back to an earlier consistent commit
        // (rows and offset move together), whose tail the changelog still holds.
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut table = tx.open_table(TableDefinition::<&str, &[u8]>::new(&name))?;
            for (key, record) in rows {
                table.insert(key.as_str(), record.to_avro()?.as_slice())?;
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
    disk: Option<(StateStore, i32)>,
    /// What the store held at the last flush, read until the next one (`None`: not opened yet).
    snapshot: Option<Option<Snapshot>>,
    flushed_at: std::time::Instant,
}

impl Default for SettledOrders {
    fn default() -> Self {
        Self {
            recent: HashMap::new(),
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
    /// In memory, from changelog records in offset order (the highest revision of each wins).
    pub fn from_records(records: impl IntoIterator<Item = Attribution>) -> Self {
        let mut settled = Self::default();
        for record in records {
            let key = order_key(&record.shop_domain, record.order_id);
            if settled
                .recent
                .get(&key)
                .is_none_or(|current| current.revision < record.revision)
            {
                settled.recent.insert(key, record);
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
            self.recent.insert(key, record);
        }
        Ok(())
    }

    /// The order's latest record, loaded from disk if needed, to read or change in place.
    pub fn get_mut(&mut self, key: &str) -> Result<Option<&mut Attribution>, StateStoreError> {
        if !self.recent.contains_key(key) {
            let Some((store, partition)) = &self.disk else {
                return Ok(None);
            };
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
            let record = Attribution::from_avro(row.value())?;
            self.recent.insert(key.to_owned(), record);
        }
        Ok(self.recent.get_mut(key))
    }

    fn get(&mut self, key: &str) -> Result<Option<&Attribution>, StateStoreError> {
        Ok(self.get_mut(key)?.map(|record| &*record))
    }

    pub fn insert(&mut self, key: String, record: Attribution) {
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
            && !self.recent.is_empty()
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
            store.write(*partition, &self.recent, changelog_next)?;
            self.recent.clear();
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

    #[test]
    fn a_damaged_store_is_moved_aside_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("settled.redb"), b"not a database").unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.changelog_next(0).unwrap(), None);
        assert!(dir.path().join("settled.redb.damaged").exists());
    }
}
