//! Dedup: a delivery changes an order's result at most once.
//!
//! Two guards, in this order:
//! - the order's recent deliveries: the same `X-Shopify-Webhook-Id` (a redelivery) or the same
//!   `X-Shopify-Event-Id` (one merchant action delivered again under a new webhook id) is dropped;
//! - the version order: a payload whose (`updated_at`, `X-Shopify-Triggered-At`) is not newer than
//!   the one held is stale and changes nothing. This also covers a duplicate older than the window,
//!   a reconciled copy of a version already seen, and a replayed topic.

use tributary_schemas::{OrderEvent, OrderVersion};

/// How many delivery ids an order remembers; older duplicates are caught by the version order.
pub const DELIVERY_WINDOW: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fresh,
    DuplicateWebhook,
    DuplicateEvent,
    Stale,
    /// A refund id already counted.
    DuplicateRefund,
    /// A refund none of whose transactions has succeeded yet (pending): not counted, so that the
    /// record showing them successful (a later order version listing it) counts it.
    RefundNotSettled,
}

impl Verdict {
    /// A record already applied, as opposed to a version older than the one held.
    pub fn is_duplicate(self) -> bool {
        matches!(
            self,
            Self::DuplicateWebhook | Self::DuplicateEvent | Self::DuplicateRefund
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::DuplicateWebhook => "duplicate_webhook_id",
            Self::DuplicateEvent => "duplicate_event_id",
            Self::Stale => "stale_version",
            Self::DuplicateRefund => "duplicate_refund",
            Self::RefundNotSettled => "refund_not_settled",
        }
    }
}

fn webhook_tag(id: &str) -> String {
    format!("w:{id}")
}

fn event_tag(id: &str) -> String {
    format!("e:{id}")
}

/// Judges `event` against what an order has seen: its recent delivery ids and its newest version.
pub fn judge(recent_delivery_ids: &[String], newest: OrderVersion, event: &OrderEvent) -> Verdict {
    let seen = |tag: String| recent_delivery_ids.contains(&tag);
    if seen(webhook_tag(&event.webhook_id)) {
        Verdict::DuplicateWebhook
    } else if event
        .event_id
        .as_deref()
        .is_some_and(|id| seen(event_tag(id)))
    {
        Verdict::DuplicateEvent
    } else if event.version() <= newest {
        Verdict::Stale
    } else {
        Verdict::Fresh
    }
}

/// Records an applied delivery in the window, dropping the oldest beyond [`DELIVERY_WINDOW`].
pub fn remember(window: &mut Vec<String>, event: &OrderEvent) {
    window.push(webhook_tag(&event.webhook_id));
    if let Some(id) = &event.event_id {
        window.push(event_tag(id));
    }
    trim(window);
}

/// Whether a record with this delivery id (a webhook or a command) was applied recently.
pub fn seen_delivery(window: &[String], webhook_id: &str) -> bool {
    window.contains(&webhook_tag(webhook_id))
}

/// Records an applied delivery id that is not an order version (a command).
pub fn remember_delivery(window: &mut Vec<String>, webhook_id: &str) {
    window.push(webhook_tag(webhook_id));
    trim(window);
}

fn trim(window: &mut Vec<String>) {
    let excess = window.len().saturating_sub(DELIVERY_WINDOW);
    window.drain(..excess);
}
