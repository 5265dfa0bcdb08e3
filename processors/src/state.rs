//! Per-partition order state. The state of an order *is* its latest [`Attribution`] record: the
//! processor emits the whole record on every change, and after a restart or a rebalance rebuilds a
//! partition by reading `tributary.attributions` (same partition number) to its end. Because output
//! and changelog are one record, they can never disagree.
//!
//! Settling: this version settles an order at its first version (a settle delay of 0). Later
//! versions update the order's latest facts (status, cancellation) but never its gross or its
//! advocate, as the contract says.

use std::collections::HashMap;

use rust_decimal::Decimal;
use tributary_schemas::topics::order_key;
use tributary_schemas::{Attribution, OrderEvent, RefundStatus};

use crate::attribution::Decision;
use crate::dedup::{self, Verdict};

#[derive(Debug, PartialEq)]
pub enum Applied {
    /// The event changed the order; emit this record.
    Changed(Box<Attribution>),
    /// Nothing changed, for this reason (never [`Verdict::Fresh`]).
    Unchanged(Verdict),
}

#[derive(Debug, Default)]
pub struct PartitionState {
    orders: HashMap<String, Attribution>,
}

impl PartitionState {
    /// Rebuilds from changelog records in offset order; the highest revision of each order wins.
    pub fn restore(records: impl IntoIterator<Item = Attribution>) -> Self {
        let mut orders: HashMap<String, Attribution> = HashMap::new();
        for record in records {
            let key = order_key(&record.shop_domain, record.order_id);
            if orders
                .get(&key)
                .is_none_or(|held| held.revision < record.revision)
            {
                orders.insert(key, record);
            }
        }
        Self { orders }
    }

    pub fn len(&self) -> usize {
        self.orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orders.is_empty()
    }

    /// Applies one order event read at `input_offset`. `decide` is asked only when the order
    /// settles.
    pub fn apply(
        &mut self,
        event: &OrderEvent,
        input_offset: i64,
        decide: impl FnOnce() -> Decision,
    ) -> Applied {
        let key = order_key(&event.shop_domain, event.order_id);
        let Some(current) = self.orders.get_mut(&key) else {
            let settled = settle(event, decide(), input_offset);
            self.orders.insert(key, settled.clone());
            return Applied::Changed(Box::new(settled));
        };
        let verdict = dedup::judge(current, event);
        if verdict != Verdict::Fresh {
            return Applied::Unchanged(verdict);
        }
        current.revision += 1;
        current.latest_updated_at_ms = event.updated_at_ms;
        current.latest_triggered_at_ms = event.triggered_at_ms;
        current.financial_status = event.financial_status.clone();
        current.cancelled |= event.cancelled_at_ms.is_some();
        current.net = net(current.gross, current.refunded, current.cancelled);
        current.input_offset = input_offset;
        dedup::remember(&mut current.recent_delivery_ids, event);
        Applied::Changed(Box::new(current.clone()))
    }
}

/// Net is gross minus refunded, never below zero; a cancelled order nets to zero.
pub fn net(gross: Decimal, refunded: Decimal, cancelled: bool) -> Decimal {
    if cancelled {
        Decimal::ZERO
    } else {
        (gross - refunded).max(Decimal::ZERO)
    }
}

