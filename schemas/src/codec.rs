//! Avro single-object encoding: `C3 01`, the schema's 8-byte CRC-64-AVRO (Rabin) fingerprint, then
//! the Avro binary body. The fingerprint names the writer's schema: a reader decodes with that
//! schema and resolves the record to its own (Avro schema resolution), so a binary reads what
//! every earlier release wrote. Every shipped schema is kept in `avro/history/<record>/v<N>.avsc`
//! and compiled in; a record whose writer schema is unknown is refused, never guessed at.

use std::collections::HashMap;
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
    #[error("unknown writer schema {found} for {record} (this binary reads {expected} and its history): written by a newer release?")]
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
    /// The Rust type's name, for errors.
    const NAME: &'static str;
    /// The schema's file stem: `avro/<stem>.avsc`, history in `avro/history/<stem>/`.
    const SCHEMA_FILE: &'static str;
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

    /// Decodes a record written with this record's current schema or any shipped earlier one,
    /// resolved to the current schema.
    ///
    /// Errors: [`CodecError::NotSingleObject`] (no marker), [`CodecError::UnknownSchema`] (a writer
    /// schema this binary does not know), [`CodecError::Invalid`] (bytes that do not match the
    /// writer's schema, truncated, or not resolvable to the current one).
    fn from_avro(bytes: &[u8]) -> Result<Self, CodecError> {
        let bound = Self::schema();
        if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
            return Err(CodecError::NotSingleObject);
        }
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&bytes[2..HEADER_LEN]);
        let writer = bound
            .writer(&fingerprint)
            .ok_or_else(|| CodecError::UnknownSchema {
                record: Self::NAME,
                found: hex(&fingerprint),
                expected: hex(&bound.fingerprint),
            })?;
        let invalid = |e: apache_avro::Error| CodecError::Invalid {
            record: Self::NAME,
            message: e.to_string(),
        };
        let mut body = &bytes[HEADER_LEN..];
        let value: Value =
            apache_avro::from_avro_datum(writer, &mut body, None).map_err(invalid)?;
        if !body.is_empty() {
            return Err(CodecError::Invalid {
                record: Self::NAME,
                message: format!("{} trailing bytes", body.len()),
            });
        }
        // apache-avro reads a union at end of input as null, so a truncated record can decode.
        // Re-encoding tells: a complete record re-encodes to exactly the bytes it came from.
        let expected_len = bytes.len() - HEADER_LEN;
        let reencoded_len = apache_avro::to_avro_datum(writer, value.clone())
            .map_err(invalid)?
            .len();
        if reencoded_len != expected_len {
            return Err(CodecError::Invalid {
                record: Self::NAME,
                message: "truncated record".into(),
            });
        }
        let value = if fingerprint == bound.fingerprint {
            value
        } else {
            value.resolve(&bound.schema).map_err(invalid)?
        };
        apache_avro::from_value(&value).map_err(invalid)
    }
}

/// A record's current (reader) schema with its single-object fingerprint, and every shipped
/// version of it (writer schemas) by fingerprint.
pub struct BoundSchema {
    pub schema: Schema,
    pub fingerprint: [u8; 8],
    writers: HashMap<[u8; 8], Schema>,
}

impl BoundSchema {
    /// Parses a record's current schema and its history (`stem` is the `.avsc` file stem). The
    /// files are part of the binary, so a parse error is a build defect, caught by the tests.
    pub fn parse(
        cell: &'static OnceLock<BoundSchema>,
        json: &str,
        stem: &str,
    ) -> &'static BoundSchema {
        cell.get_or_init(|| {
            let schema = Schema::parse_str(json).expect("schemas/avro file is valid Avro");
            let writers = HISTORY
                .iter()
                .filter(|(record, _, _)| *record == stem)
                .map(|(_, _, json)| {
                    let schema = Schema::parse_str(json).expect("avro/history file is valid Avro");
                    (fingerprint(&schema), schema)
                })
                .collect();
            BoundSchema {
                fingerprint: fingerprint(&schema),
                schema,
                writers,
            }
        })
    }

    /// The writer schema a fingerprint names: the current schema or a shipped earlier one.
    pub fn writer(&self, fingerprint: &[u8; 8]) -> Option<&Schema> {
        if *fingerprint == self.fingerprint {
            Some(&self.schema)
        } else {
            self.writers.get(fingerprint)
        }
    }
}

/// The single-object fingerprint: the first 8 bytes of the schema's CRC-64-AVRO (Rabin) digest.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[..8]);
    fingerprint
}

include!(concat!(env!("OUT_DIR"), "/history.rs"));

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Binds a record type to its `.avsc` file.
#[macro_export]
macro_rules! avro_record {
    ($ty:ty, $file:literal) => {
        impl $crate::codec::AvroRecord for $ty {
            const NAME: &'static str = stringify!($ty);
            const SCHEMA_FILE: &'static str = $file;
            fn schema() -> &'static $crate::codec::BoundSchema {
                static CELL: std::sync::OnceLock<$crate::codec::BoundSchema> =
                    std::sync::OnceLock::new();
                $crate::codec::BoundSchema::parse(
                    &CELL,
                    include_str!(concat!("../avro/", $file, ".avsc")),
                    $file,
                )
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::schema_compatibility::SchemaCompatibility;
    use std::path::{Path, PathBuf};

    fn avro_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("avro")
    }

    fn json(path: &Path) -> serde_json::Value {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Every `.avsc` has a history whose newest version is the file itself, numbered without gaps:
    /// changing a schema means adding `v<N+1>.avsc`, so every earlier one stays readable.
    #[test]
    fn every_schema_keeps_its_history() {
        let mut checked = 0;
        for entry in std::fs::read_dir(avro_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("avsc") {
                continue;
            }
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            let mut versions: Vec<u32> = HISTORY
                .iter()
                .filter(|(record, _, _)| *record == stem)
                .map(|(_, version, _)| *version)
                .collect();
            versions.sort_unstable();
            assert!(
                !versions.is_empty(),
                "{stem}.avsc has no avro/history/{stem}/v1.avsc"
            );
            assert_eq!(
                versions,
                (1..=versions.len() as u32).collect::<Vec<_>>(),
                "avro/history/{stem}/ must number its versions v1..vN without gaps"
            );
            let newest = versions.len();
            assert_eq!(
                json(&path),
                json(&avro_dir().join(format!("history/{stem}/v{newest}.avsc"))),
                "{stem}.avsc changed: keep the previous version by copying the new file to avro/history/{stem}/v{}.avsc",
                newest + 1
            );
            checked += 1;
        }
        assert_eq!(checked, 12, "every record schema was checked");
    }

    /// Full transitive compatibility: the current schema reads every shipped version (backward), and
    /// every shipped version reads the current one (forward, so an older binary in a rolling
    /// upgrade can read what a newer one writes once it knows the writer's schema).
    #[test]
    fn every_shipped_version_is_compatible_with_the_current_schema() {
        for (stem, version, text) in HISTORY {
            let old = Schema::parse_str(text).unwrap();
            let current = Schema::parse(&json(&avro_dir().join(format!("{stem}.avsc")))).unwrap();
            SchemaCompatibility::can_read(&old, &current)
                .unwrap_or_else(|e| panic!("{stem}.avsc cannot read v{version}: {e}"));
            SchemaCompatibility::can_read(&current, &old)
                .unwrap_or_else(|e| panic!("{stem} v{version} cannot read {stem}.avsc: {e}"));
        }
    }
}
