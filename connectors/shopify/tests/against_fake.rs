//! The Admin client against the fake Shopify: throttling, every failure it recovers from, and the
//! errors it hands back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tributary_fakes::shopify::{FakeShopify, Fault, ShopSetup};
use tributary_shopify::operations::{
    order_gid, ORDER_UPDATE_NOTE, SHOP, STORE_CREDIT_CREDIT, STORE_CREDIT_DEBIT, TAGS_ADD,
};
use tributary_shopify::{AdminClient, AdminConfig, AdminError, StoreAccess};

const SHOP_DOMAIN: &str = "fake-store.myshopify.com";
const TOKEN: &str = "shpat_planted_token_5f1e";

async fn fake(bucket_size: f64, restore_rate: f64) -> FakeShopify {
    let fake = FakeShopify::start(([127, 0, 0, 1], 0).into())
        .await
        .expect("fake Shopify");
    fake.add_shop(ShopSetup {
        bucket_size,
        restore_rate,
        ..ShopSetup::new(SHOP_DOMAIN, TOKEN)
    });
    fake
}

fn client(fake: &FakeShopify, timeout_ms: u64) -> AdminClient {
    AdminClient::new(AdminConfig {
        base_url: Some(fake.base_url()),
        timeout_ms,
        requests_per_second: 1000,
        ..AdminConfig::default()
    })
    .expect("client")
}

const STORE: StoreAccess<'static> = StoreAccess {
    shop_domain: SHOP_DOMAIN,
    access_token: TOKEN,
};

async fn tag(client: &AdminClient, order: u64) -> Result<Value, AdminError> {
    client
        .run(
            STORE,
            &TAGS_ADD,
            json!({"id": order_gid(order), "tags": ["tributary"]}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_bucket_waits_for_the_refill_and_applies_each_write_once() {
    // 50 points restoring 100/s; 20 mutations of 10 points need at least 1.5 s of refill.
    let fake = fake(50.0, 100.0).await;
    let client = client(&fake, 5_000);
    let started = Instant::now();
    let results = concurrent_tags(&client, 20).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(fake.writes(SHOP_DOMAIN).get("tagsAdd"), Some(&20));
    let (requests, throttled) = fake.requests(SHOP_DOMAIN);
    assert_eq!(
        requests,
        20 + throttled,
        "each THROTTLED answer is retried once more"
    );
}

/// `n` tag writes at once, as the writeback sink makes them.
async fn concurrent_tags(client: &AdminClient, n: u64) -> Vec<Result<Value, AdminError>> {
    futures::future::join_all((1..=n).map(|order| tag(client, order))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_429_5xx_and_a_hang_are_retried_until_the_write_lands_once() {
    let fake = fake(1000.0, 50.0).await;
    let client = client(&fake, 500);
    fake.inject(SHOP_DOMAIN, Fault::Throttled, 2);
    fake.inject(SHOP_DOMAIN, Fault::TooManyRequests { retry_after_s: 1 }, 1);
    fake.inject(SHOP_DOMAIN, Fault::ServerError, 2);
    fake.inject(SHOP_DOMAIN, Fault::Hang(Duration::from_secs(3)), 1);
    let started = Instant::now();
    tag(&client, 7).await.expect("recovered");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(fake.requests(SHOP_DOMAIN).0, 7, "6 faults, then the write");
    assert_eq!(fake.writes(SHOP_DOMAIN).get("tagsAdd"), Some(&1));
    assert!(fake
        .order(SHOP_DOMAIN, 7)
        .unwrap()
        .tags
        .contains("tributary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_a_refused_token_and_a_store_that_stays_down_are_clear_errors() {
    let fake = fake(1000.0, 50.0).await;
    let client = client(&fake, 500);
    let too_long = "x".repeat(5001);
    let refused = client
        .run::<Value>(
            STORE,
            &ORDER_UPDATE_NOTE,
            json!({"id": order_gid(9), "note": too_long}),
        )
        .await
        .expect_err("a note past 5,000 characters is refused");
    assert!(
        matches!(&refused, AdminError::UserErrors { errors, .. } if errors[0].message.contains("too long")),
        "{refused}"
    );

    let wrong = StoreAccess {
        shop_domain: SHOP_DOMAIN,
        access_token: "shpat_wrong_planted_9c2",
    };
    let error = client
        .run::<Value>(wrong, &SHOP, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        AdminError::Unauthorized { status: 401, .. }
    ));
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("planted"), "{shown}");

    let unknown = StoreAccess {
        shop_domain: "nobody.myshopify.com",
        access_token: TOKEN,
    };
    let error = client
        .run::<Value>(unknown, &SHOP, json!({}))
        .await
        .unwrap_err();
    assert!(matches!(error, AdminError::UnknownStore { .. }), "{error}");

    let client = AdminClient::new(AdminConfig {
        base_url: Some(fake.base_url()),
        max_attempts: 3,
        ..AdminConfig::default()
    })
    .unwrap();
    fake.inject(SHOP_DOMAIN, Fault::ServerError, 3);
    let error = tag(&client, 10).await.unwrap_err();
    assert!(
        matches!(&error, AdminError::GaveUp { attempts: 3, last, .. } if last == "HTTP 503"),
        "{error}"
    );
    assert_eq!(fake.writes(SHOP_DOMAIN).get("tagsAdd"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_credit_that_may_have_landed_is_never_sent_again() {
    let fake = fake(1000.0, 50.0).await;
    fake.add_customer(SHOP_DOMAIN, 42, "ada@example.org");
    let client = client(&fake, 500);
    let credit = |amount: &str| json!({"id": "gid://shopify/Customer/42", "amount": amount, "currency": "EUR"});
    // THROTTLED and 429 were refused before anything ran: repeated, and the credit lands once.
    fake.inject(SHOP_DOMAIN, Fault::Throttled, 1);
    fake.inject(SHOP_DOMAIN, Fault::TooManyRequests { retry_after_s: 0 }, 1);
    client
        .run::<Value>(STORE, &STORE_CREDIT_CREDIT, credit("5.00"))
        .await
        .expect("credited");
    // A 503 after the credit ran, and a hang past the timeout: the client reports the doubt
    // and sends nothing more.
    for fault in [
        Fault::AppliedAnswerLost,
        Fault::AppliedThenHang(Duration::from_secs(2)),
    ] {
        fake.inject(SHOP_DOMAIN, fault, 1);
        let error = client
            .run::<Value>(STORE, &STORE_CREDIT_CREDIT, credit("1.50"))
            .await
            .unwrap_err();
        assert!(matches!(error, AdminError::InDoubt { .. }), "{error}");
    }
    assert_eq!(
        fake.store_credit(SHOP_DOMAIN, 42)
            .get("EUR")
            .map(ToString::to_string),
        Some("8.00".to_string()),
        "each credit applied exactly once"
    );
    assert_eq!(
        fake.writes(SHOP_DOMAIN).get("storeCreditAccountCredit"),
        Some(&3)
    );
    // A debit past the balance is Shopify's user error, surfaced with its message.
    let error = client
        .run::<Value>(STORE, &STORE_CREDIT_DEBIT, credit("9.00"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, AdminError::UserErrors { errors, .. } if errors[0].message.contains("sufficient funds")),
        "{error}"
    );
}
