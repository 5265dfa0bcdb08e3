//! The reconciliation pull, end to end: webhooks Shopify never delivered are read back through the
//! Admin API (the fake Shopify, answering from each order's final state) into the same topic, and
//! ClickHouse comes out equal to the generator's oracle.

mod support;

use std::time::Duration;

use support::*;
use tributary::reconcile::Request;
use tributary_runtime::kafka::read_topic;
use tributary_schemas::{topics, Attribution, AvroRecord};

/// Every record in `tributary.attributions`, as (order key, revision).
fn attribution_revisions(bootstrap: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    read_topic(bootstrap, topics::ATTRIBUTIONS, |m| {
        if let Some(record) =
            rdkafka::Message::payload(m).and_then(|p| Attribution::from_avro(p).ok())
        {
            out.push((record.order_id, record.revision));
        }
    })
    .expect("attributions");
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifth_of_the_webhooks_lost_then_one_paged_reconciliation_pass_matches_the_oracle() {
    lost_webhooks_then_one_pass_matches_the_oracle("reconcile_pages", 0).await;
}

/// The same through bulk operations: the first pass and the backfill cover 400 days, past
/// `bulk_after_hours`; the second pass, from the watermark, reads by page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifth_of_the_webhooks_lost_then_one_bulk_operation_matches_the_oracle() {
    lost_webhooks_then_one_pass_matches_the_oracle("reconcile_bulk", 24).await;
}

async fn lost_webhooks_then_one_pass_matches_the_oracle(name: &str, bulk_after_hours: u64) {
    // The generated orders lie 150 to 349 days back: the stores granted read_all_orders.
    let p = Pipeline::start(name, |c| {
        c.reconcile.backfill_days = 400;
        c.reconcile.bulk_after_hours = bulk_after_hours;
    })
    .await;
    let plan = demo_plan_with_losses(300, 29, 20);
    let orders = plan.orders.len();
    assert!(
        plan.orders_delivered < orders && plan.order_nodes.len() == orders,
        "the plan loses whole orders ({} of {orders} have a version delivered) and the fake holds all",
        plan.orders_delivered
    );
    for (shop, node) in &plan.order_nodes {
        p.shopify.put_order_node(shop, node.clone());
    }
    let report = tributary::generate::send(&p.webhook_url, &plan, 16, None).await;
    assert_eq!((report.sent, report.failed), (plan.deliveries(), 0));
    let ch = p.clickhouse();
    // Every order with a version delivered has settled (the delayed store's at the idle tick).
    eventually_orders(&ch, &plan.orders_delivered.to_string()).await;
    let (_, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(2)).await;
    assert!(!matched, "what was lost is missing before reconciliation");

    let passes =
        tributary::reconcile::run(&p.config, &p.bootstrap, &Request::default(), &p.shutdown)
            .await
            .expect("reconciliation pass");
    assert_eq!(passes.len(), 2, "both demo stores have Admin access");
    assert_eq!(
        passes.iter().map(|p| p.orders_read).sum::<i64>(),
        orders as i64
    );
    // Operators act on orders they can see: after the pass.
    plan.publish_commands(&p.bootstrap).await.unwrap();
    eventually_orders(&ch, &orders.to_string()).await;
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(60)).await;
    assert!(matched, "{table}");

    // The watermark is durable: a second scheduled-style pass starts from it and reads nothing of
    // these old orders; a backfill over the same window reads them all again and changes nothing.
    p.drained(&p.config.processor.group_id, topics::WEBHOOKS)
        .await;
    let before = attribution_revisions(&p.bootstrap);
    let again =
        tributary::reconcile::run(&p.config, &p.bootstrap, &Request::default(), &p.shutdown)
            .await
            .expect("second pass");
    assert_eq!(again.iter().map(|p| p.orders_read).sum::<i64>(), 0);
    assert!(again
        .iter()
        .zip(&passes)
        .all(|(second, first)| second.watermark_ms >= first.watermark_ms));
    let since = tributary_schemas::time::format_rfc3339_ms(
        tributary_runtime::kafka::now_ms() - 400 * 86_400_000,
    );
    let backfill = Request {
        since: Some(since),
        ..Request::default()
    };
    let reread = tributary::reconcile::run(&p.config, &p.bootstrap, &backfill, &p.shutdown)
        .await
        .expect("backfill");
    assert_eq!(
        reread.iter().map(|p| p.orders_read).sum::<i64>(),
        orders as i64
    );
    p.drained(&p.config.processor.group_id, topics::WEBHOOKS)
        .await;
    assert_eq!(
        attribution_revisions(&p.bootstrap),
        before,
        "no order changed"
    );
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(5)).await;
    assert!(matched, "{table}");
    let requests = p.shopify.requests(SHOP).0;
    assert!(requests > 0, "the pull went through the Admin API");
    // The first pass and the backfill, each one operation per store, or none.
    let bulk = p.shopify.writes(SHOP).get("bulkOperationRunQuery").copied();
    let expected = (bulk_after_hours > 0).then_some(2);
    assert_eq!(bulk, expected, "bulk operations run");
}

