//! A consumer never moves past records it has not read: when the broker deletes records a group
//! had not read yet (retention; the embedded broker keeps about 5 MiB per partition), the stage
//! stops with the gap named and commits nothing, on every restart, until an operator resets the
//! group.

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
