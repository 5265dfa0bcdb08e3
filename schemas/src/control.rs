//! Control topics read as tables: every record from the beginning, then follow new ones.
//!
//! Stores and advocates reach ingest and the processors this way (like a Kafka Streams
//! `GlobalKTable`). A component waits until it has caught up to the high watermarks seen at start
//! before it handles traffic, so a restart never runs on half-loaded control data.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::oneshot;

use crate::codec::AvroRecord;
use crate::kafka::{client_config, partitions_of, TopicError};

/// Reads `topic` from the beginning and calls `apply(key, record)` for each record (`None` for a
/// tombstone or a record that does not decode, which is logged). `caught_up` fires once every
/// partition has been read up to its high watermark at start. Runs until the task is dropped.
pub async fn follow<T, F>(
    bootstrap_servers: &str,
    topic: &str,
    mut apply: F,
    caught_up: oneshot::Sender<()>,
) -> Result<(), TopicError>
where
    T: AvroRecord,
    F: FnMut(&str, Option<T>),
{
    let consumer: StreamConsumer = client_config(bootstrap_servers)
        .set("group.id", "tributary-control-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let (assignment, mut remaining) = start_positions(&consumer, topic)?;
    consumer.assign(&assignment)?;
    let mut caught_up = Some(caught_up);
    loop {
        if remaining.is_empty() {
            if let Some(tx) = caught_up.take() {
                let _ = tx.send(());
            }
        }
        let message = consumer.recv().await?;
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let record = message
            .payload()
            .and_then(|bytes| match T::from_avro(bytes) {
                Ok(record) => Some(record),
                Err(error) => {
                    tracing::warn!(topic, %key, %error, "control record does not decode; ignored");
                    None
                }
            });
        apply(&key, record);
        if let Some(high) = remaining.get(&message.partition()) {
            if message.offset() + 1 >= *high {
                remaining.remove(&message.partition());
            }
        }
    }
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
