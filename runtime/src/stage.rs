//! The one consume loop every stage runs in: consume → process → produce → commit.
//!
//! A stage says what it does with one record ([`Stage::process`]), what it must make final before
//! its input may be committed ([`Stage::flush`]), the state it keeps per input partition
//! ([`Stage::State`], built by [`Stage::restore`]) and what it commits beside an offset
//! ([`Stage::commit_position`]). [`run`] owns the rest, the same way for every stage:
//!
//! - **Offsets.** A record's offset is committed only after `process` took it, `flush` made it
//!   final and every record produced for it (outputs, dead letters) is acknowledged. Checkpoints
//!   run every `commit_interval`, whenever the stage wants one ([`Stage::wants_flush`]) or the
//!   producer has `max_in_flight` records out, and once more on stop (synchronously).
//! - **Assignment.** A partition's state is restored before its first record, after everything in
//!   flight is acknowledged (a restore must see the stage's own outputs). A revoked partition's
//!   state and uncommitted positions are dropped before anything else is flushed or committed, and
//!   a checkpoint commits only partitions the member still owns, so a member never moves another's
//!   position; the new owner replays from the last commit.
//! - **Positions that left the log.** A consumer never jumps over records it has not read: a
//!   committed position the broker has deleted (retention ran ahead of the group) stops the stage
//!   with [`StageError::PositionLost`], naming the gap, and counts
//!   `tributary_stage_positions_lost_total{stage,topic}`, until an operator chooses where to
//!   resume (`tributary replay`). A partition the group never committed starts at the beginning.
//! - **Errors, per record** ([`Failure`]): retry it (the member's partitions are paused and the
//!   consumer polled, so the group keeps the member however long the outage; exponential backoff;
//!   given up when the partition is revoked), dead-letter it with the reason, or stop after
//!   committing everything before it.
//! - **Readiness and metrics.** Ready once the group assigned the member its partitions;
//!   `tributary_stage_records_total{stage}`, `tributary_stage_retries_total{stage}`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::changelog::unrestored;
use crate::dead_letter::{DeadLetterRecord, DeadLetterStage};
use crate::kafka::{producer_config, TopicError};
use crate::member::{commit_offsets, Brokers, CommitWhen, GroupMember, PausedMember};

/// A group member's consumer, as the loop and its stage share it.
pub type Member = Arc<StreamConsumer<GroupMember>>;

/// What a stage does with its input topic. Implementations are short: the offset contract,
/// assignment, retries and dead letters are [`run`]'s.
pub trait Stage: Send {
    /// The stage's name in metrics and logs.
    const NAME: &'static str;

    /// The stage its dead letters name (`tributary.stage`).
    const DEAD_LETTERS: DeadLetterStage;

    /// Whether every attempt at a record first checks that the group still assigns its partition
    /// to this member: for a stage whose side effects must have one writer (store credit).
    const EXCLUSIVE: bool = false;

    /// What the stage keeps per input partition; `()` for none.
    type State: Send + Default;

    /// The state of `partitions`, newly assigned to this member, before their first record: one
    /// entry per partition asked for. Called with nothing of the stage's in flight. Default: a
    /// fresh state each, for a stage that keeps nothing across restarts.
    fn restore(
        &mut self,
        member: &Member,
        partitions: Vec<i32>,
    ) -> impl Future<Output = Result<Vec<(i32, Self::State)>, StageError>> + Send {
        let _ = member;
        let fresh = partitions
            .into_iter()
            .map(|p| (p, Self::State::default()))
            .collect();
        async { Ok(fresh) }
    }

    /// Takes one record, in offset order within its partition. Records sent through `out` are
    /// awaited before the record's offset is committed. A stop never interrupts `process`; a
    /// retry calls it again with the same record and state, so what it did before failing must
    /// be safe to do again.
    fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        state: &mut Self::State,
        out: &mut Outbox,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Whether the stage holds enough to checkpoint now rather than at the next interval.
    fn wants_flush(&self) -> bool {
        false
    }

