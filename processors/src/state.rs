//! Per-partition order state.
//!
//! **Settled orders.** The state of a settled order *is* its latest [`Attribution`] record: the
//! processor emits the whole record on every change, and after a restart or a rebalance rebuilds a
//! partition by reading `tributary.attributions` (same partition number) to its end. Because output
//! and changelog are one record, they can never disagree.
//!
//! **Held orders.** A store with a settle delay holds each new order until the partition's
//! *watermark* (the highest `X-Shopify-Triggered-At` read so far, an event time) passes its
//! `created_at` plus the delay; versions that arrive meanwhile are merged (the newest wins), and the
//! newest is what settles. Held orders are not written anywhere: the processor does not commit its
//! input past the first record of a held order, so after a crash the replay rebuilds them from
//! `shopify.webhooks`, with the watermark they started from carried in the commit's metadata. The
//! watermark at every input position is therefore the same in every run, and so is what settles.
//!
//! After settling, later versions update the order's latest facts (status, cancellation) but never
//! its gross or its advocate, as the contract says.
//!
//! **Refunds before their order.** Shopify guarantees no order of delivery, so a refund may come
//! before any version of its order. It waits in the partition (`processor.early_refund_wait_minutes`
//! of event time past its own trigger time) and is applied when the order arrives, whether the
//! order settles at once or is held. Like held orders it is not written anywhere: the input is not
//! committed past it, so a replay rebuilds it. Past the wait it is handed back
//! ([`PartitionState::give_up_early_refunds`]) to be dead-lettered with the reason; a replay of
//! the dead letter once the order is in, or the order's own record listing the refund, counts it.
//!
//! **Expiry.** With a horizon (`processor.expire_after_days`), a settled order that has not
//! changed for that long in event time leaves the state with a tombstone on the changelog, and a
//! record for an order created before the horizon that the partition no longer knows is refused
//! (it would otherwise start the order over). The horizon starts at the beginning of the
//! watermark's day, so every position within a day expires the same orders: a restart mid-day
//! expires nothing the first run did not.

use std::collections::{BTreeSet, HashMap};

use rust_decimal::Decimal;
use tributary_runtime::changelog::Change;
use tributary_schemas::topics::order_key;
use tributary_schemas::{Attribution, ListedRefund, OrderEvent, Outcome, RefundStatus};

use crate::attribution::Decision;
use crate::dedup::{self, Verdict};
use crate::normalize::{shop_amount, ApprovalCommand, ManualCommand, RefundEvent};
use crate::rewards;
use crate::settled::{SettledOrders, StateStoreError, DAY_MS};

#[derive(Debug, PartialEq)]
pub enum Applied {
    /// The event changed a settled order; emit this record.
    Changed(Box<Attribution>),
    /// The event is the order's newest version so far; the order is held until it settles.
    Held,
    /// Nothing changed, for this reason (never [`Verdict::Fresh`]).
    Unchanged(Verdict),
    /// A refund or command for an order this partition has never seen.
    UnknownOrder,
    /// A refund for an order not seen yet, waiting for it (see the module's doc).
    Waiting,
    /// A command that cannot apply, for this reason.
    Refused(String),
}

/// An order waiting for the watermark to pass `settle_at_ms`.
#[derive(Debug)]
struct Held {
    newest: OrderEvent,
    recent_delivery_ids: Vec<String>,
    /// Refunds that arrived while holding, applied when the order settles.
    refunds: Vec<RefundEvent>,
    /// A manual attribution that arrived while holding; it wins when the order settles.
    manual: Option<Decision>,
    /// Input position of the order's first record, and the watermark just before it: where a
    /// replay must start to rebuild this order.
    first_offset: i64,
    watermark_before: i64,
}

/// A refund that came before its order, waiting for it.
#[derive(Debug)]
struct EarlyRefund {
    refund: RefundEvent,
    /// Input position of the refund's record, and the watermark just before it: where a replay
    /// must start to rebuild it.
    offset: i64,
    watermark_before: i64,
    /// Event time past which it stops waiting.
    give_up_at_ms: i64,
}

#[derive(Debug, Default)]
pub struct PartitionState {
    settled: SettledOrders,
    held: HashMap<String, Held>,
    /// Refunds waiting for their order, by order key.
    early_refunds: HashMap<String, Vec<EarlyRefund>>,
    /// How long a refund waits for its order, in ms of event time (0: it does not wait).
    early_refund_wait_ms: i64,
    /// Held orders by (settle time, key): settling order is deterministic.
    due: BTreeSet<(i64, String)>,
    watermark_ms: i64,
    /// How long an unchanged settled order is kept, in ms of event time (`None`: forever).
    expire_after_ms: Option<i64>,
    /// The horizon the last expiry ran to: expiry runs once per horizon (day).
    expired_to_ms: Option<i64>,
}

