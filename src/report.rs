//! Per-advocate revenue read back from ClickHouse, beside what the generator expected.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::generate::Expected;

/// (shop, advocate identifier) → (orders, gross) from the `advocate_stats` view.
pub async fn advocate_totals(
    client: &clickhouse::Client,
) -> anyhow::Result<BTreeMap<(String, String), (u64, Decimal)>> {
    let rows: Vec<(String, String, String, String)> = client
        .query(
            "SELECT shop_domain, advocate_identifier, toString(sum(orders)), toString(sum(gross))
             FROM advocate_stats GROUP BY shop_domain, advocate_identifier",
        )
        .fetch_all()
        .await?;
    rows.into_iter()
        .map(|(shop, advocate, orders, gross)| {
            Ok(((shop, advocate), (orders.parse()?, gross.parse()?)))
        })
        .collect()
}

/// The side-by-side table; returns it and whether every row matches.
pub fn compare(
    actual: &BTreeMap<(String, String), (u64, Decimal)>,
    expected: &Expected,
) -> (String, bool) {
    let mut keys: Vec<&(String, String)> =
        actual.keys().chain(expected.per_advocate.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = format!(
        "{:<32} {:<12} {:>8} {:>14} {:>8} {:>14}  {}\n",
        "store", "advocate", "orders", "gross", "expect", "expected gross", ""
    );
    let mut all_match = true;
    for key in keys {
        let got = actual.get(key).copied().unwrap_or_default();
        let want = expected.per_advocate.get(key).copied().unwrap_or_default();
        let same = got.0 == want.0 && got.1.normalize() == want.1.normalize();
        all_match &= same;
        out.push_str(&format!(
            "{:<32} {:<12} {:>8} {:>14} {:>8} {:>14}  {}\n",
            key.0,
            key.1,
            got.0,
            got.1.round_dp(2),
            want.0,
            want.1.round_dp(2),
            if same { "ok" } else { "MISMATCH" }
        ));
    }
    (out, all_match)
}
