//! Dead letters: a record a stage could not take, with the reason and where it came from.

use rdkafka::Message;

use crate::kafka::now_ms;

/// Header names on dead-letter records; the same facts are in the [`DeadLetter`](tributary_schemas::DeadLetter) value.
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
        let record = tributary_schemas::DeadLetter {
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
            payload: tributary_schemas::AvroRecord::to_avro(&record).unwrap_or_default(),
            headers,
        }
    }
}
