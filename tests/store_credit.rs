//! Rewards as Shopify store credit through the real path: webhooks in, the processor's reward
//! ledger, the events stage's repartition by advocate, the store credit stage, and the fake
//! Shopify's customer accounts and transactions. Answers lost after the credit was applied, a
//! stop in the middle of a credit, and a replay of the whole input apply nothing twice.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::Message;

use rust_decimal::Decimal;
use support::*;
use tributary_control::files as control_files;
use tributary_fakes::shopify::{FakeTransaction, Fault};
use tributary_runtime::kafka::{read_topic, reset_group, ResetTo};
use tributary_runtime::secrets::MasterKey;
use tributary_schemas::{topics, AvroRecord, StoreCreditPush, StoreCreditState};

const GROUP: &str = "tributary-store-credit";

/// The demo store with store credit on: auto-approved rewards of 0.1 point per unit of gross,
/// a point worth 0.50 of store credit. Tags and notes stay off so the only Admin API writes are
/// store credit.
async fn turn_on_store_credit(p: &Pipeline) {
    let demo = std::fs::read_to_string(repo_path("deploy/demo/stores.toml")).unwrap();
    let edited = demo
        .replace(
            "features = { order_attribution = true, attribution_rewards = true, order_tags = true, order_notes = true, reward_store_credit = true }",
            "features = { order_attribution = true, attribution_rewards = true, reward_store_credit = true }",
        )
        .replace(
            r#"points = "0.1", auto_approve = false, store_credit_per_point = "1" }"#,
            r#"points = "0.1", auto_approve = true, store_credit_per_point = "0.5" }"#,
        );
    assert_ne!(edited, demo, "the demo stores file changed shape");
    let path = p._dir.path().join("stores.toml");
    std::fs::write(&path, edited).unwrap();
    let key = MasterKey::load(&p.config.secrets.master_key_file).unwrap();
    control_files::load_stores(&p.bootstrap, &path, &key)
        .await
        .unwrap();
    // Zed advocates for the store but has never shopped there.
    let zed = p._dir.path().join("advocates.csv");
    std::fs::write(
        &zed,
        format!("shop_domain,id,identifier,first_name,email,status,codes\n{SHOP},199,zed,Zed,zed@example.org,active,ZED5\n"),
    )
    .unwrap();
    control_files::load_advocates(&p.bootstrap, &zed)
        .await
        .unwrap();
}

/// The demo advocate's customer id in the fake store.
fn customer(p: &Pipeline, email: &str) -> u64 {
    p.shopify
        .customer_id(SHOP, email)
        .unwrap_or_else(|| panic!("{email} is a customer of the demo store"))
}

fn amounts(transactions: &[FakeTransaction]) -> Vec<String> {
    transactions.iter().map(|t| t.amount.to_string()).collect()
}

