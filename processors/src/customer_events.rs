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
use tributary_runtime::dead_letter::DeadLetterStage;
use tributary_runtime::kafka::TopicError;
use tributary_runtime::member::Brokers;
use tributary_runtime::member::CommitWhen;
use tributary_runtime::stage::{self, Failure, Input, Member, Outbox, Output, Stage, StageError};
use tributary_runtime::state::{self, KeyedState, Row, StateStore, StateStoreError};
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
    /// Where the emit loop keeps what it has reported (`<state_dir>/events.redb`), so memory
    /// stays bounded and a restart reads only the tail of `tributary.events`. Unset: in memory,
    /// rebuilt from the whole topic on every assignment (what the embedded broker needs, whose
    /// log lives only as long as the process). Give each process its own directory.
    #[serde(default)]
    pub state_dir: Option<std::path::PathBuf>,
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
            state_dir: None,
        }
    }
}

/// What one partition of the emit loop has reported: per placed order, the refunds reported for
/// it; per customer, the orders placed. A [`KeyedState`] (in memory, or on disk in
/// `<events.state_dir>/events.redb`) whose changelog is `tributary.events` itself.
#[derive(Debug, Default)]
pub struct CustomerEvents {
    rows: KeyedState<Reported>,
}

tributary_runtime::changelogged_by!(CustomerEvents, rows);

/// The store's name: `<state_dir>/events.redb`.
pub const STORE_NAME: &str = "events";

/// One row: keyed `order/<order key>` or `customer/<customer key>`.
#[derive(Debug, Serialize, Deserialize)]
enum Reported {
    /// An order reported as placed, with the refunds reported for it.
    Order {
        refund_ids: Vec<String>,
        refunded: Decimal,
    },
    /// Orders placed by a customer.
    Purchases(u64),
}

impl Row for Reported {
    fn encode(&self) -> Result<Vec<u8>, StateStoreError> {
        serde_json::to_vec(self).map_err(|e| StateStoreError::Row(e.to_string()))
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateStoreError> {
        serde_json::from_slice(bytes).map_err(|e| StateStoreError::Row(e.to_string()))
    }
}

fn order_row(key: &str) -> String {
    format!("order/{key}")
}

fn customer_row(key: &str) -> String {
    format!("customer/{key}")
}

impl CustomerEvents {
    /// Rebuilds from the events already emitted to this partition, in memory.
    pub fn restore(events: impl IntoIterator<Item = CustomerEvent>) -> Self {
        let mut state = Self::default();
        for event in events {
            // In memory a read never fails.
            state.absorb(event).unwrap_or_default();
        }
        state
    }

    /// Takes one event read back from `tributary.events`.
    fn absorb(&mut self, event: CustomerEvent) -> Result<(), StateStoreError> {
        let key = order_row(&order_key(&event.shop_domain, event.order_id));
        let (mut refund_ids, mut refunded) = match self.rows.get_mut(&key)? {
            Some(Reported::Order {
                refund_ids,
                refunded,
            }) => (std::mem::take(refund_ids), *refunded),
            _ => (Vec::new(), Decimal::ZERO),
        };
        match event.kind {
            CustomerEventKind::PlacedOrder => {}
            CustomerEventKind::FirstPurchase | CustomerEventKind::RepeatPurchase => {
                let customer = customer_row(&customer_key(
                    &event.shop_domain,
                    event.customer_id,
                    event.order_id,
                ));
                let count = self.purchases(&customer)?.max(event.customer_order_number);
                self.rows.insert(customer, Reported::Purchases(count));
            }
            CustomerEventKind::ReceivedRefund => {
                refund_ids.extend(event.refund_ids);
                refunded = refunded.max(event.order_refunded);
            }
        }
        self.rows.insert(
            key,
            Reported::Order {
                refund_ids,
                refunded,
            },
        );
        Ok(())
    }

    fn purchases(&mut self, customer: &str) -> Result<u64, StateStoreError> {
        Ok(match self.rows.get(customer)? {
            Some(Reported::Purchases(count)) => *count,
            _ => 0,
        })
    }

