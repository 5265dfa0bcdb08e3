//! Per-store exclusions, judged on the settled version: a test order, an excluded channel
//! (`source_name`), or an excluded tag. Channels and tags compare case-insensitively.

use tributary_schemas::{OrderEvent, Store};

/// Why the order is excluded, or `None`.
pub fn exclusion_reason(order: &OrderEvent, store: &Store) -> Option<String> {
    if order.test {
        return Some("excluded: test order".to_owned());
    }
    let listed = |list: &[String], value: &str| {
        list.iter()
            .any(|item| item.trim().eq_ignore_ascii_case(value.trim()))
    };
    if let Some(channel) = order
        .source_name
        .as_deref()
        .filter(|c| listed(&store.excluded_channels, c))
    {
        return Some(format!("excluded: channel {channel}"));
    }
    order
        .tags
        .iter()
        .find(|tag| listed(&store.excluded_tags, tag))
        .map(|tag| format!("excluded: tag {tag}"))
}
