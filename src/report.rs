//! Per-advocate revenue and reward balances read back from ClickHouse, beside what the generator
//! expected; pending reward requests.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use tributary_sinks::clickhouse::queries;

#[cfg(feature = "dev")]
use crate::generate::Expected;

/// One advocate's attributed orders, gross and net (after refunds) in shop currency, and reward
/// wallet balance in points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdvocateTotals {
    pub orders: u64,
    pub gross: Decimal,
    pub net: Decimal,
    pub balance: Decimal,
}

impl AdvocateTotals {
    pub fn add(&mut self, other: &AdvocateTotals) {
        self.orders += other.orders;
        self.gross += other.gross;
        self.net += other.net;
        self.balance += other.balance;
    }

    /// Equal to the cent, whatever the decimals' scales.
    pub fn same_as(&self, other: &AdvocateTotals) -> bool {
        self.orders == other.orders
            && self.gross.normalize() == other.gross.normalize()
            && self.net.normalize() == other.net.normalize()
            && self.balance.normalize() == other.balance.normalize()
    }
}

/// (shop, advocate identifier) → orders, gross and net from the `advocate_stats` view, and the
/// wallet balance from `reward_balances`.
pub async fn advocate_totals(
    client: &clickhouse::Client,
) -> anyhow::Result<BTreeMap<(String, String), AdvocateTotals>> {
    let revenue = queries::advocate_revenue(client).await?;
    let mut totals: BTreeMap<(String, String), AdvocateTotals> = BTreeMap::new();
    for (shop, advocate, orders, gross, net) in revenue {
        let entry = totals.entry((shop, advocate)).or_default();
        entry.orders = orders.parse()?;
        entry.gross = gross.parse::<Decimal>()?;
        entry.net = net.parse::<Decimal>()?;
    }
    let balances = queries::reward_balances(client).await?;
    for (shop, advocate, balance) in balances {
        totals.entry((shop, advocate)).or_default().balance = balance.parse::<Decimal>()?;
    }
    Ok(totals)
}

/// The reward requests waiting for approval, as a table.
pub async fn pending_rewards(
    client: &clickhouse::Client,
    shop: Option<&str>,
) -> anyhow::Result<String> {
    let shop = shop.unwrap_or_default().trim().to_ascii_lowercase();
    let rows = queries::pending_rewards(client, &shop).await?;
    let mut out = format!(
        "{:<30} {:>20} {:<12} {:>10}  {}\n",
        "store", "order", "advocate", "points", "requested at (UTC)"
    );
    for (shop, order, advocate, points, at) in &rows {
        out.push_str(&format!(
            "{shop:<30} {order:>20} {advocate:<12} {points:>10}  {at}\n"
        ));
    }
    out.push_str(&format!("{} pending request(s)", rows.len()));
    Ok(out)
}

#[cfg(feature = "dev")]
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

#[cfg(feature = "dev")]
/// The side-by-side table; returns it and whether every row matches.
pub fn compare(
    actual: &BTreeMap<(String, String), AdvocateTotals>,
    expected: &Expected,
) -> (String, bool) {
    let mut keys: Vec<&(String, String)> =
        actual.keys().chain(expected.per_advocate.keys()).collect();
    keys.sort();
    keys.dedup();
    let row = |store: &str, advocate: &str, cells: [String; 8], verdict: &str| {
        format!(
            "{store:<30} {advocate:<8} {:>7} {:>12} {:>12} {:>10} {:>7} {:>12} {:>12} {:>10}  {verdict}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    let header = [
        "orders",
        "gross",
        "net",
        "rewards",
        "expect",
        "exp. gross",
        "exp. net",
        "exp. rew.",
    ]
    .map(String::from);
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
                t.balance.round_dp(2).to_string(),
            ]
        });
        let [[a, b, c, d], [e, f, g, h]] = cells;
        out.push_str(&row(
            &key.0,
            &key.1,
            [a, b, c, d, e, f, g, h],
            if same { "ok" } else { "MISMATCH" },
        ));
    }
    (out, all_match)
}
