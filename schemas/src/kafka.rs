//! How every component reaches Kafka: client settings, the embedded broker, topic provisioning and
//! the dead-letter headers.

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
        .set("isolation.level", "read_committed");
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

/// Reads one partition from its low watermark up to the high watermark seen at the start, calling
/// `each` on every record in offset order. Blocking: call it from a blocking task.
pub fn read_partition(
    bootstrap_servers: &str,
    topic: &str,
    partition: i32,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), TopicError> {
    let consumer: BaseConsumer = client_config(bootstrap_servers)
        .set("group.id", "tributary-partition-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    if high <= low {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
    consumer.assign(&assignment)?;
    let mut next = low;
    while next < high {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(message)) => {
                next = message.offset() + 1;
                each(&message);
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Err(rdkafka::error::KafkaError::PartitionEOF(partition).into()),
        }
    }
    Ok(())
}

/// Reads every record of every partition of `topic` up to the high watermarks: for operator
/// commands that list a topic, such as the dead-letter topic.
pub fn read_topic(
    bootstrap_servers: &str,
    topic: &str,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), TopicError> {
    let probe: BaseConsumer = client_config(bootstrap_servers).create()?;
    for partition in partitions_of(&probe, topic)? {
        read_partition(bootstrap_servers, topic, partition, &mut each)?;
    }
    Ok(())
}
