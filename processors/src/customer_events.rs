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

use rdkafka::consumer::Consumer;
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::Message;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tributary_schemas::changelog::{read_changelog, unrestored};
use tributary_schemas::kafka::{
    producer_config, received_or_warn, Brokers, CommitWhen, TopicError,
};
use tributary_schemas::topics::{self, advocate_key, customer_key, order_key};
use tributary_schemas::{
    enum_label, Attribution, AvroRecord, CodecError, CustomerEvent, CustomerEventKind, Outcome,
    RewardEntryKind,
};

use crate::output::{commit_done, send, Output};
use crate::runner::ProcessorError;

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

    /// Runs both loops until `shutdown`; each commits what it has done before returning.
    pub async fn run(
        &self,
        repartition_ready: Arc<AtomicBool>,
        emit_ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<(), ProcessorError> {
        tokio::try_join!(
            self.run_loop(Loop::Repartition, repartition_ready, shutdown.clone()),
            self.run_loop(Loop::Emit, emit_ready, shutdown),
        )?;
        Ok(())
    }

    /// One consume-process-produce loop: input committed after its outputs are acknowledged.
    async fn run_loop(
        &self,
        stage: Loop,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<(), ProcessorError> {
        let (group, input) = match stage {
            Loop::Repartition => (&self.config.repartition_group_id, topics::ATTRIBUTIONS),
            Loop::Emit => (&self.config.group_id, topics::ORDERS_BY_CUSTOMER),
        };
        let consumer = self.brokers.member(group, input, ready)?;
        let producer: FutureProducer =
            producer_config(&self.brokers.bootstrap_servers, Duration::from_secs(30)).create()?;
        let mut states: HashMap<i32, CustomerEvents> = HashMap::new();
        let mut in_flight: Vec<DeliveryFuture> = Vec::new();
        let mut done: HashMap<i32, i64> = HashMap::new();
        let plain = |_: i32, next: i64| (next, String::new());
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.commit_interval_ms));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => commit_done(&consumer, input, &mut in_flight, &mut done, plain, CommitWhen::Running).await?,
                received = consumer.recv() => {
                    let Some(message) = received_or_warn(received) else {
                        continue;
                    };
                    for partition in consumer.context().take_revoked() {
                        states.remove(&partition);
                        done.remove(&partition);
                    }
                    let outputs = match stage {
                        Loop::Repartition => repartition(&message),
                        Loop::Emit => {
                            let partition = message.partition();
                            if !states.contains_key(&partition) {
                                let missing = unrestored(&consumer, input, &states, partition)?;
                                states.extend(self.restore(missing).await?);
                            }
                            let state = states.entry(partition).or_default();
                            emit(&message, state)
                        }
                    };
                    // A record this release cannot read is never skipped: what came before it is
                    // committed, then the stage stops before it.
                    let outputs = match outputs {
                        Ok(outputs) => outputs,
                        Err(error) => {
                            let error = TopicError::unreadable(input, &message, error);
                            commit_done(&consumer, input, &mut in_flight, &mut done, plain, CommitWhen::Stopping).await?;
                            return Err(error.into());
                        }
                    };
                    for output in outputs {
                        let delivery = send(&producer, output, &mut in_flight).await?;
                        in_flight.push(delivery);
                    }
                    done.insert(message.partition(), message.offset() + 1);
                }
            }
        }
        commit_done(
            &consumer,
            input,
            &mut in_flight,
            &mut done,
            plain,
            CommitWhen::Stopping,
        )
        .await
    }

    /// Rebuilds the emit loop's state of `partitions` from `tributary.events`, in one pass.
    async fn restore(
        &self,
        partitions: Vec<i32>,
    ) -> Result<HashMap<i32, CustomerEvents>, ProcessorError> {
        let events: HashMap<i32, Vec<CustomerEvent>> =
            read_changelog(&self.brokers.bootstrap_servers, topics::EVENTS, partitions).await?;
        let states: HashMap<i32, CustomerEvents> = events
            .into_iter()
            .map(|(partition, events)| (partition, CustomerEvents::restore(events)))
            .collect();
        tracing::info!(
            partitions = ?states.keys().collect::<Vec<_>>(),
            orders = states.values().map(CustomerEvents::orders).sum::<usize>(),
            "customer events state restored"
        );
        Ok(states)
    }
}

#[derive(Clone, Copy)]
enum Loop {
    Repartition,
    Emit,
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
        payload: payload.to_vec(),
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
                    payload,
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