impl PartitionState {
    /// Rebuilds from changelog records in offset order (the highest revision of each order wins)
    /// and the watermark committed with the input offset, in memory.
    pub fn restore(records: impl IntoIterator<Item = Attribution>, watermark_ms: i64) -> Self {
        let changes = records.into_iter().map(Change::Put);
        Self::with_settled(SettledOrders::from_changes(changes), watermark_ms)
    }

    /// A partition over `settled` (restored by the caller), with the committed watermark.
    pub fn with_settled(settled: SettledOrders, watermark_ms: i64) -> Self {
        Self {
            settled,
            watermark_ms,
            ..Self::default()
        }
    }

    /// Expires settled orders unchanged for `after_ms` of event time (see the module's doc).
    pub fn expiring_after(mut self, after_ms: Option<i64>) -> Self {
        self.expire_after_ms = after_ms;
        self
    }

    /// Lets a refund that comes before its order wait `wait_ms` of event time for it.
    pub fn holding_early_refunds_for(mut self, wait_ms: i64) -> Self {
        self.early_refund_wait_ms = wait_ms.max(0);
        self
    }

    /// Whether refunds wait for the order of `key`.
    pub fn has_early_refunds(&self, key: &str) -> bool {
        self.early_refunds.contains_key(key)
    }

    /// Refunds waiting for their order.
    pub fn early_refunds_len(&self) -> usize {
        self.early_refunds.values().map(Vec::len).sum()
    }

    /// Removes the refunds whose wait the watermark has passed and returns them with the input
    /// offset of each one's record, in offset order, to be dead-lettered.
    pub fn give_up_early_refunds(&mut self) -> Vec<(i64, RefundEvent)> {
        let watermark = self.watermark_ms;
        let mut given_up = Vec::new();
        self.early_refunds.retain(|_, waiting| {
            let (gone, kept): (Vec<EarlyRefund>, Vec<EarlyRefund>) = std::mem::take(waiting)
                .into_iter()
                .partition(|early| early.give_up_at_ms <= watermark);
            given_up.extend(gone.into_iter().map(|early| (early.offset, early.refund)));
            *waiting = kept;
            !waiting.is_empty()
        });
        given_up.sort_by_key(|(offset, _)| *offset);
        given_up
    }

    /// The start of the state's horizon: the watermark's day, less the expiry period.
    fn horizon_ms(&self) -> Option<i64> {
        let after = self.expire_after_ms?;
        let day_start = self.watermark_ms.div_euclid(DAY_MS) * DAY_MS;
        Some(day_start.saturating_sub(after))
    }

    /// Once per day of watermark: removes settled orders that last changed before the horizon and
    /// returns their keys, sorted, for the changelog's tombstones.
    pub fn expire_due(&mut self) -> Result<Vec<String>, StateStoreError> {
        let Some(horizon) = self.horizon_ms() else {
            return Ok(Vec::new());
        };
        if self.expired_to_ms == Some(horizon) {
            return Ok(Vec::new());
        }
        self.expired_to_ms = Some(horizon);
        self.settled.expire(horizon)
    }

    /// The partition's settled orders.
    pub fn settled(&self) -> &SettledOrders {
        &self.settled
    }

    /// The partition's settled orders, to flush at a checkpoint.
    pub fn settled_mut(&mut self) -> &mut SettledOrders {
        &mut self.settled
    }

    /// Settled orders.
    pub fn len(&self) -> usize {
        self.settled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.settled.is_empty() && self.held.is_empty() && self.early_refunds.is_empty()
    }

    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    pub fn watermark_ms(&self) -> i64 {
        self.watermark_ms
    }

    /// Every record of the partition moves the watermark, whatever becomes of it.
    pub fn observe(&mut self, triggered_at_ms: i64) {
        self.watermark_ms = self.watermark_ms.max(triggered_at_ms);
    }

    /// Where the input may be committed, with the watermark to store beside it: the first record
    /// of the oldest held order or waiting refund, or else `processed_up_to`.
    pub fn commit_position(&self, processed_up_to: i64) -> (i64, i64) {
        let held = self
            .held
            .values()
            .map(|held| (held.first_offset, held.watermark_before));
        let waiting = self
            .early_refunds
            .values()
            .flatten()
            .map(|early| (early.offset, early.watermark_before));
        held.chain(waiting)
            .min()
            .unwrap_or((processed_up_to, self.watermark_ms))
    }

