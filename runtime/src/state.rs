//! Keyed state of a stage, per input partition, in memory or in an embedded on-disk store, with
//! the stage's compacted changelog topic as its backup.
//!
//! **On disk** (a stage's `state_dir`): one redb database per stage (`<name>.redb`), a table per
//! partition (`<name>/<partition>`: key → row bytes) and, beside the rows, the changelog offset
//! they reflect (`changelog_next`). Keys read or changed since the last flush are kept in memory;
//! a flush (at a checkpoint, once every record produced so far is acknowledged) writes them and
//! the changelog's end in one transaction, then forgets them, so memory holds only what changed
//! between two checkpoints plus redb's page cache. A restart reads only the changelog after
//! `changelog_next` ([`restore`]); a missing or unreadable database, or one that records an offset
//! past the log's end (another log) or below its start (records it never saw were deleted), is
//! rebuilt from the whole changelog. The store never runs ahead of the changelog, and never
//! records another member's records as read: a flush records the end of this member's own
//! acknowledged records ([`checkpoint`]).
//!
//! **In memory** (no `state_dir`): every key stays in memory; a restart rebuilds the partition
//! from the whole changelog. This is what the embedded broker uses: its log lives only as long as
//! the process, so a store on disk would outlive the log it mirrors.
//!
//! redb, not RocksDB or fjall: pure Rust (no C++ build on a 2-core machine), a single file, ACID
//! transactions with the offset committed beside the rows, and a bounded page cache.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use redb::{Database, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction};

use crate::kafka::{read_partitions_from, TopicError};
use crate::member::CommitWhen;
use crate::stage::{Outbox, StageError};

/// A read-only snapshot of one partition's table.
type Snapshot = redb::ReadOnlyTable<&'static str, &'static [u8]>;

/// The changelog offset each partition's table reflects.
const OFFSETS: TableDefinition<u32, i64> = TableDefinition::new("changelog_next");

/// Page cache of one on-disk store, in bytes.
const CACHE_BYTES: usize = 64 << 20;

/// Flush at the latest this long after the previous one…
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// …or once this many keys are held in memory.
const FLUSH_KEYS: usize = 20_000;

#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    /// Boxed: redb's error is large, and this one travels in every `Result` of a stage.
    #[error("state store: {0}")]
    Store(Box<redb::Error>),
    #[error("state store {path}: {message}")]
    Io { path: String, message: String },
    /// A row this release cannot read: the stage stops with it. Rows are the stage's own format,
    /// changed only with a new table name; a file from elsewhere is removed to rebuild it from
    /// the changelog.
    #[error("state store row: {0}")]
    Row(String),
}

