//! A ClickHouse outage longer than the group's `max.poll.interval.ms`: the sink pauses its
//! partitions and keeps polling, so its group never evicts it, and nothing is lost or written
//! twice. (Its own test binary: it reads the process's metrics.)

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tributary::generate;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_longer_than_the_poll_interval_neither_evicts_the_sink_nor_loses_or_doubles_a_row(
) {
    let switch = clickhouse_switch().await;
    let url = switch.url.clone();
    let p = Pipeline::start("long_outage", move |c| {
        c.clickhouse.url = url;
        // librdkafka's lowest: the session timeout (6 s).
        c.kafka.max_poll_interval_ms = Some(6_000);
    })
    .await;
    let group = p.config.clickhouse.group_id.clone();
    let ch = p.clickhouse();
    eventually_orders(&ch, "0").await;

    switch.up.store(false, Ordering::SeqCst);
    let plan = demo_plan(300, 29);
    let report = generate::send(&p.webhook_url, &plan, 16, None).await;
    assert_eq!(report.failed, 0);
    plan.publish_commands(&p.bootstrap).await.unwrap();
    // Well past max.poll.interval.ms while every insert fails.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        revoked(&p, &group).await,
        0,
        "the sink was evicted while it retried"
    );
    switch.up.store(true, Ordering::SeqCst);

    eventually_orders(&ch, &plan.orders.len().to_string()).await;
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(30)).await;
    assert!(matched, "{table}");
    let doubled: Vec<u64> = ch
        .query(
            "SELECT count() FROM (SELECT shop_domain, order_id, revision, count() AS n \
             FROM attributions GROUP BY shop_domain, order_id, revision HAVING n > 1)",
        )
        .fetch_all()
        .await
        .expect("query");
    assert_eq!(doubled, vec![0], "a revision was written twice");
    assert_eq!(revoked(&p, &group).await, 0, "the sink was evicted");
}