    /// Applies one order event read at `input_offset`, before the watermark moves past it.
    /// `decide` is asked only when the order settles at once (`settle_delay_ms` of 0).
    pub fn apply(
        &mut self,
        event: &OrderEvent,
        input_offset: i64,
        settle_delay_ms: i64,
        decide: impl FnOnce() -> Decision,
    ) -> Result<Applied, StateStoreError> {
        let key = order_key(&event.shop_domain, event.order_id);
        let now = self.watermark_ms.max(event.triggered_at_ms);
        if let Some(current) = self.settled.get_mut(&key)? {
            return Ok(update_settled(current, event, input_offset, now));
        }
        if let Some(held) = self.held.get_mut(&key) {
            let verdict = dedup::judge(&held.recent_delivery_ids, held.newest.version(), event);
            return Ok(match verdict {
                Verdict::Fresh => {
                    dedup::remember(&mut held.recent_delivery_ids, event);
                    held.newest = event.clone();
                    Applied::Held
                }
                // An older version still counts as seen: its redelivery is a duplicate.
                Verdict::Stale => {
                    dedup::remember(&mut held.recent_delivery_ids, event);
                    Applied::Unchanged(verdict)
                }
                _ => Applied::Unchanged(verdict),
            });
        }
        if let Some(horizon) = self.horizon_ms().filter(|&h| event.created_at_ms < h) {
            return Ok(Applied::Refused(format!(
                "order {} was created at {} ms, before the state's horizon ({horizon} ms, processor.expire_after_days before the watermark's day): its state has expired or was never kept, and taking it up now would count it again",
                event.order_id, event.created_at_ms
            )));
        }
        if settle_delay_ms <= 0 {
            let mut recent_delivery_ids = Vec::new();
            dedup::remember(&mut recent_delivery_ids, event);
            let mut settled = settle(
                event,
                recent_delivery_ids,
                decide(),
                input_offset,
                event.triggered_at_ms,
            );
            settled.changed_at_ms = now;
            if let Some(waiting) = self.early_refunds.remove(&key) {
                for early in &waiting {
                    add_refund(&mut settled, &early.refund.refund);
                }
                rewards::follow_refunds(&mut settled, now);
            }
            self.settled.insert(key, settled.clone());
            return Ok(Applied::Changed(Box::new(settled)));
        }
        let settle_at_ms = event.created_at_ms.saturating_add(settle_delay_ms);
        let mut recent_delivery_ids = Vec::new();
        dedup::remember(&mut recent_delivery_ids, event);
        self.due.insert((settle_at_ms, key.clone()));
        // Refunds that waited go with the order, and so does their place in the input: the
        // commit must not pass them before the order settles, or a replay would lose them.
        let waited = self.early_refunds.remove(&key).unwrap_or_default();
        let (first_offset, watermark_before) = waited
            .iter()
            .map(|early| (early.offset, early.watermark_before))
            .chain([(input_offset, self.watermark_ms)])
            .min()
            .unwrap_or((input_offset, self.watermark_ms));
        self.held.insert(
            key,
            Held {
                newest: event.clone(),
                recent_delivery_ids,
                refunds: waited.into_iter().map(|early| early.refund).collect(),
                manual: None,
                first_offset,
                watermark_before,
            },
        );
        Ok(Applied::Held)
    }

    /// Applies one refund read at `input_offset`; each refund id counts once.
    pub fn apply_refund(
        &mut self,
        refund: &RefundEvent,
        input_offset: i64,
    ) -> Result<Applied, StateStoreError> {
        if !moves_money(&refund.refund) {
            return Ok(Applied::Unchanged(Verdict::RefundNotSettled));
        }
        let key = order_key(&refund.shop_domain, refund.order_id);
        let refund_id = refund.refund.refund_id.to_string();
        let now = self.watermark_ms.max(refund.triggered_at_ms);
        if let Some(current) = self.settled.get_mut(&key)? {
            if current.refund_ids.contains(&refund_id) {
                return Ok(Applied::Unchanged(Verdict::DuplicateRefund));
            }
            current.revision += 1;
            current.changed_at_ms = now;
            current.input_offset = input_offset;
            add_refund(current, &refund.refund);
            rewards::follow_refunds(current, refund.triggered_at_ms);
            return Ok(Applied::Changed(Box::new(current.clone())));
        }
        let Some(held) = self.held.get_mut(&key) else {
            return Ok(self.wait_for_order(key, refund, input_offset));
        };
        if held
            .refunds
            .iter()
            .any(|r| r.refund.refund_id == refund.refund.refund_id)
        {
            return Ok(Applied::Unchanged(Verdict::DuplicateRefund));
        }
        held.refunds.push(refund.clone());
        Ok(Applied::Held)
    }

