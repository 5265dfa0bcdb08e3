//! A consumer never moves past records it has not read: when the broker deletes records a group
//! had not read yet (retention; the embedded broker keeps about 5 MiB per partition), the stage
//! stops with the gap named and commits nothing, on every restart, until an operator resets the
//! group.

mod support;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngCore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use tributary_processors::runner::{Config, Processor};
use tributary_runtime::control::Control;
use tributary_runtime::kafka::{
    client_config, producer_config, reset_group, EmbeddedBroker, GroupProgress, ResetTo,
};
use tributary_runtime::member::Brokers;
use tributary_runtime::stage::StageError;
use tributary_schemas::topics;

const GROUP: &str = "retention-processor";

async fn produce(producer: &FutureProducer, payload: &[u8]) {
    producer
        .send(
            FutureRecord::to(topics::WEBHOOKS)
                .key("k")
                .payload(payload)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
}

fn processor(bootstrap: &str) -> Processor {
    let config = Config {
        group_id: GROUP.into(),
        ..Config::default()
    };
    Processor::new(
        &Brokers::new(bootstrap),
        config,
        Arc::new(RwLock::new(Control::default())),
    )
}

/// Runs a processor until it stops by itself (or `for_at_most` passes, then stops it).
async fn run_processor(bootstrap: &str, for_at_most: Duration) -> Result<(), StageError> {
    let processor = processor(bootstrap);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(for_at_most).await;
        stop.cancel();
    });
    let outcome = processor
        .run(Arc::new(AtomicBool::new(false)), shutdown)
        .await;
    stopper.abort();
    outcome
}

