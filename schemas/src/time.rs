//! Timestamps on the wire are epoch milliseconds; Shopify sends RFC 3339.

/// Parses an RFC 3339 time (`2025-01-02T03:04:05.123Z`, `2025-01-02T03:04:05-05:00`) into epoch
/// milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

pub fn format_rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `ms` truncated to the second, as Shopify's `DateTime` scalar writes times
/// (`2019-09-07T15:50:00Z`; shopify.dev/docs/api/admin-graphql/latest/scalars/DateTime).
pub fn format_rfc3339_seconds(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.div_euclid(1000) * 1000)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
