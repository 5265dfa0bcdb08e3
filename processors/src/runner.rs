//! The processor's consume-process-produce loop.
//!
//! Offset contract: a `shopify.webhooks` offset is committed only after every record its
//! processing produced (order event, attribution, dead letter) has been acknowledged by the
//! broker. A crash therefore replays at most the uncommitted tail, and replaying it is harmless:
//! the partition's state is restored from `tributary.attributions`, which already holds whatever
//! of that tail was emitted, so dedup drops it; what was not emitted is processed again, with the
//! same result. Outputs go to the input's partition number, so a partition's state is found in the
//! same partition of `tributary.attributions`.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::{Message, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tributary_runtime::dead_letter::{DeadLetterRecord, DeadLetterStage};
use tributary_runtime::kafka::{now_ms, TopicError, READ_METADATA};
use tributary_runtime::member::{Brokers, CommitWhen};
use tributary_runtime::stage::{self, Failure, Input, Member, Outbox, Output, Stage, StageError};
use tributary_runtime::state::{self as keyed_state, RestoreError};
use tributary_schemas::topics::{self, order_key};
use tributary_schemas::{Attribution, AvroRecord, OrderEvent, Store, WebhookEnvelope};

use crate::attribution::{decide, manual};
use crate::dedup::Verdict;
use crate::normalize::{normalize, ApprovalCommand, ManualCommand, Normalized, RefundEvent};
use crate::settled::{self, SettledOrders, StateStore, StateStoreError, DAY_MS};
use crate::state::{Applied, PartitionState};
use tributary_runtime::control::Control;

/// Configuration of the processor (`[processor]` in the config file).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Consumer group; processors in one group share the partitions of `shopify.webhooks`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// How often produced records are awaited and input offsets committed.
    #[serde(default = "default_commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// Commit early once this many produced records await acknowledgement.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A partition that holds unsettled orders and has read nothing for this long gets an idle
    /// tick: a record carrying the current time as its event time, so a quiet store's orders
    /// still settle. The tick is in the topic, so a replay settles exactly as the first run did.
    #[serde(default = "default_idle_tick_ms")]
    pub idle_tick_ms: u64,
    /// Where settled orders are kept on disk (`settled.redb`, see `processors::settled`), with
    /// `tributary.attributions` as the changelog: memory stays bounded as orders accumulate and a
    /// restart reads only the changelog's tail. One directory per processor process. Unset: in
    /// memory, rebuilt from the whole changelog on every restart (the embedded broker's mode,
    /// whose log does not outlive the process).
    #[serde(default)]
    pub state_dir: Option<std::path::PathBuf>,
    /// The furthest an event time (`X-Shopify-Triggered-At`) may lie ahead of the time ingest
    /// received the delivery, in ms. A record beyond it is taken as happening when it was received
    /// (`tributary_processor_future_event_times_total`): it settles like any record of that time,
    /// and a wrong clock or a forged header can never move a partition's watermark into the future
    /// (which would settle every later order at once). A watermark committed beyond now plus this
    /// (by a release without the rule) is brought back to now on restore.
    #[serde(default = "default_max_event_time_ahead_ms")]
    pub max_event_time_ahead_ms: u64,
    /// Days of event time an unchanged settled order is kept (default 400; 0 keeps every order
    /// forever). An order whose last change lies before the watermark's day less this many days
    /// leaves the state with a tombstone on `tributary.attributions`; ClickHouse keeps its rows.
    /// A later record for an order created before that horizon is dead-lettered (stage
    /// `expired`) rather than counted again as new.
    #[serde(default = "default_expire_after_days")]
    pub expire_after_days: u32,
    /// Minutes of event time a refund that arrives before any version of its order waits for the
    /// order (default 60; 0: dead-lettered at once). Meanwhile the input is not committed past it
    /// (a replay rebuilds it, as for held orders); past the wait it is dead-lettered (stage
    /// `refund`) with the reason, and counts once replayed after its order, or when the order's
    /// own record lists it.
    #[serde(default = "default_early_refund_wait_minutes")]
    pub early_refund_wait_minutes: u32,
}