    /// Keeps a refund for an order not seen yet until the order comes or the wait passes.
    fn wait_for_order(&mut self, key: String, refund: &RefundEvent, input_offset: i64) -> Applied {
        if self.early_refund_wait_ms <= 0 {
            return Applied::UnknownOrder;
        }
        let waiting = self.early_refunds.entry(key).or_default();
        if waiting
            .iter()
            .any(|early| early.refund.refund.refund_id == refund.refund.refund_id)
        {
            return Applied::Unchanged(Verdict::DuplicateRefund);
        }
        waiting.push(EarlyRefund {
            refund: refund.clone(),
            offset: input_offset,
            watermark_before: self.watermark_ms,
            give_up_at_ms: refund
                .triggered_at_ms
                .saturating_add(self.early_refund_wait_ms),
        });
        Applied::Waiting
    }

    /// Applies an operator's attribution of an order to an advocate (`decision`). A settled order
    /// moves to that advocate, and its reward with it; a held one will settle to it. Excluded
    /// orders stay excluded.
    pub fn apply_manual(
        &mut self,
        command: &ManualCommand,
        decision: Decision,
        input_offset: i64,
    ) -> Result<Applied, StateStoreError> {
        let key = order_key(&command.shop_domain, command.body.order_id);
        if let Some(held) = self.held.get_mut(&key) {
            // Remembered now, so that once settled the order knows this command was applied.
            dedup::remember_delivery(&mut held.recent_delivery_ids, &command.command_id);
            held.manual = Some(decision);
            return Ok(Applied::Held);
        }
        self.apply_command_to_settled(&key, &command.command_id, input_offset, |current| {
            if current.outcome == Outcome::Excluded {
                return Err(format!(
                    "order {} is never attributed ({})",
                    current.order_id, current.reason
                ));
            }
            let (advocate_id, advocate_identifier) = decision.advocate.unzip();
            let moved = current.advocate_id != advocate_id;
            if moved {
                let to = advocate_identifier.as_deref().unwrap_or_default();
                let reason = format!("order moved to {to} by {}", command.body.requested_by);
                rewards::withdraw(current, &reason, command.issued_at_ms);
            }
            current.outcome = decision.outcome;
            current.source = decision.source;
            current.reason = decision.reason;
            current.advocate_id = advocate_id;
            current.advocate_identifier = advocate_identifier;
            current.code = decision.code;
            if let Some(activity) = decision.reward.as_ref().filter(|_| moved) {
                rewards::request(current, activity, command.issued_at_ms);
            }
            Ok(())
        })
    }

    /// Applies an operator's approval of a settled order's pending reward request.
    pub fn apply_approval(
        &mut self,
        command: &ApprovalCommand,
        input_offset: i64,
    ) -> Result<Applied, StateStoreError> {
        let order_id = command.body.order_id;
        let key = order_key(&command.shop_domain, order_id);
        if self.held.contains_key(&key) {
            return Ok(Applied::Refused(format!(
                "order {order_id} has not settled yet, so it has no reward request; approve it once it has"
            )));
        }
        self.apply_command_to_settled(&key, &command.command_id, input_offset, |current| {
            rewards::approve(current, &command.body.approved_by, command.issued_at_ms)
        })
    }

    /// An operator's command on a settled order: applied once (by `command_id`) through `change`,
    /// which may refuse it with a reason; a change makes a new revision.
    fn apply_command_to_settled(
        &mut self,
        key: &str,
        command_id: &str,
        input_offset: i64,
        change: impl FnOnce(&mut Attribution) -> Result<(), String>,
    ) -> Result<Applied, StateStoreError> {
        let now = self.watermark_ms;
        let Some(current) = self.settled.get_mut(key)? else {
            return Ok(Applied::UnknownOrder);
        };
        if dedup::seen_delivery(&current.recent_delivery_ids, command_id) {
            return Ok(Applied::Unchanged(Verdict::DuplicateWebhook));
        }
        if let Err(reason) = change(current) {
            return Ok(Applied::Refused(reason));
        }
        current.revision += 1;
        current.changed_at_ms = now;
        current.input_offset = input_offset;
        dedup::remember_delivery(&mut current.recent_delivery_ids, command_id);
        Ok(Applied::Changed(Box::new(current.clone())))
    }

