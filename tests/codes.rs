//! Discount codes through the real path: `tributary codes mint` and auto-mint against the fake
//! Shopify, the advocates control topic, and attribution with a freshly minted code.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;
use support::*;
use tributary_control::files::{self as control_files, StoresFile};
use tributary_runtime::kafka::read_topic;
use tributary_runtime::secrets::MasterKey;
use tributary_schemas::topics::{self, advocate_key};
use tributary_schemas::{Advocate, AdvocateStatus, Alert, AlertStatus, AvroRecord};
use tributary_sinks::shopify::codes::{code_for_attempt, AdvocateNames};

const PATTERN: &str = "{{advocate_identifier}}-{{random_hex_4}}";
const TEMPLATE: &str = "gid://shopify/DiscountCodeNode/1001";

fn advocate(n: usize) -> Advocate {
    Advocate {
        shop_domain: SHOP.into(),
        id: format!("9{n:04}"),
        identifier: format!("fan{n}"),
        first_name: format!("Fan {n}"),
        email: format!("fan{n}@example.org"),
        status: AdvocateStatus::Active,
        codes: vec![],
        updated_at_ms: 1,
    }
}

fn attempt_code(advocate: &Advocate, attempt: usize) -> String {
    let names = AdvocateNames {
        identifier: &advocate.identifier,
        first_name: &advocate.first_name,
    };
    let seed = format!("{}/{}", advocate.shop_domain, advocate.id);
    code_for_attempt(PATTERN, names, &seed, attempt).unwrap()
}

/// Runs `tributary codes <args>` against the pipeline's broker and fake Shopify; its stdout.
fn codes_cli(p: &Pipeline, args: &[&str]) -> String {
    let output = p
        .cli(&["codes"])
        .args(args)
        .output()
        .expect("tributary codes");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The newest record per advocate id of the store, from the advocates topic.
fn advocates_topic(bootstrap: &str) -> BTreeMap<String, Advocate> {
    let mut latest = BTreeMap::new();
    read_topic(bootstrap, topics::ADVOCATES, |m| {
        if let Some(Ok(a)) = m.payload().map(Advocate::from_avro) {
            if a.shop_domain == SHOP {
                latest.insert(a.id.clone(), a);
            }
        }
    })
    .unwrap();
    latest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_mint_skips_after_five_collisions_recognises_its_own_codes_and_reruns_create_nothing()
{
    let p = Pipeline::start("codes_bulk", |_| {}).await;
    // 300 advocates without a code: two bulk creations (at most 250 codes each).
    let fans: Vec<Advocate> = (1..=300).map(advocate).collect();
    // fan1: every one of its five codes is already another discount's.
    for attempt in 0..5 {
        p.shopify.take_code(
            SHOP,
            &attempt_code(&fans[0], attempt),
            "gid://shopify/DiscountCodeNode/7",
        );
    }
    // fan2: its first code is taken elsewhere, so it gets its second.
    p.shopify.take_code(
        SHOP,
        &attempt_code(&fans[1], 0),
        "gid://shopify/DiscountCodeNode/7",
    );
    // fan3: an earlier run created its code on the template, then stopped before publishing it.
    p.shopify
        .take_code(SHOP, &attempt_code(&fans[2], 0), TEMPLATE);
    let records: Vec<(String, Advocate)> = fans
        .iter()
        .map(|a| (advocate_key(SHOP, &a.id), a.clone()))
        .collect();
    control_files::publish(&p.bootstrap, topics::ADVOCATES, &records)
        .await
        .unwrap();
    assert!(codes_cli(&p, &["stats", "--shop", SHOP]).contains("6        300"));

    let out = codes_cli(&p, &["mint", "--shop", SHOP]);
    assert!(out.contains("minted 299 code(s)"), "{out}");
    assert!(
        out.contains("skipped 1")
            && out.contains("skipped fan1: 5 codes for advocate fan1 were all taken"),
        "{out}"
    );
    let codes = p.shopify.codes(SHOP);
    let on_template = codes.values().filter(|d| *d == TEMPLATE).count();
    assert_eq!(on_template, 299, "298 new codes and fan3's earlier one");
    let latest = advocates_topic(&p.bootstrap);
    assert_eq!(latest["90002"].codes, vec![attempt_code(&fans[1], 1)]);
    assert_eq!(latest["90003"].codes, vec![attempt_code(&fans[2], 0)]);
    assert!(latest["90001"].codes.is_empty());
    let mut alerts = Vec::new();
    read_topic(&p.bootstrap, topics::ALERTS, |m| {
        alerts.extend(m.payload().map(Alert::from_avro).and_then(Result::ok))
    })
    .unwrap();
    assert_eq!(
        alerts.len(),
        299 + 1,
        "an archive per minted advocate and one open alert"
    );
    let open: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Open)
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].alert_id, format!("{SHOP}/CODE_NOT_MINTED/90001"));
    assert!(codes_cli(&p, &["stats", "--shop", SHOP]).contains("305          1"));

    // A minted code attributes at once.
    let mut order = Order::new(9_200_000_000_001, "75.00");
    let fresh = attempt_code(&fans[99], 0).to_lowercase();
    order.codes = vec![Box::leak(fresh.into_boxed_str())];
    accepted(&p.webhook_url, &order.delivery("orders/create", "f", "f")).await;
    eventually(
        &p.clickhouse(),
        &format!("SELECT concat(advocate_identifier, ',', source) FROM attributions_current WHERE order_id = {}", order.id),
        "fan100,Discount Code",
    )
    .await;

    // Again: nothing new is created (fan1 is tried and skipped again).
    let out = codes_cli(&p, &["mint", "--shop", SHOP]);
    assert!(
        out.contains("minted 0 code(s)") && out.contains("skipped 1"),
        "{out}"
    );
    assert_eq!(p.shopify.codes(SHOP), codes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_mint_gives_an_activated_advocate_a_code() {
    let p = Pipeline::start("codes_auto", |c| c.writeback.auto_mint_interval_ms = 200).await;
    let mut stores = StoresFile::read(&repo_path("deploy/demo/stores.toml")).unwrap();
    stores.store[0].features.auto_mint_codes = true;
    let key = MasterKey::load(&p.config.secrets.master_key_file).unwrap();
    control_files::publish_stores(&p.bootstrap, &stores.store, &key)
        .await
        .unwrap();
    let mut newcomer = advocate(1);
    newcomer.status = AdvocateStatus::Inactive;
    let publish = |a: Advocate| {
        let bootstrap = p.bootstrap.clone();
        async move {
            control_files::publish(
                &bootstrap,
                topics::ADVOCATES,
                &[(advocate_key(SHOP, &a.id), a)],
            )
            .await
            .unwrap()
        }
    };
    publish(newcomer.clone()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        p.shopify.codes(SHOP).is_empty(),
        "an inactive advocate gets no code"
    );
    newcomer.status = AdvocateStatus::Active;
    publish(newcomer.clone()).await;
    let code = attempt_code(&newcomer, 0);
    for _ in 0..100 {
        if advocates_topic(&p.bootstrap)["90001"].codes == vec![code.clone()] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        advocates_topic(&p.bootstrap)["90001"].codes,
        vec![code.clone()]
    );
    assert_eq!(
        p.shopify.codes(SHOP).get(&code).map(String::as_str),
        Some(TEMPLATE)
    );
}
