//! Topic names, keys and partitioning: the one place they are defined.
//!
//! | topic | record | key | cleanup |
//! |---|---|---|---|
//! | `shopify.webhooks` | [`WebhookEnvelope`](crate::WebhookEnvelope) | `<shop>/<order id>` (orders/*, refunds/create), else `<shop>` | delete |
//! | `tributary.orders` | [`OrderEvent`](crate::OrderEvent) | `<shop>/<order id>` | delete |
//! | `tributary.attributions` | [`Attribution`](crate::Attribution) | `<shop>/<order id>` | compact |
//! | `tributary.orders_by_customer` | [`Attribution`](crate::Attribution), as in `tributary.attributions` | `<shop>/customer/<id>` (no customer: the order key) | delete |
//! | `tributary.events` | [`CustomerEvent`](crate::CustomerEvent) | as `tributary.orders_by_customer` | delete |
//! | `tributary.rewards_by_advocate` | [`Attribution`](crate::Attribution), as in `tributary.attributions` | `<shop>/<advocate id>`, once per advocate in its reward ledger | delete |
//! | `tributary.store_credits` | [`StoreCreditPush`](crate::StoreCreditPush) | its `entry_id` | compact |
//! | `tributary.control.stores` | [`Store`](crate::Store) | `<shop>` | compact |
//! | `tributary.control.advocates` | [`Advocate`](crate::Advocate) | `<shop>/<advocate id>` | compact |
//! | `tributary.control.teams` | [`Team`](crate::Team) | its `team_id` | compact |
//! | `tributary.alerts` | [`Alert`](crate::Alert) | its `alert_id` | compact |
//! | `tributary.control.reconciliation` | [`Reconciliation`](crate::Reconciliation) | `<shop>` | compact |
//! | `tributary.control.credentials` | [`Credential`](crate::Credential) | `<platform>/<account>` | compact |
//! | `tributary.dlq` | [`DeadLetter`](crate::DeadLetter) | the failed record's key | delete |
//!
//! Partitioning: producers hash keys with `murmur2_random` (the Java client's partitioner, so other
//! clients agree), which puts every delivery of one order on one partition. The processor writes
//! its outputs to the *same partition number* as the input record, so `shopify.webhooks`,
//! `tributary.orders` and `tributary.attributions` must have the same partition count; `tributary
//! topics create` provisions them so. Likewise the events stage writes `tributary.events` to the
//! partition number of its input in `tributary.orders_by_customer`, and the store credit stage
//! writes `tributary.store_credits` to that of its input in `tributary.rewards_by_advocate`.

use serde::Deserialize;

pub const WEBHOOKS: &str = "shopify.webhooks";
pub const ORDERS: &str = "tributary.orders";
pub const ATTRIBUTIONS: &str = "tributary.attributions";
/// Internal: attribution records re-keyed by customer, so one customer's orders meet in one
/// partition (see `processors::customer_events`).
pub const ORDERS_BY_CUSTOMER: &str = "tributary.orders_by_customer";
pub const EVENTS: &str = "tributary.events";
/// Internal: attribution records with reward entries, re-keyed by advocate, so one advocate's
/// store credit is moved by one writer (see `sinks::shopify::store_credit`).
pub const REWARDS_BY_ADVOCATE: &str = "tributary.rewards_by_advocate";
pub const STORE_CREDITS: &str = "tributary.store_credits";
pub const STORES: &str = "tributary.control.stores";
pub const ADVOCATES: &str = "tributary.control.advocates";
pub const DEAD_LETTERS: &str = "tributary.dlq";
pub const ALERTS: &str = "tributary.alerts";
pub const TEAMS: &str = "tributary.control.teams";
/// Each store's reconciliation watermark (see `tributary_ingest::shopify_reconcile`).
pub const RECONCILIATION: &str = "tributary.control.reconciliation";
/// Credentials that expire, with their current tokens (see `tributary_runtime::credentials`).
pub const CREDENTIALS: &str = "tributary.control.credentials";

/// librdkafka's name for the Java client's default partitioner.
pub const PARTITIONER: &str = "murmur2_random";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    Delete,
    Compact,
}

#[derive(Debug, Clone, Copy)]
pub struct TopicSpec {
    pub name: &'static str,
    pub cleanup: Cleanup,
    /// Control topics are small; one partition keeps their order total.
    pub single_partition: bool,
}

pub const ALL: [TopicSpec; 14] = [
    TopicSpec {
        name: WEBHOOKS,
        cleanup: Cleanup::Delete,
        single_partition: false,
    },
    TopicSpec {
        name: ORDERS,
        cleanup: Cleanup::Delete,
        single_partition: false,
    },
    TopicSpec {
        name: ATTRIBUTIONS,
        cleanup: Cleanup::Compact,
        single_partition: false,
    },
    TopicSpec {
        name: ORDERS_BY_CUSTOMER,
        cleanup: Cleanup::Delete,
        single_partition: false,
    },
    TopicSpec {
        name: EVENTS,
        cleanup: Cleanup::Delete,
        single_partition: false,
    },
    TopicSpec {
        name: REWARDS_BY_ADVOCATE,
        cleanup: Cleanup::Delete,
        single_partition: false,
    },
    TopicSpec {
        name: STORE_CREDITS,
        cleanup: Cleanup::Compact,
        single_partition: false,
    },
    TopicSpec {
        name: STORES,
        cleanup: Cleanup::Compact,
        single_partition: true,
    },
    TopicSpec {
        name: ADVOCATES,
        cleanup: Cleanup::Compact,
        single_partition: true,
    },
    TopicSpec {
        name: DEAD_LETTERS,
        cleanup: Cleanup::Delete,
        // Few records; one partition gives operators one offset to replay from.
        single_partition: true,
    },
    TopicSpec {
        name: TEAMS,
        cleanup: Cleanup::Compact,
        single_partition: true,
    },
    TopicSpec {
        name: ALERTS,
        cleanup: Cleanup::Compact,
        single_partition: true,
    },
    TopicSpec {
        name: RECONCILIATION,
        cleanup: Cleanup::Compact,
        single_partition: true,
    },
    TopicSpec {
        name: CREDENTIALS,
        cleanup: Cleanup::Compact,
        single_partition: true,
    },
];

