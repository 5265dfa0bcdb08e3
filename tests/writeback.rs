//! Shopify writeback through the real path: webhooks in, the processor's attributions, the
//! writeback sink, and the fake Shopify Admin API's orders and write counts.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::Message;
use support::*;
use tributary_fakes::shopify::{FakeOrder, Fault};
use tributary_runtime::kafka::read_topic;
use tributary_schemas::{topics, ManualAttribution, OperatorCommand};

fn tags(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|t| t.to_string()).collect()
}

/// Waits until the fake's order `id` carries `tag`.
async fn tagged(p: &Pipeline, id: u64, tag: &str) -> FakeOrder {
    for _ in 0..300 {
        if let Some(order) = p.shopify.order(SHOP, id).filter(|o| o.tags.contains(tag)) {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "order {id} never got {tag}: {:?}",
        p.shopify.order(SHOP, id)
    );
}

fn block(name: &str, identifier: &str, source: &str, code: &str) -> String {
    format!("--- tributary ---\nAdvocate: {name} ({identifier})\nSource: {source}\nCode: {code}\nLink: https://{SHOP}/?ref={identifier}\n--- /tributary ---")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attributed_orders_get_tags_and_a_note_once_beside_the_merchants_own() {
    let p = Pipeline::start("writeback", |_| {}).await;
    let (by_code_id, by_link_id, plain_id) =
        (9_100_000_000_001, 9_100_000_000_002, 9_100_000_000_003);
    p.shopify.put_order(
        SHOP,
        by_code_id,
        FakeOrder {
            note: Some("Leave at the back door.".into()),
            tags: tags(&["VIP"]),
        },
    );
    let mut by_code = Order::new(by_code_id, "120.00");
    by_code.codes = vec!["ANNA10"];
    let mut by_link = Order::new(by_link_id, "60.00");
    by_link.landing_site = "/products/tent?ref=bjorn";
    let plain = Order::new(plain_id, "30.00");
    // Shopify misbehaves on the way; the writes still land once.
    p.shopify.inject(SHOP, Fault::Throttled, 2);
    p.shopify.inject(SHOP, Fault::ServerError, 1);
    for (order, id) in [(&by_code, "c"), (&by_link, "l"), (&plain, "p")] {
        accepted(&p.webhook_url, &order.delivery("orders/create", id, id)).await;
    }
    // A redelivery changes nothing.
    accepted(&p.webhook_url, &by_code.delivery("orders/create", "c", "c")).await;

    let order = tagged(&p, by_code_id, "tributary:advocate:anna").await;
    assert_eq!(
        order.tags,
        tags(&["VIP", "tributary", "tributary:advocate:anna"])
    );
    assert_eq!(
        order.note.as_deref(),
        Some(
            format!(
                "Leave at the back door.\n\n{}",
                block("Anna", "anna", "Discount Code", "ANNA10")
            )
            .as_str()
        )
    );
    let order = tagged(&p, by_link_id, "tributary:advocate:bjorn").await;
    assert_eq!(
        order.note.as_deref(),
        Some(block("Bjorn", "bjorn", "Landing Site", "none").as_str())
    );
    p.drained("tributary-writeback", topics::ATTRIBUTIONS).await;
    assert_eq!(
        p.shopify.order(SHOP, plain_id),
        None,
        "an unattributed order is never touched"
    );
    let writes = |p: &Pipeline| {
        let w = p.shopify.writes(SHOP);
        [w.get("tagsAdd"), w.get("tagsRemove"), w.get("orderUpdate")]
            .map(|n| n.copied().unwrap_or(0))
    };
    assert_eq!(writes(&p), [2, 0, 2]);

    // A refund is a new revision of the order with nothing new for Shopify.
    accepted(&p.webhook_url, &by_code.refund(1, "20.00")).await;
    let ch = p.clickhouse();
    eventually(
        &ch,
        &format!(
            "SELECT toString(refunded) FROM attributions_current WHERE order_id = {by_code_id}"
        ),
        "20",
    )
    .await;
    p.drained("tributary-writeback", topics::ATTRIBUTIONS).await;
    assert_eq!(writes(&p), [2, 0, 2]);

    // The merchant rewrites their part of the note; then an operator moves the order to chidi
    // (a manual attribution credits no code).
    let mut edited = p.shopify.order(SHOP, by_code_id).unwrap();
    edited.note = edited.note.map(|n| n.replace("back door", "front door"));
    p.shopify.put_order(SHOP, by_code_id, edited);
    let command = OperatorCommand::Attribute(ManualAttribution {
        order_id: by_code_id,
        advocate_identifier: "chidi".into(),
        requested_by: "ops@example.org".into(),
    });
    tributary_control::files::publish_commands(&p.bootstrap, &[(SHOP.to_owned(), command)])
        .await
        .unwrap();
    let order = tagged(&p, by_code_id, "tributary:advocate:chidi").await;
    assert_eq!(
        order.tags,
        tags(&["VIP", "tributary", "tributary:advocate:chidi"])
    );
    assert_eq!(
        order.note.as_deref(),
        Some(
            format!(
                "Leave at the front door.\n\n{}",
                block("Chidi", "chidi", "Manual", "none")
            )
            .as_str()
        )
    );
    p.drained("tributary-writeback", topics::ATTRIBUTIONS).await;
    assert_eq!(writes(&p), [3, 1, 3]);
    assert_eq!(p.shopify.redundant_writes(SHOP), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_token_dead_letters_the_order_and_the_token_is_never_in_a_topic() {
    let p = Pipeline::start("writeback_refused", |_| {}).await;
    // The merchant revoked the app's token in Shopify.
    p.shopify.set_access_token(SHOP, "shpat_rotated_elsewhere");
    let mut order = Order::new(9_100_000_000_011, "45.00");
    order.codes = vec!["DARA5"];
    accepted(&p.webhook_url, &order.delivery("orders/create", "r", "r")).await;
    let reasons = dead_letter_reasons(&p.bootstrap, 1).await;
    assert_eq!(
        reasons,
        vec![format!(
            "writeback: {SHOP}: the access token was refused (HTTP 401)"
        )]
    );
    assert_eq!(p.shopify.writes(SHOP).len(), 0);
    // The token is sealed in the stores topic and appears in no record of any topic.
    for topic in topics::ALL {
        read_topic(&p.bootstrap, topic.name, |m| {
            let bytes = [m.key().unwrap_or_default(), m.payload().unwrap_or_default()].concat();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(ADMIN_TOKEN),
                "the Admin token is in {}",
                topic.name
            );
        })
        .unwrap();
    }
}
