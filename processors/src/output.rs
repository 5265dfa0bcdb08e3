//! Producing a stage's outputs: records enqueued without waiting, then awaited together before
//! the input offsets they cover are committed.

use std::collections::HashMap;
use std::sync::Arc;

use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tributary_schemas::kafka::{commit_offsets, CommitWhen};

use crate::runner::ProcessorError;

/// One record to produce.
pub struct Output {
    pub topic: &'static str,
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Option<OwnedHeaders>,
}

/// Enqueues one record; when the producer's queue is full, waits for what is in flight first.
pub async fn send(
    producer: &FutureProducer,
    output: Output,
    in_flight: &mut Vec<DeliveryFuture>,
) -> Result<DeliveryFuture, ProcessorError> {
    loop {
        let mut record = FutureRecord::to(output.topic)
            .key(&output.key)
            .payload(&output.payload);
        if let Some(partition) = output.partition {
            record = record.partition(partition);
        }
        if let Some(headers) = &output.headers {
            record = record.headers(headers.clone());
        }
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                _,
            )) => {
                await_deliveries(in_flight).await?;
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
}

pub async fn await_deliveries(in_flight: &mut Vec<DeliveryFuture>) -> Result<(), ProcessorError> {
    for delivery in in_flight.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(ProcessorError::Delivery(error.to_string())),
            Err(_) => return Err(ProcessorError::Delivery("producer dropped a record".into())),
        }
    }
    Ok(())
}

/// Waits until everything produced is acknowledged, then commits the input offsets it covers:
/// `position(partition, next offset)` gives the offset to commit and its metadata.
pub async fn commit_done<C: ConsumerContext + 'static>(
    consumer: &Arc<StreamConsumer<C>>,
    topic: &str,
    in_flight: &mut Vec<DeliveryFuture>,
    done: &mut HashMap<i32, i64>,
    position: impl Fn(i32, i64) -> (i64, String),
    when: CommitWhen,
) -> Result<(), ProcessorError> {
    await_deliveries(in_flight).await?;
    if done.is_empty() {
        return Ok(());
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, next) in done.drain() {
        let (offset, metadata) = position(partition, next);
        let mut element = offsets.add_partition(topic, partition);
        element.set_offset(Offset::Offset(offset))?;
        element.set_metadata(metadata);
    }
    commit_offsets(consumer, offsets, when).await;
    Ok(())
}
