//! The topic contract of tributary.
//!
//! Every record on every topic is defined here twice, once as an Avro schema (`schemas/avro/*.avsc`,
//! the contract other languages read) and once as a Rust type that round-trips with it. Records are
//! written in Avro single-object encoding, so a consumer can tell a record it cannot read and
//! dead-letter it instead of guessing.

pub mod codec;
pub mod records;
pub mod time;
pub mod topics;

pub use codec::{AvroRecord, CodecError};
pub use records::*;
