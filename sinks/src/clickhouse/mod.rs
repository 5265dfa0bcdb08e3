//! The ClickHouse sink: `tributary.attributions` → tables `attributions` and `reward_ledger`.
//!
//! Offset contract: rows are inserted in batches (by rows and by time); a batch's offsets are
//! committed only after ClickHouse accepted the insert. While ClickHouse is down the sink retries
//! the same batch with backoff and commits nothing, so nothing is lost. A redelivered or replayed
//! row is harmless: the table keeps the highest revision of each order, and the ledger one row per
//! entry id (see `migrations/`).

pub mod migrations;
pub mod queries;
mod row;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tributary_runtime::dead_letter::DeadLetterStage;
use tributary_runtime::kafka::TopicError;
use tributary_runtime::member::Brokers;
use tributary_runtime::stage::{
    self, Backoff, Failure, FlushError, Input, Outbox, Stage, StageError,
};
use tributary_schemas::{topics, Attribution, AvroRecord};

pub use row::{AttributionRow, ExportRow, RewardRow, MONEY_SCALE};

/// Configuration of the ClickHouse sink (`[clickhouse]` in the config file).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// ClickHouse HTTP endpoint.
    #[serde(default = "default_url")]
    pub url: String,
    /// Database holding tributary's tables; created if missing.
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Insert once this many rows are buffered…
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// …or once the oldest buffered row is this old.
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    /// Consumer group of the sink.
    #[serde(default = "default_group")]
    pub group_id: String,
}

fn default_url() -> String {
    "http://127.0.0.1:18123".into()
}
fn default_database() -> String {
    "tributary".into()
}
fn default_batch_rows() -> usize {
    20_000
}
fn default_batch_ms() -> u64 {
    500
}
fn default_group() -> String {
    "tributary-sink-clickhouse".into()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: default_url(),
            database: default_database(),
            user: None,
            password: None,
            batch_rows: default_batch_rows(),
            batch_ms: default_batch_ms(),
            group_id: default_group(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
}

impl Config {
    /// A client for this database. Validation and compression are off: ClickHouse 18.16 knows
    /// neither `RowBinaryWithNamesAndTypes` nor how to compress HTTP responses for this client.
    pub fn client(&self) -> ::clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    fn server_client(&self) -> ::clickhouse::Client {
        let mut client = ::clickhouse::Client::default()
            .with_url(&self.url)
            .with_compression(::clickhouse::Compression::None)
            .with_validation(false);
        if let Some(user) = &self.user {
            client = client.with_user(user);
        }
        if let Some(password) = &self.password {
            client = client.with_password(password);
        }
        client
    }

    /// Drops the database with everything in it: the demo, the bench and the tests start empty.
    pub async fn drop_database(&self) -> Result<(), SinkError> {
        self.server_client()
            .query(&format!("DROP DATABASE IF EXISTS `{}`", self.database))
            .execute()
            .await?;
        Ok(())
    }

    /// Creates the database if it is missing and applies the migrations it has not recorded (see
    /// [`migrations`]); returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<u32>, SinkError> {
        self.server_client()
            .query(&format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                self.database.replace('`', "")
            ))
            .execute()
            .await?;
        let client = self.client();
        client.query(migrations::LEDGER).execute().await?;
        let recorded: Vec<u32> = client
            .query("SELECT DISTINCT version FROM schema_migrations")
            .fetch_all()
            .await?;
        let mut applied = Vec::new();
        for migration in migrations::MIGRATIONS
            .iter()
            .filter(|m| !recorded.contains(&m.version))
        {
            for statement in migration.statements() {
                match client.query(statement).execute().await {
                    Ok(()) => {}
                    Err(error) if migrations::already_exists(&error) => {
                        tracing::info!(version = migration.version, %error, "statement already applied");
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            client
                .query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, now())")
                .bind(migration.version)
                .bind(migration.name)
                .execute()
                .await?;
            tracing::info!(
                version = migration.version,
                name = migration.name,
                "clickhouse migration applied"
            );
            applied.push(migration.version);
        }
        Ok(applied)
    }
}

pub struct ClickHouseSink {
    brokers: Brokers,
    config: Config,
}

impl ClickHouseSink {
    pub fn new(brokers: &Brokers, config: Config) -> Self {
        Self {
            brokers: brokers.clone(),
            config,
        }
    }

    /// Migrates the database (waiting for ClickHouse), then consumes `tributary.attributions`
    /// until `shutdown`; see [`stage::run`] for the loop and the module doc for the offset contract.
    pub async fn run(
        &self,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        self.migrate_until_up(&shutdown).await;
        let mut stage = Writer {
            client: self.config.client(),
            batch_rows: self.config.batch_rows,
            batch: Batch::default(),
        };
        let input = Input {
            brokers: &self.brokers,
            group: &self.config.group_id,
            topic: topics::ATTRIBUTIONS,
            commit_interval: Duration::from_millis(self.config.batch_ms),
            max_in_flight: usize::MAX,
        };
        stage::run(&mut stage, input, ready, shutdown).await
    }

    async fn migrate_until_up(&self, shutdown: &CancellationToken) {
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.config.migrate().await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "clickhouse not ready; retrying");
                    tokio::time::sleep(backoff.next_pause().min(Duration::from_secs(5))).await;
                }
            }
        }
    }
}