    /// Makes final everything `process` took (inserts a batch, makes the writes), before the
    /// offsets are committed. A stop may drop it midway, and a retry calls it again: every flush
    /// must be safe to repeat (uncommitted input is replayed anyway).
    fn flush(&mut self, out: &mut Outbox) -> impl Future<Output = Result<(), FlushError>> + Send {
        let _ = out;
        async { Ok(()) }
    }

    /// The offset to commit for a partition whose records are done up to `next`, and the commit's
    /// metadata. Default: `next`, no metadata.
    fn commit_position(&self, state: &Self::State, next: i64) -> (i64, String) {
        let _ = state;
        (next, String::new())
    }

    /// After each checkpoint's commit, with everything sent through `out` acknowledged (state
    /// written to disk, say: see [`crate::state::checkpoint`]).
    fn checkpointed(
        &mut self,
        states: &mut HashMap<i32, Self::State>,
        when: CommitWhen,
        out: &Outbox,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        let _ = (states, when, out);
        async { Ok(()) }
    }

    /// Every `commit_interval`, before the checkpoint (idle ticks, gauges).
    fn tick(
        &mut self,
        states: &mut HashMap<i32, Self::State>,
        out: &mut Outbox,
    ) -> impl Future<Output = Result<(), StageError>> + Send {
        let _ = (states, out);
        async { Ok(()) }
    }
}

/// What became of one record that [`Stage::process`] could not take.
#[derive(Debug)]
pub enum Failure {
    /// Worth trying again (a dependency is down or throttling): the loop pauses the member's
    /// partitions, backs off and calls `process` again with the same record.
    Retry(String),
    /// This record can never be taken: it goes to the dead-letter topic with the reason, and the
    /// loop goes on.
    DeadLetter(String),
    /// The stage cannot go on: everything before this record is committed, then the stage stops.
    Stop(StageError),
}

/// Why a [`Stage::flush`] did not finish.
#[derive(Debug)]
pub enum FlushError {
    /// Try again after a pause (the loop pauses the partitions and keeps polling meanwhile).
    Retry(String),
    Stop(StageError),
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A topic could not be read: a restore failed, or a record this release cannot read.
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("encoding: {0}")]
    Codec(#[from] tributary_schemas::CodecError),
    #[error("a produced record was not acknowledged: {0}")]
    Delivery(String),
    /// The group's position in a partition is no longer in the log: the broker deleted records
    /// (retention, or the embedded broker's size limit) before this stage read them.
    #[error("{topic} [{partition}]: group {group} is at offset {position}, but the log now starts at {log_start}: {} records were deleted before this stage read them. Nothing was skipped; choose where to resume with `tributary replay --group {group} ...`", .log_start - .position)]
    PositionLost {
        group: String,
        topic: String,
        partition: i32,
        position: i64,
        log_start: i64,
    },
    /// The group's position in a partition lies past the log's end: the topic was recreated or
    /// truncated under it.
    #[error("{topic} [{partition}]: group {group} is at offset {position}, past the log's end at {log_end} (was the topic recreated?); choose where to resume with `tributary replay --group {group} ...`")]
    PositionBeyondEnd {
        group: String,
        topic: String,
        partition: i32,
        position: i64,
        log_end: i64,
    },
    /// The stage's own failure (a state store, a database), as its crate defines it.
    #[error(transparent)]
    Stage(Box<dyn std::error::Error + Send + Sync>),
}

impl StageError {
    /// Wraps a stage's own error type.
    pub fn stage(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Stage(Box::new(error))
    }
}

impl<E: Into<StageError>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::Stop(error.into())
    }
}

impl From<StageError> for FlushError {
    fn from(error: StageError) -> Self {
        Self::Stop(error)
    }
}

/// Where a stage reads and how often it checkpoints.
pub struct Input<'a> {
    pub brokers: &'a Brokers,
    /// The consumer group; members of one group share the topic's partitions.
    pub group: &'a str,
    pub topic: &'static str,
    /// The longest time between checkpoints.
    pub commit_interval: Duration,
    /// Checkpoint early once this many produced records await acknowledgement.
    pub max_in_flight: usize,
}

