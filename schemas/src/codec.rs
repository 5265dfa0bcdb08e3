//! Avro single-object encoding: `C3 01`, the schema's 8-byte CRC-64-AVRO (Rabin) fingerprint, then
//! the Avro binary body. The fingerprint lets a reader refuse a record written with a schema it
//! does not know, rather than misread it.

use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use apache_avro::Schema;
use serde::{de::DeserializeOwned, Serialize};

const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not Avro single-object encoded (missing C3 01 marker)")]
    NotSingleObject,
    #[error("unknown schema fingerprint {found}; expected {expected} ({record})")]
    UnknownSchema {
        record: &'static str,
        found: String,
        expected: String,
    },
    #[error("record does not match schema {record}: {message}")]
    Invalid {
        record: &'static str,
        message: String,
    },
}

/// A Rust type bound to its Avro schema. Implemented once per record by [`avro_record!`].
pub trait AvroRecord: Serialize + DeserializeOwned + Sized {
    const NAME: &'static str;
    fn schema() -> &'static BoundSchema;

    fn to_avro(&self) -> Result<Vec<u8>, CodecError> {
        let bound = Self::schema();
        let invalid = |e: apache_avro::Error| CodecError::Invalid {
            record: Self::NAME,
            message: e.to_string(),
        };
        let value = apache_avro::to_value(self)
            .map_err(invalid)?
            .resolve(&bound.schema)
            .map_err(invalid)?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&bound.fingerprint);
        out.extend(apache_avro::to_avro_datum(&bound.schema, value).map_err(invalid)?);
        Ok(out)
    }

    fn from_avro(bytes: &[u8]) -> Result<Self, CodecError> {
        let bound = Self::schema();
        if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
            return Err(CodecError::NotSingleObject);
        }
        if bytes[2..HEADER_LEN] != bound.fingerprint {
            return Err(CodecError::UnknownSchema {
                record: Self::NAME,
                found: hex(&bytes[2..HEADER_LEN]),
                expected: hex(&bound.fingerprint),
            });
        }
        let invalid = |e: apache_avro::Error| CodecError::Invalid {
            record: Self::NAME,
            message: e.to_string(),
        };
        let mut body = &bytes[HEADER_LEN..];
        let value: Value =
            apache_avro::from_avro_datum(&bound.schema, &mut body, None).map_err(invalid)?;
        if !body.is_empty() {
            return Err(CodecError::Invalid {
                record: Self::NAME,
                message: format!("{} trailing bytes", body.len()),
            });
        }
        // apache-avro reads a union at end of input as null, so a truncated record can decode.
        // Re-encoding tells: a complete record re-encodes to exactly the bytes it came from.
        let expected_len = bytes.len() - HEADER_LEN;
        let reencoded_len = apache_avro::to_avro_datum(&bound.schema, value.clone())
            .map_err(invalid)?
            .len();
        if reencoded_len != expected_len {
            return Err(CodecError::Invalid {
                record: Self::NAME,
                message: "truncated record".into(),
            });
        }
        apache_avro::from_value(&value).map_err(invalid)
    }
}

/// A parsed schema with its single-object fingerprint.
pub struct BoundSchema {
    pub schema: Schema,
    pub fingerprint: [u8; 8],
}

impl BoundSchema {
    /// Parses a schema shipped in `schemas/avro`. The files are part of the binary, so a parse error
    /// is a build defect, caught by the round-trip tests.
    pub fn parse(cell: &'static OnceLock<BoundSchema>, json: &str) -> &'static BoundSchema {
        cell.get_or_init(|| {
            let schema = Schema::parse_str(json).expect("schemas/avro file is valid Avro");
            let bytes = schema.fingerprint::<Rabin>().bytes;
            let mut fingerprint = [0u8; 8];
            fingerprint.copy_from_slice(&bytes[..8]);
            BoundSchema {
                schema,
                fingerprint,
            }
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Binds a record type to its `.avsc` file.
#[macro_export]
macro_rules! avro_record {
    ($ty:ty, $file:literal) => {
        impl $crate::codec::AvroRecord for $ty {
            const NAME: &'static str = stringify!($ty);
            fn schema() -> &'static $crate::codec::BoundSchema {
                static CELL: std::sync::OnceLock<$crate::codec::BoundSchema> =
                    std::sync::OnceLock::new();
                $crate::codec::BoundSchema::parse(&CELL, include_str!(concat!("../avro/", $file)))
            }
        }
    };
}
