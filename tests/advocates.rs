//! Advocates files: a code moved between advocates stays with its new owner whatever order the
//! records arrive in, and a file that would make a store's advocates ambiguous or unusable is
//! refused whole, with every problem named.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;
use tributary_control::files as control_files;

const HEADER: &str = "shop_domain,id,identifier,first_name,email,status,codes\n";

fn csv(dir: &tempfile::TempDir, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{HEADER}{}\n", lines.join("\n"))).expect("csv");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_code_follows_its_new_advocate_and_ambiguous_files_are_refused() {
    let p = Pipeline::start("advocates", |_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let shop = "demo-outdoors.myshopify.com";
    let alice = format!("{shop},301,alice,Alice,alice@example.org,active,SPRING10");
    let bob = format!("{shop},302,bob,Bob,bob@example.org,active,SPRING10");
    let alice_without = format!("{shop},301,alice,Alice,alice@example.org,active,");
    let load = |path: PathBuf| {
        let bootstrap = p.bootstrap.clone();
        async move { control_files::load_advocates(&bootstrap, &path).await }
    };
    load(csv(&dir, "1.csv", &[&alice])).await.expect("alice");
    // The reproduction: BOB takes the code in the first row, ALICE gives it up in the second.
    load(csv(&dir, "2.csv", &[&bob, &alice_without]))
        .await
        .expect("the code moves");

    // A third claimant, an unknown store and an excluded code are refused, each named.
    let carol = format!("{shop},303,carol,Carol,carol@example.org,active,spring10");
    let error = load(csv(&dir, "3.csv", &[&carol]))
        .await
        .expect_err("refused");
    let text = format!("{error:#}");
    assert!(
        text.contains("302 (bob)") && text.contains("303 (carol)") && text.contains("SPRING10"),
        "{text}"
    );
    let stranger = "unknown.myshopify.com,401,zed,Zed,zed@example.org,active,ZED1";
    let excluded = format!("{shop},402,yan,Yan,yan@example.org,active,holiday25");
    let error = load(csv(&dir, "4.csv", &[stranger, &excluded]))
        .await
        .expect_err("refused");
    let text = format!("{error:#}");
    assert!(
        text.contains("unknown.myshopify.com is not loaded"),
        "{text}"
    );
    assert!(
        text.contains("HOLIDAY25 is one of the store's excluded codes"),
        "{text}"
    );

    // The order with the moved code is Bob's; nothing of the refused files was published.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut order = Order::new(3_300_000_000_001, "20.00");
    order.codes = vec!["SPRING10"];
    accepted(
        &p.webhook_url,
        &order.delivery("orders/create", "w-spring", "e-spring"),
    )
    .await;
    let ch = p.clickhouse();
    eventually_orders(&ch, "1").await;
    assert_eq!(
        order_row(&ch, 3_300_000_000_001).await,
        "ATTRIBUTED,Discount Code,bob,20"
    );
}
