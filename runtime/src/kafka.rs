//! How every component reaches Kafka: client settings, the embedded broker, topic provisioning,
//! whole-topic reads and group offset resets.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::BorrowedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Message, Offset, TopicPartitionList};

use tributary_schemas::topics::{self, Cleanup};

/// The largest record (key, value and headers, uncompressed) tributary produces and provisions its
/// topics for, in bytes. Ingest's body limit is checked against it at start, and a dead letter is
/// cut to fit it (see [`crate::dead_letter`]). 4 MiB: an order with hundreds of line items is
/// about 1 MB of JSON.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Settings common to every client.
pub fn client_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("client.id", "tributary");
    config
}

/// An idempotent producer with acks=all: a record is acknowledged once every in-sync replica has
/// it, and retries never duplicate or reorder it. `delivery_timeout` bounds how long one record may
/// wait for that acknowledgement.
pub fn producer_config(bootstrap_servers: &str, delivery_timeout: Duration) -> ClientConfig {
    let mut config = client_config(bootstrap_servers);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", topics::PARTITIONER)
        .set("linger.ms", "2")
        // Order JSON compresses about fourfold; less to send, store and fetch.
        .set("compression.type", "lz4")
        .set(
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        )
        .set("queue.buffering.max.messages", "500000")
        // librdkafka refuses a larger record before sending it; the topics take as much.
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string());
    config
}

/// A consumer in `group` that commits only what the caller says is done (no auto commit) and
/// starts from the beginning of a topic the group has never committed on.
pub fn consumer_config(bootstrap_servers: &str, group: &str) -> ClientConfig {
    let mut config = client_config(bootstrap_servers);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("isolation.level", "read_committed")
        // The embedded broker holds an empty fetch for the whole wait even when records arrive
        // meanwhile; a short wait keeps its end-to-end latency low and costs a real broker only
        // ten idle fetches a second.
        .set("fetch.wait.max.ms", "100");
    config
}

/// librdkafka's in-process mock cluster: real Kafka protocol on loopback ports, nothing on disk.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts the cluster with every topic of the contract. The mock cluster does not answer the
    /// CreateTopics admin request, so topics are created through its own API here.
    pub fn start(brokers: i32, partitions: i32) -> Result<Self, rdkafka::error::KafkaError> {
        let cluster = MockCluster::new(brokers)?;
        for spec in topics::ALL {
            let count = if spec.single_partition { 1 } else { partitions };
            cluster.create_topic(spec.name, count, brokers.min(3))?;
        }
        Ok(Self { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Takes broker `id` (1-based) down: its connections close and it refuses new ones, as a
    /// killed broker would. For outage tests.
    pub fn broker_down(&self, id: i32) -> Result<(), rdkafka::error::KafkaError> {
        self.cluster.broker_down(id)
    }

    /// Brings broker `id` back after [`Self::broker_down`], with everything it held.
    pub fn broker_up(&self, id: i32) -> Result<(), rdkafka::error::KafkaError> {
        self.cluster.broker_up(id)
    }
}

/// Creates every topic of the contract that does not exist yet. Partitioned topics get
/// `partitions` partitions each (they must agree; see [`topics`]).
pub async fn provision_topics(
    bootstrap_servers: &str,
    partitions: i32,
    replication: i32,
) -> Result<Vec<String>, rdkafka::error::KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap_servers).create()?;
    let specs: Vec<(&str, i32, &str)> = topics::ALL
        .iter()
        .map(|spec| {
            let cleanup = match spec.cleanup {
                Cleanup::Compact => "compact",
                Cleanup::Delete => "delete",
            };
            (
                spec.name,
                if spec.single_partition { 1 } else { partitions },
                cleanup,
            )
        })
        .collect();
    let max_message_bytes = (MAX_MESSAGE_BYTES + 64 * 1024).to_string();
    let new_topics: Vec<NewTopic> = specs
        .iter()
        .map(|(name, parts, cleanup)| {
            NewTopic::new(name, *parts, TopicReplication::Fixed(replication))
                .set("cleanup.policy", cleanup)
                // A record batch's framing on top of the largest record.
                .set("max.message.bytes", &max_message_bytes)
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut created = Vec::new();
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(rdkafka::error::KafkaError::AdminOp(code)).inspect_err(|_| {
                    tracing::error!(topic = %name, ?code, "creating topic failed");
                })
            }
        }
    }
    Ok(created)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} does not exist; run `tributary topics create`")]
    MissingTopic(String),
    #[error("group {0} has other members (given {1} of {2} partitions); stop its services first")]
    GroupActive(String, usize, usize),
    #[error("encoding: {0}")]
    Codec(#[from] tributary_schemas::CodecError),
    #[error("a blocking Kafka task failed: {0}")]
    Task(String),
    #[error("topic {0} has no partition {1}")]
    NoPartition(String, i32),
    /// A control topic's follower did not catch up (a broker away at start, say).
    #[error("reading {0} did not catch up: {1}")]
    NotCaughtUp(&'static str, &'static str),
    /// A record this binary cannot decode, where skipping it would lose data: the stage stops
    /// before it, and nothing at or after it is committed.
    #[error("{topic} [{partition}] offset {offset} cannot be read by this release: {error}")]
    Unreadable {
        topic: String,
        partition: i32,
        offset: i64,
        error: tributary_schemas::CodecError,
    },
}

