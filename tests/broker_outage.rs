//! A broker outage: every service stays up, readiness says the broker is gone while it is, and
//! the control tables go on following their topics afterwards (they once froze on the first
//! consumer error: new advocates, stores and secret rotations were ignored until a restart).

mod support;

use std::time::Duration;

use support::*;
use tributary_control::files as control_files;

/// `/readyz`'s status and body.
async fn readiness(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(error) => (0, error.to_string()),
    }
}

async fn until_readiness(url: &str, wanted: u16) -> String {
    for _ in 0..300 {
        let (status, body) = readiness(url).await;
        if status == wanted {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never answered {wanted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_tables_follow_on_after_a_broker_outage_and_readiness_shows_it() {
    let mut p = Pipeline::start("broker_outage", |_| {}).await;
    let ready_url = format!("http://{}/readyz", p.config.ingest.listen);
    assert_eq!(readiness(&ready_url).await.0, 200);

    p._broker.broker_down(1).expect("broker down");
    let waiting = until_readiness(&ready_url, 503).await;
    assert!(waiting.contains("stores topic"), "{waiting}");
    let mut order = Order::new(3_200_000_000_001, "9.00");
    order.codes = vec!["OUTAGE-NEW"];
    let delivery = order.delivery("orders/create", "w-outage", "e-outage");
    assert_eq!(
        post(&p.webhook_url, &delivery).await,
        503,
        "nothing is taken while the broker is away"
    );

    p._broker.broker_up(1).expect("broker up");
    until_readiness(&ready_url, 200).await;

    // An advocate loaded after the outage reaches the processor's table.
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("advocates.csv");
    std::fs::write(
        &csv,
        "shop_domain,id,identifier,first_name,email,status,codes\n\
         demo-outdoors.myshopify.com,190,olive,Olive,olive@example.org,active,OUTAGE-NEW\n",
    )
    .expect("csv");
    control_files::load_advocates(&p.bootstrap, &csv)
        .await
        .expect("advocates load");
    // The followers read it within milliseconds; the margin is for a loaded machine.
    tokio::time::sleep(Duration::from_secs(2)).await;
    accepted(&p.webhook_url, &delivery).await;
    let ch = p.clickhouse();
    eventually_orders(&ch, "1").await;
    assert_eq!(
        order_row(&ch, 3_200_000_000_001).await,
        "ATTRIBUTED,Discount Code,olive,9"
    );
    p.stop().await;
}