fn settle(event: &OrderEvent, decision: Decision, input_offset: i64) -> Attribution {
    let cancelled = event.cancelled_at_ms.is_some();
    let (advocate_id, advocate_identifier) = decision.advocate.unzip();
    let mut recent_delivery_ids = Vec::new();
    dedup::remember(&mut recent_delivery_ids, event);
    Attribution {
        shop_domain: event.shop_domain.clone(),
        order_id: event.order_id,
        revision: 1,
        order_name: event.name.clone(),
        created_at_ms: event.created_at_ms,
        latest_updated_at_ms: event.updated_at_ms,
        latest_triggered_at_ms: event.triggered_at_ms,
        settled_updated_at_ms: event.updated_at_ms,
        financial_status: event.financial_status.clone(),
        cancelled,
        outcome: decision.outcome,
        source: decision.source,
        reason: decision.reason,
        advocate_id,
        advocate_identifier,
        code: decision.code,
        customer_email: event.email.clone(),
        customer_id: event.customer_id,
        currency: event.currency.clone(),
        gross: event.current_total_price,
        presentment_currency: event.presentment_currency.clone(),
        presentment_gross: event.current_total_price_presentment,
        refunded: Decimal::ZERO,
        net: net(event.current_total_price, Decimal::ZERO, cancelled),
        refund_status: RefundStatus::None,
        recent_delivery_ids,
        input_offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_schemas::{AttributionSource, OrderEventKind, Outcome};

    fn decision() -> Decision {
        Decision {
            outcome: Outcome::Attributed,
            source: AttributionSource::DiscountCode,
            reason: "code A".into(),
            advocate: Some(("1".into(), "anna".into())),
            code: Some("A".into()),
        }
    }

    fn event(webhook: &str, event_id: Option<&str>, updated: i64, total: i64) -> OrderEvent {
        OrderEvent {
            kind: OrderEventKind::Updated,
            shop_domain: "s".into(),
            order_id: u64::MAX >> 1,
            webhook_id: webhook.into(),
            event_id: event_id.map(str::to_owned),
            triggered_at_ms: updated,
            created_at_ms: 0,
            updated_at_ms: updated,
            name: "#1".into(),
            email: None,
            customer_id: None,
            currency: "USD".into(),
            current_total_price: total.into(),
            presentment_currency: "USD".into(),
            current_total_price_presentment: total.into(),
            discount_codes: vec![],
            landing_site: None,
            source_name: None,
            tags: vec![],
            test: false,
            financial_status: None,
            fulfillment_status: None,
            cancelled_at_ms: None,
        }
    }

    #[test]
    fn duplicates_and_stale_versions_change_nothing() {
        let mut state = PartitionState::default();
        assert!(matches!(
            state.apply(&event("w1", Some("e1"), 10, 100), 0, decision),
            Applied::Changed(_)
        ));
        let unchanged = |v| Applied::Unchanged(v);
        assert_eq!(
            state.apply(&event("w1", Some("e1"), 10, 100), 1, decision),
            unchanged(Verdict::DuplicateWebhook)
        );
        assert_eq!(
            state.apply(&event("w2", Some("e1"), 10, 100), 2, decision),
            unchanged(Verdict::DuplicateEvent)
        );
        assert_eq!(
            state.apply(&event("w3", None, 9, 50), 3, decision),
            unchanged(Verdict::Stale)
        );
        let Applied::Changed(newer) = state.apply(&event("w4", None, 11, 300), 4, decision) else {
            panic!()
        };
        assert_eq!(
            (newer.revision, newer.gross, newer.latest_updated_at_ms),
            (2, 100.into(), 11)
        );
    }

    #[test]
    fn cancellation_nets_to_zero_and_restore_keeps_newest_revision() {
        let mut state = PartitionState::default();
        let Applied::Changed(first) = state.apply(&event("w1", None, 10, 100), 0, decision) else {
            panic!()
        };
        let mut cancel = event("w2", None, 12, 100);
        cancel.cancelled_at_ms = Some(12);
        let Applied::Changed(cancelled) = state.apply(&cancel, 1, decision) else {
            panic!()
        };
        assert_eq!(
            (cancelled.net, cancelled.gross),
            (Decimal::ZERO, 100.into())
        );

        let mut restored = PartitionState::restore([*cancelled.clone(), *first]);
        assert_eq!(
            restored.apply(&cancel, 1, decision),
            Applied::Unchanged(Verdict::DuplicateWebhook)
        );
        assert_eq!(restored.len(), 1);
    }
}
