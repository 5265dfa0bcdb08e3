//! Events for downstream destinations (topic `tributary.events`): Placed Order, Received Refund,
//! and first and repeat purchase.
//!
//! First and repeat purchase need one customer's orders in one place, but orders are partitioned
//! by order. So two loops:
//!
//! 1. **Repartition** (group `tributary-events-repartition`): `tributary.attributions` →
//!    `tributary.orders_by_customer`, the same record bytes keyed by customer. It keeps no state.
//!    Its input is committed only after its outputs are acknowledged, so a crash may forward a
//!    record twice but never loses one. Excluded orders are not purchases and are not forwarded.
//!    The same loop forwards each record whose reward ledger moves money (an approval or a
//!    reversal) to `tributary.rewards_by_advocate`, once per advocate in it, keyed by advocate:
//!    the input of the store credit stage (`sinks::shopify::store_credit`).
//! 2. **Emit** (group `tributary-events`): for each order snapshot, the events it newly implies,
//!    each once ([`CustomerEvents::apply`]). The state records which orders were placed, which
//!    refunds were reported and how many orders each customer has. Its output is its changelog:
//!    events go to the input's partition number of `tributary.events`, and on assignment the state
//!    is rebuilt from that partition, like the processor's.
//!
//! A customer's first purchase is the first of their orders to reach this stage. A replay of
//! either loop emits nothing twice.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tributary_runtime::changelog::read_changelog;
use tributary_runtime::dead_letter::DeadLetterStage;
use tributary_runtime::kafka::TopicError;
use tributary_runtime::member::Brokers;
use tributary_runtime::stage::{self, Failure, Input, Member, Outbox, Output, Stage, StageError};
use tributary_schemas::topics::{self, advocate_key, customer_key, order_key};
use tributary_schemas::{
    enum_label, Attribution, AvroRecord, CodecError, CustomerEvent, CustomerEventKind, Outcome,
    RewardEntryKind,
};

/// Configuration of the events stage (`[events]` in the config file).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Consumer group of the loop that emits events.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Consumer group of the loop that re-keys attributions by customer.
    #[serde(default = "default_repartition_group")]
    pub repartition_group_id: String,
    /// How often produced records are awaited and input offsets committed.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
}

fn default_group() -> String {
    "tributary-events".into()
}
fn default_repartition_group() -> String {
    "tributary-events-repartition".into()
}
fn default_commit_interval_ms() -> u64 {
    200
}

impl Default for Config {
    fn default() -> Self {
        Self {
            group_id: default_group(),
            repartition_group_id: default_repartition_group(),
            commit_interval_ms: default_commit_interval_ms(),
        }
    }
}

/// What one partition of the emit loop has reported.
#[derive(Debug, Default)]
pub struct CustomerEvents {
    /// Orders reported as placed, with the refunds reported for each.
    orders: HashMap<String, ReportedRefunds>,
    /// Orders placed per customer key.
    purchases: HashMap<String, u64>,
}

#[derive(Debug, Default)]
struct ReportedRefunds {
    refund_ids: Vec<String>,
    refunded: Decimal,
}

impl CustomerEvents {
    /// Rebuilds from the events already emitted to this partition.
    pub fn restore(events: impl IntoIterator<Item = CustomerEvent>) -> Self {
        let mut state = Self::default();
        for event in events {
            let key = order_key(&event.shop_domain, event.order_id);
            let reported = state.orders.entry(key).or_default();
            match event.kind {
                CustomerEventKind::PlacedOrder => {}
                CustomerEventKind::FirstPurchase | CustomerEventKind::RepeatPurchase => {
                    let customer =
                        customer_key(&event.shop_domain, event.customer_id, event.order_id);
                    let count = state.purchases.entry(customer).or_default();
                    *count = (*count).max(event.customer_order_number);
                }
                CustomerEventKind::ReceivedRefund => {
                    reported.refund_ids.extend(event.refund_ids);
                    reported.refunded = reported.refunded.max(event.order_refunded);
                }
            }
        }
        state
    }

    pub fn orders(&self) -> usize {
        self.orders.len()
    }