/// The sink as a stage: rows are batched by `process` and inserted by `flush`.
struct Writer {
    client: ::clickhouse::Client,
    batch_rows: usize,
    batch: Batch,
}

impl Stage for Writer {
    const NAME: &'static str = "sink-clickhouse";
    const DEAD_LETTERS: DeadLetterStage = DeadLetterStage::SinkClickHouse;
    type State = ();

    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        _state: &mut (),
        _out: &mut Outbox,
    ) -> Result<(), Failure> {
        match message.payload().map(Attribution::from_avro) {
            Some(Ok(record)) => self.batch.push(&record),
            // A record this release cannot read is never skipped: what came before it is
            // written and committed, then the sink stops before it.
            Some(Err(error)) => {
                return Err(TopicError::unreadable(topics::ATTRIBUTIONS, message, error).into())
            }
            None => {}
        }
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.batch.attributions.len() >= self.batch_rows
    }

    /// Both inserts; while ClickHouse refuses, the loop retries the same batch with the
    /// member's partitions paused, so the group keeps it and nothing is committed meanwhile.
    async fn flush(&mut self, _out: &mut Outbox) -> Result<(), FlushError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        match self.batch.insert(&self.client).await {
            Ok(()) => {
                metrics::counter!("tributary_sink_rows_total")
                    .increment(self.batch.attributions.len() as u64);
                self.batch.clear();
                Ok(())
            }
            Err(error) => {
                metrics::counter!("tributary_sink_insert_failures_total").increment(1);
                Err(FlushError::Retry(format!(
                    "insert of {} rows failed: {error}",
                    self.batch.attributions.len()
                )))
            }
        }
    }
}

/// Rows read since the last commit.
#[derive(Default)]
struct Batch {
    attributions: Vec<AttributionRow>,
    rewards: Vec<RewardRow>,
}

impl Batch {
    /// An order's revision and its whole reward ledger (entries already written collapse by id).
    fn push(&mut self, record: &Attribution) {
        self.attributions.push(AttributionRow::from(record));
        self.rewards
            .extend(record.rewards.iter().map(|e| RewardRow::new(record, e)));
    }

    fn is_empty(&self) -> bool {
        self.attributions.is_empty() && self.rewards.is_empty()
    }

    /// Both inserts; a retry after a partial failure writes rows again, which is harmless.
    async fn insert(
        &self,
        client: &::clickhouse::Client,
    ) -> Result<(), ::clickhouse::error::Error> {
        insert(client, "attributions", &self.attributions).await?;
        insert(client, "reward_ledger", &self.rewards).await
    }

    fn clear(&mut self) {
        self.attributions.clear();
        self.rewards.clear();
    }
}

async fn insert<R: ::clickhouse::RowOwned + ::clickhouse::RowWrite>(
    client: &::clickhouse::Client,
    table: &str,
    rows: &[R],
) -> Result<(), ::clickhouse::error::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut insert = client.insert::<R>(table).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}