impl TopicError {
    /// The error for `message`, which did not decode; counted in
    /// `tributary_unreadable_records_total{topic}`.
    pub fn unreadable(
        topic: &str,
        message: &impl Message,
        error: tributary_schemas::CodecError,
    ) -> Self {
        metrics::counter!("tributary_unreadable_records_total", "topic" => topic.to_owned())
            .increment(1);
        tracing::error!(topic, partition = message.partition(), offset = message.offset(), %error,
            "record cannot be read by this release; stopping before it");
        Self::Unreadable {
            topic: topic.to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            error,
        }
    }
}

/// Encodes `record` and produces it under `key`, returning once the broker has it: its
/// (partition, offset).
pub async fn publish_record<T: tributary_schemas::AvroRecord>(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    record: &T,
) -> Result<(i32, i64), TopicError> {
    send_keyed(producer, topic, key, Some(&record.to_avro()?)).await
}

/// Publishes a tombstone for `key` (a compacted topic then forgets it) and waits for the broker;
/// returns the (partition, offset) it was written at.
pub async fn publish_tombstone(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
) -> Result<(i32, i64), TopicError> {
    send_keyed(producer, topic, key, None).await
}

async fn send_keyed(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    payload: Option<&[u8]>,
) -> Result<(i32, i64), TopicError> {
    let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(topic).key(key);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    let delivered = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(error, _)| error)?;
    Ok((delivered.partition, delivered.offset))
}

/// The partition ids of `topic`.
pub fn partitions_of<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
) -> Result<Vec<i32>, TopicError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TopicError::MissingTopic(topic.to_owned()));
    }
    Ok(partitions)
}

/// Reads `partitions` of `topic` from their low watermarks up to the high watermarks seen at the
/// start, calling `each` on every record; within a partition, in offset order. One connection
/// serves them all. Blocking: call it from a blocking task.
pub fn read_partitions(
    bootstrap_servers: &str,
    topic: &str,
    partitions: &[i32],
    each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), TopicError> {
    let starts: Vec<(i32, Option<i64>)> = partitions.iter().map(|&p| (p, None)).collect();
    read_partitions_from(bootstrap_servers, topic, &starts, each).map(|_| ())
}