    /// The events `order` (an attribution snapshot) implies that were not emitted yet.
    pub fn apply(&mut self, order: &Attribution) -> Vec<CustomerEvent> {
        if order.outcome == Outcome::Excluded {
            return Vec::new();
        }
        let key = order_key(&order.shop_domain, order.order_id);
        let event = |kind, id: String, amount| CustomerEvent {
            event_id: format!("{key}/{id}"),
            kind,
            shop_domain: order.shop_domain.clone(),
            customer_id: order.customer_id,
            order_id: order.order_id,
            order_name: order.order_name.clone(),
            outcome: enum_label(&order.outcome),
            advocate_identifier: order.advocate_identifier.clone(),
            currency: order.currency.clone(),
            amount,
            order_refunded: order.refunded,
            refund_ids: Vec::new(),
            customer_order_number: 0,
            occurred_at_ms: order.created_at_ms,
        };
        let mut events = Vec::new();
        let placed_before = self.orders.contains_key(&key);
        let reported = self.orders.entry(key.clone()).or_default();
        if !placed_before {
            events.push(event(
                CustomerEventKind::PlacedOrder,
                "placed".into(),
                order.gross,
            ));
            if order.customer_id.is_some() {
                let customer = customer_key(&order.shop_domain, order.customer_id, order.order_id);
                let count = self.purchases.entry(customer).or_default();
                *count += 1;
                let kind = if *count == 1 {
                    CustomerEventKind::FirstPurchase
                } else {
                    CustomerEventKind::RepeatPurchase
                };
                let mut purchase = event(kind, "purchase".into(), order.gross);
                purchase.customer_order_number = *count;
                events.push(purchase);
            }
        }
        let new_refunds: Vec<String> = order
            .refund_ids
            .iter()
            .filter(|id| !reported.refund_ids.contains(id))
            .cloned()
            .collect();
        if let Some(first) = new_refunds.first() {
            let amount = (order.refunded - reported.refunded).max(Decimal::ZERO);
            let mut refund = event(
                CustomerEventKind::ReceivedRefund,
                format!("refund/{first}"),
                amount,
            );
            refund.refund_ids = new_refunds.clone();
            refund.occurred_at_ms = order.latest_triggered_at_ms.max(order.created_at_ms);
            reported.refund_ids.extend(new_refunds);
            reported.refunded = order.refunded;
            events.push(refund);
        }
        events
    }
}

pub struct EventsStage {
    brokers: Brokers,
    config: Config,
}

impl EventsStage {
    pub fn new(brokers: &Brokers, config: Config) -> Self {
        Self {
            brokers: brokers.clone(),
            config,
        }
    }

    /// Runs both loops until `shutdown`; each commits what it has done before returning (see
    /// [`stage::run`]).
    pub async fn run(
        &self,
        repartition_ready: Arc<AtomicBool>,
        emit_ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let input = |group, topic| Input {
            brokers: &self.brokers,
            group,
            topic,
            commit_interval: Duration::from_millis(self.config.commit_interval_ms),
            max_in_flight: 20_000,
        };
        let repartition = input(&self.config.repartition_group_id, topics::ATTRIBUTIONS);
        let emit = input(&self.config.group_id, topics::ORDERS_BY_CUSTOMER);
        let (mut repartitioner, mut emitter) = (Repartition, Emit(&self.brokers));
        tokio::try_join!(
            stage::run(
                &mut repartitioner,
                repartition,
                repartition_ready,
                shutdown.clone()
            ),
            stage::run(&mut emitter, emit, emit_ready, shutdown),
        )?;
        Ok(())
    }
}

/// The repartition loop: no state.
struct Repartition;

impl Stage for Repartition {
    const NAME: &'static str = "events-repartition";
    const DEAD_LETTERS: DeadLetterStage = DeadLetterStage::EventsRepartition;
    type State = ();

    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        _state: &mut (),
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        send_all(out, message, repartition(message)).await
    }
}

/// The emit loop: per partition, what it has reported, restored from `tributary.events`.
struct Emit<'a>(&'a Brokers);

impl Stage for Emit<'_> {
    const NAME: &'static str = "events";
    const DEAD_LETTERS: DeadLetterStage = DeadLetterStage::Events;
    type State = CustomerEvents;

    /// Rebuilds the state of `partitions` from `tributary.events`, in one pass.
    async fn restore(
        &mut self,
        _member: &Member,
        partitions: Vec<i32>,
    ) -> Result<Vec<(i32, CustomerEvents)>, StageError> {
        let events: HashMap<i32, Vec<CustomerEvent>> =
            read_changelog(&self.0.bootstrap_servers, topics::EVENTS, partitions).await?;
        let states: Vec<(i32, CustomerEvents)> = events
            .into_iter()
            .map(|(partition, events)| (partition, CustomerEvents::restore(events)))
            .collect();
        tracing::info!(
            partitions = ?states.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            orders = states.iter().map(|(_, s)| s.orders()).sum::<usize>(),
            "customer events state restored"
        );
        Ok(states)
    }

    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        state: &mut CustomerEvents,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        send_all(out, message, emit(message, state)).await
    }
}

/// Sends a loop's outputs for `message`. A record this release cannot read is never skipped:
/// what came before it is committed, then the stage stops before it.
async fn send_all(
    out: &mut Outbox,
    message: &BorrowedMessage<'_>,
    outputs: Result<Vec<Output>, CodecError>,
) -> Result<(), Failure> {
    let outputs =
        outputs.map_err(|error| TopicError::unreadable(message.topic(), message, error))?;
    for output in outputs {
        out.send(output).await?;
    }
    Ok(())
}

