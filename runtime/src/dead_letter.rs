//! Dead letters: a record a stage could not take, with the reason and where it came from.
//!
//! A dead letter always fits in one Kafka message ([`MAX_MESSAGE_BYTES`]), whatever it carries: a
//! payload, reason or key too large is cut, and the letter says so and points at the source
//! record (topic, partition, offset), so a poison record can never stop a stage by being too big
//! to dead-letter.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::Message;

use crate::kafka::{now_ms, MAX_MESSAGE_BYTES};

/// Header names on dead-letter records; the same facts are in the
/// [`DeadLetter`](tributary_schemas::DeadLetter) value.
pub mod dlq_headers {
    pub const ERROR: &str = "tributary.error";
    pub const STAGE: &str = "tributary.stage";
    pub const SOURCE_TOPIC: &str = "tributary.source.topic";
    pub const SOURCE_PARTITION: &str = "tributary.source.partition";
    pub const SOURCE_OFFSET: &str = "tributary.source.offset";
    /// Present when the payload was cut to fit: the source payload's length in bytes.
    pub const PAYLOAD_TRUNCATED: &str = "tributary.payload.truncated";
}

/// Where a record was dead-lettered (`tributary.stage`): a stage, or for the processor, the step
/// that refused the record. Parsed in one place ([`std::str::FromStr`]), so an operator's
/// `--stage` is checked against the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterStage {
    /// The processor could not read the envelope.
    Decode,
    /// The envelope's body is not what its topic says (not an order, a bad time, an id out of
    /// range).
    Normalize,
    /// A refund for an order the partition has not seen.
    Refund,
    /// A record for an order created before the state's horizon (`processor.expire_after_days`).
    Expired,
    /// A manual attribution that could not apply.
    Manual,
    /// A reward approval that could not apply.
    Approval,
    /// An output that could not be encoded.
    Encode,
    Writeback,
    StoreCredit,
    Events,
    EventsRepartition,
    SinkClickHouse,
    /// An `orders/edited` whose order could not be read again.
    OrderEdits,
}

impl DeadLetterStage {
    pub const ALL: [DeadLetterStage; 13] = [
        Self::Decode,
        Self::Normalize,
        Self::Refund,
        Self::Expired,
        Self::Manual,
        Self::Approval,
        Self::Encode,
        Self::Writeback,
        Self::StoreCredit,
        Self::Events,
        Self::EventsRepartition,
        Self::SinkClickHouse,
        Self::OrderEdits,
    ];

    /// The name in the `tributary.stage` header and the [`DeadLetter`](tributary_schemas::DeadLetter)'s `stage`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Normalize => "normalize",
            Self::Refund => "refund",
            Self::Expired => "expired",
            Self::Manual => "manual",
            Self::Approval => "approval",
            Self::Encode => "encode",
            Self::Writeback => "writeback",
            Self::StoreCredit => "store-credit",
            Self::Events => "events",
            Self::EventsRepartition => "events-repartition",
            Self::SinkClickHouse => "sink-clickhouse",
            Self::OrderEdits => "order-edits",
        }
    }
}

impl std::fmt::Display for DeadLetterStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeadLetterStage {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|stage| stage.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("no dead-letter stage {name:?}; one of {}", names.join(", "))
            })
    }
}

/// The most of the source payload a dead letter keeps (bytes): the rest of the message is left
/// for the reason, the key, the headers and the encoding.
pub const MAX_PAYLOAD_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;
/// The most of a reason a dead letter keeps (bytes).
pub const MAX_REASON_BYTES: usize = 8 * 1024;
/// The most of the source key a dead letter keeps (bytes).
pub const MAX_KEY_BYTES: usize = 4 * 1024;

/// A record of the dead-letter topic for a message a stage could not handle: the message itself,
/// the reason, and where it came from (also in headers, to read without decoding).
pub struct DeadLetterRecord {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

impl DeadLetterRecord {
    /// The letter for `message`, which `stage` could not take for `error`; counted in
    /// `tributary_dead_letters_total{stage}`.
    pub fn new(message: &impl Message, stage: DeadLetterStage, error: &str) -> Self {
        let stage = stage.as_str();
        metrics::counter!("tributary_dead_letters_total", "stage" => stage.to_owned()).increment(1);
        let source = message.payload().unwrap_or_default();
        let mut error = cut_text(error, MAX_REASON_BYTES).to_owned();
        let truncated = source.len() > MAX_PAYLOAD_BYTES;
        if truncated {
            error.push_str(&format!(
                " [payload cut to its first {MAX_PAYLOAD_BYTES} of {} bytes; the whole record is {} [{}] offset {}]",
                source.len(),
                message.topic(),
                message.partition(),
                message.offset()
            ));
        }
        tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), stage, %error, "record dead-lettered");
        let key = message
            .key()
            .map(|k| k[..k.len().min(MAX_KEY_BYTES)].to_vec());
        let record = tributary_schemas::DeadLetter {
            stage: stage.to_owned(),
            error: error.clone(),
            source_topic: message.topic().to_owned(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            source_key: key.clone(),
            payload: source[..source.len().min(MAX_PAYLOAD_BYTES)].to_vec(),
            failed_at_ms: now_ms(),
        };
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: dlq_headers::ERROR,
                value: Some(&error),
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
        if truncated {
            headers = headers.insert(Header {
                key: dlq_headers::PAYLOAD_TRUNCATED,
                value: Some(&source.len().to_string()),
            });
        }
        Self {
            key: key.unwrap_or_default(),
            payload: tributary_schemas::AvroRecord::to_avro(&record).unwrap_or_default(),
            headers,
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut_text(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Headers, OwnedMessage, Timestamp};
    use tributary_schemas::AvroRecord;

    fn message(key: Vec<u8>, payload: Vec<u8>) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload),
            Some(key),
            "shopify.webhooks".into(),
            Timestamp::NotAvailable,
            3,
            41,
            None,
        )
    }

    #[test]
    fn a_letter_always_fits_in_a_message_and_says_what_was_cut() {
        let huge = vec![b'x'; MAX_MESSAGE_BYTES * 2];
        let reason = "é".repeat(MAX_REASON_BYTES);
        let letter = DeadLetterRecord::new(
            &message(huge.clone(), huge.clone()),
            DeadLetterStage::Normalize,
            &reason,
        );
        let size = letter.key.len()
            + letter.payload.len()
            + letter
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum::<usize>();
        assert!(size < MAX_MESSAGE_BYTES, "{size} bytes");
        let record = tributary_schemas::DeadLetter::from_avro(&letter.payload).expect("decodes");
        assert_eq!(record.payload.len(), MAX_PAYLOAD_BYTES);
        assert!(record.error.ends_with(&format!(
            "of {} bytes; the whole record is shopify.webhooks [3] offset 41]",
            huge.len()
        )));
        let truncated = letter
            .headers
            .iter()
            .find(|h| h.key == dlq_headers::PAYLOAD_TRUNCATED)
            .and_then(|h| h.value);
        assert_eq!(truncated, Some(huge.len().to_string().as_bytes()));

        let small = DeadLetterRecord::new(
            &message(b"k".to_vec(), b"body".to_vec()),
            DeadLetterStage::Normalize,
            "bad",
        );
        let record = tributary_schemas::DeadLetter::from_avro(&small.payload).expect("decodes");
        assert_eq!(
            (record.payload.as_slice(), record.error.as_str()),
            (&b"body"[..], "bad")
        );
        assert!(small
            .headers
            .iter()
            .all(|h| h.key != dlq_headers::PAYLOAD_TRUNCATED));
    }
}