fn committed(bootstrap: &str) -> i64 {
    GroupProgress::new(bootstrap, GROUP, topics::WEBHOOKS)
        .expect("progress")
        .committed_and_end()
        .expect("committed")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_position_the_broker_deleted_stops_the_stage_with_the_gap_named_until_reset() {
    let broker = EmbeddedBroker::start(1, 1).expect("mock cluster");
    let bootstrap = broker.bootstrap_servers();
    let producer: FutureProducer = producer_config(&bootstrap, Duration::from_secs(10))
        .create()
        .expect("producer");

    // A fresh group starts at the beginning and commits what it read (three records it
    // dead-letters: they are not envelopes).
    for _ in 0..3 {
        produce(&producer, b"not an envelope").await;
    }
    for _ in 0..5 {
        if run_processor(&bootstrap, Duration::from_secs(4))
            .await
            .is_ok()
            && committed(&bootstrap) == 3
        {
            break;
        }
    }
    assert_eq!(
        committed(&bootstrap),
        3,
        "the first run commits its three records"
    );

    // While the processor is away, 10 MiB that do not compress arrive: the embedded broker
    // deletes the oldest, among them the group's position.
    let mut chunk = vec![0u8; 100 * 1024];
    for _ in 0..100 {
        rand::thread_rng().fill_bytes(&mut chunk);
        produce(&producer, &chunk).await;
    }
    let probe: BaseConsumer = client_config(&bootstrap).create().expect("probe");
    let (log_start, _) = probe
        .fetch_watermarks(topics::WEBHOOKS, 0, Duration::from_secs(10))
        .expect("watermarks");
    assert!(
        log_start > 3,
        "the broker deleted the group's position (log starts at {log_start})"
    );

    // Every restart stops at once, names the gap, and moves nothing.
    for _ in 0..2 {
        let outcome = run_processor(&bootstrap, Duration::from_secs(30)).await;
        match outcome {
            Err(StageError::PositionLost {
                group,
                topic,
                partition,
                position,
                log_start: start,
            }) => {
                assert_eq!(
                    (group.as_str(), topic.as_str(), partition, position, start),
                    (GROUP, topics::WEBHOOKS, 0, 3, log_start)
                );
            }
            other => panic!("expected the processor to stop on the lost position, got {other:?}"),
        }
        assert_eq!(
            committed(&bootstrap),
            3,
            "nothing was committed past the gap"
        );
    }

    // The operator chooses where to resume; from there the processor runs.
    let bootstrap_for_reset = bootstrap.clone();
    tokio::task::spawn_blocking(move || {
        reset_group(
            &bootstrap_for_reset,
            GROUP,
            topics::WEBHOOKS,
            ResetTo::Beginning,
        )
    })
    .await
    .expect("task")
    .expect("reset");
    let outcome = run_processor(&bootstrap, Duration::from_secs(5)).await;
    assert!(
        outcome.is_ok(),
        "after a reset the processor runs: {outcome:?}"
    );
    assert!(
        committed(&bootstrap) > log_start,
        "it read on from the log's start"
    );
}

/// The gauge ingest sets while it refuses deliveries, as `/metrics` shows it.
async fn refusing(metrics_url: &str) -> bool {
    let Ok(response) = reqwest::get(metrics_url).await else {
        return false;
    };
    response
        .text()
        .await
        .unwrap_or_default()
        .lines()
        .any(|line| line.trim() == "tributary_ingest_backpressure 1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_larger_than_retention_arriving_while_the_processor_is_stopped_ends_exact() {
    use support::*;
    use tributary::app;

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config("retention_stream", dir.path());
    config.kafka.partitions = 1;
    // The stream's event times are in the past, and an idle tick carries the present: one during
    // a refusal would settle every held order at once. Ticks only after the stream has ended.
    config.processor.idle_tick_ms = 20_000;
    reset_database(&config).await;
    let broker = EmbeddedBroker::start(1, 1).expect("mock cluster");
    let bootstrap = broker.bootstrap_servers();
    load_demo_control(&config, &bootstrap).await;
    let shutdown = CancellationToken::new();
    let ingest = {
        let (config, bootstrap, shutdown) = (config.clone(), bootstrap.clone(), shutdown.clone());
        tokio::spawn(async move {
            let metrics = tributary_runtime::ops::install_metrics().unwrap();
            app::run_ingest(
                &config,
                &bootstrap,
                tributary_runtime::ops::Readiness::default(),
                metrics,
                shutdown,
            )
            .await
        })
    };
    let listen = config.ingest.listen;
    wait_ready(&format!("http://{listen}/readyz")).await;

    // About 80 MB of webhooks into one partition, more than the embedded broker keeps even
    // compressed, with no processor: ingest must start refusing before the broker deletes unread
    // ones.
    // The demo's stores without the upsell store's 10-minute hold: a refusal delays deliveries,
    // and an upsell delayed past its order's settle time is late data by the contract, which the
    // generator's oracle does not model.
    let mut stores =
        tributary_control::files::StoresFile::read(&repo_path("deploy/demo/stores.toml"))
            .unwrap()
            .store;
    for store in &mut stores {
        store.settle_delay_minutes = 0;
    }
    let key = tributary_runtime::secrets::MasterKey::load(&config.secrets.master_key_file).unwrap();
    tributary_control::files::publish_stores(&bootstrap, &stores, &key)
        .await
        .unwrap();
    let advocates =
        tributary_control::files::read_advocates(&repo_path("deploy/demo/advocates.csv")).unwrap();
    let plan =
        std::sync::Arc::new(tributary::generate::plan(&stores, &advocates, 4_000, 11).unwrap());
    let url = format!("http://{listen}/webhooks/shopify");
    let sending = {
        let (url, plan) = (url.clone(), plan.clone());
        // One at a time, as one store's deliveries arrive: a refused delivery is retried before
        // any later one, so refusals reorder nothing (an upsell held back past its order's
        // settle time would be late data, by the contract).
        tokio::spawn(async move { tributary::generate::send(&url, &plan, 1, None).await })
    };
    let metrics_url = format!("http://{listen}/metrics");
    let mut engaged = false;
    for _ in 0..1_200 {
        if refusing(&metrics_url).await {
            engaged = true;
            break;
        }
        if sending.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !engaged {
        let sent = sending.await.unwrap();
        let probe: BaseConsumer = client_config(&bootstrap).create().unwrap();
        panic!(
            "ingest never refused: sent {} failed {}, watermarks {:?}",
            sent.sent,
            sent.failed,
            probe.fetch_watermarks(topics::WEBHOOKS, 0, Duration::from_secs(5))
        );
    }
    assert!(
        engaged,
        "ingest refused deliveries before retention reached unread ones"
    );

    // The processor and the sink start; the generator's retries (as Shopify's) get everything in.
    let processor = {
        let (config, bootstrap, shutdown) = (config.clone(), bootstrap.clone(), shutdown.clone());
        tokio::spawn(async move {
            app::run_processor(
                &config,
                &bootstrap,
                tributary_runtime::ops::Readiness::default(),
                shutdown,
            )
            .await
        })
    };
    let sink = {
        let (config, bootstrap, shutdown) = (config.clone(), bootstrap.clone(), shutdown.clone());
        tokio::spawn(async move {
            app::run_sink(
                &config,
                &bootstrap,
                tributary_runtime::ops::Readiness::default(),
                shutdown,
            )
            .await
        })
    };
    let sent = sending.await.unwrap();
    if sent.failed > 0 {
        // Refused past the generator's few retries: Shopify goes on retrying for hours, and so
        // does this test, once, with everything (what was taken drops as duplicates).
        let again = tributary::generate::send(&url, &plan, 1, None).await;
        assert_eq!(again.failed, 0, "every delivery is taken in the end");
    }
    plan.publish_commands(&bootstrap).await.unwrap();
    let ch = config.clickhouse.client();
    eventually_orders(&ch, &plan.orders.len().to_string()).await;
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(60)).await;
    assert!(matched, "{table}");
    shutdown.cancel();
    processor.await.unwrap().unwrap();
    sink.await.unwrap().unwrap();
    ingest.await.unwrap().unwrap();
}
