//! How every component reaches Kafka: client settings, the embedded broker, topic provisioning and
//! the dead-letter headers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::BorrowedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::topics::{self, Cleanup};

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
        .set("queue.buffering.max.messages", "500000");
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

/// The consumer context of a group member: it is ready once the group has given it its first
/// assignment (possibly empty), and it notes revoked partitions so their owner can drop state.
pub struct GroupMember {
    group: String,
    ready: Arc<AtomicBool>,
    revoked: Mutex<Vec<i32>>,
}

impl GroupMember {
    pub fn new(group: &str, ready: Arc<AtomicBool>) -> Self {
        Self {
            group: group.to_owned(),
            ready,
            revoked: Mutex::new(Vec::new()),
        }
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ClientContext for GroupMember {}

impl ConsumerContext for GroupMember {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Counted per group: a member evicted for not polling shows here.
            metrics::counter!("tributary_group_revoked_partitions_total", "group" => self.group.clone())
                .increment(partitions.count() as u64);
            self.revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(partitions.elements().iter().map(|e| e.partition()));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.ready.store(true, Ordering::SeqCst);
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _offsets: &TopicPartitionList,
    ) {
        // Harmless: the records after the last successful commit are replayed.
        if let Err(error) = result {
            tracing::warn!(%error, "offset commit failed; uncommitted records will be replayed");
        }
    }
}

/// How a service's consumers take part in their groups (from `[kafka]` in the config file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Static group membership (Kafka's KIP-345, `group.instance.id`): a member that restarts
    /// under the same id gets its partitions back at once, instead of after its predecessor's
    /// session times out. Each group's member id is `<instance_id>.<group>`, so the id must be
    /// unique per running process (a host or pod name) and stable across its restarts. `None`:
    /// dynamic membership.
    pub instance_id: Option<String>,
    /// librdkafka's `max.poll.interval.ms`: a member that does not poll for this long leaves its
    /// group. The stages keep polling while they retry, so it bounds only a stuck process.
    /// `None`: librdkafka's default (300,000).
    pub max_poll_interval_ms: Option<u64>,
}

/// The Kafka cluster a stage works with: where it is, and how the stage's consumers join their
/// groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Brokers {
    pub bootstrap_servers: String,
    pub membership: Membership,
}

impl Brokers {
    /// A cluster joined with dynamic membership and librdkafka's defaults.
    pub fn new(bootstrap_servers: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_owned(),
            membership: Membership::default(),
        }
    }

    /// A member of `group` subscribed to `topic`; `ready` turns true once the group has given
    /// it its partitions (possibly none).
    pub fn member(
        &self,
        group: &str,
        topic: &str,
        ready: Arc<AtomicBool>,
    ) -> rdkafka::error::KafkaResult<Arc<StreamConsumer<GroupMember>>> {
        let mut config = consumer_config(&self.bootstrap_servers, group);
        if let Some(instance) = &self.membership.instance_id {
            config.set("group.instance.id", format!("{instance}.{group}"));
        }
        if let Some(interval) = self.membership.max_poll_interval_ms {
            config.set("max.poll.interval.ms", interval.to_string());
        }
        let consumer: StreamConsumer<GroupMember> =
            config.create_with_context(GroupMember::new(group, ready))?;
        consumer.subscribe(&[topic])?;
        Ok(Arc::new(consumer))
    }
}

/// A member's partitions paused while its stage retries (ClickHouse down, Shopify throttling):
/// the stage keeps polling through [`PausedMember::wait`], so the group never takes the member
/// for wedged and evicts it (`max.poll.interval.ms`) while it still works on its partitions.
/// Records that were already fetched arrive anyway; they are dropped and each partition is
/// rewound to its first dropped record on [`PausedMember::resume`], so nothing is skipped.
pub struct PausedMember<'a, C: ConsumerContext + 'static> {
    consumer: &'a StreamConsumer<C>,
    paused: TopicPartitionList,
    /// The first record dropped per (topic, partition).
    rewind: std::collections::HashMap<(String, i32), i64>,
}

