//! Versioned ClickHouse migrations: `migrations/NNNN_<name>.sql`, each applied once, in order, and
//! recorded in the table `schema_migrations` of the database.
//!
//! A shipped migration never changes; a schema change is a new file. Statements are separated by
//! a line holding only `;` and must run on ClickHouse 18.16 and on current releases. A migration
//! is recorded only after all its statements ran, so a crash in between runs it again: a
//! statement that then fails because what it creates "already exists" (18.16 has no
//! `ADD COLUMN IF NOT EXISTS`) counts as done. A database created by the unversioned
//! `schema.sql` of earlier releases is migration 1's result, and is taken up from there with its
//! rows kept.

/// One migration: its version (the file's number), name and SQL.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "refund_ids",
        sql: include_str!("migrations/0002_refund_ids.sql"),
    },
];

/// The table that records applied migrations. Two sinks migrating at once may both record a
/// version; readers take distinct versions.
pub const LEDGER: &str = "CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    applied_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY version";

impl Migration {
    /// The migration's statements, comments and blank ones left out.
    pub fn statements(&self) -> impl Iterator<Item = &'static str> {
        self.sql.split("\n;").map(str::trim).filter(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.trim().starts_with("--"))
        })
    }
}

/// Whether ClickHouse refused a statement because what it creates exists already (a migration
/// that ran before its record was written).
pub fn already_exists(error: &::clickhouse::error::Error) -> bool {
    error.to_string().contains("already exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_named_by_their_file() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(
                m.statements().count() > 0,
                "migration {} has statements",
                m.version
            );
        }
        let files: Vec<String> = std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/clickhouse/migrations"
        ))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
        assert_eq!(
            files.len(),
            MIGRATIONS.len(),
            "every migration file is listed in MIGRATIONS"
        );
        for m in MIGRATIONS {
            let file = format!("{:04}_{}.sql", m.version, m.name);
            assert!(files.contains(&file), "{file} exists");
        }
    }
}