/// Reads `topic`'s partitions from the given offsets (`None`: the beginning; an offset below the
/// log start reads from there) up to their high watermarks at the start, calling `each` for
/// every record. Returns each partition's (low, high) watermarks as seen at the start. Blocking.
pub fn read_partitions_from(
    bootstrap_servers: &str,
    topic: &str,
    starts: &[(i32, Option<i64>)],
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<Vec<(i32, i64, i64)>, TopicError> {
    let consumer: BaseConsumer = client_config(bootstrap_servers)
        .set("group.id", "tributary-partition-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    let mut highs = Vec::new();
    for &(partition, start) in starts {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        highs.push((partition, low, high));
        let from = start.map_or(low, |start| start.max(low));
        if high > from {
            assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
            remaining.insert(partition, high);
        }
    }
    if remaining.is_empty() {
        return Ok(highs);
    }
    consumer.assign(&assignment)?;
    while !remaining.is_empty() {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(message)) => {
                let partition = message.partition();
                if remaining
                    .get(&partition)
                    .is_some_and(|&high| message.offset() + 1 >= high)
                {
                    remaining.remove(&partition);
                }
                each(&message);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {
                let stuck = remaining.keys().next().copied().unwrap_or_default();
                return Err(rdkafka::error::KafkaError::PartitionEOF(stuck).into());
            }
        }
    }
    Ok(highs)
}

/// Reads every record of every partition of `topic` up to the high watermarks: for operator
/// commands that list a topic, such as the dead-letter topic.
pub fn read_topic(
    bootstrap_servers: &str,
    topic: &str,
    each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), TopicError> {
    let probe: BaseConsumer = client_config(bootstrap_servers).create()?;
    read_partitions(
        bootstrap_servers,
        topic,
        &partitions_of(&probe, topic)?,
        each,
    )
}

/// How far a consumer group has committed on a topic, beside the topic's end; the difference is
/// the group's lag. Reads only: it never joins the group.
pub struct GroupProgress {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
}

impl GroupProgress {
    pub fn new(bootstrap_servers: &str, group: &str, topic: &str) -> Result<Self, TopicError> {
        let consumer: BaseConsumer = client_config(bootstrap_servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let partitions = partitions_of(&consumer, topic)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// The group's committed offsets and the topic's high watermarks, each summed over partitions.
    /// Blocking: call it from a blocking task.
    pub fn committed_and_end(&self) -> Result<(i64, i64), TopicError> {
        let timeout = Duration::from_secs(10);
        let mut wanted = TopicPartitionList::new();
        let mut end = 0;
        for &partition in &self.partitions {
            wanted.add_partition(&self.topic, partition);
            end += self
                .consumer
                .fetch_watermarks(&self.topic, partition, timeout)?
                .1;
        }
        let committed = self
            .consumer
            .committed_offsets(wanted, timeout)?
            .elements()
            .iter()
            .map(|element| match element.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            })
            .sum();
        Ok((committed, end))
    }
}

/// The commit metadata field (`read=<offset>`) in which a member that commits behind what it has
/// read (the processor, while orders are held) says how far it has read.
pub const READ_METADATA: &str = "read=";

/// One partition of a group's progress: its committed offset (`None` if it never committed, when
/// the group will start at the beginning), how far it has read if its commit says so
/// ([`READ_METADATA`]), and the first and next offsets of the log the broker holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    pub partition: i32,
    pub committed: Option<i64>,
    pub read: Option<i64>,
    pub log_start: i64,
    pub log_end: i64,
}

impl PartitionProgress {
    /// Records the group has not read yet.
    pub fn unread(&self) -> i64 {
        let position = self.read.or(self.committed).unwrap_or(0);
        (self.log_end - position).max(0)
    }

    /// Whether the group's position is in the oldest quarter of the log the broker still holds
    /// while the group is behind: the broker's retention (size or time) is about to delete
    /// records the group has not read.
    pub fn near_retention(&self) -> bool {
        let committed = self.committed.unwrap_or(0);
        let held = self.log_end - self.log_start;
        committed < self.log_end && self.log_start > 0 && committed - self.log_start < held / 4
    }
}

impl GroupProgress {
    /// Each partition's committed offset beside the log's bounds. Blocking.
    pub fn partitions(&self) -> Result<Vec<PartitionProgress>, TopicError> {
        let timeout = Duration::from_secs(10);
        let mut wanted = TopicPartitionList::new();
        for &partition in &self.partitions {
            wanted.add_partition(&self.topic, partition);
        }
        let committed = self.consumer.committed_offsets(wanted, timeout)?;
        self.partitions
            .iter()
            .map(|&partition| {
                let (log_start, log_end) =
                    self.consumer
                        .fetch_watermarks(&self.topic, partition, timeout)?;
                let element = committed.find_partition(&self.topic, partition);
                let read = element.as_ref().and_then(|e| {
                    e.metadata()
                        .split(';')
                        .find_map(|field| field.strip_prefix(READ_METADATA)?.parse().ok())
                });
                let committed = match element.map(|e| e.offset()) {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => None,
                };
                Ok(PartitionProgress {
                    partition,
                    committed,
                    read,
                    log_start,
                    log_end,
                })
            })
            .collect()
    }
}

/// Where [`reset_group`] moves a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetTo {
    Beginning,
    End,
    /// The first record with a timestamp at or after this time (ms since the epoch).
    Time(i64),
    /// These offsets, per partition, each kept within its partition's watermarks; partitions not
    /// named keep the group's committed offset (so one poison record can be skipped alone).
    Offsets(Vec<(i32, i64)>),
}