impl<'a, C: ConsumerContext + 'static> PausedMember<'a, C> {
    /// Pauses every partition assigned to `consumer`.
    pub fn pause(consumer: &'a StreamConsumer<C>) -> Self {
        let paused = consumer.assignment().unwrap_or_default();
        if let Err(error) = consumer.pause(&paused) {
            tracing::warn!(%error, "pausing partitions failed; records read while retrying are rewound");
        }
        Self {
            consumer,
            paused,
            rewind: std::collections::HashMap::new(),
        }
    }

    /// Waits `duration` while polling the consumer.
    pub async fn wait(&mut self, duration: Duration) {
        let sleep = tokio::time::sleep(duration);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return,
                received = self.consumer.recv() => {
                    if let Some(message) = received_or_warn(received) {
                        self.rewind
                            .entry((message.topic().to_owned(), message.partition()))
                            .or_insert(message.offset());
                    }
                }
            }
        }
    }

    /// Resumes the paused partitions and rewinds those that delivered records meanwhile.
    pub fn resume(self) {
        if let Err(error) = self.consumer.resume(&self.paused) {
            tracing::warn!(%error, "resuming partitions failed");
        }
        for ((topic, partition), offset) in self.rewind {
            if let Err(error) = self.consumer.seek(
                &topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            ) {
                // Only a partition revoked meanwhile cannot be rewound; its new owner reads it
                // from the last commit.
                tracing::warn!(%topic, partition, offset, %error, "rewinding a partition failed");
            }
        }
    }
}

/// Whether a consumer loop is running or stopping when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitWhen {
    /// In the background: a blocking commit inside the loop can wait without end on a group
    /// coordinator that is busy, and stop the loop with it. The result is logged by
    /// [`GroupMember`].
    Running,
    /// Synchronously, but at most ten seconds, so that a clean stop replays nothing.
    Stopping,
}