/// One record to produce.
pub struct Output {
    pub topic: &'static str,
    /// `None`: by the key (the contract's partitioner).
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    /// `None`: a tombstone, which deletes the key from a compacted topic.
    pub payload: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

/// A stage's producer: records are enqueued without waiting and awaited together at the next
/// checkpoint, before the input offsets they cover are committed.
pub struct Outbox {
    producer: FutureProducer,
    stage: DeadLetterStage,
    in_flight: Vec<(&'static str, DeliveryFuture)>,
    /// Per (topic, partition): the offset after the last record of this member's the broker has
    /// acknowledged. What a state store may record as its changelog's end: never another
    /// member's records, which a fetched high watermark could include.
    acked_ends: HashMap<(&'static str, i32), i64>,
    /// The first delivery that failed: from then on nothing is committed, since a record whose
    /// output was lost must be processed again.
    failed: Option<String>,
}

impl Outbox {
    fn new(producer: FutureProducer, stage: DeadLetterStage) -> Self {
        Self {
            producer,
            stage,
            in_flight: Vec::new(),
            acked_ends: HashMap::new(),
            failed: None,
        }
    }

    /// The offset after the last record this member produced to `topic`'s `partition` that the
    /// broker has acknowledged (`None`: none yet).
    pub fn acked_end(&self, topic: &'static str, partition: i32) -> Option<i64> {
        self.acked_ends.get(&(topic, partition)).copied()
    }

    fn acked(&mut self, topic: &'static str, (partition, offset): (i32, i64)) {
        let end = self.acked_ends.entry((topic, partition)).or_default();
        *end = (*end).max(offset + 1);
    }

    /// Enqueues `output`; when the producer's queue is full, first waits for what is in flight.
    pub async fn send(&mut self, output: Output) -> Result<(), StageError> {
        let delivery = self.enqueue(&output).await?;
        self.in_flight.push((output.topic, delivery));
        Ok(())
    }

    /// Produces `output` and waits until the broker has it: for a changelog record that must be
    /// written before the stage acts on it. Returns its (partition, offset).
    pub async fn send_now(&mut self, output: Output) -> Result<(i32, i64), StageError> {
        let delivery = self.enqueue(&output).await?;
        match acknowledged(delivery).await {
            Ok(position) => {
                self.acked(output.topic, position);
                Ok(position)
            }
            Err(error) => {
                self.failed.get_or_insert_with(|| error.to_string());
                Err(error)
            }
        }
    }

    /// Enqueues a dead letter for `message` with the reason (see [`DeadLetterRecord`]).
    pub async fn dead_letter(
        &mut self,
        message: &impl Message,
        reason: &str,
    ) -> Result<(), StageError> {
        let letter = DeadLetterRecord::new(message, self.stage, reason);
        self.send(Output {
            topic: tributary_schemas::topics::DEAD_LETTERS,
            partition: None,
            key: letter.key,
            payload: Some(letter.payload),
            headers: Some(letter.headers),
        })
        .await
    }

    /// Records enqueued and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Waits until everything enqueued is acknowledged.
    /// Every delivery is awaited, also after one failed; after a failure this always fails.
    pub async fn drain(&mut self) -> Result<(), StageError> {
        for (topic, delivery) in std::mem::take(&mut self.in_flight) {
            match acknowledged(delivery).await {
                Ok(position) => self.acked(topic, position),
                Err(error) => {
                    self.failed.get_or_insert_with(|| error.to_string());
                }
            }
        }
        match &self.failed {
            Some(reason) => Err(StageError::Delivery(reason.clone())),
            None => Ok(()),
        }
    }

    async fn enqueue(&mut self, output: &Output) -> Result<DeliveryFuture, StageError> {
        loop {
            let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(output.topic).key(&output.key);
            if let Some(payload) = &output.payload {
                record = record.payload(payload);
            }
            if let Some(partition) = output.partition {
                record = record.partition(partition);
            }
            if let Some(headers) = &output.headers {
                record = record.headers(headers.clone());
            }
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.drain().await?;
                }
                Err((error, _)) => {
                    self.failed.get_or_insert_with(|| error.to_string());
                    return Err(error.into());
                }
            }
        }
    }
}

async fn acknowledged(delivery: DeliveryFuture) -> Result<(i32, i64), StageError> {
    match delivery.await {
        Ok(Ok(delivered)) => Ok((delivered.partition, delivered.offset)),
        Ok(Err((error, _))) => Err(StageError::Delivery(error.to_string())),
        Err(_) => Err(StageError::Delivery("the producer dropped a record".into())),
    }
}

/// Exponential backoff from 100 ms to 30 s.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(100))
    }
}

