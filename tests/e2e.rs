//! End-to-end: signed HTTP webhooks → Kafka (librdkafka's mock cluster) → processor → ClickHouse.
//! Needs a ClickHouse server (`scripts/clickhouse.sh start`, done by `scripts/test.sh`).

mod support;

use std::time::Duration;

use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::*;
use tributary::generate;
use tributary_runtime::dead_letter::dlq_headers;
use tributary_runtime::kafka::{producer_config, read_topic, ResetTo};
use tributary_schemas::{
    topics, AvroRecord, CustomerEventKind, DeadLetter, ManualAttribution, OperatorCommand,
    RewardApproval,
};

fn count_records(bootstrap: &str, topic: &str) -> usize {
    let mut n = 0;
    read_topic(bootstrap, topic, |_| n += 1).expect("read topic");
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn receiver_answers_each_bad_request_clearly_and_produces_nothing() {
    let p = Pipeline::start("receiver", |c| c.ingest.max_body_bytes = 64 * 1024).await;
    let order = Order::new(1_000_000_000_001, "10.00");
    let good = order.delivery("orders/create", "w-good", "e-good");
    let client = reqwest::Client::new();

    let mut forged = good.clone();
    forged.secret = "not-the-secret".into();
    assert_eq!(post(&p.webhook_url, &forged).await, 401, "wrong secret");
    let unsigned = client
        .post(&p.webhook_url)
        .header("X-Shopify-Shop-Domain", SHOP)
        .body(good.body.clone());
    assert_eq!(
        unsigned.send().await.unwrap().status(),
        401,
        "missing signature"
    );
    let mut tampered = good.request(&client, &p.webhook_url).build().unwrap();
    *tampered.body_mut() = Some(
        b"{\"id\": 1, \"total_price\": \"999999.00\"}"
            .to_vec()
            .into(),
    );
    assert_eq!(
        client.execute(tampered).await.unwrap().status(),
        401,
        "body changed after signing"
    );
    let mut unknown = good.clone();
    unknown.shop = "stranger.myshopify.com".into();
    assert_eq!(post(&p.webhook_url, &unknown).await, 404, "unknown store");
    let replaced = |name: &'static str, value: &'static str| {
        let mut request = good.request(&client, &p.webhook_url).build().unwrap();
        request
            .headers_mut()
            .insert(name, reqwest::header::HeaderValue::from_static(value));
        request
    };
    assert_eq!(
        client
            .execute(replaced("x-shopify-webhook-id", ""))
            .await
            .unwrap()
            .status(),
        400,
        "empty webhook id"
    );
    assert_eq!(
        client
            .execute(replaced("x-shopify-triggered-at", "yesterday"))
            .await
            .unwrap()
            .status(),
        400,
        "bad time"
    );
    let mut huge = good.clone();
    huge.body = vec![b' '; 100 * 1024];
    assert_eq!(post(&p.webhook_url, &huge).await, 413, "oversized body");
    assert_eq!(
        count_records(&p.bootstrap, topics::WEBHOOKS),
        0,
        "nothing rejected was produced"
    );

    accepted(&p.webhook_url, &good).await;
    let mut rotated = order.delivery("orders/create", "w-old-secret", "e-old-secret");
    rotated.secret = PREVIOUS_SECRET.into();
    assert_eq!(
        post(&p.webhook_url, &rotated).await,
        200,
        "previous secret accepted during rotation"
    );
    // Header names are case-insensitive.
    let lower = client
        .post(&p.webhook_url)
        .header("x-shopify-topic", "orders/create")
        .header(
            "x-shopify-hmac-sha256",
            tributary_ingest::shopify_webhooks::sign(SECRET, &good.body),
        )
        .header("x-shopify-shop-domain", SHOP.to_uppercase())
        .header("x-shopify-webhook-id", "w-lower")
        .header("x-shopify-triggered-at", "2025-11-28T12:00:00Z")
        .header("x-shopify-api-version", "2026-04")
        .body(good.body.clone());
    assert_eq!(lower.send().await.unwrap().status(), 200);
    assert_eq!(count_records(&p.bootstrap, topics::WEBHOOKS), 3);
    // The newer header family without the `X-` prefix (Events subscriptions) is read the same
    // way, with its event id.
    let unprefixed = client
        .post(&p.webhook_url)
        .header("Shopify-Topic", "orders/create")
        .header(
            "Shopify-Hmac-Sha256",
            tributary_ingest::shopify_webhooks::sign(SECRET, &good.body),
        )
        .header("Shopify-Shop-Domain", SHOP)
        .header("Shopify-Webhook-Id", "w-unprefixed")
        .header("Shopify-Event-Id", "e-unprefixed")
        .header("Shopify-Triggered-At", "2025-11-28T12:00:00Z")
        .header("Shopify-API-Version", "2026-04")
        .body(good.body.clone());
    assert_eq!(unprefixed.send().await.unwrap().status(), 200);
    let mut read = Vec::new();
    read_topic(&p.bootstrap, topics::WEBHOOKS, |m| {
        let envelope = tributary_schemas::WebhookEnvelope::from_avro(m.payload().unwrap()).unwrap();
        if envelope.webhook_id == "w-unprefixed" {
            read.push((envelope.event_id, envelope.topic, envelope.shop_domain));
        }
    })
    .unwrap();
    assert_eq!(
        read,
        [(
            Some("e-unprefixed".into()),
            "orders/create".into(),
            SHOP.into()
        )]
    );
    let metrics = client
        .get(format!("http://{}/metrics", p.config.ingest.listen))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tributary_webhooks_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rule_exclusion_and_duplicate_lands_exactly() {
    let p = Pipeline::start("rules", |_| {}).await;
    let base = 2_000_000_000_000u64;
    let with = |n: u64, f: &dyn Fn(&mut Order)| {
        let mut o = Order::new(base + n, "100.00");
        f(&mut o);
        o
    };
    let cases: Vec<(Order, &str)> = vec![
        (
            with(1, &|o| o.codes = vec!["ANNA10"]),
            "ATTRIBUTED,Discount Code,anna,100",
        ),
        (
            with(2, &|o| o.codes = vec![" anna-summer "]),
            "ATTRIBUTED,Discount Code,anna,100",
        ),
        (
            with(3, &|o| o.codes = vec!["HOLIDAY25", "bjorn15", "ANNA10"]),
            "ATTRIBUTED,Discount Code,bjorn,100",
        ),
        (
            with(4, &|o| o.codes = vec!["holiday25"]),
            "UNATTRIBUTED,Unattributed,,100",
        ),
        (
            with(5, &|o| o.landing_site = "/products/tent?ref=CHIDI"),
            "ATTRIBUTED,Landing Site,chidi,100",
        ),
        (
            with(6, &|o| {
                o.landing_site = "https://x.example/?utm_medium=advocate&utm_campaign=dara"
            }),
            "ATTRIBUTED,Landing Site,dara,100",
        ),
        (
            with(7, &|o| {
                o.landing_site = "/?utm_medium=email&utm_campaign=dara"
            }),
            "UNATTRIBUTED,Unattributed,,100",
        ),
        (
            with(8, &|o| {
                o.codes = vec!["FARAH"];
                o.email = "Farah@Example.org";
            }),
            "SELF_REFERRAL,Unattributed,,100",
        ),
        (
            with(9, &|o| o.codes = vec!["GUS10"]),
            "UNATTRIBUTED,Unattributed,,100",
        ),
        (with(10, &|_| {}), "UNATTRIBUTED,Unattributed,,100"),
        (
            with(11, &|o| {
                o.codes = vec!["ANNA10"];
                o.test = true;
            }),
            "EXCLUDED,Unattributed,,100",
        ),
        (
            with(12, &|o| {
                o.codes = vec!["ANNA10"];
                o.source_name = "pos";
            }),
            "EXCLUDED,Unattributed,,100",
        ),
        (
            with(13, &|o| {
                o.codes = vec!["ANNA10"];
                o.tags = "vip, exclude";
            }),
            "EXCLUDED,Unattributed,,100",
        ),
    ];
    for (order, _) in &cases {
        accepted(
            &p.webhook_url,
            &order.delivery(
                "orders/create",
                &format!("w{}", order.id),
                &format!("e{}", order.id),
            ),
        )
        .await;
    }
    // Redelivery (same webhook id) and a re-sent event (same event id, new webhook id).
    let twice = with(20, &|o| o.codes = vec!["EUNJI20"]);
    for (webhook, event) in [("w20", "e20"), ("w20", "e20"), ("w20-retry", "e20")] {
        accepted(
            &p.webhook_url,
            &twice.delivery("orders/create", webhook, event),
        )
        .await;
    }
    // The newer version (an upsell, 130.00) arrives first; the older create arrives last.
    let mut newer = with(21, &|o| o.codes = vec!["BJORN15"]);
    newer.total = "130.00";
    newer.updated_minute = 5;
    let older = with(21, &|o| o.codes = vec!["BJORN15"]);
    accepted(
        &p.webhook_url,
        &newer.delivery("orders/updated", "w21b", "e21b"),
    )
    .await;
    accepted(
        &p.webhook_url,
        &older.delivery("orders/create", "w21a", "e21a"),
    )
    .await;

    let ch = p.clickhouse();
    eventually_orders(&ch, &(cases.len() + 2).to_string()).await;
    for (order, expected) in &cases {
        assert_eq!(
            order_row(&ch, order.id).await,
            *expected,
            "order {}",
            order.id % 100
        );
    }
    assert_eq!(
        order_row(&ch, base + 20).await,
        "ATTRIBUTED,Discount Code,eun-ji,100"
    );
    assert_eq!(
        order_row(&ch, base + 21).await,
        "ATTRIBUTED,Discount Code,bjorn,130"
    );
    let latest = ch
        .query(&format!(
            "SELECT toString(latest_updated_at) FROM attributions_current WHERE order_id = {}",
            base + 21
        ))
        .fetch_all::<String>()
        .await
        .unwrap();
    assert_eq!(
        latest,
        vec!["2025-11-28 12:05:00"],
        "the older version did not override the newer"
    );
    eventually(
        &ch,
        "SELECT concat(advocate_identifier, ':', toString(orders), ':', toString(gross)) FROM advocate_stats ORDER BY advocate_identifier",
        "anna:2:200|bjorn:2:230|chidi:1:100|dara:1:100|eun-ji:1:100",
    )
    .await;
    eventually(
        &ch,
        "SELECT concat(source, ':', toString(orders), ':', toString(net)) FROM revenue_by_day ORDER BY source",
        "Discount Code:5:530|Landing Site:2:200|Unattributed:5:500",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_stream_matches_the_generators_totals_to_the_cent() {
    let p = Pipeline::start("generated", |_| {}).await;
    let plan = demo_plan(400, 11);
    let report = generate::send(&p.webhook_url, &plan, 16, None).await;
    plan.publish_commands(&p.bootstrap).await.unwrap();
    assert_eq!((report.sent, report.failed), (plan.deliveries(), 0));
    let ch = p.clickhouse();
    eventually_orders(&ch, &plan.orders.len().to_string()).await;
    // Refunds, upsells and manual attributions may still be on their way.
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(30)).await;
    assert!(matched, "{table}");
    assert!(
        plan.expected.per_advocate.len() >= 5
            && plan.expected.excluded_orders > 0
            && plan.expected.unattributed_orders > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_reverse_by_amount_count_once_and_one_before_its_order_waits_for_it() {
    // One partition, so one watermark; no idle ticks (they carry today's time, which would end
    // every wait at once).
    let p = Pipeline::start("refunds", |c| {
        c.kafka.partitions = 1;
        c.processor.idle_tick_ms = 600_000;
    })
    .await;
    let mut order = Order::new(8_000_000_000_001, "200.00");
    order.codes = vec!["ANNA10"];
    accepted(
        &p.webhook_url,
        &order.delivery("orders/create", "w-c", "e-c"),
    )
    .await;
    let ch = p.clickhouse();
    let row = format!(
        "SELECT concat(toString(refunded), ',', toString(net), ',', refund_status) FROM attributions_current WHERE order_id = {}",
        order.id
    );
    eventually(&ch, &row, "0,200,NONE").await;
    let partial = order.refund(11, "50.25");
    for _ in 0..2 {
        accepted(&p.webhook_url, &partial).await; // redelivered: counts once
    }
    eventually(&ch, &row, "50.25,149.75,PARTIAL").await;
    accepted(&p.webhook_url, &order.refund(12, "160.00")).await;
    eventually(&ch, &row, "210.25,0,FULL").await;
    eventually(
        &ch,
        "SELECT concat(toString(orders), ',', toString(gross), ',', toString(refunded), ',', toString(net)) FROM advocate_stats",
        "1,200,210.25,0",
    )
    .await;

    // The case: a refund delivered before any version of its order waits for it.
    let mut early = Order::new(5_900_000_000_000_002_001, "176.34");
    early.codes = vec!["ANNA10"];
    accepted(&p.webhook_url, &early.refund(21, "31.18")).await;
    accepted(
        &p.webhook_url,
        &early.delivery("orders/create", "w-early", "e-early"),
    )
    .await;
    let early_row = row.replace(&order.id.to_string(), &early.id.to_string());
    eventually(&ch, &early_row, "31.18,145.16,PARTIAL").await;

    // A refund whose order does not come within the wait (60 min of event time, moved here by
    // a later order) is dead-lettered with the reason.
    let stranger = Order::new(8_000_000_000_999, "10.00");
    accepted(&p.webhook_url, &stranger.refund(13, "5.00")).await;
    let mut later = Order::new(8_000_000_000_500, "1.00");
    later.created_minute = 24 * 60 + 61;
    accepted(
        &p.webhook_url,
        &later.delivery("orders/create", "w-l", "e-l"),
    )
    .await;
    let mut reason = String::new();
    for _ in 0..100 {
        read_topic(&p.bootstrap, topics::DEAD_LETTERS, |m| {
            let letter = DeadLetter::from_avro(m.payload().unwrap()).unwrap();
            reason = format!("{}: {}", letter.stage, letter.error);
        })
        .unwrap();
        if !reason.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reason.starts_with("refund: refund 13 came before its order 8000000000999, which did not arrive within 60 min"),
        "{reason}"
    );

    // The order arrives; replaying the dead letter counts the refund, and replaying it again
    // changes nothing.
    accepted(
        &p.webhook_url,
        &stranger.delivery("orders/create", "w-s", "e-s"),
    )
    .await;
    let stranger_row = row.replace(&order.id.to_string(), &stranger.id.to_string());
    eventually(&ch, &stranger_row, "0,10,NONE").await;
    for _ in 0..2 {
        let replayed = tributary::replay::replay_dead_letters(
            &p.bootstrap,
            0,
            Some(tributary_runtime::dead_letter::DeadLetterStage::Refund),
        )
        .await
        .unwrap();
        assert_eq!((replayed.replayed, replayed.next_offset), (1, 1));
        eventually(&ch, &stranger_row, "5,5,PARTIAL").await;
    }
    assert_eq!(count_records(&p.bootstrap, topics::DEAD_LETTERS), 1);
    // Both orders are customer 42's.
    eventually(
        &ch,
        "SELECT concat(toString(orders), ',', toString(gross), ',', toString(net), ',', toString(first_order_at = last_order_at)) FROM customers WHERE customer_id = 42",
        "4,387.34,151.16,0",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_given_only_in_presentment_money_is_converted_at_the_orders_rate() {
    let p = Pipeline::start("presentment", |c| c.kafka.partitions = 1).await;
    // A USD store; the order was presented in EUR: 134.10 USD for 107.28 EUR.
    let order = Order::new(8_100_000_000_001, "134.10");
    let mut body: serde_json::Value = serde_json::from_slice(&order.body()).unwrap();
    body["presentment_currency"] = "EUR".into();
    body["current_total_price_set"]["presentment_money"] =
        serde_json::json!({"amount": "107.28", "currency_code": "EUR"});
    let create = tributary::generate::Delivery {
        body: serde_json::to_vec(&body).unwrap(),
        ..order.delivery("orders/create", "p-create", "p-create")
    };
    accepted(&p.webhook_url, &create).await;
    // One successful transaction of 40.00 EUR, with no shop-money set: 50.00 USD.
    let refund = serde_json::json!({"id": 31, "order_id": order.id, "created_at": "2025-11-29T12:00:00Z",
        "transactions": [{"id": 1, "kind": "refund", "status": "success", "amount": "40.00", "currency": "EUR"}]});
    let refund = tributary::generate::Delivery {
        body: serde_json::to_vec(&refund).unwrap(),
        ..order.refund(31, "0.00")
    };
    accepted(&p.webhook_url, &refund).await;
    eventually(
        &p.clickhouse(),
        &format!("SELECT concat(toString(gross), ',', toString(refunded), ',', toString(net), ',', presentment_currency) FROM attributions_current WHERE order_id = {}", order.id),
        "134.1,50,84.1,EUR",
    )
    .await;
}

/// An order version with these refunds listed (each one successful USD transaction) and this
/// current total.
fn listing_refunds(
    order: &Order,
    topic: &'static str,
    id: &str,
    current_total: &str,
    refunds: &[(u64, &str)],
) -> tributary::generate::Delivery {
    let mut body: serde_json::Value = serde_json::from_slice(&order.body()).unwrap();
    body["current_total_price"] = current_total.into();
    body["current_total_price_set"] = serde_json::json!({
        "shop_money": {"amount": current_total, "currency_code": "USD"},
        "presentment_money": {"amount": current_total, "currency_code": "USD"}});
    body["refunds"] = refunds
        .iter()
        .map(|(refund_id, amount)| serde_json::json!({"id": refund_id, "order_id": order.id,
            "transactions": [{"id": 1, "kind": "refund", "status": "success", "amount": amount, "currency": "USD"}]}))
        .collect();
    tributary::generate::Delivery {
        body: serde_json::to_vec(&body).unwrap(),
        ..order.delivery(topic, id, id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_a_version_already_lists_is_in_gross_and_counted_once_from_any_record() {
    let p = Pipeline::start("listed_refunds", |c| c.kafka.partitions = 1).await;
    let ch = p.clickhouse();
    let row = |id: u64| {
        format!("SELECT concat(toString(gross), ',', toString(refunded), ',', toString(net), ',', refund_status) FROM attributions_current WHERE order_id = {id}")
    };
    // The store that waits 10 minutes: created at 100.00, then within the window the update that
    // lists a refund of 20.00 at 80.00, and the refund itself. Gross stays 100.00, the refund
    // counts once.
    let order = |total| {
        let mut order = Order::new(8_200_000_000_002, total);
        (order.shop, order.secret) = (UPSELL_SHOP, UPSELL_SECRET);
        order.codes = vec!["kemi"];
        order
    };
    let b_create = order("100.00").delivery("orders/create", "b-create", "b-create");
    accepted(&p.webhook_url, &b_create).await;
    let mut updated = order("80.00");
    updated.updated_minute = 3;
    let b_updated = listing_refunds(
        &updated,
        "orders/updated",
        "b-updated",
        "80.00",
        &[(52, "20.00")],
    );
    accepted(&p.webhook_url, &b_updated).await;
    // No delay, and the first version to arrive already lists a refund of 14.13: Shopify's
    // current total (86.70) excludes it, so gross is 100.83.
    let mut a = Order::new(8_200_000_000_001, "86.70");
    a.codes = vec!["ANNA10"];
    let a_listed = listing_refunds(&a, "orders/updated", "a-listed", "86.70", &[(51, "14.13")]);
    accepted(&p.webhook_url, &a_listed).await;
    eventually(&ch, &row(a.id), "100.83,14.13,86.7,PARTIAL").await;
    // The refund of B, whose trigger time (a day later) settles B; then A's refunds/create of the
    // refund its version listed, delivered twice, adds nothing.
    accepted(&p.webhook_url, &order("100.00").refund(52, "20.00")).await;
    for _ in 0..2 {
        accepted(&p.webhook_url, &a.refund(51, "14.13")).await;
    }
    eventually(&ch, &row(8_200_000_000_002), "100,20,80,PARTIAL").await;
    eventually(&ch, &row(a.id), "100.83,14.13,86.7,PARTIAL").await;
    eventually(
        &ch,
        "SELECT toString(max(revision)) FROM attributions_current",
        "1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_replay_of_every_topic_leaves_every_clickhouse_total_unchanged() {
    let mut p = Pipeline::start("replay", |_| {}).await;
    let plan = demo_plan(150, 31);
    assert_eq!(
        generate::send(&p.webhook_url, &plan, 16, None).await.failed,
        0
    );
    plan.publish_commands(&p.bootstrap).await.unwrap();
    let ch = p.clickhouse();
    eventually_orders(&ch, &plan.orders.len().to_string()).await;
    let totals = {
        let ch = ch.clone();
        move || {
            let ch = ch.clone();
            async move { tributary::report::advocate_totals(&ch).await.unwrap() }
        }
    };
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(30)).await;
    assert!(matched, "{table}");
    let before = totals().await;
    let rows_before: Vec<u64> = ch
        .query("SELECT count() FROM attributions")
        .fetch_all()
        .await
        .unwrap();
    let changelog_before = count_records(&p.bootstrap, topics::ATTRIBUTIONS);
    let (repartition, events) = (
        p.config.events.repartition_group_id.clone(),
        p.config.events.group_id.clone(),
    );
    p.drained(&repartition, topics::ATTRIBUTIONS).await;
    p.drained(&events, topics::ORDERS_BY_CUSTOMER).await;
    let events_before = event_counts(&p.bootstrap);
    // Every order that is not excluded is placed once, and is a first or a repeat purchase;
    // the refunds reported add up to what ClickHouse says was refunded.
    let placed = plan.orders.len() as u64 - plan.expected.excluded_orders;
    let refunded: Vec<String> = ch
        .query(
            "SELECT toString(sum(refunded)) FROM attributions_current WHERE outcome != 'EXCLUDED'",
        )
        .fetch_all()
        .await
        .unwrap();
    let kinds = |k: CustomerEventKind| events_before.get(&k).map_or(0, |(n, _)| *n);
    assert_eq!(kinds(CustomerEventKind::PlacedOrder), placed);
    assert_eq!(
        kinds(CustomerEventKind::FirstPurchase) + kinds(CustomerEventKind::RepeatPurchase),
        placed
    );
    assert!(
        kinds(CustomerEventKind::RepeatPurchase) > placed / 3,
        "shoppers come back"
    );
    assert_eq!(
        events_before[&CustomerEventKind::ReceivedRefund].1,
        dec(&refunded[0])
    );
    let by_customer_before = count_records(&p.bootstrap, topics::ORDERS_BY_CUSTOMER);

    p.stop().await;
    let (processor, sink) = (
        p.config.processor.group_id.clone(),
        p.config.clickhouse.group_id.clone(),
    );
    for (group, topic) in [
        (&processor, topics::WEBHOOKS),
        (&sink, topics::ATTRIBUTIONS),
        (&repartition, topics::ATTRIBUTIONS),
        (&events, topics::ORDERS_BY_CUSTOMER),
    ] {
        tributary::replay::reset(&p.bootstrap, group, topic, ResetTo::Beginning)
            .await
            .unwrap();
    }
    p.start_again(|_| {}).await;
    p.drained(&processor, topics::WEBHOOKS).await;
    p.drained(&sink, topics::ATTRIBUTIONS).await;
    p.drained(&repartition, topics::ATTRIBUTIONS).await;
    p.drained(&events, topics::ORDERS_BY_CUSTOMER).await;
    assert!(count_records(&p.bootstrap, topics::ORDERS_BY_CUSTOMER) > by_customer_before);
    assert_eq!(
        event_counts(&p.bootstrap),
        events_before,
        "every order forwarded again, and not one event emitted twice"
    );

    assert_eq!(
        count_records(&p.bootstrap, topics::ATTRIBUTIONS),
        changelog_before,
        "replayed webhooks produce no new attribution"
    );
    let rows_after: Vec<u64> = ch
        .query("SELECT count() FROM attributions")
        .fetch_all()
        .await
        .unwrap();
    assert!(
        rows_after[0] > rows_before[0],
        "the sink inserted its topic again"
    );
    assert_eq!(
        totals().await,
        before,
        "and ClickHouse's totals did not move"
    );
    eventually_orders(&ch, &plan.orders.len().to_string()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_attribution_moves_a_settled_order_and_wins_over_a_held_one() {
    let p = Pipeline::start("manual", |c| {
        c.kafka.partitions = 1; // one watermark for every order below
        c.processor.idle_tick_ms = 3_600_000;
    })
    .await;
    let attribute = |shop: &str, order_id: u64, advocate: &str| {
        let (bootstrap, shop) = (p.bootstrap.clone(), shop.to_owned());
        let command = OperatorCommand::Attribute(ManualAttribution {
            order_id,
            advocate_identifier: advocate.into(),
            requested_by: "ops@example.org".into(),
        });
        async move {
            tributary_control::files::publish_commands(&bootstrap, &[(shop, command)])
                .await
                .unwrap()
        }
    };
    let ch = p.clickhouse();
    let row = |id: u64| {
        format!("SELECT concat(outcome, ',', source, ',', advocate_identifier, ',', reason, ',', toString(revision)) FROM attributions_current WHERE order_id = {id}")
    };

    // Settled to anna by her code, then moved to bjorn by hand.
    let mut settled = Order::new(9_000_000_000_001, "80.00");
    settled.codes = vec!["ANNA10"];
    accepted(
        &p.webhook_url,
        &settled.delivery("orders/create", "m-1", "m-1"),
    )
    .await;
    eventually(
        &ch,
        &row(settled.id),
        "ATTRIBUTED,Discount Code,anna,code ANNA10,1",
    )
    .await;
    attribute(SHOP, settled.id, "BJORN").await;
    eventually(
        &ch,
        &row(settled.id),
        "ATTRIBUTED,Manual,bjorn,manual attribution by ops@example.org,2",
    )
    .await;
    eventually(
        &ch,
        "SELECT arrayStringConcat(groupArray(concat(advocate_identifier, '=', toString(orders))), ' ') FROM (SELECT * FROM advocate_stats ORDER BY advocate_identifier)",
        "bjorn=1",
    )
    .await;

    // Held (upsell store) with a share link to kemi; the command arrives first and wins.
    let mut held = Order::new(9_000_000_000_002, "60.00");
    (held.shop, held.secret, held.landing_site) = (UPSELL_SHOP, UPSELL_SECRET, "/?ref=kemi");
    accepted(
        &p.webhook_url,
        &held.delivery("orders/create", "m-2", "m-2"),
    )
    .await;
    attribute(UPSELL_SHOP, held.id, "ines").await;
    let mut later = Order::new(9_000_000_000_003, "1.00");
    (later.shop, later.secret, later.created_minute) = (UPSELL_SHOP, UPSELL_SECRET, 30);
    accepted(
        &p.webhook_url,
        &later.delivery("orders/create", "m-3", "m-3"),
    )
    .await;
    eventually(
        &ch,
        &row(held.id),
        "ATTRIBUTED,Manual,ines,manual attribution by ops@example.org,1",
    )
    .await;

    // Refused, each with its reason: an excluded order, an unknown advocate, an unknown order.
    let mut excluded = Order::new(9_000_000_000_004, "5.00");
    excluded.test = true;
    accepted(
        &p.webhook_url,
        &excluded.delivery("orders/create", "m-4", "m-4"),
    )
    .await;
    eventually(
        &ch,
        &format!(
            "SELECT outcome FROM attributions_current WHERE order_id = {}",
            excluded.id
        ),
        "EXCLUDED",
    )
    .await;
    attribute(SHOP, excluded.id, "anna").await;
    attribute(SHOP, settled.id, "nobody-here").await;
    attribute(SHOP, 9_000_000_000_999, "anna").await;
    assert_eq!(
        dead_letter_reasons(&p.bootstrap, 3).await,
        vec![
            "manual: nobody-here is not an active advocate of demo-outdoors.myshopify.com".to_owned(),
            "manual: order 9000000000004 is never attributed (excluded: test order)".to_owned(),
            "manual: order 9000000000999 has not been seen in this partition; replay the command once it is in".to_owned(),
        ]
    );
    eventually(
        &ch,
        &row(settled.id),
        "ATTRIBUTED,Manual,bjorn,manual attribution by ops@example.org,2",
    )
    .await;
}

/// The upsell store holds orders 10 minutes of event time. One partition, so every record moves
/// the same watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewards_are_requested_approved_reversed_by_refunds_and_follow_a_moved_order() {
    let p = Pipeline::start("rewards", |c| {
        c.kafka.partitions = 1;
        c.processor.idle_tick_ms = 3_600_000;
    })
    .await;
    let command = |shop: &str, command: OperatorCommand| {
        let (bootstrap, shop) = (p.bootstrap.clone(), shop.to_owned());
        async move {
            tributary_control::files::publish_commands(&bootstrap, &[(shop, command)])
                .await
                .unwrap()
        }
    };
    let approve = |order_id: u64| {
        OperatorCommand::ApproveReward(RewardApproval {
            order_id,
            approved_by: "ops@example.org".into(),
        })
    };
    let ch = p.clickhouse();
    let balances = "SELECT arrayStringConcat(groupArray(concat(advocate_identifier, '=', toString(balance))), ' ') FROM (SELECT * FROM reward_balances ORDER BY advocate_identifier)";
    let pending = "SELECT arrayStringConcat(groupArray(concat(advocate_identifier, ':', toString(order_id), ':', toString(points))), ' ') FROM (SELECT * FROM reward_requests_pending ORDER BY request_id)";

    // demo-upsells: 50 points per order, credited at once when the held order settles (an
    // approval before that is refused: there is no request yet).
    let mut held = Order::new(9_100_000_000_002, "80.00");
    (held.shop, held.secret, held.codes) = (UPSELL_SHOP, UPSELL_SECRET, vec!["KEMI"]);
    accepted(
        &p.webhook_url,
        &held.delivery("orders/create", "r-2", "r-2"),
    )
    .await;
    command(UPSELL_SHOP, approve(held.id)).await;
    let mut later = Order::new(9_100_000_000_003, "1.00");
    (later.shop, later.secret, later.created_minute) = (UPSELL_SHOP, UPSELL_SECRET, 30);
    accepted(
        &p.webhook_url,
        &later.delivery("orders/create", "r-3", "r-3"),
    )
    .await;
    eventually(&ch, balances, "kemi=50").await;
    accepted(&p.webhook_url, &held.refund(3, "80.00")).await;
    eventually(&ch, balances, "kemi=0").await;

    // demo-outdoors: 0.1 point per unit of gross, approved by an operator.
    let mut order = Order::new(9_100_000_000_001, "200.00");
    order.codes = vec!["anna10"];
    accepted(
        &p.webhook_url,
        &order.delivery("orders/create", "r-1", "r-1"),
    )
    .await;
    eventually(&ch, pending, "anna:9100000000001:20").await;
    let listed = tributary::report::pending_rewards(&ch, Some(SHOP))
        .await
        .unwrap();
    assert!(
        listed.contains("9100000000001") && listed.ends_with("1 pending request(s)"),
        "{listed}"
    );

    // A refund before approval moves nothing yet; approval credits what the refund left.
    accepted(&p.webhook_url, &order.refund(1, "50.00")).await;
    accepted(&p.webhook_url, &order.refund(1, "50.00")).await;
    command(SHOP, approve(order.id)).await;
    eventually(&ch, balances, "anna=15 kemi=0").await;
    eventually(&ch, pending, "").await;

    // Moved by hand: anna's reward is reversed, bjorn's request waits for its own approval.
    command(
        SHOP,
        OperatorCommand::Attribute(ManualAttribution {
            order_id: order.id,
            advocate_identifier: "bjorn".into(),
            requested_by: "ops@example.org".into(),
        }),
    )
    .await;
    eventually(&ch, pending, "bjorn:9100000000001:20").await;
    eventually(&ch, balances, "anna=0 bjorn=0 kemi=0").await;
    command(SHOP, approve(order.id)).await;
    eventually(&ch, balances, "anna=0 bjorn=15 kemi=0").await;
    // A second refund reverses in proportion, on the cumulative share: 20 × 150/200.
    accepted(&p.webhook_url, &order.refund(2, "100.00")).await;
    eventually(&ch, balances, "anna=0 bjorn=5 kemi=0").await;

    // Refused with reasons: a second approval, one for a held order, one for an unknown order.
    command(SHOP, approve(order.id)).await;
    command(SHOP, approve(9_100_000_000_999)).await;
    assert_eq!(
        dead_letter_reasons(&p.bootstrap, 3).await,
        vec![
            "approval: order 9100000000002 has not settled yet, so it has no reward request; approve it once it has".to_owned(),
            "approval: order 9100000000999 has not been seen in this partition; replay the command once it is in".to_owned(),
            "approval: reward request demo-outdoors.myshopify.com/9100000000001/reward/2 is already approved".to_owned(),
        ]
    );
    // Every entry once: anna's request, approval, two reversals and void; bjorn's request,
    // approval and two reversals; kemi's request, approval and reversal (the redelivered refund
    // added nothing).
    eventually(
        &ch,
        "SELECT toString(count()) FROM reward_ledger FINAL",
        "12",
    )
    .await;
    eventually(
        &ch,
        &format!("SELECT arrayStringConcat(groupArray(concat(kind, ' ', toString(points))), ', ') FROM (SELECT * FROM reward_ledger FINAL WHERE order_id = {} ORDER BY entry_id)", order.id),
        "REQUEST 20, APPROVAL 20, REVERSAL 5, REVERSAL 15, VOID 0, REQUEST 20, APPROVAL 20, REVERSAL 5, REVERSAL 10",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_time_far_ahead_of_its_receipt_never_moves_the_watermark() {
    let p = Pipeline::start("future", |c| {
        c.kafka.partitions = 1;
        c.processor.idle_tick_ms = 300;
    })
    .await;
    // Orders placed now at the store that waits 10 minutes for upsells.
    let now_minute = (tributary_runtime::kafka::now_ms() - 1_764_331_200_000) / 60_000;
    let order = |id: u64| {
        let mut order = Order::new(id, "10.00");
        (order.shop, order.secret, order.created_minute) = (UPSELL_SHOP, UPSELL_SECRET, now_minute);
        order.codes = vec!["kemi"];
        order
    };
    let mut forged = order(7_100_000_000_001).delivery("orders/create", "f-create", "f-create");
    forged.triggered_at_ms = 253_402_300_799_000; // 9999-12-31T23:59:59Z
    accepted(&p.webhook_url, &forged).await;
    accepted(
        &p.webhook_url,
        &order(7_100_000_000_002).delivery("orders/create", "n-create", "n-create"),
    )
    .await;
    // Idle ticks (every 300 ms) carry the present: both stay held for their 10 minutes. Had the
    // forged time moved the watermark to 9999, both would have settled at once.
    let metrics_url = format!("http://{}/metrics", p.config.ingest.listen);
    let mut seen = false;
    for _ in 0..50 {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("tributary_processor_future_event_times_total") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the processor read the forged delivery");
    tokio::time::sleep(Duration::from_secs(2)).await;
    eventually(
        &p.clickhouse(),
        "SELECT toString(count()) FROM attributions_current",
        "0",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_unchanged_past_the_horizon_expires_with_a_tombstone_and_stays_counted_once() {
    let mut p = Pipeline::start("expiry", |c| {
        c.kafka.partitions = 1;
        c.processor.expire_after_days = 2;
        c.processor.state_dir = Some(c.secrets.master_key_file.with_file_name("processor-state"));
    })
    .await;
    let ch = p.clickhouse();
    let row = |id: u64| {
        format!("SELECT concat(toString(gross), ',', toString(refunded), ',', toString(revision)) FROM attributions_current WHERE order_id = {id}")
    };
    // A is placed on 2025-11-28 and settles at once.
    let mut a = Order::new(7_200_000_000_001, "80.00");
    a.codes = vec!["ANNA10"];
    accepted(
        &p.webhook_url,
        &a.delivery("orders/create", "a-create", "a-create"),
    )
    .await;
    eventually(&ch, &row(a.id), "80,0,1").await;
    // B, three days later, moves the watermark to 2025-12-01: the horizon is 2025-11-29 00:00,
    // and A, unchanged since 2025-11-28, leaves the state with a tombstone.
    let mut b = Order::new(7_200_000_000_002, "30.00");
    b.created_minute = 3 * 1440;
    accepted(
        &p.webhook_url,
        &b.delivery("orders/create", "b-create", "b-create"),
    )
    .await;
    eventually(&ch, &row(b.id), "30,0,1").await;
    let a_key = topics::order_key(SHOP, a.id);
    let mut tombstones = 0;
    for _ in 0..100 {
        tombstones = 0;
        read_topic(&p.bootstrap, topics::ATTRIBUTIONS, |m| {
            if m.payload().is_none() && m.key() == Some(a_key.as_bytes()) {
                tombstones += 1;
            }
        })
        .unwrap();
        if tombstones > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(tombstones, 1, "one tombstone for the expired order");

    // A later version of A is refused with the reason, not counted again as a new order; a
    // refund for it finds no order. ClickHouse keeps A's row as it was.
    let mut a_late = a.clone();
    a_late.total = "10.00";
    a_late.updated_minute = 4 * 1440;
    accepted(
        &p.webhook_url,
        &a_late.delivery("orders/updated", "a-late", "a-late"),
    )
    .await;
    accepted(&p.webhook_url, &a.refund(21, "5.00")).await;
    let reasons = dead_letter_reasons(&p.bootstrap, 2).await;
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with(&format!("expired: order {} was created", a.id))
            && reasons[0].contains("before the state's horizon"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("refund: refund 21"), "{reasons:?}");

    // After a restart (the store on disk and the changelog's tail, tombstone included), A is
    // still gone: a second refund is refused the same way, and B is still known.
    p.restart(|_| {}).await;
    accepted(&p.webhook_url, &a.refund(22, "5.00")).await;
    accepted(&p.webhook_url, &b.refund(23, "5.00")).await;
    eventually(&ch, &row(b.id), "30,5,2").await;
    let reasons = dead_letter_reasons(&p.bootstrap, 3).await;
    assert!(
        reasons.len() == 3 && reasons[2].starts_with("refund: refund 22"),
        "{reasons:?}"
    );
    eventually(&ch, &row(a.id), "80,0,1").await;
    eventually(
        &ch,
        "SELECT concat(toString(orders), ',', toString(gross)) FROM advocate_stats",
        "1,80",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_orders_merge_upsells_settle_on_event_time_and_survive_a_restart() {
    let mut p = Pipeline::start("settle", |c| {
        c.kafka.partitions = 1;
        c.processor.idle_tick_ms = 3_600_000; // no idle tick until the restart below
    })
    .await;
    let order = |id: u64, total: &'static str, created_minute: i64| {
        let mut order = Order::new(id, total);
        (order.shop, order.secret, order.created_minute) =
            (UPSELL_SHOP, UPSELL_SECRET, created_minute);
        order.codes = vec!["kemi"];
        order
    };
    let send = |order: Order, topic: &'static str, id: &str| {
        let (url, delivery) = (p.webhook_url.clone(), order.delivery(topic, id, id));
        async move { assert_eq!(post(&url, &delivery).await, 200) }
    };
    // A: placed at minute 0 for 100, upsold at minute 2 to 130; an older version arrives last.
    let a = order(7_000_000_000_001, "100.00", 0);
    send(a.clone(), "orders/create", "a-create").await;
    let mut a_upsell = order(7_000_000_000_001, "130.00", 0);
    a_upsell.updated_minute = 2;
    send(a_upsell, "orders/updated", "a-upsell").await;
    let mut a_older = order(7_000_000_000_001, "90.00", 0);
    a_older.updated_minute = 1;
    send(a_older, "orders/updated", "a-older").await;
    // B: placed at minute 11, which moves the watermark past A's settle time (minute 10).
    send(
        order(7_000_000_000_002, "50.00", 11),
        "orders/create",
        "b-create",
    )
    .await;
    let ch = p.clickhouse();
    let row = |id: u64| {
        format!("SELECT concat(outcome, ',', advocate_identifier, ',', toString(gross)) FROM attributions_current WHERE order_id = {id}")
    };
    eventually(&ch, &row(7_000_000_000_001), "ATTRIBUTED,kemi,130").await;
    // B is held: nothing has passed minute 21, and there is no idle tick.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually(&ch, &row(7_000_000_000_002), "").await;
    let mut b_upsell = order(7_000_000_000_002, "75.00", 11);
    b_upsell.updated_minute = 3;
    send(b_upsell.clone(), "orders/updated", "b-upsell").await;
    // The upsell's `orders/edited` carries only the edit: it is recorded in the order's partition,
    // and the order is read again through the Admin API (the store has it), where Shopify shows
    // the state the `orders/updated` above carried: the same version, which changes nothing.
    p.shopify.put_order_node(
        UPSELL_SHOP,
        serde_json::json!({
            "id": format!("gid://shopify/Order/{}", b_upsell.id), "legacyResourceId": b_upsell.id.to_string(),
            "name": "#2", "createdAt": "2025-11-28T12:11:00Z", "updatedAt": "2025-11-28T12:14:00Z",
            "cancelledAt": null, "test": false, "sourceName": "web", "tags": [], "email": b_upsell.email,
            "discountCodes": ["kemi"], "displayFinancialStatus": "PAID",
            "currentTotalPriceSet": {"shopMoney": {"amount": "75.00", "currencyCode": "USD"}, "presentmentMoney": {"amount": "75.00", "currencyCode": "USD"}},
            "totalPriceSet": {"shopMoney": {"amount": "75.00", "currencyCode": "USD"}, "presentmentMoney": {"amount": "75.00", "currencyCode": "USD"}},
            "customer": {"legacyResourceId": "42"},
            "customerJourneySummary": {"ready": true, "firstVisit": {"landingPage": "/"}},
            "refunds": []
        }),
    );
    let edit = serde_json::json!({"order_edit": {
        "id": 78912328, "app_id": null, "created_at": "2025-11-28T12:14:00Z", "notice": "",
        "order_id": b_upsell.id,
        "line_items": {"additions": [{"id": 1, "delta": 1}], "removals": []}}});
    let edited = tributary::generate::Delivery {
        body: serde_json::to_vec(&edit).unwrap(),
        ..b_upsell.delivery("orders/edited", "b-edited", "b-edited")
    };
    accepted(&p.webhook_url, &edited).await;
    let mut edit_keys = Vec::new();
    read_topic(&p.bootstrap, topics::WEBHOOKS, |m| {
        let envelope = tributary_schemas::WebhookEnvelope::from_avro(m.payload().unwrap()).unwrap();
        if envelope.topic == "orders/edited" {
            edit_keys.push(String::from_utf8_lossy(m.key().unwrap()).into_owned());
        }
    })
    .unwrap();
    assert_eq!(edit_keys, vec![topics::order_key(UPSELL_SHOP, b_upsell.id)]);

    // A restart loses nothing held: the replay rebuilds B from its first record, merges its
    // upsell again, and the idle tick (now short) settles it with its newest version.
    p.restart(|c| c.processor.idle_tick_ms = 300).await;
    eventually(&ch, &row(7_000_000_000_002), "ATTRIBUTED,kemi,75").await;
    eventually(&ch, &row(7_000_000_000_001), "ATTRIBUTED,kemi,130").await;
    eventually(&ch, "SELECT toString(max(revision)) FROM attributions", "1").await;
    assert!(dead_letter_reasons(&p.bootstrap, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_go_to_the_dead_letter_topic_while_the_rest_flows() {
    let p = Pipeline::start("poison", |_| {}).await;
    // Not Avro at all, straight into the topic.
    let producer: FutureProducer = producer_config(&p.bootstrap, Duration::from_secs(5))
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(topics::WEBHOOKS)
                .key("junk")
                .payload(b"{\"not\": \"avro\"}"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    // Signed by Shopify but not an order.
    let mut broken =
        Order::new(3_000_000_000_001, "5.00").delivery("orders/create", "w-broken", "e-broken");
    broken.body = b"{\"id\": 3000000000001, \"created_at\": ".to_vec();
    accepted(&p.webhook_url, &broken).await;
    // Money as a float is refused rather than rounded.
    let mut float =
        Order::new(3_000_000_000_002, "5.00").delivery("orders/create", "w-float", "e-float");
    float.body = String::from_utf8(float.body)
        .unwrap()
        .replace(
            "\"current_total_price\":\"5.00\"",
            "\"current_total_price\":5.0",
        )
        .into_bytes();
    accepted(&p.webhook_url, &float).await;
    let mut fine = Order::new(3_000_000_000_003, "7.00");
    fine.codes = vec!["ANNA10"];
    accepted(
        &p.webhook_url,
        &fine.delivery("orders/create", "w-fine", "e-fine"),
    )
    .await;

    let ch = p.clickhouse();
    eventually_orders(&ch, "1").await;
    assert_eq!(
        order_row(&ch, 3_000_000_000_003).await,
        "ATTRIBUTED,Discount Code,anna,7"
    );
    let mut letters = Vec::new();
    for _ in 0..100 {
        letters.clear();
        read_topic(&p.bootstrap, topics::DEAD_LETTERS, |m| {
            let header = |name: &str| {
                m.headers()
                    .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            let letter = DeadLetter::from_avro(m.payload().unwrap()).unwrap();
            assert_eq!(
                header(dlq_headers::SOURCE_TOPIC).as_deref(),
                Some(topics::WEBHOOKS)
            );
            assert_eq!(
                header(dlq_headers::SOURCE_OFFSET),
                Some(letter.source_offset.to_string())
            );
            letters.push((header(dlq_headers::STAGE).unwrap(), letter.error));
        })
        .unwrap();
        if letters.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    letters.sort();
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0].0, "decode");
    assert!(letters[0].1.contains("single-object"), "{letters:?}");
    assert!(
        letters[1..]
            .iter()
            .all(|(stage, error)| stage == "normalize" && error.contains("not a Shopify order")),
        "{letters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_too_big_to_dead_letter_whole_never_stops_the_pipeline_and_large_orders_get_in() {
    let p = Pipeline::start("sizes", |_| {}).await;
    // Signed by Shopify, not JSON, and (as a dead letter, with the reason) beyond librdkafka's
    // default 1,000,000-byte record: it once stopped the processor for good.
    let mut poison =
        Order::new(3_100_000_000_001, "5.00").delivery("orders/create", "w-poison", "e-poison");
    let mut body = b"not json ".to_vec();
    body.resize(999_830, b'x');
    poison.body = body;
    accepted(&p.webhook_url, &poison).await;
    // A genuine large order: 1.6 MB of line items.
    let mut large = Order::new(3_100_000_000_002, "1200.00");
    large.codes = vec!["ANNA10"];
    let mut large = large.delivery("orders/create", "w-large", "e-large");
    let mut order: serde_json::Value = serde_json::from_slice(&large.body).unwrap();
    order["line_items"] = (0..3_200)
        .map(|i| serde_json::json!({"id": i, "title": "x".repeat(440), "quantity": 1, "price": "0.37"}))
        .collect();
    large.body = serde_json::to_vec(&order).unwrap();
    assert!(large.body.len() > 1_500_000);
    accepted(&p.webhook_url, &large).await;
    // Beyond the body limit: refused for good, with a 4xx that says so.
    let mut huge =
        Order::new(3_100_000_000_003, "5.00").delivery("orders/create", "w-huge", "e-huge");
    huge.body = vec![b' '; p.config.ingest.max_body_bytes + 1];
    assert_eq!(post(&p.webhook_url, &huge).await, 413);
    // And an ordinary order behind them all.
    let mut fine = Order::new(3_100_000_000_004, "7.00");
    fine.codes = vec!["ANNA10"];
    accepted(
        &p.webhook_url,
        &fine.delivery("orders/create", "w-fine", "e-fine"),
    )
    .await;

    let ch = p.clickhouse();
    eventually_orders(&ch, "2").await;
    assert_eq!(
        order_row(&ch, 3_100_000_000_002).await,
        "ATTRIBUTED,Discount Code,anna,1200"
    );
    assert_eq!(
        order_row(&ch, 3_100_000_000_004).await,
        "ATTRIBUTED,Discount Code,anna,7"
    );
    let mut letters = Vec::new();
    read_topic(&p.bootstrap, topics::DEAD_LETTERS, |m| {
        letters.push(DeadLetter::from_avro(m.payload().unwrap()).unwrap());
    })
    .unwrap();
    assert_eq!(letters.len(), 1, "only the poison is dead-lettered");
    assert_eq!(letters[0].stage, "normalize");
    assert!(
        letters[0].payload.len() > 999_830,
        "the whole envelope is kept: {} bytes",
        letters[0].payload.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_and_times_beyond_the_contract_get_one_dead_letter_each_and_the_rest_flows() {
    let p = Pipeline::start("edges", |_| {}).await;
    // An id in [2^63, 2^64): Avro's long cannot carry it.
    let huge_id = Order::new(9_223_372_036_854_775_813, "5.00");
    accepted(
        &p.webhook_url,
        &huge_id.delivery("orders/create", "w-huge-id", "e-huge-id"),
    )
    .await;
    // Year 9999: ClickHouse's DateTime would write it as 0000-00-00 00:00:00.
    let mut far =
        Order::new(3_500_000_000_001, "5.00").delivery("orders/create", "w-9999", "e-9999");
    far.body = String::from_utf8(far.body)
        .unwrap()
        .replace(
            "\"created_at\":\"2025-11-28T12:00:00.000Z\"",
            "\"created_at\":\"9999-12-31T23:59:59Z\"",
        )
        .into_bytes();
    assert!(String::from_utf8_lossy(&far.body).contains("9999-12-31"));
    accepted(&p.webhook_url, &far).await;
    let mut fine = Order::new(3_500_000_000_002, "7.00");
    fine.codes = vec!["ANNA10"];
    accepted(
        &p.webhook_url,
        &fine.delivery("orders/create", "w-edge-fine", "e-edge-fine"),
    )
    .await;

    let ch = p.clickhouse();
    eventually_orders(&ch, "1").await;
    assert_eq!(
        order_row(&ch, 3_500_000_000_002).await,
        "ATTRIBUTED,Discount Code,anna,7"
    );
    let reasons = dead_letter_reasons(&p.bootstrap, 2).await;
    assert_eq!(
        reasons,
        vec![
            "normalize: created_at \"9999-12-31T23:59:59Z\" is outside 1970-01-01 to 2106-02-07, the times the analysts' tables hold".to_owned(),
            "normalize: order id 9223372036854775813 is out of range: ids are at most 2^63 - 1 (Avro's long)".to_owned(),
        ],
        "one dead letter each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_commands_that_cannot_act_say_so_and_do_nothing() {
    let p = Pipeline::start("operator_refusals", |_| {}).await;
    let command = |order_id| {
        OperatorCommand::Attribute(ManualAttribution {
            order_id,
            advocate_identifier: "anna".into(),
            requested_by: "ops".into(),
        })
    };
    // For a store that is not connected, `attribute` queues nothing and says why.
    let refused = tributary_control::files::publish_commands(
        &p.bootstrap,
        &[("nowhere.myshopify.com".into(), command(1))],
    )
    .await
    .expect_err("refused");
    assert!(refused.to_string().contains("not connected"), "{refused}");
    // One queued before its store went away is dead-lettered with the reason, not dropped.
    let envelope = tributary_schemas::WebhookEnvelope::operator_command(
        "gone.myshopify.com",
        &command(2),
        tributary_runtime::kafka::now_ms(),
    );
    let producer: FutureProducer = producer_config(&p.bootstrap, Duration::from_secs(5))
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(topics::WEBHOOKS)
                .key("gone")
                .payload(&envelope.to_avro().unwrap()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        dead_letter_reasons(&p.bootstrap, 1).await,
        vec!["manual: store gone.myshopify.com is not connected; the command was not applied"]
    );
    // A replay of a group nothing uses, or of letters of a stage that does not exist, is refused
    // before it touches anything.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(args)
            .env("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", &p.bootstrap)
            .output()
            .expect("run tributary");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, stderr) = cli(&[
        "replay",
        "--group",
        "tributary-procesor",
        "--topic",
        topics::WEBHOOKS,
        "--from-beginning",
    ]);
    assert!(
        !ok && stderr.contains("its groups: tributary-processor"),
        "{stderr}"
    );
    let (ok, stderr) = cli(&["dlq", "replay", "--stage", "nonsense"]);
    assert!(
        !ok && stderr.contains("no dead-letter stage \"nonsense\""),
        "{stderr}"
    );
    let (ok, stderr) = cli(&[
        "replay",
        "--group",
        "tributary-processor",
        "--topic",
        topics::WEBHOOKS,
        "--from-offset",
        "3",
    ]);
    assert!(
        !ok && stderr.contains("is not PARTITION:OFFSET"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clickhouse_down_for_a_while_then_back_loses_nothing() {
    let switch = clickhouse_switch().await;
    let url = switch.url.clone();
    let p = Pipeline::start("outage", move |c| c.clickhouse.url = url).await;
    let ch = p.clickhouse();
    eventually_orders(&ch, "0").await;
    switch.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let plan = demo_plan(200, 23);
    let report = generate::send(&p.webhook_url, &plan, 16, None).await;
    plan.publish_commands(&p.bootstrap).await.unwrap();
    assert_eq!(report.failed, 0);
    tokio::time::sleep(Duration::from_secs(2)).await; // the sink retries against a dead ClickHouse
    let direct = tributary_sinks::clickhouse::Config {
        url: clickhouse_url(),
        ..p.config.clickhouse.clone()
    }
    .client();
    let during = direct
        .query("SELECT toString(count()) FROM attributions")
        .fetch_all::<String>()
        .await
        .unwrap();
    assert_eq!(
        during,
        vec!["0"],
        "nothing reached ClickHouse while it was down"
    );
    switch.up.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually_orders(&ch, &plan.orders.len().to_string()).await;
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(30)).await;
    assert!(matched, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resets_to_a_time_an_offset_or_the_end() {
    let broker = tributary_runtime::kafka::EmbeddedBroker::start(1, 2).unwrap();
    let bootstrap = broker.bootstrap_servers();
    let producer: FutureProducer = producer_config(&bootstrap, Duration::from_secs(5))
        .create()
        .unwrap();
    let produce = |n: usize| {
        let producer = producer.clone();
        async move {
            for i in 0..n {
                producer
                    .send(
                        FutureRecord::to(topics::WEBHOOKS)
                            .key("k")
                            .partition(0)
                            .payload(&i.to_string()),
                        Duration::from_secs(5),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    produce(5).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = tributary_runtime::kafka::now_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    produce(4).await;

    let group = "operators-test";
    let reset = |to| tributary::replay::reset(&bootstrap, group, topics::WEBHOOKS, to);
    // The embedded broker answers no time lookup; the partition is scanned instead.
    assert_eq!(
        reset(ResetTo::Time(cut)).await.unwrap(),
        vec![(0, 5), (1, 0)]
    );
    let progress =
        tributary_runtime::kafka::GroupProgress::new(&bootstrap, group, topics::WEBHOOKS).unwrap();
    assert_eq!(progress.committed_and_end().unwrap(), (5, 9));
    // Offsets are per partition: the one named moves, the other keeps its commit.
    assert_eq!(
        reset(ResetTo::Offsets(vec![(0, 3)])).await.unwrap(),
        vec![(0, 3), (1, 0)]
    );
    assert_eq!(
        reset(ResetTo::Offsets(vec![(0, 99)])).await.unwrap(),
        vec![(0, 9), (1, 0)]
    );
    assert!(reset(ResetTo::Offsets(vec![(7, 1)])).await.is_err());
    assert_eq!(progress.committed_and_end().unwrap(), (9, 9));
    assert_eq!(
        reset(ResetTo::Beginning).await.unwrap(),
        vec![(0, 0), (1, 0)]
    );
    assert_eq!(reset(ResetTo::End).await.unwrap(), vec![(0, 9), (1, 0)]);
    assert_eq!(progress.committed_and_end().unwrap(), (9, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_pending_at_its_webhook_counts_once_when_a_later_version_shows_it_succeeded() {
    let p = Pipeline::start("pending_refund", |c| c.kafka.partitions = 1).await;
    let ch = p.clickhouse();
    let row = |id: u64| {
        format!("SELECT concat(toString(gross), ',', toString(refunded), ',', toString(net), ',', refund_status, ',', toString(revision)) FROM attributions_current WHERE order_id = {id}")
    };
    let mut order = Order::new(8_300_000_000_001, "100.00");
    order.codes = vec!["ANNA10"];
    accepted(
        &p.webhook_url,
        &order.delivery("orders/create", "q-create", "q-create"),
    )
    .await;
    eventually(&ch, &row(order.id), "100,0,100,NONE,1").await;
    // refunds/create while its one transaction is still pending: nothing is refunded yet.
    let pending = serde_json::json!({"id": 61, "order_id": order.id, "created_at": "2025-11-29T12:00:00Z",
        "transactions": [{"id": 1, "kind": "refund", "status": "pending", "amount": "20.00", "currency": "USD"}]});
    let pending = tributary::generate::Delivery {
        body: serde_json::to_vec(&pending).unwrap(),
        ..order.refund(61, "0.00")
    };
    accepted(&p.webhook_url, &pending).await;
    // A barrier: an order after it in the one partition is in ClickHouse, so the pending refund
    // was read before it.
    let barrier = Order::new(8_300_000_000_002, "1.00");
    accepted(
        &p.webhook_url,
        &barrier.delivery("orders/create", "q-barrier", "q-barrier"),
    )
    .await;
    eventually(&ch, &row(barrier.id), "1,0,1,NONE,1").await;
    assert_eq!(
        order_row_value(&ch, &row(order.id)).await,
        "100,0,100,NONE,1",
        "a pending refund changes nothing"
    );
    // The transaction succeeds: the next version lists the refund as successful, and it counts.
    let mut updated = Order::new(order.id, "80.00");
    updated.codes = vec!["ANNA10"];
    updated.updated_minute = 10;
    let listed = listing_refunds(
        &updated,
        "orders/updated",
        "q-updated",
        "80.00",
        &[(61, "20.00")],
    );
    accepted(&p.webhook_url, &listed).await;
    eventually(&ch, &row(order.id), "100,20,80,PARTIAL,2").await;
    // The pending webhook delivered again, and the refund's success delivered again: once.
    let mut again = pending.clone();
    again.webhook_id = "q-pending-again".into();
    accepted(&p.webhook_url, &again).await;
    accepted(&p.webhook_url, &order.refund(61, "20.00")).await;
    let second_barrier = Order::new(8_300_000_000_003, "1.00");
    accepted(
        &p.webhook_url,
        &second_barrier.delivery("orders/create", "q-barrier-2", "q-barrier-2"),
    )
    .await;
    eventually(&ch, &row(second_barrier.id), "1,0,1,NONE,1").await;
    assert_eq!(
        order_row_value(&ch, &row(order.id)).await,
        "100,20,80,PARTIAL,2"
    );
}

/// The one value `query` returns now.
async fn order_row_value(ch: &clickhouse::Client, query: &str) -> String {
    let rows: Vec<String> = ch.query(query).fetch_all().await.unwrap();
    normalize_decimals(&rows.join("|"))
}