    /// Settles every held order the watermark has passed, in (settle time, key) order. `decide`
    /// judges the settled version; `None` (its store is no longer connected) drops the order.
    pub fn settle_due(
        &mut self,
        input_offset: i64,
        mut decide: impl FnMut(&OrderEvent) -> Option<Decision>,
    ) -> Vec<Attribution> {
        let mut settled = Vec::new();
        while let Some((settle_at_ms, _)) = self.due.first() {
            if *settle_at_ms > self.watermark_ms {
                break;
            }
            let Some((_, key)) = self.due.pop_first() else {
                break;
            };
            let Some(held) = self.held.remove(&key) else {
                continue;
            };
            if let Some(decision) = decide(&held.newest) {
                let decision = match held.manual {
                    Some(manual) if decision.outcome != Outcome::Excluded => manual,
                    _ => decision,
                };
                let mut record = settle(
                    &held.newest,
                    held.recent_delivery_ids,
                    decision,
                    input_offset,
                    self.watermark_ms,
                );
                for refund in &held.refunds {
                    add_refund(&mut record, &refund.refund);
                }
                rewards::follow_refunds(&mut record, self.watermark_ms);
                self.settled.insert(key, record.clone());
                settled.push(record);
            }
        }
        settled
    }
}

/// A new version of a settled order; `now` is the event time of the change.
fn update_settled(
    current: &mut Attribution,
    event: &OrderEvent,
    input_offset: i64,
    now: i64,
) -> Applied {
    let verdict = dedup::judge(
        &current.recent_delivery_ids,
        current.latest_version(),
        event,
    );
    let counted = |r: &ListedRefund| current.refund_ids.contains(&r.refund_id.to_string());
    let uncounted = event.refunds.iter().any(|r| !counted(r) && moves_money(r));
    // An older version still brings the refunds it lists that are not counted yet (a refund
    // counts from any record); nothing else of it applies.
    let fresh = verdict == Verdict::Fresh;
    let brings_refunds = verdict == Verdict::Stale && uncounted;
    if !(fresh || brings_refunds) {
        return Applied::Unchanged(verdict);
    }
    current.revision += 1;
    current.changed_at_ms = now;
    current.input_offset = input_offset;
    dedup::remember(&mut current.recent_delivery_ids, event);
    if fresh {
        current.latest_updated_at_ms = event.updated_at_ms;
        current.latest_triggered_at_ms = event.triggered_at_ms;
        current.financial_status = event.financial_status.clone();
        current.cancelled |= event.cancelled_at_ms.is_some();
        current.net = net(current.gross, current.refunded, current.cancelled);
    }
    // Refunds this version lists count once by id, whatever record brought them first. An older
    // version's refunds are followed at the partition's time, never before the reward.
    for refund in &event.refunds {
        add_refund(current, refund);
    }
    rewards::follow_refunds(current, if fresh { event.triggered_at_ms } else { now });
    Applied::Changed(Box::new(current.clone()))
}

/// Whether any of the refund's transactions has succeeded. One that has none (all pending) is not
/// counted yet, its id included: a later record showing them successful counts it. (A refund
/// with some transactions successful and others pending counts what has succeeded; the rest is
/// not followed.)
fn moves_money(refund: &ListedRefund) -> bool {
    !refund.amount.is_zero() || refund.in_currency.iter().any(|c| !c.amount.is_zero())
}

/// Counts `refund` once by its id, whichever record carried it (a refund already counted, or with
/// nothing successful yet, changes nothing).
fn add_refund(attribution: &mut Attribution, refund: &ListedRefund) {
    let id = refund.refund_id.to_string();
    if attribution.refund_ids.contains(&id) || !moves_money(refund) {
        return;
    }
    attribution.refund_ids.push(id);
    attribution.refunded += shop_amount(
        refund,
        &attribution.currency,
        attribution.gross,
        attribution.presentment_gross,
    );
    attribution.net = net(
        attribution.gross,
        attribution.refunded,
        attribution.cancelled,
    );
    attribution.refund_status = if attribution.refunded <= Decimal::ZERO {
        RefundStatus::None
    } else if attribution.refunded >= attribution.gross {
        RefundStatus::Full
    } else {
        RefundStatus::Partial
    };
}

/// Net is gross minus refunded, never below zero; a cancelled order nets to zero.
pub fn net(gross: Decimal, refunded: Decimal, cancelled: bool) -> Decimal {
    if cancelled {
        Decimal::ZERO
    } else {
        (gross - refunded).max(Decimal::ZERO)
    }
}