impl Backoff {
    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        pause
    }
}

/// Runs `stage` on `input` until `shutdown` (then checkpoints once more) or until the stage
/// stops with an error (after committing everything before the record that stopped it).
pub async fn run<S: Stage>(
    stage: &mut S,
    input: Input<'_>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) -> Result<(), StageError> {
    let member = input.brokers.member(input.group, input.topic, ready)?;
    let producer: FutureProducer =
        producer_config(&input.brokers.bootstrap_servers, Duration::from_secs(30)).create()?;
    let mut running = Running {
        stage,
        topic: input.topic,
        outbox: Outbox::new(producer, S::DEAD_LETTERS),
        states: HashMap::new(),
        done: HashMap::new(),
    };
    let mut tick = tokio::time::interval(input.commit_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break None,
            _ = tick.tick() => {
                running.forget_revoked(&member);
                if let Err(error) = running.stage.tick(&mut running.states, &mut running.outbox).await {
                    break Some(error);
                }
                match running.checkpoint(&member, &shutdown, CommitWhen::Running).await {
                    Ok(_) => {}
                    Err(error) => break Some(error),
                }
            }
            received = member.recv() => {
                let message = match received {
                    Ok(message) => message,
                    Err(error) => match consumer_error(&member, input.group, input.topic, S::NAME, error).await {
                        Ok(()) => continue,
                        Err(error) => break Some(error),
                    },
                };
                match running.take(&member, &message, &shutdown).await {
                    Ok(Took::Done) => {
                        metrics::counter!("tributary_stage_records_total", "stage" => S::NAME).increment(1);
                        running.done.insert(message.partition(), message.offset() + 1);
                    }
                    Ok(Took::LeftForNewOwner) => {}
                    Ok(Took::Stopping) => break None,
                    // An unreadable record stops before anything was done with it; any other
                    // error may have left the partition's state half changed, so nothing more of
                    // that partition is committed or written from it.
                    Err(error @ StageError::Topic(TopicError::Unreadable { .. })) => break Some(error),
                    Err(error) => {
                        running.states.remove(&message.partition());
                        running.done.remove(&message.partition());
                        break Some(error);
                    }
                }
                if running.stage.wants_flush() || running.outbox.in_flight() >= input.max_in_flight {
                    if let Err(error) = running.checkpoint(&member, &shutdown, CommitWhen::Running).await {
                        break Some(error);
                    }
                }
            }
        }
    };
    // Everything done before the stop (or before the record that stopped the stage) is
    // committed; a failure of this last checkpoint matters less than the stop's own error.
    let last = running
        .checkpoint(&member, &shutdown, CommitWhen::Stopping)
        .await;
    match stopped {
        Some(error) => {
            if let Err(also) = last {
                tracing::warn!(stage = S::NAME, error = %also, "the last checkpoint before stopping failed");
            }
            Err(error)
        }
        None => last.map(|_| ()),
    }
}

/// What became of a record handed to the stage.
enum Took {
    Done,
    /// Its partition was revoked while the stage retried it: the new owner takes it.
    LeftForNewOwner,
    /// A stop came while the stage retried it: the next run takes it.
    Stopping,
}

struct Running<'s, S: Stage> {
    stage: &'s mut S,
    topic: &'static str,
    outbox: Outbox,
    states: HashMap<i32, S::State>,
    /// Per partition, the offset after the last record done and not yet committed.
    done: HashMap<i32, i64>,
}

