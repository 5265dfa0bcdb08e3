//! Upgrades in place: records written by earlier releases are read, a record this release cannot
//! read is never a deletion and never skipped, and a ClickHouse database created by the
//! unversioned `schema.sql` of earlier releases is migrated with its rows kept.

mod support;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tributary_runtime::control::follow_table;
use tributary_runtime::control::Control;
use tributary_runtime::kafka::{producer_config, EmbeddedBroker, GroupProgress, TopicError};
use tributary_runtime::member::Brokers;
use tributary_runtime::stage::StageError;
use tributary_schemas::{topics, Attribution, AvroRecord, Store};
use tributary_sinks::clickhouse::migrations::MIGRATIONS;
use tributary_sinks::clickhouse::ClickHouseSink;

use support::*;

/// Bytes no release wrote: a single-object marker with a fingerprint of no known schema.
fn from_a_future_release(body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xC3, 0x01, 0xFE, 0xED, 0xFA, 0xCE, 0xFE, 0xED, 0xFA, 0xCE];
    bytes.extend_from_slice(body);
    bytes
}

fn golden(path: &str) -> Vec<u8> {
    std::fs::read(repo_path(&format!("schemas/avro/golden/{path}"))).expect("golden record")
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_record_that_cannot_be_read_leaves_the_table_unchanged() {
    let broker = EmbeddedBroker::start(1, 2).expect("mock cluster");
    let bootstrap = broker.bootstrap_servers();
    let producer: FutureProducer = producer_config(&bootstrap, Duration::from_secs(10))
        .create()
        .expect("producer");
    // The store as the first release wrote it, then a newer release's record for the same key.
    let first = golden("store/v1.bin");
    let store = Store::from_avro(&first).expect("a first-release store record decodes");
    produce(&producer, topics::STORES, &store.domain, &first).await;
    produce(
        &producer,
        topics::STORES,
        &store.domain,
        &from_a_future_release(b"\x02"),
    )
    .await;

    let control = Arc::new(RwLock::new(Control::default()));
    let table = control.clone();
    let shutdown = CancellationToken::new();
    follow_table::<Store, _>(
        &bootstrap,
        topics::STORES,
        &shutdown,
        move |key, store, offset| {
            table.write().unwrap().apply_store(key, store, offset);
        },
    )
    .await
    .expect("caught up");
    assert_eq!(
        control.read().unwrap().store(&store.domain),
        Some(&store),
        "the last readable value is kept"
    );

    // A tombstone is a deletion.
    producer
        .send(
            FutureRecord::<str, [u8]>::to(topics::STORES)
                .key(&store.domain)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .expect("tombstone produced");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while control.read().unwrap().store(&store.domain).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tombstone removes the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sink_reads_earlier_releases_and_never_commits_past_a_record_it_cannot_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config("upgrade_sink", dir.path());
    reset_database(&config).await;
    let broker = EmbeddedBroker::start(1, 1).expect("mock cluster");
    let bootstrap = broker.bootstrap_servers();
    let producer: FutureProducer = producer_config(&bootstrap, Duration::from_secs(10))
        .create()
        .expect("producer");

    // Offset 0: an order as the first release wrote it; 1: a record of a newer release; 2: an
    // order written now. The sink must write 0, stop at 1 and never commit past it.
    let first = golden("attribution/v1.bin");
    let old = Attribution::from_avro(&first).expect("a first-release attribution decodes");
    let mut current = old.clone();
    current.order_id = old.order_id - 1;
    produce(&producer, topics::ATTRIBUTIONS, "a", &first).await;
    produce(
        &producer,
        topics::ATTRIBUTIONS,
        "b",
        &from_a_future_release(b"\x00"),
    )
    .await;
    produce(
        &producer,
        topics::ATTRIBUTIONS,
        "c",
        &current.to_avro().unwrap(),
    )
    .await;

    let sink = ClickHouseSink::new(&Brokers::new(&bootstrap), config.clickhouse.clone());
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        sink.run(Arc::new(AtomicBool::new(false)), CancellationToken::new()),
    )
    .await
    .expect("the sink stops by itself");
    match outcome {
        Err(StageError::Topic(TopicError::Unreadable { offset, .. })) => assert_eq!(offset, 1),
        other => panic!("expected the sink to stop at offset 1, got {other:?}"),
    }

    let client = config.clickhouse.client();
    let orders: Vec<u64> = client
        .query("SELECT order_id FROM attributions_current ORDER BY order_id")
        .fetch_all()
        .await
        .expect("query");
    assert_eq!(
        orders,
        vec![old.order_id],
        "written up to the unreadable record, nothing after"
    );
    let group = config.clickhouse.group_id.clone();
    let (committed, end) = tokio::task::spawn_blocking(move || {
        GroupProgress::new(&bootstrap, &group, topics::ATTRIBUTIONS)
            .and_then(|p| p.committed_and_end())
    })
    .await
    .unwrap()
    .expect("group progress");
    assert_eq!(
        (committed, end),
        (1, 3),
        "committed up to the unreadable record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_the_unversioned_schema_is_migrated_with_its_rows_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config("upgrade_migrate", dir.path());
    reset_database(&config).await;
    let server = clickhouse::Client::default()
        .with_url(&config.clickhouse.url)
        .with_compression(clickhouse::Compression::None);
    server
        .query(&format!("CREATE DATABASE `{}`", config.clickhouse.database))
        .execute()
        .await
        .expect("database");
    // What earlier releases ran (schema.sql, now migration 1), and a row they wrote.
    let client = config.clickhouse.client();
    for statement in MIGRATIONS[0].statements() {
        client.query(statement).execute().await.expect(statement);
    }
    client
        .query(
            "INSERT INTO attributions (shop_domain, order_id, revision, created_at, outcome, gross, net) \
             VALUES ('old.myshopify.com', 18446744073709551615, 1, 1700000000, 'ATTRIBUTED', 12.34, 12.34)",
        )
        .execute()
        .await
        .expect("an old row");

    let applied = config.clickhouse.migrate().await.expect("migrated");
    assert_eq!(applied, (1..=MIGRATIONS.len() as u32).collect::<Vec<_>>());
    #[derive(Debug, PartialEq, clickhouse::Row, serde::Deserialize)]
    struct Migrated {
        order_id: u64,
        net: String,
        refund_ids: Vec<String>,
    }
    let rows: Vec<Migrated> = client
        .query("SELECT order_id, toString(net) AS net, refund_ids FROM attributions_current")
        .fetch_all()
        .await
        .expect("the migrated table and view");
    let kept = Migrated {
        order_id: u64::MAX,
        net: "12.3400".into(),
        refund_ids: Vec::new(),
    };
    assert_eq!(rows, vec![kept]);
    let recorded: Vec<u32> = client
        .query("SELECT DISTINCT version FROM schema_migrations ORDER BY version")
        .fetch_all()
        .await
        .expect("recorded");
    assert_eq!(recorded, applied);
    assert!(
        config.clickhouse.migrate().await.expect("again").is_empty(),
        "each migration is applied once"
    );
}