/// The attribution record, unchanged, keyed by its customer (nothing for excluded orders).
fn repartition(message: &BorrowedMessage<'_>) -> Result<Vec<Output>, CodecError> {
    let Some(payload) = message.payload() else {
        return Ok(Vec::new());
    };
    let forward = |topic, key: String| Output {
        topic,
        partition: None,
        key: key.into_bytes(),
        payload: Some(payload.to_vec()),
        headers: None,
    };
    let order = Attribution::from_avro(payload)?;
    let mut outputs: Vec<Output> = advocates_paid(&order)
        .into_iter()
        .map(|advocate| {
            forward(
                topics::REWARDS_BY_ADVOCATE,
                advocate_key(&order.shop_domain, advocate),
            )
        })
        .collect();
    if order.outcome != Outcome::Excluded {
        outputs.push(forward(
            topics::ORDERS_BY_CUSTOMER,
            customer_key(&order.shop_domain, order.customer_id, order.order_id),
        ));
    }
    Ok(outputs)
}

/// The advocates whose wallets the order's reward ledger moves (approvals, reversals), each once.
fn advocates_paid(order: &Attribution) -> Vec<&str> {
    let mut advocates: Vec<&str> = order
        .rewards
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                RewardEntryKind::Approval | RewardEntryKind::Reversal
            )
        })
        .map(|e| e.advocate_id.as_str())
        .collect();
    advocates.sort_unstable();
    advocates.dedup();
    advocates
}

fn emit(
    message: &BorrowedMessage<'_>,
    state: &mut CustomerEvents,
) -> Result<Vec<Output>, CodecError> {
    let Some(order) = message.payload().map(Attribution::from_avro).transpose()? else {
        return Ok(Vec::new());
    };
    Ok(state
        .apply(&order)
        .into_iter()
        .filter_map(|event| {
            metrics::counter!("tributary_events_total", "kind" => format!("{:?}", event.kind))
                .increment(1);
            match event.to_avro() {
                Ok(payload) => Some(Output {
                    topic: topics::EVENTS,
                    partition: Some(message.partition()),
                    key: message.key().map(<[u8]>::to_vec).unwrap_or_default(),
                    payload: Some(payload),
                    headers: None,
                }),
                Err(error) => {
                    tracing::error!(event = %event.event_id, %error, "event does not encode");
                    None
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_schemas::{AttributionSource, RefundStatus};

    fn order(id: u64, customer: Option<u64>) -> Attribution {
        Attribution {
            shop_domain: "s".into(),
            order_id: id,
            revision: 1,
            order_name: format!("#{id}"),
            created_at_ms: id as i64,
            latest_updated_at_ms: 0,
            latest_triggered_at_ms: 0,
            settled_updated_at_ms: 0,
            financial_status: None,
            cancelled: false,
            outcome: Outcome::Unattributed,
            source: AttributionSource::Unattributed,
            reason: String::new(),
            advocate_id: None,
            advocate_identifier: None,
            code: None,
            customer_email: None,
            customer_id: customer,
            currency: "USD".into(),
            gross: 100.into(),
            presentment_currency: "USD".into(),
            presentment_gross: 100.into(),
            refunded: Decimal::ZERO,
            net: 100.into(),
            refund_status: RefundStatus::None,
            refund_ids: vec![],
            recent_delivery_ids: vec![],
            input_offset: 0,
            rewards: vec![],
            changed_at_ms: 0,
        }
    }

    fn kinds(events: &[CustomerEvent]) -> Vec<(CustomerEventKind, u64)> {
        events
            .iter()
            .map(|e| (e.kind, e.customer_order_number))
            .collect()
    }

    #[test]
    fn first_then_repeat_purchase_and_each_refund_once_also_after_a_restore() {
        use CustomerEventKind::*;
        let mut state = CustomerEvents::default();
        let mut emitted = state.apply(&order(1, Some(42)));
        assert_eq!(kinds(&emitted), [(PlacedOrder, 0), (FirstPurchase, 1)]);
        assert!(
            state.apply(&order(1, Some(42))).is_empty(),
            "a redelivered snapshot"
        );
        let mut refunded = order(1, Some(42));
        (refunded.refunded, refunded.refund_ids) = (30.into(), vec!["9".into()]);
        let refund = state.apply(&refunded);
        assert_eq!(
            (refund[0].kind, refund[0].amount),
            (ReceivedRefund, 30.into())
        );
        emitted.extend(refund);
        let guest = state.apply(&order(2, None));
        assert_eq!(
            kinds(&guest),
            [(PlacedOrder, 0)],
            "no customer: no purchase event"
        );
        emitted.extend(guest);

        let mut restored = CustomerEvents::restore(emitted);
        assert!(restored.apply(&refunded).is_empty());
        assert_eq!(
            kinds(&restored.apply(&order(3, Some(42)))),
            [(PlacedOrder, 0), (RepeatPurchase, 2)]
        );
        let mut excluded = order(4, Some(42));
        excluded.outcome = Outcome::Excluded;
        assert!(restored.apply(&excluded).is_empty());
    }
}