fn default_group() -> String {
    "tributary-processor".into()
}
fn default_commit_interval_ms() -> u64 {
    200
}
fn default_max_in_flight() -> usize {
    20_000
}
fn default_idle_tick_ms() -> u64 {
    10_000
}
fn default_max_event_time_ahead_ms() -> u64 {
    10 * 60_000
}
fn default_expire_after_days() -> u32 {
    400
}
fn default_early_refund_wait_minutes() -> u32 {
    60
}

impl Default for Config {
    fn default() -> Self {
        Self {
            group_id: default_group(),
            commit_interval_ms: default_commit_interval_ms(),
            max_in_flight: default_max_in_flight(),
            idle_tick_ms: default_idle_tick_ms(),
            state_dir: None,
            max_event_time_ahead_ms: default_max_event_time_ahead_ms(),
            expire_after_days: default_expire_after_days(),
            early_refund_wait_minutes: default_early_refund_wait_minutes(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A topic could not be read: a restore failed, or a record this release cannot read.
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("a produced record was not acknowledged: {0}")]
    Delivery(String),
    #[error(transparent)]
    State(#[from] StateStoreError),
}

impl From<RestoreError> for ProcessorError {
    fn from(error: RestoreError) -> Self {
        match error {
            RestoreError::Topic(error) => Self::Topic(error),
            RestoreError::Store(error) => Self::State(error),
        }
    }
}

impl From<ProcessorError> for StageError {
    fn from(error: ProcessorError) -> Self {
        match error {
            ProcessorError::Kafka(error) => StageError::Kafka(error),
            ProcessorError::Topic(error) => StageError::Topic(error),
            ProcessorError::Delivery(reason) => StageError::Delivery(reason),
            ProcessorError::State(error) => StageError::stage(error),
        }
    }
}

pub struct Processor {
    brokers: Brokers,
    config: Config,
    control: Arc<RwLock<Control>>,
}

impl Processor {
    pub fn new(brokers: &Brokers, config: Config, control: Arc<RwLock<Control>>) -> Self {
        Self {
            brokers: brokers.clone(),
            config,
            control,
        }
    }

    /// Runs until `shutdown`; commits what is done before returning (see [`stage::run`]).
    pub async fn run(
        &self,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let store =
            StateStore::open_configured(self.config.state_dir.as_deref(), settled::STORE_NAME)?;
        let mut stage = Processing {
            processor: self,
            store,
            idle_tick_after: Duration::from_millis(self.config.idle_tick_ms),
        };
        let input = Input {
            brokers: &self.brokers,
            group: &self.config.group_id,
            topic: topics::WEBHOOKS,
            commit_interval: Duration::from_millis(self.config.commit_interval_ms),
            max_in_flight: self.config.max_in_flight,
        };
        stage::run(&mut stage, input, ready, shutdown).await
    }

    /// Rebuilds the order state of `partitions`: from the on-disk store and the changelog's tail
    /// when there is a store, else from the whole of `tributary.attributions`, in one pass.
    async fn restore(
        &self,
        store: Option<&StateStore>,
        partitions: Vec<i32>,
        watermarks: HashMap<i32, i64>,
    ) -> Result<HashMap<i32, PartitionState>, ProcessorError> {
        let started = std::time::Instant::now();
        if let Some(store) = store {
            // A partition stored before the expiry index is rebuilt once, which indexes it.
            for &partition in &partitions {
                if !settled::indexed(store, partition)? {
                    store.clear(partition)?;
                }
            }
        }
        let settled: Vec<(i32, SettledOrders)> = keyed_state::restore(
            &self.brokers.bootstrap_servers,
            topics::ATTRIBUTIONS,
            store,
            partitions,
            |settled: &mut SettledOrders, message| {
                match message.payload().map(Attribution::from_avro) {
                    Some(Ok(record)) => settled.absorb(record)?,
                    Some(Err(error)) => {
                        return Err(
                            TopicError::unreadable(topics::ATTRIBUTIONS, message, error).into()
                        )
                    }
                    None => settled.absorb_tombstone(&keyed_state::key_of(message)),
                }
                Ok(())
            },
        )
        .await?;
        let states: HashMap<i32, PartitionState> = settled
            .into_iter()
            .map(|(partition, settled)| {
                let ahead = i64::try_from(self.config.max_event_time_ahead_ms).unwrap_or(i64::MAX);
                let watermark = watermarks.get(&partition).copied().unwrap_or_default();
                let watermark = if watermark > now_ms().saturating_add(ahead) {
                    tracing::warn!(
                        partition,
                        watermark,
                        "committed watermark lies in the future; brought back to now"
                    );
                    now_ms()
                } else {
                    watermark
                };
                let expire_after = (self.config.expire_after_days > 0)
                    .then(|| i64::from(self.config.expire_after_days) * DAY_MS);
                let early_refund_wait = i64::from(self.config.early_refund_wait_minutes) * 60_000;
                let state = PartitionState::with_settled(settled, watermark)
                    .expiring_after(expire_after)
                    .holding_early_refunds_for(early_refund_wait);
                (partition, state)
            })
            .collect();
        tracing::info!(
            partitions = ?states.keys().collect::<Vec<_>>(),
            orders = states.values().map(PartitionState::len).sum::<usize>(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partition state restored"
        );
        Ok(states)
    }

    /// Takes an event time too far ahead of the receive time as the receive time (see
    /// [`Config::max_event_time_ahead_ms`]).
    fn bound_event_time(&self, envelope: &mut WebhookEnvelope) {
        let ahead = i64::try_from(self.config.max_event_time_ahead_ms).unwrap_or(i64::MAX);
        if envelope.triggered_at_ms > envelope.received_at_ms.saturating_add(ahead) {
            metrics::counter!("tributary_processor_future_event_times_total").increment(1);
            tracing::warn!(
                shop = %envelope.shop_domain,
                webhook_id = %envelope.webhook_id,
                triggered_at_ms = envelope.triggered_at_ms,
                received_at_ms = envelope.received_at_ms,
                "event time far ahead of its receive time; taken as the receive time"
            );
            envelope.triggered_at_ms = envelope.received_at_ms;
        }
    }

    /// Everything one input record produces: its own outputs, then the attributions of every held
    /// order the watermark has now passed, and the dead letters of refunds that waited for their
    /// order in vain. Control data is read once per record.
    fn process(
        &self,
        message: &BorrowedMessage<'_>,
        state: &mut PartitionState,
        letters: &mut EarlyLetters,
    ) -> Result<Vec<Output>, StateStoreError> {
        let mut envelope = match message.payload().map(WebhookEnvelope::from_avro) {
            Some(Ok(envelope)) => envelope,
            Some(Err(error)) => {
                return Ok(vec![dead_letter(
                    message,
                    DeadLetterStage::Decode,
                    &error.to_string(),
                )])
            }
            None => {
                return Ok(vec![dead_letter(
                    message,
                    DeadLetterStage::Decode,
                    "record has no value",
                )])
            }
        };
        self.bound_event_time(&mut envelope);
        let control = self.control.read().unwrap_or_else(|p| p.into_inner());
        let mut outputs = if envelope.is_idle_tick() {
            Vec::new()
        } else {
            process_envelope(message, &envelope, state, letters, &control)?
        };
        if envelope.carries_event_time() {
            state.observe(envelope.triggered_at_ms);
        }
        let settled = state.settle_due(message.offset(), |event| {
            let Some(store) = control.active_store(&event.shop_domain) else {
                metrics::counter!("tributary_processor_skipped_total", "reason" => "store_not_connected").increment(1);
                return None;
            };
            Some(decide(event, store, control.advocates(&event.shop_domain)))
        });
        for attribution in settled {
            let key = order_key(&attribution.shop_domain, attribution.order_id).into_bytes();
            outputs.push(encoded(
                message,
                topics::ATTRIBUTIONS,
                key,
                attribution.to_avro(),
            ));
        }
        let wait_minutes = self.config.early_refund_wait_minutes;
        for (offset, refund) in state.give_up_early_refunds() {
            let order = order_key(&refund.shop_domain, refund.order_id);
            let reason = format!(
                "refund {} came before its order {}, which did not arrive within {wait_minutes} min of event time; replay it once the order is in (the order's own record listing the refund also counts it)",
                refund.refund.refund_id, refund.order_id
            );
            let Some(waiting) = letters.get_mut(&order) else {
                tracing::error!(
                    order,
                    offset,
                    "no record kept for a refund given up; it stays in the input at that offset"
                );
                continue;
            };
            if let Some(at) = waiting.iter().position(|m| m.offset() == offset) {
                let letter = waiting.remove(at);
                outputs.push(dead_letter(&letter, DeadLetterStage::Refund, &reason));
            }
            if waiting.is_empty() {
                letters.remove(&order);
            }
        }
        // At a deterministic position (the first record of each day of watermark), so a replay
        // expires the same orders at the same place.
        let expired = state.expire_due()?;
        if !expired.is_empty() {
            metrics::counter!("tributary_processor_expired_orders_total")
                .increment(expired.len() as u64);
            tracing::info!(
                partition = message.partition(),
                orders = expired.len(),
                "settled orders past the state's horizon expired"
            );
        }
        for key in expired {
            outputs.push(Output {
                topic: topics::ATTRIBUTIONS,
                partition: Some(message.partition()),
                key: key.into_bytes(),
                payload: None,
                headers: None,
            });
        }
        Ok(outputs)
    }
}

/// One input partition of the processor: its orders, and when it last read a record (for idle
/// ticks).
struct Partition {
    orders: PartitionState,
    last_read: Instant,
    /// The records of the refunds waiting for their order, by order key: what is dead-lettered
    /// if the order does not come.
    early_letters: EarlyLetters,
}

/// Records of refunds that came before their order, by order key.
type EarlyLetters = HashMap<String, Vec<OwnedMessage>>;

impl Default for Partition {
    fn default() -> Self {
        Self {
            orders: PartitionState::default(),
            last_read: Instant::now(),
            early_letters: HashMap::new(),
        }
    }
}

/// The processor as the consume loop runs it.
struct Processing<'a> {
    processor: &'a Processor,
    /// The settled orders on disk (`processor.state_dir`), or `None` to keep them in memory.
    store: Option<StateStore>,
    idle_tick_after: Duration,
}

impl Stage for Processing<'_> {
    const NAME: &'static str = "processor";
    const DEAD_LETTERS: DeadLetterStage = DeadLetterStage::Encode;
    type State = Partition;

    async fn restore(
        &mut self,
        member: &Member,
        partitions: Vec<i32>,
    ) -> Result<Vec<(i32, Partition)>, StageError> {
        let watermarks = committed_watermarks(member, &partitions);
        let restored = self
            .processor
            .restore(self.store.as_ref(), partitions, watermarks)
            .await?;
        Ok(restored
            .into_iter()
            .map(|(partition, orders)| {
                let last_read = Instant::now();
                let partition_state = Partition {
                    orders,
                    last_read,
                    early_letters: HashMap::new(),
                };
                (partition, partition_state)
            })
            .collect())
    }

    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        partition: &mut Partition,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        partition.last_read = Instant::now();
        let outputs = self
            .processor
            .process(message, &mut partition.orders, &mut partition.early_letters)
            .map_err(StageError::stage)?;
        for output in outputs {
            out.send(output).await?;
        }
        metrics::counter!("tributary_processor_records_total").increment(1);
        Ok(())
    }

    /// Never past the first record of a held order (see [`PartitionState::commit_position`]),
    /// with the watermark beside it.
    fn commit_position(&self, partition: &Partition, next: i64) -> (i64, String) {
        let (offset, watermark) = partition.orders.commit_position(next);
        (offset, watermark_metadata(watermark, next))
    }

    /// Writes the settled orders changed since the last checkpoint to the on-disk store with the
    /// changelog's end: every record emitted so far is acknowledged by then, so the store never
    /// runs ahead of its changelog.
    async fn checkpointed(
        &mut self,
        states: &mut HashMap<i32, Partition>,
        when: CommitWhen,
        out: &Outbox,
    ) -> Result<(), StageError> {
        Ok(keyed_state::checkpoint(
            topics::ATTRIBUTIONS,
            states,
            when,
            out,
            |p| p.orders.settled_mut(),
        )?)
    }

    /// Gauges, and an idle tick for each partition that holds orders and has read nothing for
    /// `idle_tick_ms`.
    async fn tick(
        &mut self,
        states: &mut HashMap<i32, Partition>,
        out: &mut Outbox,
    ) -> Result<(), StageError> {
        for (&number, partition) in states.iter_mut() {
            let label = number.to_string();
            let orders = &partition.orders;
            metrics::gauge!("tributary_processor_held_orders", "partition" => label.clone())
                .set(orders.held_len() as f64);
            metrics::gauge!("tributary_processor_early_refunds", "partition" => label.clone())
                .set(orders.early_refunds_len() as f64);
            metrics::gauge!("tributary_processor_watermark_ms", "partition" => label)
                .set(orders.watermark_ms() as f64);
            let waiting = orders.held_len() + orders.early_refunds_len();
            if waiting > 0 && partition.last_read.elapsed() >= self.idle_tick_after {
                out.send(idle_tick(number)).await?;
                partition.last_read = Instant::now();
            }
        }
        Ok(())
    }
}

fn process_envelope(
    message: &BorrowedMessage<'_>,
    envelope: &WebhookEnvelope,
    state: &mut PartitionState,
    letters: &mut EarlyLetters,
    control: &Control,
) -> Result<Vec<Output>, StateStoreError> {
    let normalized = match normalize(envelope) {
        Ok(Normalized::Skipped) => return Ok(Vec::new()),
        Ok(normalized) => normalized,
        Err(error) => {
            return Ok(vec![dead_letter(
                message,
                DeadLetterStage::Normalize,
                &error.to_string(),
            )])
        }
    };
    let Some(store) = control.active_store(&envelope.shop_domain) else {
        // An operator's command is never dropped without a word; a webhook of a store that
        // was disconnected is simply not counted.
        let stage = match &normalized {
            Normalized::Manual(_) => Some(DeadLetterStage::Manual),
            Normalized::Approval(_) => Some(DeadLetterStage::Approval),
            _ => None,
        };
        if let Some(stage) = stage {
            let reason = format!(
                "store {} is not connected; the command was not applied",
                envelope.shop_domain
            );
            return Ok(vec![dead_letter(message, stage, &reason)]);
        }
        metrics::counter!("tributary_processor_skipped_total", "reason" => "store_not_connected")
            .increment(1);
        tracing::debug!(shop = %envelope.shop_domain, "record of a store that is not connected; skipped");
        return Ok(Vec::new());
    };
    match normalized {
        Normalized::Order(event) => {
            let outputs = process_order(message, &event, state, store, control)?;
            // Refunds that waited for this order went with it.
            let key = order_key(&event.shop_domain, event.order_id);
            if letters.contains_key(&key) && !state.has_early_refunds(&key) {
                letters.remove(&key);
            }
            Ok(outputs)
        }
        Normalized::Refund(refund) => process_refund(message, &refund, state, letters),
        Normalized::Manual(command) => process_manual(message, &command, state, store, control),
        Normalized::Approval(command) => process_approval(message, &command, state),
        Normalized::Skipped => Ok(Vec::new()),
    }
}

fn process_order(
    message: &BorrowedMessage<'_>,
    event: &OrderEvent,
    state: &mut PartitionState,
    store: &Store,
    control: &Control,
) -> Result<Vec<Output>, StateStoreError> {
    let settle_delay_ms = i64::from(store.settle_delay_minutes.max(0)) * 60_000;
    let applied = state.apply(event, message.offset(), settle_delay_ms, || {
        decide(event, store, control.advocates(&event.shop_domain))
    })?;
    let key = || order_key(&event.shop_domain, event.order_id).into_bytes();
    let order_event = || encoded(message, topics::ORDERS, key(), event.to_avro());
    Ok(match applied {
        // A stale version is still a fact about the order; a duplicate is not.
        Applied::Unchanged(verdict) if verdict.is_duplicate() => dropped(verdict),
        Applied::Unchanged(verdict) => {
            dropped(verdict);
            vec![order_event()]
        }
        Applied::Held => vec![order_event()],
        Applied::Changed(attribution) => vec![
            order_event(),
            encoded(message, topics::ATTRIBUTIONS, key(), attribution.to_avro()),
        ],
        Applied::Refused(reason) => vec![dead_letter(message, DeadLetterStage::Expired, &reason)],
        // Only refunds wait for an order, and an order is never unknown to itself.
        Applied::UnknownOrder | Applied::Waiting => Vec::new(),
    })
}

fn process_refund(
    message: &BorrowedMessage<'_>,
    refund: &RefundEvent,
    state: &mut PartitionState,
    letters: &mut EarlyLetters,
) -> Result<Vec<Output>, StateStoreError> {
    let key = order_key(&refund.shop_domain, refund.order_id).into_bytes();
    Ok(match state.apply_refund(refund, message.offset())? {
        Applied::Changed(attribution) => {
            vec![encoded(message, topics::ATTRIBUTIONS, key, attribution.to_avro())]
        }
        Applied::Unchanged(verdict) => dropped(verdict),
        Applied::Waiting => {
            let order = order_key(&refund.shop_domain, refund.order_id);
            letters.entry(order).or_default().push(message.detach());
            Vec::new()
        }
        Applied::Held | Applied::Refused(_) => Vec::new(),
        Applied::UnknownOrder => vec![dead_letter(
            message,
            DeadLetterStage::Refund,
            &format!(
                "refund {} is for order {}, which this partition has not seen; replay it once the order is in",
                refund.refund.refund_id, refund.order_id
            ),
        )],
    })
}

fn process_manual(
    message: &BorrowedMessage<'_>,
    command: &ManualCommand,
    state: &mut PartitionState,
    store: &Store,
    control: &Control,
) -> Result<Vec<Output>, StateStoreError> {
    let advocates = control.advocates(&command.shop_domain);
    let Some(advocate) = advocates.by_identifier(&command.body.advocate_identifier) else {
        let reason = format!(
            "{} is not an active advocate of {}",
            command.body.advocate_identifier, command.shop_domain
        );
        return Ok(vec![dead_letter(message, DeadLetterStage::Manual, &reason)]);
    };
    let decision = manual(advocate, &command.body.requested_by, store);
    let applied = state.apply_manual(command, decision, message.offset())?;
    Ok(command_outputs(
        message,
        DeadLetterStage::Manual,
        &command.shop_domain,
        command.body.order_id,
        applied,
    ))
}

fn process_approval(
    message: &BorrowedMessage<'_>,
    command: &ApprovalCommand,
    state: &mut PartitionState,
) -> Result<Vec<Output>, StateStoreError> {
    let applied = state.apply_approval(command, message.offset())?;
    Ok(command_outputs(
        message,
        DeadLetterStage::Approval,
        &command.shop_domain,
        command.body.order_id,
        applied,
    ))
}

/// What an operator's command about `order_id` produces: the changed attribution, or a dead
/// letter that says why it did not apply.
fn command_outputs(
    message: &BorrowedMessage<'_>,
    stage: DeadLetterStage,
    shop_domain: &str,
    order_id: u64,
    applied: Applied,
) -> Vec<Output> {
    match applied {
        Applied::Changed(attribution) => {
            let key = order_key(shop_domain, order_id).into_bytes();
            vec![encoded(message, topics::ATTRIBUTIONS, key, attribution.to_avro())]
        }
        Applied::Held | Applied::Unchanged(_) | Applied::Waiting => Vec::new(),
        Applied::UnknownOrder => vec![dead_letter(
            message,
            stage,
            &format!("order {order_id} has not been seen in this partition; replay the command once it is in"),
        )],
        Applied::Refused(reason) => vec![dead_letter(message, stage, &reason)],
    }
}

/// Counts a record dedup dropped; it produces nothing.
fn dropped(verdict: Verdict) -> Vec<Output> {
    metrics::counter!("tributary_dedup_dropped_total", "reason" => verdict.label()).increment(1);
    Vec::new()
}

/// An output to the input's partition number, or a dead letter if it could not be encoded.
fn encoded(
    message: &BorrowedMessage<'_>,
    topic: &'static str,
    key: Vec<u8>,
    payload: Result<Vec<u8>, impl std::fmt::Display>,
) -> Output {
    match payload {
        Ok(payload) => Output {
            topic,
            partition: Some(message.partition()),
            key,
            payload: Some(payload),
            headers: None,
        },
        Err(error) => dead_letter(message, DeadLetterStage::Encode, &error.to_string()),
    }
}

fn idle_tick(partition: i32) -> Output {
    Output {
        topic: topics::WEBHOOKS,
        partition: Some(partition),
        key: b"idle-tick".to_vec(),
        payload: Some(
            WebhookEnvelope::idle_tick(partition, now_ms())
                .to_avro()
                .unwrap_or_default(),
        ),
        headers: None,
    }
}

/// The commit metadata that carries a partition's watermark with its committed offset.
/// `watermark_ms=<ms>;read=<offset>`: the partition's watermark, and how far the processor has
/// read (beyond the committed offset while orders are held), which ingest's backpressure reads
/// as the group's position (see `tributary_runtime::kafka::PartitionProgress`).
fn watermark_metadata(watermark_ms: i64, read: i64) -> String {
    format!("watermark_ms={watermark_ms};{READ_METADATA}{read}")
}

/// The watermarks committed beside the group's offsets of `partitions`; missing ones read as 0.
fn committed_watermarks<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    partitions: &[i32],
) -> HashMap<i32, i64> {
    let mut wanted = TopicPartitionList::new();
    for &partition in partitions {
        wanted.add_partition(topics::WEBHOOKS, partition);
    }
    let committed = match consumer.committed_offsets(wanted, Duration::from_secs(10)) {
        Ok(committed) => committed,
        Err(error) => {
            tracing::warn!(%error, "reading committed watermarks failed; starting from 0");
            return HashMap::new();
        }
    };
    committed
        .elements()
        .iter()
        .filter_map(|element| {
            let watermark = element
                .metadata()
                .split(';')
                .find_map(|field| field.strip_prefix("watermark_ms="))?
                .parse()
                .ok()?;
            Some((element.partition(), watermark))
        })
        .collect()
}

fn dead_letter(message: &impl Message, stage: DeadLetterStage, error: &str) -> Output {
    let letter = DeadLetterRecord::new(message, stage, error);
    Output {
        topic: topics::DEAD_LETTERS,
        partition: None,
        key: letter.key,
        payload: Some(letter.payload),
        headers: Some(letter.headers),
    }
}
