//! Rebalances mid-stream: a second processor and a second ClickHouse sink join their groups while
//! orders flow, then leave again; the partitions move both ways, with the processors' settled
//! orders on disk, and ClickHouse still matches the generator to the cent.

mod support;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tributary::app;
use tributary::generate;
use tributary_runtime::ops::Readiness;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_joining_and_leaving_mid_stream_keep_totals_exact() {
    let state = tempfile::tempdir().expect("tempdir");
    let first_state = state.path().join("first");
    let mut p = Pipeline::start("rebalance", move |c| {
        c.processor.state_dir = Some(first_state);
    })
    .await;
    let ch = p.clickhouse();

    // About 8 s of traffic: the second members join after 2 s and leave once they have taken
    // partitions over.
    let plan = std::sync::Arc::new(demo_plan(800, 37));
    let url = p.webhook_url.clone();
    let traffic = {
        let plan = std::sync::Arc::clone(&plan);
        tokio::spawn(async move { generate::send_paced(&url, &plan, 16, Some(250.0), None).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut second = p.config.clone();
    second.processor.state_dir = Some(state.path().join("second"));
    let bootstrap = p.bootstrap.clone();
    let leave = CancellationToken::new();
    let members = {
        let (config, bootstrap, leave) = (second.clone(), bootstrap.clone(), leave.clone());
        tokio::spawn(async move {
            let (processor, sink) = tokio::join!(
                app::run_processor(&config, &bootstrap, Readiness::default(), leave.clone()),
                app::run_sink(&config, &bootstrap, Readiness::default(), leave),
            );
            processor.expect("the second processor ran cleanly");
            sink.expect("the second sink ran cleanly");
        })
    };
    // The partitions move: the first members give some to the second ones.
    for group in [&p.config.processor.group_id, &p.config.clickhouse.group_id] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while revoked(&p, group).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{group} never rebalanced"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    leave.cancel();
    tokio::time::timeout(Duration::from_secs(30), members)
        .await
        .expect("the second members left")
        .expect("no panic");

    let report = traffic.await.expect("traffic");
    assert_eq!(report.failed, 0);
    plan.publish_commands(&p.bootstrap).await.unwrap();
    eventually_orders(&ch, &plan.orders.len().to_string()).await;
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(30)).await;
    assert!(matched, "{table}");
    p.stop().await;
}
