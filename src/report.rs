//! Per-advocate revenue read back from ClickHouse, beside what the generator expected.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::generate::{AdvocateTotals, Expected};

/// (shop, advocate identifier) → orders, gross and net from the `advocate_stats` view.
pub async fn advocate_totals(
    client: &clickhouse::Client,
) -> anyhow::Result<BTreeMap<(String, String), AdvocateTotals>> {
    let rows: Vec<(String, String, String, String, String)> = client
        .query(
            "SELECT shop_domain, advocate_identifier, toString(sum(orders)), toString(sum(gross)),
                    toString(sum(net))
             FROM advocate_stats GROUP BY shop_domain, advocate_identifier",
        )
        .fetch_all()
        .await?;
    rows.into_iter()
        .map(|(shop, advocate, orders, gross, net)| {
            let totals = AdvocateTotals {
                orders: orders.parse()?,
                gross: gross.parse::<Decimal>()?,
                net: net.parse::<Decimal>()?,
            };
            Ok(((shop, advocate), totals))
        })
        .collect()
}

/// Polls ClickHouse until its totals match `expected` or `within` has passed (the last records
/// may still be on their way); returns the side-by-side table and whether they matched.
pub async fn await_match(
    client: &clickhouse::Client,
    expected: &Expected,
    within: std::time::Duration,
) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let actual = advocate_totals(client).await.unwrap_or_default();
        let (table, matched) = compare(&actual, expected);
        if matched || tokio::time::Instant::now() > deadline {
            return (table, matched);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The side-by-side table; returns it and whether every row matches.
pub fn compare(
    actual: &BTreeMap<(String, String), AdvocateTotals>,
    expected: &Expected,
) -> (String, bool) {
    let mut keys: Vec<&(String, String)> =
        actual.keys().chain(expected.per_advocate.keys()).collect();
    keys.sort();
    keys.dedup();
    let row = |store: &str, advocate: &str, cells: [String; 6], verdict: &str| {
        format!(
            "{store:<30} {advocate:<8} {:>7} {:>12} {:>12} {:>7} {:>12} {:>12}  {verdict}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
        )
    };
    let header = ["orders", "gross", "net", "expect", "exp. gross", "exp. net"].map(String::from);
    let mut out = row("store", "advocate", header, "");
    let mut all_match = true;
    for key in keys {
        let got = actual.get(key).copied().unwrap_or_default();
        let want = expected.per_advocate.get(key).copied().unwrap_or_default();
        let same = got.same_as(&want);
        all_match &= same;
        let cells = [got, want].map(|t| {
            [
                t.orders.to_string(),
                t.gross.round_dp(2).to_string(),
                t.net.round_dp(2).to_string(),
            ]
        });
        let [[a, b, c], [d, e, f]] = cells;
        out.push_str(&row(
            &key.0,
            &key.1,
            [a, b, c, d, e, f],
            if same { "ok" } else { "MISMATCH" },
        ));
    }
    (out, all_match)
}