/// Commits new offsets for `group` on `topic`, so that its next run replays from there (or skips
/// ahead). The group must be stopped. The reset joins the group to commit as its only member
/// (the embedded broker takes commits only from members) and refuses if it has to share the
/// partitions. Commit metadata is cleared, so a processor rebuilds its watermark from the replayed
/// records. Returns (partition, new offset) for each partition. Blocking.
pub fn reset_group(
    bootstrap_servers: &str,
    group: &str,
    topic: &str,
    to: ResetTo,
) -> Result<Vec<(i32, i64)>, TopicError> {
    let consumer: BaseConsumer = consumer_config(bootstrap_servers, group).create()?;
    let timeout = Duration::from_secs(10);
    let partitions = partitions_of(&consumer, topic)?;
    let mut offsets = TopicPartitionList::new();
    let mut chosen = Vec::new();
    if let ResetTo::Offsets(named) = &to {
        if let Some((unknown, _)) = named.iter().find(|(p, _)| !partitions.contains(p)) {
            return Err(TopicError::NoPartition(topic.to_owned(), *unknown));
        }
    }
    let mut committed = TopicPartitionList::new();
    for &partition in &partitions {
        committed.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(committed, timeout)?;
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let offset = match &to {
            ResetTo::Beginning => low,
            ResetTo::End => high,
            ResetTo::Offsets(named) => {
                let chosen = named.iter().find(|(p, _)| *p == partition).map(|&(_, o)| o);
                let kept = match committed
                    .find_partition(topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => Some(offset),
                    _ => None,
                };
                match chosen.or(kept) {
                    Some(offset) => offset.clamp(low, high),
                    // Never committed and not named: left as it is.
                    None => continue,
                }
            }
            &ResetTo::Time(ms) => offset_for_time(
                bootstrap_servers,
                &consumer,
                topic,
                partition,
                ms,
                (low, high),
            )?,
        };
        offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        chosen.push((partition, offset));
    }
    consumer.subscribe(&[topic])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Records fetched meanwhile are ignored; only the commit below counts.
        let _ = consumer.poll(Duration::from_millis(100));
        let assigned = consumer.assignment()?.count();
        if assigned == partitions.len() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(TopicError::GroupActive(
                group.to_owned(),
                assigned,
                partitions.len(),
            ));
        }
    }
    consumer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)?;
    consumer.unsubscribe();
    Ok(chosen)
}

/// The broker's answer to a time lookup; the embedded broker does not index timestamps (it
/// answers nothing), so there the partition is scanned instead.
fn offset_for_time(
    bootstrap_servers: &str,
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    ms: i64,
    (low, high): (i64, i64),
) -> Result<i64, TopicError> {
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition_offset(topic, partition, Offset::Offset(ms))?;
    let found = consumer.offsets_for_times(wanted, Duration::from_secs(10))?;
    if let Some(Offset::Offset(offset)) = found.elements().first().map(|e| e.offset()) {
        if offset >= 0 {
            return Ok(offset);
        }
    }
    let mut first_at_or_after = None;
    read_partitions(bootstrap_servers, topic, &[partition], |message| {
        let at = message.timestamp().to_millis().unwrap_or(i64::MIN);
        if first_at_or_after.is_none() && at >= ms {
            first_at_or_after = Some(message.offset());
        }
    })?;
    Ok(first_at_or_after.unwrap_or(high).max(low))
}