pub fn order_key(shop_domain: &str, order_id: u64) -> String {
    format!("{shop_domain}/{order_id}")
}

/// The key that brings one customer's orders together; an order without a customer is its own.
pub fn customer_key(shop_domain: &str, customer_id: Option<u64>, order_id: u64) -> String {
    match customer_id {
        Some(id) => format!("{shop_domain}/customer/{id}"),
        None => order_key(shop_domain, order_id),
    }
}

/// A store's domain as every key and record holds it: `<name>.myshopify.com`, lowercased and
/// trimmed, where `<name>` is one DNS label (1 to 63 letters, digits and hyphens, not starting or
/// ending with a hyphen), as Shopify assigns them. `None` for anything else (`evil.com`,
/// `x..myshopify.com`, a 5,000-character label).
pub fn shop_domain(input: &str) -> Option<String> {
    let domain = input.trim().to_ascii_lowercase();
    let name = domain.strip_suffix(".myshopify.com")?;
    let valid = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    valid.then_some(domain)
}

pub fn store_key(shop_domain: &str) -> String {
    shop_domain.to_owned()
}

pub fn advocate_key(shop_domain: &str, advocate_id: &str) -> String {
    format!("{shop_domain}/{advocate_id}")
}

/// The key of a webhook delivery: the order it is about, so that all of one order's deliveries
/// share a partition. A body whose order id cannot be read is keyed by shop; the normalizer will
/// dead-letter it with the parse error.
pub fn webhook_key(shopify_topic: &str, shop_domain: &str, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Probe {
        id: Option<u64>,
        order_id: Option<u64>,
        /// `orders/edited` carries only the edit, under this key.
        order_edit: Option<EditProbe>,
    }
    #[derive(Deserialize)]
    struct EditProbe {
        order_id: Option<u64>,
    }
    /// An Admin API `Order` node: its numeric id is `legacyResourceId`, a string of digits.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct NodeProbe {
        legacy_resource_id: String,
    }
    if shopify_topic == crate::WebhookEnvelope::TOPIC_ADMIN_ORDER {
        return match serde_json::from_slice::<NodeProbe>(body)
            .ok()
            .and_then(|n| n.legacy_resource_id.parse::<u64>().ok())
        {
            Some(id) => order_key(shop_domain, id),
            None => store_key(shop_domain),
        };
    }
    let order_id = match serde_json::from_slice::<Probe>(body) {
        Ok(p) if shopify_topic == "orders/edited" => p.order_edit.and_then(|e| e.order_id),
        Ok(p) if shopify_topic.starts_with("orders/") => p.id,
        Ok(p) if shopify_topic.starts_with("refunds/") => p.order_id,
        _ => None,
    };
    match order_id {
        Some(id) => order_key(shop_domain, id),
        None => store_key(shop_domain),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_shop_domain_is_one_label_under_myshopify_com() {
        assert_eq!(
            super::shop_domain(" Demo-Outdoors.myshopify.com "),
            Some("demo-outdoors.myshopify.com".into())
        );
        for bad in [
            "evil.com",
            "x..myshopify.com",
            "a.b.myshopify.com",
            ".myshopify.com",
            "-a.myshopify.com",
        ] {
            assert_eq!(super::shop_domain(bad), None, "{bad}");
        }
        assert_eq!(
            super::shop_domain(&format!("{}.myshopify.com", "a".repeat(5_000))),
            None
        );
    }

    use super::*;

    #[test]
    fn all_deliveries_of_one_order_share_a_key() {
        let created = br#"{"id": 12345678901234567, "total_price": "1.00"}"#;
        let refund = br#"{"id": 5, "order_id": 12345678901234567}"#;
        let k = webhook_key("orders/create", "s.myshopify.com", created);
        assert_eq!(k, "s.myshopify.com/12345678901234567");
        assert_eq!(webhook_key("orders/updated", "s.myshopify.com", created), k);
        assert_eq!(webhook_key("refunds/create", "s.myshopify.com", refund), k);
        let edit =
            br#"{"order_edit": {"id": 78912328, "order_id": 12345678901234567, "line_items": {}}}"#;
        assert_eq!(webhook_key("orders/edited", "s.myshopify.com", edit), k);
        assert_eq!(
            webhook_key("orders/create", "s.myshopify.com", b"not json"),
            "s.myshopify.com"
        );
        assert_eq!(
            webhook_key("products/create", "s.myshopify.com", created),
            "s.myshopify.com"
        );
    }
}
