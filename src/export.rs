//! `tributary export`: attributed orders as CSV, for finance and for advocates' statements.
//!
//! Read from ClickHouse's current state of each order (`attributions FINAL`, what analysts see),
//! one row per attributed order, in the order of shop, creation time and id. Amounts are the shop
//! currency's, exact (Decimal, at least two places); times are RFC 3339 UTC. The columns follow
//! the brief's list (customer email, code, advocate, source, amount, date, refund status) with
//! the order's identity and all three amounts beside them:
//!
//! `shop_domain, order_id, order_name, created_at, customer_email, advocate, source, code,
//! currency, gross, refunded, net, refund_status`

use anyhow::Context;
use rust_decimal::Decimal;
use tributary_schemas::time::{format_rfc3339_ms, parse_rfc3339_ms};
use tributary_sinks::clickhouse::queries::attributed_orders_for_export;
use tributary_sinks::clickhouse::{ExportRow, MONEY_SCALE};

/// The header row.
pub const COLUMNS: [&str; 13] = [
    "shop_domain",
    "order_id",
    "order_name",
    "created_at",
    "customer_email",
    "advocate",
    "source",
    "code",
    "currency",
    "gross",
    "refunded",
    "net",
    "refund_status",
];

/// Which orders to export.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// One store (its domain), or every store.
    pub shop: Option<String>,
    /// Orders created at or after this RFC 3339 time.
    pub from: Option<String>,
    /// Orders created before this RFC 3339 time.
    pub to: Option<String>,
}

/// Writes the header and every order `request` selects to `out` as CSV (RFC 4180); returns the
/// orders written. Errors: a time that is not RFC 3339, ClickHouse's, and the writer's.
pub async fn write_csv<W: std::io::Write>(
    client: &clickhouse::Client,
    request: &Request,
    out: W,
) -> anyhow::Result<u64> {
    let seconds = |text: &Option<String>, default: u64| -> anyhow::Result<u64> {
        match text.as_deref() {
            None => Ok(default),
            Some(text) => parse_rfc3339_ms(text)
                .map(|ms| ms.max(0) as u64 / 1000)
                .with_context(|| format!("{text:?} is not an RFC 3339 time")),
        }
    };
    let (from_s, to_s) = (
        seconds(&request.from, 0)?,
        seconds(&request.to, u64::from(u32::MAX) + 1)?,
    );
    let shop = request
        .shop
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut rows = attributed_orders_for_export(client, &shop, from_s, to_s)?;
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(COLUMNS)?;
    let mut written = 0u64;
    while let Some(row) = rows.next().await? {
        csv.write_record(record(&row))?;
        written += 1;
    }
    csv.flush()?;
    Ok(written)
}

fn record(row: &ExportRow) -> [String; 13] {
    [
        row.shop_domain.clone(),
        row.order_id.to_string(),
        row.order_name.clone(),
        format_rfc3339_ms(i64::from(row.created_at) * 1000),
        row.customer_email.clone(),
        row.advocate_identifier.clone(),
        row.source.clone(),
        row.code.clone(),
        row.currency.clone(),
        money(row.gross),
        money(row.refunded),
        money(row.net),
        row.refund_status.clone(),
    ]
}

/// A stored amount (ten-thousandths) as text: exact, with at least two decimal places.
fn money(units: i64) -> String {
    let mut amount = Decimal::new(units, MONEY_SCALE).normalize();
    if amount.scale() < 2 {
        amount.rescale(2);
    }
    amount.to_string()
}

#[cfg(test)]
mod tests {
    use super::money;

    #[test]
    fn amounts_are_exact_with_at_least_two_places() {
        assert_eq!(money(1_763_400), "176.34");
        assert_eq!(money(1_000_000), "100.00");
        assert_eq!(money(12_345), "1.2345");
        assert_eq!(money(0), "0.00");
    }
}
