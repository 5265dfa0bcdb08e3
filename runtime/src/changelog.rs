//! Changelog records as a stage reads them back (see [`crate::state::restore`]), and which
//! assigned partitions still need restoring.

use std::collections::HashMap;

use crate::kafka::TopicError;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};

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
