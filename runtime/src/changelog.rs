//! Reading a stage's state back from its changelog topic, when the group assigns it partitions.

use std::collections::HashMap;

use crate::kafka::{read_partitions, TopicError};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::Message;
use tributary_schemas::AvroRecord;

/// The partitions of `topic` assigned to `consumer` that have no state yet, with `partition`
/// (the one a record just came from): all of them are restored in one pass.
pub fn unrestored<C: ConsumerContext, S>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    states: &HashMap<i32, S>,
    partition: i32,
) -> Result<Vec<i32>, TopicError> {
    let mut partitions: Vec<i32> = consumer
        .assignment()?
        .elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .filter(|p| !states.contains_key(p))
        .chain([partition])
        .collect();
    partitions.sort_unstable();
    partitions.dedup();
    Ok(partitions)
}

/// One record of a changelog: the key's new value, or a tombstone that deletes the key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    Put(T),
    Delete(Vec<u8>),
}

impl<T> Change<T> {
    pub fn put(self) -> Option<T> {
        match self {
            Self::Put(record) => Some(record),
            Self::Delete(_) => None,
        }
    }
}

/// Every value of `partitions` of `topic`, read to the end, by partition (every requested
/// partition has an entry); tombstones are left out (see [`read_changes`]).
///
/// Errors: as [`read_changes`].
pub async fn read_changelog<T: AvroRecord + Send + 'static>(
    bootstrap_servers: &str,
    topic: &'static str,
    partitions: Vec<i32>,
) -> Result<HashMap<i32, Vec<T>>, TopicError> {
    Ok(read_changes(bootstrap_servers, topic, partitions)
        .await?
        .into_iter()
        .map(|(partition, changes)| {
            (
                partition,
                changes.into_iter().filter_map(Change::put).collect(),
            )
        })
        .collect())
}

/// Every record of `partitions` of `topic`, tombstones included, read to the end, by partition
/// (every requested partition has an entry).
///
/// Errors: [`TopicError::Unreadable`] for a record that does not decode. A restore never skips
/// one, since state restored without it would be silently wrong: the stage stops and says which
/// record (typically written by a newer release; run that release).
pub async fn read_changes<T: AvroRecord + Send + 'static>(
    bootstrap_servers: &str,
    topic: &'static str,
    partitions: Vec<i32>,
) -> Result<HashMap<i32, Vec<Change<T>>>, TopicError> {
    let bootstrap = bootstrap_servers.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut records: HashMap<i32, Vec<Change<T>>> =
            partitions.iter().map(|&p| (p, Vec::new())).collect();
        let mut unreadable = None;
        read_partitions(&bootstrap, topic, &partitions, |message| {
            let partition = message.partition();
            match message.payload().map(T::from_avro) {
                Some(Ok(record)) => records
                    .entry(partition)
                    .or_default()
                    .push(Change::Put(record)),
                Some(Err(error)) => {
                    unreadable.get_or_insert_with(|| TopicError::unreadable(topic, message, error));
                }
                None => records
                    .entry(partition)
                    .or_default()
                    .push(Change::Delete(message.key().unwrap_or_default().to_vec())),
            }
        })?;
        match unreadable {
            Some(error) => Err(error),
            None => Ok(records),
        }
    })
    .await
    .map_err(|e| TopicError::Task(e.to_string()))?
}