impl<S: Stage> Running<'_, S> {
    /// Drops what this member kept for partitions the group has taken away.
    fn forget_revoked(&mut self, member: &Member) {
        for partition in member.context().take_revoked() {
            self.states.remove(&partition);
            self.done.remove(&partition);
        }
    }

    async fn take(
        &mut self,
        member: &Member,
        message: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Took, StageError> {
        self.forget_revoked(member);
        let partition = message.partition();
        if !self.states.contains_key(&partition) {
            self.outbox.drain().await?;
            let missing = unrestored(member, self.topic, &self.states, partition)?;
            let restored = self.stage.restore(member, missing).await?;
            self.states.extend(restored);
        }
        let Some(state) = self.states.get_mut(&partition) else {
            return Err(StageError::Delivery(format!(
                "{} restored no state for partition {partition}",
                S::NAME
            )));
        };
        let mut backoff = Backoff::default();
        let mut paused: Option<PausedMember<'_>> = None;
        // Ownership is this assignment of the partition, not just being assigned it: revoked and
        // given back meanwhile, another member may have acted on the record.
        let (topic, revocations) = (self.topic, member.context().revocations(partition));
        let still_owned = || {
            owns(member, topic, partition) && member.context().revocations(partition) == revocations
        };
        let took = loop {
            if S::EXCLUSIVE && !still_owned() {
                tracing::warn!(
                    stage = S::NAME,
                    partition,
                    offset = message.offset(),
                    "partition revoked; left to its new owner"
                );
                break Ok(Took::LeftForNewOwner);
            }
            match self.stage.process(message, state, &mut self.outbox).await {
                Ok(()) => break Ok(Took::Done),
                Err(Failure::DeadLetter(reason)) => {
                    break self
                        .outbox
                        .dead_letter(message, &reason)
                        .await
                        .map(|()| Took::Done)
                }
                Err(Failure::Stop(error)) => break Err(error),
                Err(Failure::Retry(reason)) => {
                    metrics::counter!("tributary_stage_retries_total", "stage" => S::NAME)
                        .increment(1);
                    tracing::warn!(stage = S::NAME, partition, offset = message.offset(), %reason, "retrying a record");
                    if shutdown.is_cancelled() {
                        break Ok(Took::Stopping);
                    }
                    paused
                        .get_or_insert_with(|| PausedMember::pause(member))
                        .wait(backoff.next_pause())
                        .await;
                    if !still_owned() {
                        tracing::warn!(
                            stage = S::NAME,
                            partition,
                            offset = message.offset(),
                            "partition revoked while retrying; left to its new owner"
                        );
                        break Ok(Took::LeftForNewOwner);
                    }
                }
            }
        };
        if let Some(paused) = paused {
            paused.resume();
        }
        took
    }

    /// Flushes the stage (retrying while paused), awaits everything produced, commits the done
    /// positions of partitions this member still owns, then tells the stage. Returns false when a
    /// stop came first and nothing was committed.
    async fn checkpoint(
        &mut self,
        member: &Member,
        shutdown: &CancellationToken,
        when: CommitWhen,
    ) -> Result<bool, StageError> {
        let mut backoff = Backoff::default();
        let mut paused: Option<PausedMember<'_>> = None;
        let flushed = loop {
            let flushed = match when {
                CommitWhen::Running => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break false,
                    flushed = self.stage.flush(&mut self.outbox) => flushed,
                },
                CommitWhen::Stopping => self.stage.flush(&mut self.outbox).await,
            };
            match flushed {
                Ok(()) => break true,
                Err(FlushError::Stop(error)) => return Err(error),
                Err(FlushError::Retry(reason)) => {
                    metrics::counter!("tributary_stage_retries_total", "stage" => S::NAME)
                        .increment(1);
                    tracing::warn!(stage = S::NAME, %reason, "flush failed; retrying");
                    if shutdown.is_cancelled() {
                        break false;
                    }
                    paused
                        .get_or_insert_with(|| PausedMember::pause(member))
                        .wait(backoff.next_pause())
                        .await;
                }
            }
        };
        if flushed {
            self.outbox.drain().await?;
            self.forget_revoked(member);
            self.commit(member, when).await?;
            self.stage
                .checkpointed(&mut self.states, when, &self.outbox)
                .await?;
        }
        if let Some(paused) = paused {
            paused.resume();
        }
        Ok(flushed)
    }

    async fn commit(&mut self, member: &Member, when: CommitWhen) -> Result<(), StageError> {
        if self.done.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in self.done.drain() {
            // A partition revoked since it was read (while a flush was retried, say) belongs to
            // another member now, which may have committed further.
            if !owns(member, self.topic, partition) {
                continue;
            }
            let (offset, metadata) = match self.states.get(&partition) {
                Some(state) => self.stage.commit_position(state, next),
                None => (next, String::new()),
            };
            let mut element = offsets.add_partition(self.topic, partition);
            element.set_offset(Offset::Offset(offset))?;
            element.set_metadata(metadata);
        }
        if offsets.count() > 0 {
            commit_offsets(member, offsets, when).await;
        }
        Ok(())
    }
}

