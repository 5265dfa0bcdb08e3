//! The `attributions` and `reward_ledger` rows in RowBinary: Decimal(18, 4) is an i64 of
//! ten-thousandths, DateTime is u32 seconds.

use clickhouse::Row;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tributary_schemas::{enum_label as label, Attribution, RewardEntry};

pub const MONEY_SCALE: u32 = 4;

#[derive(Debug, Clone, Row, Serialize)]
pub struct AttributionRow {
    pub shop_domain: String,
    pub order_id: u64,
    pub revision: u64,
    pub order_name: String,
    pub created_at: u32,
    pub latest_updated_at: u32,
    pub settled_updated_at: u32,
    pub financial_status: String,
    pub cancelled: u8,
    pub outcome: String,
    pub source: String,
    pub reason: String,
    pub advocate_id: String,
    pub advocate_identifier: String,
    pub code: String,
    pub customer_email: String,
    pub customer_id: u64,
    pub currency: String,
    pub gross: i64,
    pub presentment_currency: String,
    pub presentment_gross: i64,
    pub refunded: i64,
    pub net: i64,
    pub refund_status: String,
    /// Since migration 2.
    pub refund_ids: Vec<String>,
}

#[derive(Debug, Clone, Row, Serialize)]
pub struct RewardRow {
    pub shop_domain: String,
    pub entry_id: String,
    pub request_id: String,
    pub order_id: u64,
    pub kind: String,
    pub advocate_id: String,
    pub advocate_identifier: String,
    pub points: i64,
    pub reason: String,
    pub at: u32,
}

impl RewardRow {
    pub fn new(order: &Attribution, entry: &RewardEntry) -> Self {
        Self {
            shop_domain: order.shop_domain.clone(),
            entry_id: entry.entry_id.clone(),
            request_id: entry.request_id.clone(),
            order_id: order.order_id,
            kind: label(&entry.kind),
            advocate_id: entry.advocate_id.clone(),
            advocate_identifier: entry.advocate_identifier.clone(),
            points: money(entry.points),
            reason: entry.reason.clone(),
            at: seconds(entry.at_ms),
        }
    }
}

/// Decimal(18, 4) mantissa. Amounts beyond ±922 trillion saturate rather than wrap.
pub fn money(value: Decimal) -> i64 {
    let mut scaled = value;
    scaled.rescale(MONEY_SCALE);
    i64::try_from(scaled.mantissa()).unwrap_or(if value.is_sign_negative() {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn seconds(ms: i64) -> u32 {
    u32::try_from(ms.div_euclid(1000)).unwrap_or(0)
}

impl From<&Attribution> for AttributionRow {
    fn from(a: &Attribution) -> Self {
        Self {
            shop_domain: a.shop_domain.clone(),
            order_id: a.order_id,
            revision: a.revision,
            order_name: a.order_name.clone(),
            created_at: seconds(a.created_at_ms),
            latest_updated_at: seconds(a.latest_updated_at_ms),
            settled_updated_at: seconds(a.settled_updated_at_ms),
            financial_status: a.financial_status.clone().unwrap_or_default(),
            cancelled: a.cancelled.into(),
            outcome: label(&a.outcome),
            source: a.source.label().to_owned(),
            reason: a.reason.clone(),
            advocate_id: a.advocate_id.clone().unwrap_or_default(),
            advocate_identifier: a.advocate_identifier.clone().unwrap_or_default(),
            code: a.code.clone().unwrap_or_default(),
            customer_email: a.customer_email.clone().unwrap_or_default(),
            customer_id: a.customer_id.unwrap_or_default(),
            currency: a.currency.clone(),
            gross: money(a.gross),
            presentment_currency: a.presentment_currency.clone(),
            presentment_gross: money(a.presentment_gross),
            refunded: money(a.refunded),
            net: money(a.net),
            refund_status: label(&a.refund_status),
            refund_ids: a.refund_ids.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn money_is_exact_ten_thousandths() {
        assert_eq!(money(Decimal::from_str("1234.56").unwrap()), 12_345_600);
        assert_eq!(money(Decimal::from_str("0.001").unwrap()), 10);
        assert_eq!(money(Decimal::ZERO), 0);
    }
}

/// An attributed order as the CSV export reads it from `attributions FINAL` (see
/// [`super::queries::attributed_orders_for_export`]).
#[derive(Debug, Clone, Row, Deserialize)]
pub struct ExportRow {
    pub shop_domain: String,
    pub order_id: u64,
    pub order_name: String,
    /// Seconds since the epoch, UTC.
    pub created_at: u32,
    pub customer_email: String,
    pub advocate_identifier: String,
    pub source: String,
    pub code: String,
    pub currency: String,
    /// Ten-thousandths of the shop currency ([`MONEY_SCALE`]).
    pub gross: i64,
    pub refunded: i64,
    pub net: i64,
    pub refund_status: String,
}
