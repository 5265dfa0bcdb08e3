//! The CSV export, end to end: a generated stream through the pipeline into ClickHouse, then
//! `tributary export`; the file's rows add up, per advocate, to the generator's oracle.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use support::*;
use tributary::export::{write_csv, Request, COLUMNS};
use tributary::report::AdvocateTotals;

/// Per (shop, advocate): orders, gross and net summed from CSV rows.
fn totals(csv_text: &[u8]) -> (Vec<String>, BTreeMap<(String, String), AdvocateTotals>) {
    let mut reader = csv::Reader::from_reader(csv_text);
    let header = reader
        .headers()
        .expect("a header")
        .iter()
        .map(str::to_owned)
        .collect();
    let mut out: BTreeMap<(String, String), AdvocateTotals> = BTreeMap::new();
    for row in reader.records() {
        let row = row.expect("a CSV row");
        let amount = |i: usize| row[i].parse::<Decimal>().expect("an exact amount");
        let entry = out
            .entry((row[0].to_owned(), row[5].to_owned()))
            .or_default();
        entry.add(&AdvocateTotals {
            orders: 1,
            gross: amount(9),
            net: amount(11),
            balance: Decimal::ZERO,
        });
        assert!(row[3].ends_with('Z'), "created_at in UTC: {}", &row[3]);
    }
    (header, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_exported_orders_add_up_to_the_oracle_per_advocate() {
    let mut p = Pipeline::start("export", |_| {}).await;
    let plan = demo_plan(150, 43);
    let report = tributary::generate::send(&p.webhook_url, &plan, 16, None).await;
    assert_eq!(report.failed, 0);
    plan.publish_commands(&p.bootstrap).await.unwrap();
    let ch = p.clickhouse();
    let (table, matched) =
        tributary::report::await_match(&ch, &plan.expected, Duration::from_secs(60)).await;
    assert!(matched, "{table}");

    // Every store, through the command.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.csv");
    let output = p
        .cli(&["export", "--output", file.to_str().unwrap()])
        .env("TRIBUTARY_CLICKHOUSE__URL", &p.config.clickhouse.url)
        .env(
            "TRIBUTARY_CLICKHOUSE__DATABASE",
            &p.config.clickhouse.database,
        )
        .output()
        .expect("tributary export");
    assert!(output.status.success(), "{output:?}");
    let (header, exported) = totals(&std::fs::read(&file).unwrap());
    assert_eq!(header, COLUMNS);
    let expected = &plan.expected.per_advocate;
    assert_eq!(
        exported.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (key, want) in expected {
        let got = exported[key];
        assert!(
            got.orders == want.orders
                && got.gross.normalize() == want.gross.normalize()
                && got.net.normalize() == want.net.normalize(),
            "{key:?}: exported {got:?}, expected {want:?}"
        );
    }

    // One store; and a window that holds nothing.
    let mut one = Vec::new();
    let request = Request {
        shop: Some(SHOP.to_uppercase()),
        ..Request::default()
    };
    let written = write_csv(&ch, &request, &mut one).await.unwrap();
    let (_, only) = totals(&one);
    assert!(only.keys().all(|(shop, _)| shop == SHOP));
    let want: u64 = expected
        .iter()
        .filter(|((shop, _), _)| shop == SHOP)
        .map(|(_, t)| t.orders)
        .sum();
    assert_eq!(
        (written, only.values().map(|t| t.orders).sum::<u64>()),
        (want, want)
    );
    let mut none = Vec::new();
    let future = Request {
        from: Some("2100-01-01T00:00:00Z".into()),
        ..Request::default()
    };
    assert_eq!(write_csv(&ch, &future, &mut none).await.unwrap(), 0);
    let bad = Request {
        to: Some("yesterday".into()),
        ..Request::default()
    };
    let error = write_csv(&ch, &bad, Vec::new()).await.unwrap_err();
    assert!(
        error.to_string().contains("not an RFC 3339 time"),
        "{error}"
    );
    p.stop().await;
}