/// Waits until `customer`'s transactions are `expected` (amounts, oldest first).
async fn transactions_become(p: &Pipeline, customer: u64, expected: &[&str]) {
    let mut seen = Vec::new();
    for _ in 0..300 {
        seen = amounts(&p.shopify.store_credit_transactions(SHOP, customer));
        if seen == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("customer {customer}: transactions {seen:?}, expected {expected:?}");
}

fn writes(p: &Pipeline) -> [u64; 2] {
    let w = p.shopify.writes(SHOP);
    ["storeCreditAccountCredit", "storeCreditAccountDebit"]
        .map(|field| w.get(field).copied().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approved_rewards_become_store_credit_once_through_lost_answers_stops_and_replays() {
    // The stage's pushes on disk: the restart and the replay below read them from the store.
    let mut p = Pipeline::start("store_credit", |c| {
        let dir = c.secrets.master_key_file.with_file_name("state");
        c.store_credit.state_dir = Some(dir.join("store-credit"));
        c.events.state_dir = Some(dir.join("events"));
    })
    .await;
    turn_on_store_credit(&p).await;
    let (anna, bjorn) = (
        customer(&p, "anna@example.org"),
        customer(&p, "bjorn@example.org"),
    );
    // Give the services a moment to see the new store settings.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Anna's credit is applied but Shopify's answer is lost: the client must not send it again
    // blindly, and the stage finds it on the account.
    p.shopify.inject_for(
        SHOP,
        "storeCreditAccountCredit",
        Fault::AppliedAnswerLost,
        1,
    );
    let mut by_anna = Order::new(9_300_000_000_001, "120.00");
    by_anna.codes = vec!["ANNA10"];
    let mut by_bjorn = Order::new(9_300_000_000_002, "60.00");
    by_bjorn.landing_site = "/?ref=bjorn";
    let mut by_zed = Order::new(9_300_000_000_003, "40.00");
    by_zed.codes = vec!["ZED5"];
    for (order, id) in [(&by_anna, "a"), (&by_bjorn, "b"), (&by_zed, "c")] {
        accepted(&p.webhook_url, &order.delivery("orders/create", id, id)).await;
    }
    // 12 points, 6 points: at 0.50 a point.
    transactions_become(&p, anna, &["6.00"]).await;
    transactions_become(&p, bjorn, &["3.00"]).await;
    // Zed is not a customer of the store: the push is dead-lettered with the reason (a replay
    // pushes it once Zed is one).
    let reasons = dead_letter_reasons(&p.bootstrap, 1).await;
    assert_eq!(
        reasons,
        vec![format!(
            "store-credit: {SHOP}: no customer with advocate 199's email"
        )]
    );

    // Half of Anna's order is refunded: half of her reward goes back.
    accepted(&p.webhook_url, &by_anna.refund(1, "60.00")).await;
    transactions_become(&p, anna, &["6.00", "-3.00"]).await;

    // Bjorn spends most of his credit at checkout, then his order is refunded in full: Shopify
    // refuses a debit past the balance, and that answer is final (recorded, dead-lettered).
    p.shopify
        .spend_store_credit(SHOP, bjorn, "USD", Decimal::new(250, 2));
    accepted(&p.webhook_url, &by_bjorn.refund(2, "60.00")).await;
    let reasons = dead_letter_reasons(&p.bootstrap, 2).await;
    assert_eq!(
        reasons,
        [
            format!("store-credit: {SHOP}: TributaryStoreCreditDebit refused: amount: The store credit account does not have sufficient funds."),
            format!("store-credit: {SHOP}: no customer with advocate 199's email"),
        ]
    );

    // The next credit is applied, then Shopify hangs and the service stops before it hears
    // back: the push is left pending, and settled from the account after the restart.
    p.shopify.inject_for(
        SHOP,
        "storeCreditAccountCredit",
        Fault::AppliedThenHang(Duration::from_secs(60)),
        1,
    );
    let mut again_anna = Order::new(9_300_000_000_004, "80.00");
    again_anna.codes = vec!["anna-summer"];
    accepted(
        &p.webhook_url,
        &again_anna.delivery("orders/create", "d", "d"),
    )
    .await;
    transactions_become(&p, anna, &["6.00", "-3.00", "4.00"]).await;
    p.stop().await;
    p.start_again(|_| {}).await;
    p.drained(GROUP, topics::REWARDS_BY_ADVOCATE).await;
    assert_eq!(writes(&p), [3, 1]);

    // An operator replays the stage's whole input: every push already has an outcome.
    p.stop().await;
    reset_group(
        &p.bootstrap,
        GROUP,
        topics::REWARDS_BY_ADVOCATE,
        ResetTo::Beginning,
    )
    .unwrap();
    p.start_again(|_| {}).await;
    p.drained(GROUP, topics::REWARDS_BY_ADVOCATE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(writes(&p), [3, 1], "credits and debits made, each once");
    assert_eq!(
        amounts(&p.shopify.store_credit_transactions(SHOP, anna)),
        ["6.00", "-3.00", "4.00"]
    );
    assert_eq!(
        p.shopify.store_credit(SHOP, anna).get("USD"),
        Some(&Decimal::new(700, 2))
    );
    assert_eq!(
        amounts(&p.shopify.store_credit_transactions(SHOP, bjorn)),
        ["3.00", "-2.50"]
    );

    // The changelog ends every push with its outcome: the stopped one too, with the
    // transaction found on the account; Zed's has none, it was never sent.
    let mut last: BTreeMap<String, StoreCreditPush> = BTreeMap::new();
    read_topic(&p.bootstrap, topics::STORE_CREDITS, |m| {
        let push = StoreCreditPush::from_avro(m.payload().unwrap()).unwrap();
        last.insert(push.entry_id.clone(), push);
    })
    .unwrap();
    let outcomes: Vec<(u64, StoreCreditState, String, bool)> = last
        .values()
        .map(|p| {
            (
                p.order_id,
                p.state,
                p.amount.to_string(),
                p.transaction_id.is_some(),
            )
        })
        .collect();
    use StoreCreditState::{Applied, Refused};
    assert_eq!(
        outcomes,
        [
            (9_300_000_000_001, Applied, "6.00".into(), true),
            (9_300_000_000_001, Applied, "3.00".into(), true),
            (9_300_000_000_002, Applied, "3.00".into(), true),
            (9_300_000_000_002, Refused, "3.00".into(), false),
            (9_300_000_000_004, Applied, "4.00".into(), true),
        ]
    );
    let anna_ids: Vec<String> = p
        .shopify
        .store_credit_transactions(SHOP, anna)
        .into_iter()
        .map(|t| t.id)
        .collect();
    let pushed_ids: Vec<String> = last
        .values()
        .filter(|p| p.advocate_id == "101")
        .filter_map(|p| p.transaction_id.clone())
        .collect();
    assert_eq!(pushed_ids, anna_ids, "each push names its own transaction");
    let state = p.config.secrets.master_key_file.with_file_name("state");
    for file in ["store-credit/store_credit.redb", "events/events.redb"] {
        assert!(state.join(file).exists(), "{file} written");
    }
}