/// Whether the group still assigns `partition` of `topic` to this member.
pub fn owns(member: &StreamConsumer<GroupMember>, topic: &str, partition: i32) -> bool {
    member
        .assignment()
        .is_ok_and(|assignment| assignment.find_partition(topic, partition).is_some())
}

/// A consumer error: transient ones (a broker away, a rebalance) are logged and the loop goes on.
/// `AutoOffsetReset` means a partition's position is not in the log: a partition the group never
/// committed starts from the beginning; one whose position was deleted stops the stage.
async fn consumer_error(
    member: &Member,
    group: &str,
    topic: &'static str,
    stage: &'static str,
    error: KafkaError,
) -> Result<(), StageError> {
    if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AutoOffsetReset) {
        tracing::warn!(stage, %error, "consumer error; continuing");
        return Ok(());
    }
    let probe = member.clone();
    let positions = tokio::task::spawn_blocking(move || positions_against_log(&probe, topic))
        .await
        .map_err(|e| TopicError::Task(e.to_string()))??;
    for (partition, position, log_start) in positions {
        match position {
            None => {
                tracing::info!(
                    stage,
                    topic,
                    partition,
                    "no committed position; starting from the beginning"
                );
                member.seek(topic, partition, Offset::Beginning, Duration::from_secs(10))?;
            }
            Some(position) if position < log_start => {
                metrics::counter!("tributary_stage_positions_lost_total", "stage" => stage, "topic" => topic)
                    .increment(1);
                let error = StageError::PositionLost {
                    group: group.to_owned(),
                    topic: topic.to_owned(),
                    partition,
                    position,
                    log_start,
                };
                tracing::error!(stage, %error, "stopping: records were deleted before they were read");
                return Err(error);
            }
            Some(position) => {
                // librdkafka stopped fetching the partition when it raised the error: start it
                // again where it was, or stop if the position lies past the log's end (a topic
                // recreated or truncated).
                let (_, log_end) =
                    member.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
                if position > log_end {
                    return Err(StageError::PositionBeyondEnd {
                        group: group.to_owned(),
                        topic: topic.to_owned(),
                        partition,
                        position,
                        log_end,
                    });
                }
                member.seek(
                    topic,
                    partition,
                    Offset::Offset(position),
                    Duration::from_secs(10),
                )?;
            }
        }
    }
    tracing::warn!(stage, %error, "offset reset resolved; continuing");
    Ok(())
}

/// For each assigned partition of `topic`: its consume position (the fetch position, else the
/// group's committed offset; `None` when the group never committed) and the log's first offset.
/// Blocking.
fn positions_against_log(
    member: &StreamConsumer<GroupMember>,
    topic: &str,
) -> Result<Vec<(i32, Option<i64>, i64)>, StageError> {
    let timeout = Duration::from_secs(10);
    let assignment = member.assignment()?;
    let fetching = member.position()?;
    let committed = member.committed_offsets(assignment.clone(), timeout)?;
    let mut positions = Vec::new();
    for element in assignment.elements_for_topic(topic) {
        let partition = element.partition();
        let offset_of = |list: &TopicPartitionList| match list
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(offset)) => Some(offset),
            _ => None,
        };
        let position = offset_of(&fetching).or_else(|| offset_of(&committed));
        let (log_start, _) = member.fetch_watermarks(topic, partition, timeout)?;
        positions.push((partition, position, log_start));
    }
    Ok(positions)
}