impl From<tributary_schemas::CodecError> for StateStoreError {
    fn from(error: tributary_schemas::CodecError) -> Self {
        Self::Row(error.to_string())
    }
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

impl From<StateStoreError> for StageError {
    fn from(error: StateStoreError) -> Self {
        StageError::stage(error)
    }
}

/// A value kept per key, as the store writes it. The changelog is the contract; a row is the
/// stage's own business: one that does not decode stops the stage ([`StateStoreError::Row`]).
pub trait Row: Sized {
    fn encode(&self) -> Result<Vec<u8>, StateStoreError>;
    fn decode(bytes: &[u8]) -> Result<Self, StateStoreError>;
}

/// A topic's record kept as its row: the same Avro bytes as on the changelog.
impl<T: tributary_schemas::AvroRecord> Row for T {
    fn encode(&self) -> Result<Vec<u8>, StateStoreError> {
        Ok(self.to_avro()?)
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateStoreError> {
        Ok(T::from_avro(bytes)?)
    }
}

/// The on-disk store of one stage: one file for all its partitions.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<Database>,
    name: &'static str,
}

impl StateStore {
    /// Opens `<dir>/<name>.redb`, creating it if missing. A file that does not open (damaged, or
    /// another format) is moved aside to `<name>.redb.damaged` and a new one is created: the
    /// changelog rebuilds it.
    ///
    /// Errors: [`StateStoreError::Io`] when the directory cannot be made or the file is held by
    /// another process.
    pub fn open(dir: &Path, name: &'static str) -> Result<Self, StateStoreError> {
        let io = |e: std::io::Error| StateStoreError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(format!("{name}.redb"));
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
                    message: "held by another process: give each process its own state_dir".into(),
                })
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "state store does not open; rebuilding it from the changelog");
                std::fs::rename(&path, dir.join(format!("{name}.redb.damaged"))).map_err(io)?;
                open()?
            }
        };
        Ok(Self {
            db: Arc::new(db),
            name,
        })
    }

    /// [`StateStore::open`] in `dir` when a stage has one configured; `None` keeps the state in
    /// memory.
    pub fn open_configured(
        dir: Option<&Path>,
        name: &'static str,
    ) -> Result<Option<Self>, StateStoreError> {
        dir.map(|dir| Self::open(dir, name)).transpose()
    }

    /// The database, for a stage's own tables beside the rows (an index, say). Name them
    /// `<table>/<partition>`: [`StateStore::clear`] deletes them with the partition.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn table(&self, partition: i32) -> String {
        format!("{}/{partition}", self.name)
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

    /// Forgets a partition (every table `*/<partition>` and its offset), before it is rebuilt
    /// from the whole changelog.
    pub fn clear(&self, partition: i32) -> Result<(), StateStoreError> {
        let suffix = format!("/{partition}");
        let tx = self.db.begin_write()?;
        let tables: Vec<_> = tx
            .list_tables()
            .map_err(redb::Error::from)?
            .filter(|t| t.name().ends_with(&suffix))
            .collect();
        for table in tables {
            tx.delete_table(table).map_err(redb::Error::from)?;
        }
        tx.open_table(OFFSETS)?.remove(partition as u32)?;
        tx.commit()?;
        Ok(())
    }

    /// Keys stored for `partition`.
    pub fn len(&self, partition: i32) -> Result<u64, StateStoreError> {
        match self.snapshot(partition)? {
            Some(table) => Ok(table.len()?),
            None => Ok(0),
        }
    }

    /// A snapshot of the partition's table to read from until the next write (`None`: no table
    /// yet). One snapshot serves many reads: opening one per read costs more than the read.
    fn snapshot(&self, partition: i32) -> Result<Option<Snapshot>, StateStoreError> {
        let name = self.table(partition);
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

    /// Deletes `deleted`, writes `rows`, runs `extra` (a stage's own tables) and records the
    /// changelog offset all this reflects, in one transaction.
    fn write<R: Row>(
        &self,
        partition: i32,
        rows: &HashMap<String, R>,
        deleted: &HashSet<String>,
        changelog_next: i64,
        extra: impl FnOnce(&WriteTransaction) -> Result<(), StateStoreError>,
    ) -> Result<(), StateStoreError> {
        let name = self.table(partition);
        let mut tx = self.db.begin_write()?;
        // Written to the file without waiting for the disk (fsync): a killed process loses
        // nothing, and a machine crash only takes the store back to an earlier consistent commit
        // (rows and offset move together), whose tail the changelog still holds.
        tx.set_durability(redb::Durability::Eventual);
        {
            let mut table = tx.open_table(TableDefinition::<&str, &[u8]>::new(&name))?;
            // Deletions first: a key both deleted and written again is kept.
            for key in deleted {
                table.remove(key.as_str())?;
            }
            for (key, row) in rows {
                table.insert(key.as_str(), row.encode()?.as_slice())?;
            }
            extra(&tx)?;
            tx.open_table(OFFSETS)?
                .insert(partition as u32, changelog_next)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// One partition's keyed state: rows by key, in memory or backed by a [`StateStore`].
pub struct KeyedState<R> {
    /// Rows read or changed since the last flush; every row without a disk store.
    recent: HashMap<String, R>,
    /// Keys deleted since the last flush, deleted from disk by the next one.
    deleted: HashSet<String>,
    disk: Option<(StateStore, i32)>,
    /// What the store held at the last flush, read until the next one (`None`: not opened yet).
    snapshot: Option<Option<Snapshot>>,
    flushed_at: Instant,
    /// The changelog offset the last flush recorded (`None`: never flushed).
    changelog_next: Option<i64>,
}

impl<R> Default for KeyedState<R> {
    fn default() -> Self {
        Self {
            recent: HashMap::new(),
            deleted: HashSet::new(),
            disk: None,
            snapshot: None,
            flushed_at: Instant::now(),
            changelog_next: None,
        }
    }
}

impl<R> std::fmt::Debug for KeyedState<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedState")
            .field("in_memory", &self.recent.len())
            .field("on_disk", &self.disk.is_some())
            .finish()
    }
}

impl<R: Row> KeyedState<R> {
    /// Backed by `store`'s table of `partition`, or in memory without a store.
    pub fn open(store: Option<&StateStore>, partition: i32) -> Self {
        Self {
            disk: store.map(|store| (store.clone(), partition)),
            ..Self::default()
        }
    }

    /// The row of `key`, loaded from disk if needed, to read or change in place.
    pub fn get_mut(&mut self, key: &str) -> Result<Option<&mut R>, StateStoreError> {
        if !self.recent.contains_key(key) {
            let Some(row) = self.stored(key)? else {
                return Ok(None);
            };
            self.recent.insert(key.to_owned(), row);
        }
        Ok(self.recent.get_mut(key))
    }

    /// The row of `key`, loaded from disk if needed.
    pub fn get(&mut self, key: &str) -> Result<Option<&R>, StateStoreError> {
        Ok(self.get_mut(key)?.map(|row| &*row))
    }

    /// Whether `key` has a row; a row on disk is read but not kept in memory.
    pub fn contains(&mut self, key: &str) -> Result<bool, StateStoreError> {
        Ok(self.recent.contains_key(key) || self.stored(key)?.is_some())
    }

    /// The key's row on disk as of the last flush (`None` without a disk store, and for a key
    /// deleted since).
    pub fn stored(&mut self, key: &str) -> Result<Option<R>, StateStoreError> {
        let Some((store, partition)) = &self.disk else {
            return Ok(None);
        };
        if self.deleted.contains(key) {
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
        Ok(Some(R::decode(row.value())?))
    }

    pub fn insert(&mut self, key: String, row: R) {
        self.deleted.remove(&key);
        self.recent.insert(key, row);
    }

    pub fn remove(&mut self, key: &str) {
        self.recent.remove(key);
        if self.disk.is_some() {
            self.deleted.insert(key.to_owned());
        }
    }

    /// The rows held in memory: every row without a disk store.
    pub fn recent(&self) -> impl Iterator<Item = (&String, &R)> {
        self.recent.iter()
    }

    /// The disk store and partition behind this state, if any.
    pub fn disk(&self) -> Option<&(StateStore, i32)> {
        self.disk.as_ref()
    }

    /// Rows in all: on disk, those stored at the last flush (rows added since are not counted);
    /// in memory, every row.
    pub fn len(&self) -> usize {
        match &self.disk {
            Some((store, partition)) => store.len(*partition).unwrap_or_default() as usize,
            None => self.recent.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what changed with the changelog offset it reflects, running `extra` in the same
    /// transaction, then forgets it. Call only once every record emitted so far is acknowledged.
    /// Without a disk store, nothing.
    pub fn flush_with(
        &mut self,
        changelog_next: i64,
        extra: impl FnOnce(&WriteTransaction, &HashMap<String, R>) -> Result<(), StateStoreError>,
    ) -> Result<(), StateStoreError> {
        if let Some((store, partition)) = &self.disk {
            self.snapshot = None;
            let rows = &self.recent;
            store.write(*partition, rows, &self.deleted, changelog_next, |tx| {
                extra(tx, rows)
            })?;
            self.recent.clear();
            self.deleted.clear();
            self.flushed_at = Instant::now();
            self.changelog_next = Some(changelog_next);
        }
        Ok(())
    }
}

impl<R: Row> Changelogged for KeyedState<R> {
    fn open(store: Option<&StateStore>, partition: i32) -> Self {
        KeyedState::open(store, partition)
    }

    fn in_memory(&self) -> usize {
        self.recent.len()
    }

    /// Always when `stopping`, else every few seconds or once enough keys wait (a redb commit
    /// rewrites pages, so a flush is not made at every checkpoint).
    fn wants_flush(&self, stopping: bool) -> bool {
        self.disk.is_some()
            && !(self.recent.is_empty() && self.deleted.is_empty())
            && (stopping
                || self.recent.len() >= FLUSH_KEYS
                || self.flushed_at.elapsed() >= FLUSH_INTERVAL)
    }

    fn release_snapshot(&mut self) {
        self.snapshot = None;
    }

    fn flush(&mut self, changelog_next: i64) -> Result<(), StateStoreError> {
        self.flush_with(changelog_next, |_, _| Ok(()))
    }

    fn changelog_next(&self) -> Option<i64> {
        self.changelog_next
    }
}

/// A partition's state as [`restore`] and [`checkpoint`] handle it.
pub trait Changelogged: Sized {
    /// An empty state, backed by `store`'s table of `partition` or in memory.
    fn open(store: Option<&StateStore>, partition: i32) -> Self;
    /// Keys held in memory (what a flush would write).
    fn in_memory(&self) -> usize;
    /// Whether it is time to write what waits in memory.
    fn wants_flush(&self, stopping: bool) -> bool;
    /// Lets go of the read snapshot (the next read opens a new one): a snapshot held open keeps
    /// redb from reusing the pages later commits free.
    fn release_snapshot(&mut self);
    /// Writes what changed with the changelog offset it reflects (see [`KeyedState::flush_with`]).
    fn flush(&mut self, changelog_next: i64) -> Result<(), StateStoreError>;
    /// The changelog offset the last flush recorded (`None`: never flushed).
    fn changelog_next(&self) -> Option<i64>;
}

/// Implements [`Changelogged`] for a `Default` type whose changelogged state is its field
/// `$field`, a [`KeyedState`]: `changelogged_by!(CustomerEvents, rows);`.
#[macro_export]
macro_rules! changelogged_by {
    ($type:ty, $field:ident) => {
        impl $crate::state::Changelogged for $type {
            fn open(store: Option<&$crate::state::StateStore>, partition: i32) -> Self {
                let mut state = Self::default();
                state.$field = $crate::state::KeyedState::open(store, partition);
                state
            }
            fn in_memory(&self) -> usize {
                $crate::state::Changelogged::in_memory(&self.$field)
            }
            fn wants_flush(&self, stopping: bool) -> bool {
                $crate::state::Changelogged::wants_flush(&self.$field, stopping)
            }
            fn release_snapshot(&mut self) {
                $crate::state::Changelogged::release_snapshot(&mut self.$field)
            }
            fn flush(&mut self, changelog_next: i64) -> Result<(), $crate::state::StateStoreError> {
                $crate::state::Changelogged::flush(&mut self.$field, changelog_next)
            }
            fn changelog_next(&self) -> Option<i64> {
                $crate::state::Changelogged::changelog_next(&self.$field)
            }
        }
    };
}

/// Why a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The changelog could not be read, or holds a record this release cannot read.
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    Store(#[from] StateStoreError),
}

impl From<RestoreError> for StageError {
    fn from(error: RestoreError) -> Self {
        match error {
            RestoreError::Topic(error) => StageError::Topic(error),
            RestoreError::Store(error) => error.into(),
        }
    }
}

/// The state of `partitions`, from the store brought up to the changelog's end, in one pass over
/// the changelog `topic`: for each partition only the tail after the store's recorded offset is
/// read, unless the store has nothing for it or records an offset past the log's end (a log it
/// did not come from) or below its start (a gap retention left), when the partition is rebuilt
/// from its whole changelog. Without a store,
/// every partition is read whole into memory. `absorb` takes each record (tombstones included)
/// in offset order. Memory stays bounded on disk: what is read is written in chunks.
///
/// Errors: a changelog that cannot be read, a record `absorb` refuses (a restore never skips
/// one: state restored without it would be silently wrong), or the store failing.
pub async fn restore<S, A>(
    bootstrap: &str,
    topic: &'static str,
    store: Option<&StateStore>,
    partitions: Vec<i32>,
    absorb: A,
) -> Result<Vec<(i32, S)>, RestoreError>
where
    S: Changelogged + Send + 'static,
    A: FnMut(&mut S, &BorrowedMessage<'_>) -> Result<(), RestoreError> + Send + 'static,
{
    let (bootstrap, store) = (bootstrap.to_owned(), store.cloned());
    tokio::task::spawn_blocking(move || {
        restore_blocking(&bootstrap, topic, store.as_ref(), &partitions, absorb)
    })
    .await
    .map_err(|e| TopicError::Task(e.to_string()))?
}

/// [`restore`] for a changelog of `T` records without tombstones: `absorb` takes each record,
/// decoded. A record this release cannot read stops the restore ([`TopicError::unreadable`]).
pub async fn restore_records<T, S, A>(
    bootstrap: &str,
    topic: &'static str,
    store: Option<&StateStore>,
    partitions: Vec<i32>,
    mut absorb: A,
) -> Result<Vec<(i32, S)>, RestoreError>
where
    T: tributary_schemas::AvroRecord,
    S: Changelogged + Send + 'static,
    A: FnMut(&mut S, T) -> Result<(), StateStoreError> + Send + 'static,
{
    let restored = restore(
        bootstrap,
        topic,
        store,
        partitions,
        move |state: &mut S, message| {
            if let Some(payload) = message.payload() {
                let record =
                    T::from_avro(payload).map_err(|e| TopicError::unreadable(topic, message, e))?;
                absorb(state, record)?;
            }
            Ok(())
        },
    )
    .await?;
    tracing::info!(
        topic,
        partitions = ?restored.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        "state restored"
    );
    Ok(restored)
}

fn restore_blocking<S: Changelogged>(
    bootstrap: &str,
    topic: &'static str,
    store: Option<&StateStore>,
    partitions: &[i32],
    mut absorb: impl FnMut(&mut S, &BorrowedMessage<'_>) -> Result<(), RestoreError>,
) -> Result<Vec<(i32, S)>, RestoreError> {
    const CHUNK: usize = 20_000;
    let mut starts = partitions
        .iter()
        .map(|&p| Ok((p, store.map(|s| s.changelog_next(p)).transpose()?.flatten())))
        .collect::<Result<Vec<(i32, Option<i64>)>, StateStoreError>>()?;
    let mut restored = Vec::new();
    while !starts.is_empty() {
        // Per partition: its state and the changelog offset it reflects.
        let mut reading: HashMap<i32, (S, i64)> = HashMap::new();
        for &(partition, start) in &starts {
            if let (Some(store), None) = (store, start) {
                store.clear(partition)?;
            }
            reading.insert(
                partition,
                (S::open(store, partition), start.unwrap_or_default()),
            );
        }
        let mut failed: Option<RestoreError> = None;
        let highs = read_partitions_from(bootstrap, topic, &starts, |message| {
            let Some((state, next)) = reading.get_mut(&message.partition()) else {
                return;
            };
            if failed.is_some() {
                return;
            }
            *next = message.offset() + 1;
            let absorbed = absorb(state, message).and_then(|()| {
                if store.is_some() && state.in_memory() >= CHUNK {
                    state.flush(*next)?;
                }
                Ok(())
            });
            if let Err(error) = absorbed {
                failed = Some(error);
            }
        })?;
        if let Some(error) = failed {
            return Err(error);
        }
        let mut again = Vec::new();
        for (partition, low, high) in highs {
            let start = starts
                .iter()
                .find(|(p, _)| *p == partition)
                .and_then(|(_, start)| *start);
            // Past the log's end: another log. Below its start: records the store never saw
            // are gone (retention). Either way the store cannot be trusted.
            if let Some(start) = start.filter(|&start| start > high || start < low) {
                tracing::warn!(
                    topic,
                    partition,
                    recorded = start,
                    log_start = low,
                    log_end = high,
                    "the state store does not match its changelog; rebuilding"
                );
                again.push((partition, None));
                continue;
            }
            if let Some((mut state, next)) = reading.remove(&partition) {
                state.flush(next.max(high))?;
                restored.push((partition, state));
            }
        }
        starts = again;
    }
    Ok(restored)
}

/// After a checkpoint's commit: writes the state of every partition that wants a flush to disk,
/// recording as the changelog's end the offset after this member's last acknowledged record in
/// that partition of `changelog` (or, if it wrote none since, what the last flush recorded).
/// Never a high watermark fetched now: a member that lost its partition without knowing yet
/// would record the new owner's records as read, and a later restore would skip them. Everything
/// `out` sent is acknowledged by then, so the store never runs ahead of its changelog.
/// `state` picks the changelogged part of a stage's state.
pub fn checkpoint<T, S: Changelogged>(
    changelog: &'static str,
    states: &mut HashMap<i32, T>,
    when: CommitWhen,
    out: &Outbox,
    state: impl Fn(&mut T) -> &mut S,
) -> Result<(), StateStoreError> {
    for (&partition, held) in states.iter_mut() {
        let held = state(held);
        held.release_snapshot();
        if !held.wants_flush(when == CommitWhen::Stopping) {
            continue;
        }
        let next = match (out.acked_end(changelog, partition), held.changelog_next()) {
            (Some(acked), Some(flushed)) => acked.max(flushed),
            (acked, flushed) => match acked.or(flushed) {
                Some(next) => next,
                // Restored states have always flushed once; nothing to record against.
                None => continue,
            },
        };
        held.flush(next)?;
    }
    Ok(())
}

/// A changelog record's key, for a tombstone.
pub fn key_of(message: &BorrowedMessage<'_>) -> String {
    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned()
}