/// The settled order's first record; `at_ms` is the event time its reward request is created at.
fn settle(
    event: &OrderEvent,
    recent_delivery_ids: Vec<String>,
    decision: Decision,
    input_offset: i64,
    at_ms: i64,
) -> Attribution {
    let cancelled = event.cancelled_at_ms.is_some();
    let (advocate_id, advocate_identifier) = decision.advocate.unzip();
    // Gross is what was bought before refunds: Shopify has already taken the refunds this version
    // lists off its current total, so they are added back, then counted as refunded (once each).
    let listed: Decimal = event
        .refunds
        .iter()
        .map(|refund| {
            shop_amount(
                refund,
                &event.currency,
                event.current_total_price,
                event.current_total_price_presentment,
            )
        })
        .sum();
    let gross = event.current_total_price + listed;
    let presentment_gross = if listed.is_zero() || event.current_total_price.is_zero() {
        event.current_total_price_presentment
    } else {
        (event.current_total_price_presentment * gross / event.current_total_price)
            .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
    };
    let mut record = Attribution {
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
        gross,
        presentment_currency: event.presentment_currency.clone(),
        presentment_gross,
        refunded: Decimal::ZERO,
        net: net(gross, Decimal::ZERO, cancelled),
        refund_status: RefundStatus::None,
        refund_ids: Vec::new(),
        recent_delivery_ids,
        input_offset,
        rewards: Vec::new(),
        changed_at_ms: at_ms,
    };
    if let Some(activity) = decision.reward.as_ref() {
        rewards::request(&mut record, activity, at_ms);
    }
    for refund in &event.refunds {
        add_refund(&mut record, refund);
    }
    rewards::follow_refunds(&mut record, at_ms);
    record
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
            reward: None,
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
            refunds: vec![],
        }
    }

    #[test]
    fn duplicates_and_stale_versions_change_nothing() {
        let mut state = PartitionState::default();
        assert!(matches!(
            state
                .apply(&event("w1", Some("e1"), 10, 100), 0, 0, decision)
                .unwrap(),
            Applied::Changed(_)
        ));
        let unchanged = |v| Applied::Unchanged(v);
        assert_eq!(
            state
                .apply(&event("w1", Some("e1"), 10, 100), 1, 0, decision)
                .unwrap(),
            unchanged(Verdict::DuplicateWebhook)
        );
        assert_eq!(
            state
                .apply(&event("w2", Some("e1"), 10, 100), 2, 0, decision)
                .unwrap(),
            unchanged(Verdict::DuplicateEvent)
        );
        assert_eq!(
            state
                .apply(&event("w3", None, 9, 50), 3, 0, decision)
                .unwrap(),
            unchanged(Verdict::Stale)
        );
        let Applied::Changed(newer) = state
            .apply(&event("w4", None, 11, 300), 4, 0, decision)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (newer.revision, newer.gross, newer.latest_updated_at_ms),
            (2, 100.into(), 11)
        );
    }

    #[test]
    fn an_older_version_still_brings_a_refund_not_counted_yet_and_nothing_else() {
        let mut state = PartitionState::default();
        state
            .apply(&event("w1", None, 10, 100), 0, 0, decision)
            .unwrap();
        state
            .apply(&event("w2", None, 20, 130), 1, 0, decision)
            .unwrap();
        // A reconciled copy of version 15 lists a refund nobody delivered.
        let mut older = event("reconcile-15", None, 15, 80);
        older.refunds = vec![ListedRefund {
            refund_id: 7,
            amount: 20.into(),
            in_currency: vec![],
        }];
        let Applied::Changed(after) = state.apply(&older, 2, 0, decision).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                after.gross,
                after.refunded,
                after.net,
                after.latest_updated_at_ms
            ),
            (100.into(), 20.into(), 80.into(), 20)
        );
        // Again: nothing left to count.
        older.webhook_id = "reconcile-15-again".into();
        assert_eq!(
            state.apply(&older, 3, 0, decision).unwrap(),
            Applied::Unchanged(Verdict::Stale)
        );
    }

    #[test]
    fn cancellation_nets_to_zero_and_restore_keeps_newest_revision() {
        let mut state = PartitionState::default();
        let Applied::Changed(first) = state
            .apply(&event("w1", None, 10, 100), 0, 0, decision)
            .unwrap()
        else {
            panic!()
        };
        let mut cancel = event("w2", None, 12, 100);
        cancel.cancelled_at_ms = Some(12);
        let Applied::Changed(cancelled) = state.apply(&cancel, 1, 0, decision).unwrap() else {
            panic!()
        };
        assert_eq!(
            (cancelled.net, cancelled.gross),
            (Decimal::ZERO, 100.into())
        );

        let mut restored = PartitionState::restore([*cancelled.clone(), *first], 0);
        assert_eq!(
            restored.apply(&cancel, 1, 0, decision).unwrap(),
            Applied::Unchanged(Verdict::DuplicateWebhook)
        );
        assert_eq!(restored.len(), 1);
    }

    #[test]
    fn held_orders_merge_versions_and_settle_when_the_watermark_passes() {
        const DELAY: i64 = 600_000;
        let mut state = PartitionState::default();
        state.observe(5);
        let created = event("w1", Some("e1"), 10, 100);
        assert_eq!(
            state.apply(&created, 7, DELAY, decision).unwrap(),
            Applied::Held
        );
        state.observe(10);
        let upsell = event("w2", Some("e2"), 20, 130);
        assert_eq!(
            state.apply(&upsell, 8, DELAY, decision).unwrap(),
            Applied::Held
        );
        state.observe(20);
        assert_eq!(
            state
                .apply(&event("w3", None, 15, 90), 9, DELAY, decision)
                .unwrap(),
            Applied::Unchanged(Verdict::Stale),
            "an older version never replaces the newest"
        );
        assert_eq!(
            state.apply(&created, 10, DELAY, decision).unwrap(),
            Applied::Unchanged(Verdict::DuplicateWebhook)
        );
        // Replay must start at the first record of the held order, with the watermark before it.
        assert_eq!(state.commit_position(11), (7, 5));
        assert!(state.settle_due(11, |_| Some(decision())).is_empty());

        state.observe(DELAY - 1);
        assert!(
            state.settle_due(12, |_| Some(decision())).is_empty(),
            "not yet due"
        );
        state.observe(DELAY);
        let settled = state.settle_due(13, |_| Some(decision()));
        assert_eq!(settled.len(), 1);
        assert_eq!(
            (
                settled[0].gross,
                settled[0].revision,
                settled[0].input_offset
            ),
            (130.into(), 1, 13),
            "the newest merged version settles"
        );
        assert_eq!(state.commit_position(14), (14, DELAY));
        assert_eq!(
            state.apply(&upsell, 14, DELAY, decision).unwrap(),
            Applied::Unchanged(Verdict::DuplicateWebhook),
            "deliveries merged while held stay known after settling"
        );
    }

    #[test]
    fn settling_order_is_by_time_then_key_and_a_disconnected_store_drops_the_order() {
        let mut state = PartitionState::default();
        let mut late = event("a", None, 10, 1);
        late.order_id = 2;
        late.created_at_ms = 50;
        let mut early = event("b", None, 10, 2);
        early.order_id = 3;
        early.created_at_ms = 10;
        let mut dropped = event("c", None, 10, 3);
        dropped.order_id = 4;
        dropped.shop_domain = "gone".into();
        for (offset, e) in [&late, &early, &dropped].into_iter().enumerate() {
            assert_eq!(
                state.apply(e, offset as i64, 100, decision).unwrap(),
                Applied::Held
            );
        }
        state.observe(1_000);
        let settled = state.settle_due(3, |e| (e.shop_domain != "gone").then(decision));
        let ids: Vec<u64> = settled.iter().map(|a| a.order_id).collect();
        assert_eq!(ids, vec![3, 2]);
        assert_eq!(state.held_len(), 0);
        assert_eq!(state.len(), 2);
    }

    #[test]
    fn a_refund_before_its_order_waits_for_it_holds_the_commit_and_gives_up_past_the_wait() {
        const WAIT: i64 = 3_600_000;
        let refund = |id: u64, order_id: u64, at: i64| RefundEvent {
            shop_domain: "s".into(),
            order_id,
            refund: ListedRefund {
                refund_id: id,
                amount: 31.into(),
                in_currency: Vec::new(),
            },
            webhook_id: format!("r{id}"),
            triggered_at_ms: at,
        };
        let order = event("w1", None, 10, 176).order_id;
        let mut state = PartitionState::default().holding_early_refunds_for(WAIT);
        assert_eq!(
            state.apply_refund(&refund(1, order, 5), 7).unwrap(),
            Applied::Waiting
        );
        assert_eq!(
            state.apply_refund(&refund(1, order, 5), 8).unwrap(),
            Applied::Unchanged(Verdict::DuplicateRefund),
            "a redelivery waits once"
        );
        state.observe(5);
        assert_eq!(state.commit_position(9), (7, 0), "never committed past it");
        // The order comes and settles at once: the refund counts.
        let Applied::Changed(settled) = state
            .apply(&event("w1", None, 10, 176), 9, 0, decision)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (settled.refunded, settled.net, settled.refund_ids.clone()),
            (31.into(), 145.into(), vec!["1".to_owned()])
        );
        assert_eq!(state.early_refunds_len(), 0);
        assert_eq!(state.commit_position(10).0, 10);

        // A held order takes the refunds that waited for it.
        let mut held = PartitionState::default().holding_early_refunds_for(WAIT);
        held.apply_refund(&refund(2, order, 5), 0).unwrap();
        assert_eq!(
            held.apply(&event("w1", None, 10, 176), 1, 600_000, decision)
                .unwrap(),
            Applied::Held
        );
        assert_eq!(
            held.commit_position(2).0,
            0,
            "held with its order, the refund still holds the commit"
        );
        held.observe(600_000);
        let settled = held.settle_due(2, |_| Some(decision()));
        assert_eq!(settled[0].refunded, 31.into());

        // An order that never comes: the refund is handed back once the wait has passed.
        let mut orphan = PartitionState::default().holding_early_refunds_for(WAIT);
        orphan.apply_refund(&refund(3, 42, 1_000), 4).unwrap();
        orphan.observe(1_000 + WAIT - 1);
        assert!(orphan.give_up_early_refunds().is_empty());
        orphan.observe(1_000 + WAIT);
        let given_up = orphan.give_up_early_refunds();
        assert_eq!(
            given_up
                .iter()
                .map(|(offset, r)| (*offset, r.refund.refund_id))
                .collect::<Vec<_>>(),
            [(4, 3)]
        );
        assert_eq!(orphan.commit_position(5).0, 5, "the commit moves on");
    }

    #[test]
    fn refunds_count_once_by_id_reverse_by_amount_and_wait_with_held_orders() {
        let refund = |id: u64, amount: i64| RefundEvent {
            shop_domain: "s".into(),
            order_id: u64::MAX >> 1,
            refund: ListedRefund {
                refund_id: id,
                amount: amount.into(),
                in_currency: Vec::new(),
            },
            webhook_id: format!("r{id}"),
            triggered_at_ms: 0,
        };
        let mut state = PartitionState::default();
        assert_eq!(
            state.apply_refund(&refund(1, 10), 0).unwrap(),
            Applied::UnknownOrder
        );
        state
            .apply(&event("w1", None, 10, 100), 1, 0, decision)
            .unwrap();
        let Applied::Changed(partial) = state.apply_refund(&refund(1, 30), 2).unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                partial.refunded,
                partial.net,
                partial.refund_status,
                partial.revision
            ),
            (30.into(), 70.into(), RefundStatus::Partial, 2)
        );
        assert_eq!(
            state.apply_refund(&refund(1, 30), 3).unwrap(),
            Applied::Unchanged(Verdict::DuplicateRefund)
        );
        let Applied::Changed(full) = state.apply_refund(&refund(2, 90), 4).unwrap() else {
            panic!()
        };
        assert_eq!(
            (full.refunded, full.net, full.refund_status),
            (120.into(), Decimal::ZERO, RefundStatus::Full),
            "net never goes below zero"
        );

        let mut held = PartitionState::default();
        held.apply(&event("w1", None, 10, 100), 0, 600_000, decision)
            .unwrap();
        assert_eq!(held.apply_refund(&refund(7, 25), 1).unwrap(), Applied::Held);
        assert_eq!(
            held.apply_refund(&refund(7, 25), 2).unwrap(),
            Applied::Unchanged(Verdict::DuplicateRefund)
        );
        held.observe(600_000);
        let settled = held.settle_due(3, |_| Some(decision()));
        assert_eq!(
            (
                settled[0].refunded,
                settled[0].net,
                settled[0].refund_ids.clone()
            ),
            (25.into(), 75.into(), vec!["7".to_owned()])
        );
    }

    #[test]
    fn an_order_unchanged_past_the_horizon_expires_once_and_is_not_taken_up_again() {
        let mut state = PartitionState::default().expiring_after(Some(2 * DAY_MS));
        let created = event("w1", None, 10, 100);
        state.apply(&created, 0, 0, decision).unwrap();
        state.observe(10);
        assert!(state.expire_due().unwrap().is_empty(), "inside the horizon");
        // Three days on: the horizon is the start of day 1, and the order changed on day 0.
        state.observe(3 * DAY_MS + 5);
        let key = order_key("s", u64::MAX >> 1);
        assert_eq!(state.expire_due().unwrap(), vec![key]);
        assert!(state.expire_due().unwrap().is_empty(), "once per horizon");
        let later = event("w2", None, 3 * DAY_MS, 80);
        assert!(matches!(
            state.apply(&later, 1, 0, decision).unwrap(),
            Applied::Refused(reason) if reason.contains("before the state's horizon")
        ));
    }
}