    /// The events `order` (an attribution snapshot) implies that were not emitted yet.
    pub fn apply(&mut self, order: &Attribution) -> Result<Vec<CustomerEvent>, StateStoreError> {
        if order.outcome == Outcome::Excluded {
            return Ok(Vec::new());
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
        let row = order_row(&key);
        let (mut reported_ids, mut reported) = match self.rows.get_mut(&row)? {
            Some(Reported::Order {
                refund_ids,
                refunded,
            }) => (std::mem::take(refund_ids), *refunded),
            _ => {
                events.push(event(
                    CustomerEventKind::PlacedOrder,
                    "placed".into(),
                    order.gross,
                ));
                if order.customer_id.is_some() {
                    let customer = customer_row(&customer_key(
                        &order.shop_domain,
                        order.customer_id,
                        order.order_id,
                    ));
                    let count = self.purchases(&customer)? + 1;
                    self.rows.insert(customer, Reported::Purchases(count));
                    let kind = if count == 1 {
                        CustomerEventKind::FirstPurchase
                    } else {
                        CustomerEventKind::RepeatPurchase
                    };
                    let mut purchase = event(kind, "purchase".into(), order.gross);
                    purchase.customer_order_number = count;
                    events.push(purchase);
                }
                (Vec::new(), Decimal::ZERO)
            }
        };
        let new_refunds: Vec<String> = order
            .refund_ids
            .iter()
            .filter(|id| !reported_ids.contains(id))
            .cloned()
            .collect();
        if let Some(first) = new_refunds.first() {
            let amount = (order.refunded - reported).max(Decimal::ZERO);
            let mut refund = event(
                CustomerEventKind::ReceivedRefund,
                format!("refund/{first}"),
                amount,
            );
            refund.refund_ids = new_refunds.clone();
            refund.occurred_at_ms = order.latest_triggered_at_ms.max(order.created_at_ms);
            reported_ids.extend(new_refunds);
            reported = order.refunded;
            events.push(refund);
        }
        self.rows.insert(
            row,
            Reported::Order {
                refund_ids: reported_ids,
                refunded: reported,
            },
        );
        Ok(events)
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
        let store = StateStore::open_configured(self.config.state_dir.as_deref(), STORE_NAME)?;
        let (mut repartitioner, mut emitter) = (
            Repartition,
            Emit {
                brokers: &self.brokers,
                store,
            },
        );
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
struct Emit<'a> {
    brokers: &'a Brokers,
    /// `events.state_dir`'s store, or `None` to keep the state in memory.
    store: Option<StateStore>,
}

impl Stage for Emit<'_> {
    const NAME: &'static str = "events";
    const DEAD_LETTERS: DeadLetterStage = DeadLetterStage::Events;
    type State = CustomerEvents;

    /// The state of `partitions` from the store and the tail of `tributary.events`, in one pass.
    async fn restore(
        &mut self,
        _member: &Member,
        partitions: Vec<i32>,
    ) -> Result<Vec<(i32, CustomerEvents)>, StageError> {
        let states = state::restore_records(
            &self.brokers.bootstrap_servers,
            topics::EVENTS,
            self.store.as_ref(),
            partitions,
            CustomerEvents::absorb,
        )
        .await?;
        Ok(states)
    }

    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        state: &mut CustomerEvents,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        let order = match message.payload().map(Attribution::from_avro).transpose() {
            Ok(Some(order)) => order,
            Ok(None) => return Ok(()),
            Err(error) => {
                return Err(TopicError::unreadable(message.topic(), message, error).into())
            }
        };
        let events = state.apply(&order)?;
        send_all(out, message, Ok(emit(message, events))).await
    }

    /// Writes the state changed since the last flush to the store with `tributary.events`' end.
    async fn checkpointed(
        &mut self,
        states: &mut HashMap<i32, CustomerEvents>,
        when: CommitWhen,
        out: &Outbox,
    ) -> Result<(), StageError> {
        Ok(state::checkpoint(topics::EVENTS, states, when, out, |s| s)?)
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

/// The records of `events`, each to the input's partition number of `tributary.events`.
fn emit(message: &BorrowedMessage<'_>, events: Vec<CustomerEvent>) -> Vec<Output> {
    events
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
        .collect()
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
        let mut emitted = state.apply(&order(1, Some(42))).unwrap();
        assert_eq!(kinds(&emitted), [(PlacedOrder, 0), (FirstPurchase, 1)]);
        assert!(
            state.apply(&order(1, Some(42))).unwrap().is_empty(),
            "a redelivered snapshot"
        );
        let mut refunded = order(1, Some(42));
        (refunded.refunded, refunded.refund_ids) = (30.into(), vec!["9".into()]);
        let refund = state.apply(&refunded).unwrap();
        assert_eq!(
            (refund[0].kind, refund[0].amount),
            (ReceivedRefund, 30.into())
        );
        emitted.extend(refund);
        let guest = state.apply(&order(2, None)).unwrap();
        assert_eq!(
            kinds(&guest),
            [(PlacedOrder, 0)],
            "no customer: no purchase event"
        );
        emitted.extend(guest);

        let mut restored = CustomerEvents::restore(emitted);
        assert!(restored.apply(&refunded).unwrap().is_empty());
        assert_eq!(
            kinds(&restored.apply(&order(3, Some(42))).unwrap()),
            [(PlacedOrder, 0), (RepeatPurchase, 2)]
        );
        let mut excluded = order(4, Some(42));
        excluded.outcome = Outcome::Excluded;
        assert!(restored.apply(&excluded).unwrap().is_empty());
    }

    #[test]
    fn what_was_reported_survives_a_flush_and_a_reopen_of_the_store() {
        use tributary_runtime::state::Changelogged;
        use CustomerEventKind::*;
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), STORE_NAME).unwrap();
        let mut state = CustomerEvents::open(Some(&store), 0);
        let mut refunded = order(1, Some(42));
        (refunded.refunded, refunded.refund_ids) = (30.into(), vec!["9".into()]);
        assert_eq!(state.apply(&refunded).unwrap().len(), 3);
        state.flush(3).unwrap();
        assert_eq!(state.in_memory(), 0);
        drop((state, store));

        let store = StateStore::open(dir.path(), STORE_NAME).unwrap();
        assert_eq!(store.changelog_next(0).unwrap(), Some(3));
        let mut reopened = CustomerEvents::open(Some(&store), 0);
        assert!(reopened.apply(&refunded).unwrap().is_empty());
        assert_eq!(
            kinds(&reopened.apply(&order(2, Some(42))).unwrap()),
            [(PlacedOrder, 0), (RepeatPurchase, 2)]
        );
    }
}
