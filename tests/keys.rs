//! The master key: services never create one, and a rotation re-seals every secret with nothing
//! lost (webhooks keep verifying across it).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use rdkafka::Message;
use tributary_runtime::kafka::read_topic;
use tributary_runtime::secrets::{webhook_secret_purpose, MasterKey};
use tributary_schemas::{topics, AvroRecord, Store};

use support::*;

fn tributary(args: &[&str], key_file: &Path, bootstrap: &str) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
        .env("TRIBUTARY_SECRETS__MASTER_KEY_FILE", key_file)
        .env_remove("TRIBUTARY_MASTER_KEY")
        .output()
        .expect("tributary runs")
}

/// The newest record of every store, from the stores topic.
fn stores_topic(bootstrap: &str) -> BTreeMap<String, Store> {
    let mut latest = BTreeMap::new();
    read_topic(bootstrap, topics::STORES, |m| {
        if let Some(Ok(store)) = m.payload().map(Store::from_avro) {
            latest.insert(store.domain.clone(), store);
        }
    })
    .expect("stores topic");
    latest
}

#[test]
fn a_service_without_a_master_key_refuses_to_start_and_says_what_to_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("master.key");
    for service in ["ingest", "writeback", "control"] {
        let output = tributary(&[service], &key_file, "127.0.0.1:9");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{service} started without a key");
        assert!(
            stderr.contains("tributary keys init"),
            "{service} says what to run: {stderr}"
        );
        assert!(!key_file.exists(), "{service} created a master key");
    }
    let output = tributary(&["keys", "init"], &key_file, "127.0.0.1:9");
    assert!(output.status.success(), "{output:?}");
    let key = std::fs::read_to_string(&key_file).expect("key file");
    let again = tributary(&["keys", "init"], &key_file, "127.0.0.1:9");
    assert!(!again.status.success(), "a second init refuses");
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        key,
        "and keeps the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_reseals_every_secret_and_webhooks_verify_throughout() {
    let mut p = Pipeline::start("keys_rotation", |_| {}).await;
    let key_file = p.config.secrets.master_key_file.clone();
    let old_key = MasterKey::load(&key_file).expect("the pipeline's key");
    accepted(
        &p.webhook_url,
        &Order::new(7_100_000_000_000_000_001, "10.00").delivery("orders/create", "k1", "k1"),
    )
    .await;

    p.stop().await;
    let rotated = tributary(&["keys", "rotate"], &key_file, &p.bootstrap);
    assert!(rotated.status.success(), "{rotated:?}");
    p.start_again(|_| {}).await;
    // The services hold both keys; the stores are still sealed under the old one.
    accepted(
        &p.webhook_url,
        &Order::new(7_100_000_000_000_000_002, "20.00").delivery("orders/create", "k2", "k2"),
    )
    .await;

    let resealed = tributary(&["keys", "reseal", "--retire"], &key_file, &p.bootstrap);
    assert!(resealed.status.success(), "{resealed:?}");
    p.stop().await;
    p.start_again(|_| {}).await;
    let new_key = MasterKey::load(&key_file).expect("the new key");
    assert_eq!(new_key.previous_keys(), 0, "the old key is retired");
    accepted(
        &p.webhook_url,
        &Order::new(7_100_000_000_000_000_003, "30.00").delivery("orders/create", "k3", "k3"),
    )
    .await;

    let stores = stores_topic(&p.bootstrap);
    assert!(stores.len() >= 2, "the demo stores: {stores:?}");
    for store in stores.values() {
        let purpose = webhook_secret_purpose(&store.domain);
        for sealed in &store.webhook_secrets_sealed {
            assert!(
                new_key.open(&purpose, sealed).is_ok(),
                "{} opens",
                store.domain
            );
            assert!(
                old_key.open(&purpose, sealed).is_err(),
                "{} is no longer sealed under the old key",
                store.domain
            );
        }
    }
    let client = p.clickhouse();
    eventually_orders(&client, "3").await;
    p.stop().await;
}
