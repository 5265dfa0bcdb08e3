//! Embeds every shipped Avro schema (`avro/history/<record>/v<N>.avsc`) so that a binary reads
//! records written by any earlier release: `$OUT_DIR/history.rs` holds `HISTORY`, a list of
//! `(record file stem, version, schema JSON)`.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro/history");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut entries = Vec::new();
    for record in std::fs::read_dir(&root).expect("avro/history exists") {
        let record = record.expect("avro/history is readable").path();
        println!("cargo:rerun-if-changed={}", record.display());
        let stem = record
            .file_name()
            .and_then(|n| n.to_str())
            .expect("record directory name is UTF-8")
            .to_owned();
        for file in std::fs::read_dir(&record).expect("record history is readable") {
            let file = file.expect("record history is readable").path();
            let version: u32 = file
                .file_stem()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix('v'))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{} is not named v<N>.avsc", file.display()));
            entries.push((stem.clone(), version, file));
        }
    }
    entries.sort();
    let mut out = String::from("/// Every shipped schema: (record file stem, version, JSON).\n");
    out.push_str("pub static HISTORY: &[(&str, u32, &str)] = &[\n");
    for (stem, version, file) in entries {
        writeln!(
            out,
            "    ({stem:?}, {version}, include_str!({:?})),",
            file.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("history.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}