/// An order as the Admin API shows it: `total` after its edits, updated `updated_minute` after
/// 2025-11-28T12:00:00Z (when the test orders of `support::Order` are created).
fn admin_node(order: &Order, total: &str, updated_minute: i64) -> serde_json::Value {
    let time = |minute: i64| {
        tributary_schemas::time::format_rfc3339_seconds(1_764_331_200_000 + minute * 60_000)
    };
    let money = serde_json::json!({"shopMoney": {"amount": total, "currencyCode": "USD"},
                                   "presentmentMoney": {"amount": total, "currencyCode": "USD"}});
    serde_json::json!({
        "id": format!("gid://shopify/Order/{}", order.id), "legacyResourceId": order.id.to_string(),
        "name": "#1", "createdAt": time(order.created_minute), "updatedAt": time(updated_minute),
        "cancelledAt": null, "test": false, "sourceName": "web", "tags": [], "email": order.email,
        "discountCodes": order.codes, "displayFinancialStatus": "PAID",
        "currentTotalPriceSet": money, "totalPriceSet": money,
        "customer": {"legacyResourceId": "42"},
        "customerJourneySummary": {"ready": true, "firstVisit": {"landingPage": order.landing_site}},
        "refunds": []
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edited_order_is_read_again_and_settles_with_its_edited_total() {
    // One partition, so the later order's event time settles the first; no idle ticks.
    let p = Pipeline::start("edits", |c| {
        c.kafka.partitions = 1;
        c.processor.idle_tick_ms = 3_600_000;
    })
    .await;
    // The upsell store holds orders 10 minutes. Placed for 100.00; edited at minute 2 to add an
    // item: Shopify's `orders/edited` carries only the edit, and the order now shows 130.00.
    let mut order = Order::new(8_100_000_000_001, "100.00");
    (order.shop, order.secret, order.codes) = (UPSELL_SHOP, UPSELL_SECRET, vec!["KEMI"]);
    accepted(
        &p.webhook_url,
        &order.delivery("orders/create", "w-edit-1", "e-edit-1"),
    )
    .await;
    p.shopify
        .put_order_node(UPSELL_SHOP, admin_node(&order, "130.00", 2));
    let edit = serde_json::json!({"order_edit": {
        "id": 78912329, "app_id": null, "created_at": "2025-11-28T12:02:00Z", "notice": "",
        "order_id": order.id, "line_items": {"additions": [{"id": 1, "delta": 1}], "removals": []}}});
    let edited = tributary::generate::Delivery {
        body: serde_json::to_vec(&edit).unwrap(),
        triggered_at_ms: 1_764_331_200_000 + 2 * 60_000 + 500,
        ..order.delivery("orders/edited", "w-edit-2", "e-edit-2")
    };
    accepted(&p.webhook_url, &edited).await;
    // Wait for the re-read before a later order moves the watermark past the settle time.
    let read_again = |bootstrap: &str| {
        let mut found = 0;
        read_topic(bootstrap, topics::WEBHOOKS, |m| {
            let envelope = rdkafka::Message::payload(m)
                .and_then(|p| tributary_schemas::WebhookEnvelope::from_avro(p).ok());
            if envelope
                .is_some_and(|e| e.topic == tributary_schemas::WebhookEnvelope::TOPIC_ADMIN_ORDER)
            {
                found += 1;
            }
        })
        .expect("webhooks topic");
        found
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while read_again(&p.bootstrap) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        read_again(&p.bootstrap),
        1,
        "the edited order was read once"
    );
    let mut later = Order::new(8_100_000_000_002, "10.00");
    (later.shop, later.secret, later.created_minute) = (UPSELL_SHOP, UPSELL_SECRET, 30);
    accepted(
        &p.webhook_url,
        &later.delivery("orders/create", "w-edit-3", "e-edit-3"),
    )
    .await;
    let ch = p.clickhouse();
    eventually(
        &ch,
        &format!("SELECT concat(outcome, ',', advocate_identifier, ',', toString(gross)) FROM attributions_current WHERE order_id = {}", order.id),
        "ATTRIBUTED,kemi,130",
    )
    .await;
    assert!(dead_letter_reasons(&p.bootstrap, 0).await.is_empty());
}

/// A bulk operation Shopify fails is a failed pass: no watermark is kept, the error names the
/// operation's status, and the next pass runs it again and reads every order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_bulk_operation_keeps_no_watermark_and_the_next_pass_reads_it_all() {
    // The test orders were made on 2025-11-28: a backfill of 400 days, in one bulk operation.
    let p = Pipeline::start("reconcile_bulk_failed", |c| c.reconcile.backfill_days = 400).await;
    for n in 0..3 {
        let order = Order::new(8_200_000_000_001 + n, "25.00");
        p.shopify
            .put_order_node(SHOP, admin_node(&order, "25.00", 1));
    }
    p.shopify.fail_bulk_queries(SHOP, 1);
    let request = Request {
        shop: Some(SHOP.into()),
        ..Request::default()
    };
    let error = tributary::reconcile::run(&p.config, &p.bootstrap, &request, &p.shutdown)
        .await
        .expect_err("the operation failed");
    assert!(
        format!("{error:#}").contains("ended FAILED (INTERNAL_SERVER_ERROR)"),
        "{error:#}"
    );
    let watermarks =
        tributary_ingest::shopify_reconcile::Watermarks::follow(&p.bootstrap, &p.shutdown)
            .await
            .unwrap();
    assert_eq!(watermarks.get(SHOP), None, "a failed pass keeps nothing");

    let passes = tributary::reconcile::run(&p.config, &p.bootstrap, &request, &p.shutdown)
        .await
        .expect("the second pass");
    assert_eq!(passes.iter().map(|p| p.orders_read).sum::<i64>(), 3);
    assert_eq!(
        p.shopify.writes(SHOP).get("bulkOperationRunQuery"),
        Some(&2)
    );
    eventually_orders(&p.clickhouse(), "3").await;
}