/// Commits `offsets` for the consumer's group.
pub async fn commit_offsets<C: ConsumerContext + 'static>(
    consumer: &Arc<StreamConsumer<C>>,
    offsets: TopicPartitionList,
    when: CommitWhen,
) {
    let result = match when {
        CommitWhen::Running => consumer.commit(&offsets, CommitMode::Async),
        CommitWhen::Stopping => {
            let consumer = consumer.clone();
            let commit =
                tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync));
            match tokio::time::timeout(Duration::from_secs(10), commit).await {
                Ok(Ok(result)) => result,
                _ => {
                    tracing::warn!("the final offset commit did not finish; the next run replays a little more");
                    Ok(())
                }
            }
        }
    };
    // A commit refused after a rebalance is harmless: the new owner replays from the last commit.
    if let Err(error) = result {
        tracing::warn!(%error, "offset commit refused; uncommitted records will be replayed");
    }
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
    let new_topics: Vec<NewTopic> = specs
        .iter()
        .map(|(name, parts, cleanup)| {
            NewTopic::new(name, *parts, TopicReplication::Fixed(replication))
                .set("cleanup.policy", cleanup)
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

/// Header names on dead-letter records; the same facts are in the [`DeadLetter`](crate::DeadLetter) value.
pub mod dlq_headers {
    pub const ERROR: &str = "tributary.error";
    pub const STAGE: &str = "tributary.stage";
    pub const SOURCE_TOPIC: &str = "tributary.source.topic";
    pub const SOURCE_PARTITION: &str = "tributary.source.partition";
    pub const SOURCE_OFFSET: &str = "tributary.source.offset";
}

/// A record of the dead-letter topic for a message a stage could not handle: the message itself,
/// the reason, and where it came from (also in headers, to read without decoding).
pub struct DeadLetterRecord {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: rdkafka::message::OwnedHeaders,
}

impl DeadLetterRecord {
    pub fn new(message: &impl Message, stage: &str, error: &str) -> Self {
        use rdkafka::message::Header;
        metrics::counter!("tributary_dead_letters_total", "stage" => stage.to_owned()).increment(1);
        tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), stage, %error, "record dead-lettered");
        let record = crate::DeadLetter {
            stage: stage.to_owned(),
            error: error.to_owned(),
            source_topic: message.topic().to_owned(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            source_key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            failed_at_ms: now_ms(),
        };
        let headers = rdkafka::message::OwnedHeaders::new()
            .insert(Header {
                key: dlq_headers::ERROR,
                value: Some(error),
            })
            .insert(Header {
                key: dlq_headers::STAGE,
                value: Some(stage),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_PARTITION,
                value: Some(&message.partition().to_string()),
            })
            .insert(Header {
                key: dlq_headers::SOURCE_OFFSET,
                value: Some(&message.offset().to_string()),
            });
        Self {
            key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
            payload: crate::AvroRecord::to_avro(&record).unwrap_or_default(),
            headers,
        }
    }
}

/// Dead-letters `message` for `stage` with the reason, and waits for the broker to have it.
pub async fn send_dead_letter(
    producer: &rdkafka::producer::FutureProducer,
    message: &impl Message,
    stage: &str,
    reason: &str,
) -> Result<(), rdkafka::error::KafkaError> {
    let letter = DeadLetterRecord::new(message, stage, reason);
    producer
        .send(
            rdkafka::producer::FutureRecord::to(crate::topics::DEAD_LETTERS)
                .key(&letter.key)
                .payload(&letter.payload)
                .headers(letter.headers),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(error, _)| error)?;
    Ok(())
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
    Codec(#[from] crate::CodecError),
    #[error("a blocking Kafka task failed: {0}")]
    Task(String),
    /// A record this binary cannot decode, where skipping it would lose data: the stage stops
    /// before it, and nothing at or after it is committed.
    #[error("{topic} [{partition}] offset {offset} cannot be read by this release: {error}")]
    Unreadable {
        topic: String,
        partition: i32,
        offset: i64,
        error: crate::CodecError,
    },
}

impl TopicError {
    /// The error for `message`, which did not decode; counted in
    /// `tributary_unreadable_records_total{topic}`.
    pub fn unreadable(topic: &str, message: &impl Message, error: crate::CodecError) -> Self {
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

/// Encodes `record` and produces it under `key`, returning once the broker has it.
pub async fn publish_record<T: crate::AvroRecord>(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: &str,
    record: &T,
) -> Result<(), TopicError> {
    let payload = record.to_avro()?;
    producer
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key(key)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(error, _)| error)?;
    Ok(())
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
/// every record. Returns each partition's high watermark. Blocking.
pub fn read_partitions_from(
    bootstrap_servers: &str,
    topic: &str,
    starts: &[(i32, Option<i64>)],
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<Vec<(i32, i64)>, TopicError> {
    let consumer: BaseConsumer = client_config(bootstrap_servers)
        .set("group.id", "tributary-partition-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    let mut highs = Vec::new();
    for &(partition, start) in starts {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        highs.push((partition, high));
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

/// Where [`reset_group`] moves a consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Beginning,
    End,
    /// The first record with a timestamp at or after this time (ms since the epoch).
    Time(i64),
    /// This offset in every partition, kept within the partition's watermarks.
    Offset(i64),
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
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let offset = match to {
            ResetTo::Beginning => low,
            ResetTo::End => high,
            ResetTo::Offset(offset) => offset.clamp(low, high),
            ResetTo::Time(ms) => offset_for_time(
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

/// The message a consumer received, or `None` after logging its error: consumer errors are
/// transient (a broker away, a rebalance), and the loop goes on.
pub fn received_or_warn<M>(received: rdkafka::error::KafkaResult<M>) -> Option<M> {
    match received {
        Ok(message) => Some(message),
        Err(error) => {
            tracing::warn!(%error, "consumer error; continuing");
            None
        }
    }
}
