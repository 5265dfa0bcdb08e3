//! Rewards as Shopify store credit: an approved reward credits the advocate's store credit
//! account (the Shopify customer with the advocate's email), a reversal debits it. For stores with
//! `features.reward_store_credit`, Admin API access and status active; a point is worth the
//! activity's `store_credit_per_point` in shop currency.
//!
//! Shopify offers no idempotency key for store credit, so "never twice" is built here:
//!
//! - **One writer per advocate.** The input is `tributary.rewards_by_advocate` (the events
//!   stage's repartition): every record whose ledger moves an advocate's wallet, keyed by that
//!   advocate. One partition, so one consumer, holds each advocate.
//! - **A write-ahead changelog.** `tributary.store_credits` holds one [`StoreCreditPush`] per
//!   reward entry, written to the input's partition number. Before a call the stage reads the
//!   account's newest transaction and writes `PENDING` with it (and waits for the broker); after
//!   the call it writes `APPLIED` with Shopify's transaction id, or `REFUSED` with the reason.
//!   On assignment it restores the partition's pushes from the changelog, so an `APPLIED` or
//!   `REFUSED` entry is never sent again, whatever is redelivered.
//! - **Settling a doubt.** A `PENDING` entry without an outcome (the stage died mid-call), or a
//!   call whose answer was lost (a 5xx or a timeout: the client does not repeat these for store
//!   credit), is settled by reading the account's transactions newer than the recorded one: a
//!   transaction of the same kind and amount that no other entry claims is this push, applied.
//!   Otherwise it was not, and it is sent again.
//!
//! The one case this cannot tell apart: a merchant moving the same amount by hand on the same
//! account in the seconds between a push and its crash. Such a push is taken as applied.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use rust_decimal::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tributary_runtime::control::Control;
use tributary_runtime::dead_letter::DeadLetterStage;
use tributary_runtime::kafka::{now_ms, TopicError};
use tributary_runtime::member::{Brokers, CommitWhen};
use tributary_runtime::stage::{self, Failure, Input, Member, Outbox, Output, Stage, StageError};
use tributary_runtime::state::{self, KeyedState, Row, StateStore, StateStoreError};
use tributary_schemas::{
    topics, Attribution, AvroRecord, RewardEntry, RewardEntryKind, StoreCreditDirection,
    StoreCreditPush, StoreCreditState, StoreStatus,
};
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::operations::{
    CUSTOMER_STORE_CREDIT, STORE_CREDIT_CREDIT, STORE_CREDIT_DEBIT,
};
use tributary_shopify::{AdminClient, AdminError, StoreAccess};

/// `[store_credit]`: the stage that pushes rewards to Shopify store credit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreCreditConfig {
    /// Consumer group of the store credit stage.
    pub group_id: String,
    /// How often the offsets of handled records are committed.
    pub commit_interval_ms: u64,
    /// How many of an account's newest transactions are read to settle a push in doubt.
    pub doubt_window: u32,
    /// Where the stage keeps its pushes (`<state_dir>/store_credit.redb`), so memory stays
    /// bounded and a restart reads only the tail of `tributary.store_credits`. Unset: in memory,
    /// rebuilt from the whole topic on every assignment (what the embedded broker needs). Give
    /// each process its own directory.
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for StoreCreditConfig {
    fn default() -> Self {
        Self {
            group_id: "tributary-store-credit".into(),
            commit_interval_ms: 200,
            doubt_window: 25,
            state_dir: None,
        }
    }
}

/// What a reward entry moves on the advocate's store credit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    pub entry_id: String,
    pub direction: StoreCreditDirection,
    pub amount: Decimal,
}

/// The store credit `advocate_id`'s entries in an order's reward ledger move, at `per_point`. A
/// reversal moves the difference of the money values of the request's cumulative reversals, so
/// rounding never drifts and debits never total more than the credit.
pub fn movements(ledger: &[RewardEntry], advocate_id: &str, per_point: Decimal) -> Vec<Movement> {
    let money = |points: Decimal| {
        (points * per_point).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
    };
    let mut reversed: HashMap<&str, Decimal> = HashMap::new();
    let mut moves = Vec::new();
    for entry in ledger.iter().filter(|e| e.advocate_id == advocate_id) {
        let (direction, amount) = match entry.kind {
            RewardEntryKind::Approval => (StoreCreditDirection::Credit, money(entry.points)),
            RewardEntryKind::Reversal => {
                let before = reversed.entry(&entry.request_id).or_default();
                let after = *before + entry.points;
                let amount = money(after) - money(*before);
                *before = after;
                (StoreCreditDirection::Debit, amount)
            }
            RewardEntryKind::Request | RewardEntryKind::Void => continue,
        };
        if amount > Decimal::ZERO {
            moves.push(Movement {
                entry_id: entry.entry_id.clone(),
                direction,
                amount,
            });
        }
    }
    moves
}

/// The pushes of one partition: rows keyed `push/<entry id>` (the entry's latest record) and
/// `transaction/<id>` (the entry a Shopify transaction is the push of, for [`settle`]'s claims). A
/// [`KeyedState`] (in memory, or on disk in `<store_credit.state_dir>/store_credit.redb`) whose
/// changelog is `tributary.store_credits`.
#[derive(Debug, Default)]
pub struct Pushes {
    rows: KeyedState<PushRow>,
}

tributary_runtime::changelogged_by!(Pushes, rows);

/// The store's name: `<state_dir>/store_credit.redb`.
pub const STORE_NAME: &str = "store_credit";

#[derive(Debug)]
enum PushRow {
    Push(Box<StoreCreditPush>),
    /// The entry id whose push this transaction is.
    ClaimedBy(String),
}

impl Row for PushRow {
    /// A tag byte, then the push's Avro record or the entry id.
    fn encode(&self) -> Result<Vec<u8>, StateStoreError> {
        Ok(match self {
            Self::Push(push) => [&[0u8][..], &push.to_avro()?].concat(),
            Self::ClaimedBy(entry_id) => [&[1u8][..], entry_id.as_bytes()].concat(),
        })
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateStoreError> {
        match bytes.split_first() {
            Some((0, push)) => Ok(Self::Push(Box::new(StoreCreditPush::from_avro(push)?))),
            Some((1, entry_id)) => Ok(Self::ClaimedBy(
                String::from_utf8_lossy(entry_id).into_owned(),
            )),
            _ => Err(StateStoreError::Row("not a store credit row".into())),
        }
    }
}

impl Pushes {
    /// The entry's latest push.
    fn get(&mut self, entry_id: &str) -> Result<Option<StoreCreditPush>, StateStoreError> {
        Ok(match self.rows.get(&format!("push/{entry_id}"))? {
            Some(PushRow::Push(push)) => Some((**push).clone()),
            _ => None,
        })
    }

    /// Keeps the entry's latest push (a changelog record, read back or just written).
    fn insert(&mut self, push: StoreCreditPush) {
        if let Some(transaction) = &push.transaction_id {
            self.rows.insert(
                format!("transaction/{transaction}"),
                PushRow::ClaimedBy(push.entry_id.clone()),
            );
        }
        self.rows.insert(
            format!("push/{}", push.entry_id),
            PushRow::Push(Box::new(push)),
        );
    }

    /// The ids among `transactions` that some entry's push already is.
    fn claimed(
        &mut self,
        transactions: &[Transaction],
    ) -> Result<HashSet<String>, StateStoreError> {
        let mut claimed = HashSet::new();
        for id in transactions.iter().filter_map(|t| t.id.as_deref()) {
            if self.rows.contains(&format!("transaction/{id}"))? {
                claimed.insert(id.to_owned());
            }
        }
        Ok(claimed)
    }
}

/// The customer as Shopify answers [`CUSTOMER_STORE_CREDIT`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CustomerData {
    customer_by_identifier: Option<Customer>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Customer {
    id: String,
    store_credit_accounts: Nodes<Account>,
}

#[derive(Debug, Deserialize)]
struct Nodes<T> {
    nodes: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct Account {
    balance: Money,
    transactions: Nodes<Transaction>,
}

#[derive(Debug, Deserialize)]
struct Transaction {
    #[serde(rename = "__typename")]
    typename: String,
    /// Only transactions that are a `Node` have one (an expiration has none): the
    /// `StoreCreditAccountTransaction` interface itself has no `id` (Admin API 2025-07 to 2026-04).
    #[serde(default)]
    id: Option<String>,
    amount: Money,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Money {
    amount: Decimal,
    currency_code: String,
}

impl Customer {
    /// The account's transactions in `currency`, newest first.
    fn transactions(&self, currency: &str) -> &[Transaction] {
        self.store_credit_accounts
            .nodes
            .iter()
            .find(|a| a.balance.currency_code == currency)
            .map(|a| a.transactions.nodes.as_slice())
            .unwrap_or_default()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoveData {
    #[serde(alias = "storeCreditAccountDebit")]
    store_credit_account_credit: MovePayload,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MovePayload {
    store_credit_account_transaction: Option<TransactionId>,
}

#[derive(Debug, Deserialize)]
struct TransactionId {
    id: String,
}

/// A push's next state.
enum Outcome {
    Pending {
        account_cursor: Option<String>,
        customer_gid: String,
    },
    Applied {
        transaction_id: String,
        customer_gid: String,
    },
    Refused(String),
}

fn recorded(push: StoreCreditPush) -> Attempt {
    Attempt::Recorded {
        state: push.state,
        reason: push.reason,
    }
}

/// What one try at a push came to.
enum Attempt {
    /// An outcome, recorded in the changelog (`APPLIED`, or `REFUSED` for good with the reason).
    Recorded {
        state: StoreCreditState,
        reason: String,
    },
    /// Nothing was applied and nothing is recorded: dead-letter the record with the reason. A
    /// replay of the group after the cause is fixed (a customer created, a token restored)
    /// pushes it.
    NotNow(String),
    /// Shopify failed in a way worth retrying now.
    Retry(String),
}

/// What the account says of a push left `PENDING`.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// This transaction is the push.
    Applied(String),
    NotApplied,
    /// The window did not reach back to the recorded transaction and holds no match.
    Unknown,
}

/// Looks for the pending push among the account's transactions newer than its cursor (newest
/// first, at most `window` read): one of its kind and amount that no other entry claims.
fn settle(
    pending: &StoreCreditPush,
    newest_first: &[Transaction],
    claimed: &HashSet<String>,
    window: usize,
) -> Settled {
    let kind = match pending.direction {
        StoreCreditDirection::Credit => "StoreCreditAccountCreditTransaction",
        StoreCreditDirection::Debit => "StoreCreditAccountDebitTransaction",
    };
    let newer: Vec<&Transaction> = newest_first
        .iter()
        .take_while(|t| t.id.is_none() || t.id != pending.account_cursor)
        .collect();
    if let Some(found) = newer
        .iter()
        .find(|t| {
            t.typename == kind
                && t.amount.amount.abs() == pending.amount
                && t.id.as_deref().is_some_and(|id| !claimed.contains(id))
        })
        .and_then(|t| t.id.clone())
    {
        return Settled::Applied(found);
    }
    let reached_cursor = newer.len() < newest_first.len() || newest_first.len() < window;
    if reached_cursor {
        Settled::NotApplied
    } else {
        Settled::Unknown
    }
}

/// One push's context: the store, the advocate's customer email and the entry.
struct Push<'a> {
    /// The input's partition, which the changelog record goes to.
    partition: i32,
    shop: &'a str,
    token: &'a str,
    email: &'a str,
    order: &'a Attribution,
    advocate_id: &'a str,
    movement: Movement,
}

pub struct StoreCreditStage {
    brokers: Brokers,
    config: StoreCreditConfig,
    admin: Arc<AdminClient>,
    control: Arc<RwLock<Control>>,
    tokens: AccessTokens,
}

impl StoreCreditStage {
    pub fn new(
        brokers: &Brokers,
        config: StoreCreditConfig,
        admin: Arc<AdminClient>,
        control: Arc<RwLock<Control>>,
        tokens: AccessTokens,
    ) -> Self {
        Self {
            brokers: brokers.clone(),
            config,
            admin,
            control,
            tokens,
        }
    }

    /// Consumes `tributary.rewards_by_advocate` until `shutdown`: an input offset is committed
    /// only after every push its record implies has an outcome in the changelog (see
    /// [`stage::run`] for the loop).
    pub async fn run(
        &self,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let input = Input {
            brokers: &self.brokers,
            group: &self.config.group_id,
            topic: topics::REWARDS_BY_ADVOCATE,
            commit_interval: Duration::from_millis(self.config.commit_interval_ms),
            max_in_flight: usize::MAX,
        };
        let store = StateStore::open_configured(self.config.state_dir.as_deref(), STORE_NAME)?;
        let mut pusher = Pusher { stage: self, store };
        stage::run(&mut pusher, input, ready, shutdown).await
    }

    /// Every push the record implies for its advocate, in ledger order, each to an outcome. A
    /// retry comes back here with the same record: the pushes with an outcome are skipped and a
    /// `PENDING` one is settled first.
    async fn handle(
        &self,
        message: &BorrowedMessage<'_>,
        pushes: &mut Pushes,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        let order = match message.payload().map(Attribution::from_avro) {
            Some(Ok(order)) => order,
            // Never skipped: a push it implies could be lost. The stage stops before it.
            Some(Err(error)) => {
                return Err(
                    TopicError::unreadable(topics::REWARDS_BY_ADVOCATE, message, error).into(),
                )
            }
            None => return Ok(()),
        };
        let key = message
            .key()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let Some(advocate_id) = key.strip_prefix(&format!("{}/", order.shop_domain)) else {
            return Ok(());
        };
        let Some((sealed_token, email, per_point)) = self.enabled(&order.shop_domain, advocate_id)
        else {
            return Ok(());
        };
        let mut todo = Vec::new();
        for movement in movements(&order.rewards, advocate_id, per_point) {
            let done = pushes
                .get(&movement.entry_id)?
                .is_some_and(|p| p.state != StoreCreditState::Pending);
            if !done {
                todo.push(movement);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let token = self.tokens.open(&order.shop_domain, &sealed_token).await?;
        for movement in todo {
            let push = Push {
                partition: message.partition(),
                shop: &order.shop_domain,
                token: token.expose(),
                email: &email,
                order: &order,
                advocate_id,
                movement,
            };
            let reason = match self.attempt(&push, pushes, out).await? {
                Attempt::Recorded { state, reason } => {
                    metrics::counter!("tributary_store_credit_pushes_total", "state" => format!("{state:?}")).increment(1);
                    (state == StoreCreditState::Refused).then_some(reason)
                }
                Attempt::NotNow(reason) => Some(reason),
                Attempt::Retry(reason) => {
                    return Err(Failure::Retry(format!(
                        "{}: store credit push {}: {reason}",
                        push.shop, push.movement.entry_id
                    )))
                }
            };
            if let Some(reason) = reason {
                out.dead_letter(message, &reason).await?;
            }
        }
        Ok(())
    }

    /// The store's sealed token, the advocate's email and the value of a point, when the store
    /// pushes rewards as store credit.
    fn enabled(&self, shop: &str, advocate_id: &str) -> Option<(String, String, Decimal)> {
        let control = self.control.read().unwrap_or_else(|e| e.into_inner());
        let store = control
            .store(shop)
            .filter(|s| s.status == StoreStatus::Active && s.features.reward_store_credit)?;
        let admin = store.admin.as_ref()?;
        let per_point = store
            .reward_activity
            .as_ref()
            .map_or(Decimal::ONE, |a| a.store_credit_per_point);
        let email = control.advocates(shop).by_id(advocate_id)?.email.clone();
        Some((admin.access_token_sealed.clone(), email, per_point))
    }

    /// One try: settle an earlier doubt, else write `PENDING`, call, write the outcome.
    async fn attempt(
        &self,
        push: &Push<'_>,
        pushes: &mut Pushes,
        out: &mut Outbox,
    ) -> Result<Attempt, Failure> {
        let movement = &push.movement;
        let store = StoreAccess {
            shop_domain: push.shop,
            access_token: push.token,
        };
        let pending = pushes
            .get(&movement.entry_id)?
            .filter(|p| p.state == StoreCreditState::Pending);
        let read = |first: u32| {
            self.admin.run::<CustomerData>(
                store,
                &CUSTOMER_STORE_CREDIT,
                json!({
                    "email": push.email,
                    "accounts": format!("currency_code:{}", push.order.currency),
                    "first": first,
                }),
            )
        };
        // A push in doubt reads the window to settle it; a new one only the newest transaction
        // for its cursor, unless that one has no id (an expiration): then the window, so the
        // cursor is never "an empty account" on an account that has transactions.
        let mut window = if pending.is_some() {
            self.config.doubt_window
        } else {
            1
        };
        let customer = loop {
            let customer = match read(window).await {
                Ok(data) => data.customer_by_identifier,
                Err(error) => return self.failed(push, pushes, out, error).await,
            };
            let cursorless = customer.as_ref().is_some_and(|c| {
                let transactions = c.transactions(&push.order.currency);
                !transactions.is_empty() && transactions.iter().all(|t| t.id.is_none())
            });
            if cursorless && window < self.config.doubt_window {
                window = self.config.doubt_window;
                continue;
            }
            break customer;
        };
        let Some(customer) = customer else {
            return Ok(Attempt::NotNow(format!(
                "{}: no customer with advocate {}'s email",
                push.shop, push.advocate_id
            )));
        };
        let transactions = customer.transactions(&push.order.currency);
        if let Some(pending) = &pending {
            let claimed = pushes.claimed(transactions)?;
            match settle(
                pending,
                transactions,
                &claimed,
                self.config.doubt_window as usize,
            ) {
                Settled::Applied(id) => {
                    let applied = Outcome::Applied {
                        transaction_id: id,
                        customer_gid: customer.id,
                    };
                    return self.record(push, pushes, out, applied).await.map(recorded);
                }
                Settled::NotApplied => {}
                Settled::Unknown => {
                    let reason = format!(
                        "{}: {} may have been applied: more than {} transactions on the account since; check it by hand",
                        push.shop, movement.entry_id, self.config.doubt_window
                    );
                    return self
                        .record(push, pushes, out, Outcome::Refused(reason))
                        .await
                        .map(recorded);
                }
            }
        }
        // The newest transaction with an id (an expiration has none).
        let cursor = transactions.iter().find_map(|t| t.id.clone());
        let write_ahead = Outcome::Pending {
            account_cursor: cursor,
            customer_gid: customer.id.clone(),
        };
        self.record(push, pushes, out, write_ahead).await?;
        let operation = match movement.direction {
            StoreCreditDirection::Credit => &STORE_CREDIT_CREDIT,
            StoreCreditDirection::Debit => &STORE_CREDIT_DEBIT,
        };
        let variables = json!({
            "id": customer.id,
            "amount": movement.amount.to_string(),
            "currency": push.order.currency,
        });
        match self
            .admin
            .run::<MoveData>(store, operation, variables)
            .await
        {
            Ok(data) => match data
                .store_credit_account_credit
                .store_credit_account_transaction
            {
                Some(transaction) => {
                    let applied = Outcome::Applied {
                        transaction_id: transaction.id,
                        customer_gid: customer.id,
                    };
                    self.record(push, pushes, out, applied).await.map(recorded)
                }
                // Unexpected; the write-ahead record lets the retry find out whether it landed.
                None => Ok(Attempt::Retry(format!(
                    "{}: {} answered no transaction",
                    push.shop, operation.name
                ))),
            },
            Err(error) => self.failed(push, pushes, out, error).await,
        }
    }

    /// A failed call. Shopify's user errors (an insufficient balance, say) answer this push for
    /// good; a refused token, an unknown store or an odd answer say nothing about it and leave it
    /// to a replay; a doubt or a give-up is retried (the retry's read settles the doubt).
    async fn failed(
        &self,
        push: &Push<'_>,
        pushes: &mut Pushes,
        out: &mut Outbox,
        error: AdminError,
    ) -> Result<Attempt, Failure> {
        match error {
            AdminError::GaveUp { .. } | AdminError::InDoubt { .. } => {
                Ok(Attempt::Retry(error.to_string()))
            }
            AdminError::UserErrors { .. } => self
                .record(push, pushes, out, Outcome::Refused(error.to_string()))
                .await
                .map(recorded),
            other => Ok(Attempt::NotNow(other.to_string())),
        }
    }

    /// Writes the push's new state to the changelog and waits for the broker, then keeps it.
    async fn record(
        &self,
        push: &Push<'_>,
        pushes: &mut Pushes,
        out: &mut Outbox,
        outcome: Outcome,
    ) -> Result<StoreCreditPush, Failure> {
        let previous = pushes.get(&push.movement.entry_id)?;
        let previous = previous.as_ref();
        let mut record = StoreCreditPush {
            entry_id: push.movement.entry_id.clone(),
            shop_domain: push.shop.to_owned(),
            advocate_id: push.advocate_id.to_owned(),
            order_id: push.order.order_id,
            direction: push.movement.direction,
            state: StoreCreditState::Pending,
            amount: push.movement.amount,
            currency: push.order.currency.clone(),
            customer_gid: previous.and_then(|p| p.customer_gid.clone()),
            account_cursor: previous.and_then(|p| p.account_cursor.clone()),
            transaction_id: None,
            reason: String::new(),
            at_ms: now_ms(),
        };
        match outcome {
            Outcome::Pending {
                account_cursor,
                customer_gid,
            } => {
                record.account_cursor = account_cursor;
                record.customer_gid = Some(customer_gid);
            }
            Outcome::Applied {
                transaction_id,
                customer_gid,
            } => {
                record.state = StoreCreditState::Applied;
                record.transaction_id = Some(transaction_id);
                record.customer_gid = Some(customer_gid);
            }
            Outcome::Refused(reason) => {
                record.state = StoreCreditState::Refused;
                record.reason = reason;
            }
        }
        out.send_now(Output {
            topic: topics::STORE_CREDITS,
            partition: Some(push.partition),
            key: record.entry_id.clone().into_bytes(),
            payload: Some(record.to_avro()?),
            headers: None,
        })
        .await?;
        pushes.insert(record.clone());
        Ok(record)
    }
}

/// The store credit stage as the consume loop runs it: per input partition, the pushes restored
/// from `tributary.store_credits`.
struct Pusher<'a> {
    stage: &'a StoreCreditStage,
    /// `store_credit.state_dir`'s store, or `None` to keep the pushes in memory.
    store: Option<StateStore>,
}

impl Stage for Pusher<'_> {
    const NAME: &'static str = "store-credit";
    const DEAD_LETTERS: DeadLetterStage = DeadLetterStage::StoreCredit;
    /// Two members never move the same money: every attempt first checks the partition is still
    /// this member's (the new owner settles any doubt from the account).
    const EXCLUSIVE: bool = true;
    type State = Pushes;

    async fn restore(
        &mut self,
        _member: &Member,
        partitions: Vec<i32>,
    ) -> Result<Vec<(i32, Pushes)>, StageError> {
        let states = state::restore_records(
            &self.stage.brokers.bootstrap_servers,
            topics::STORE_CREDITS,
            self.store.as_ref(),
            partitions,
            |pushes: &mut Pushes, push| {
                pushes.insert(push);
                Ok(())
            },
        )
        .await?;
        Ok(states)
    }

    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        pushes: &mut Pushes,
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        self.stage.handle(message, pushes, out).await
    }

    /// Writes the pushes recorded since the last flush to the store with
    /// `tributary.store_credits`' end.
    async fn checkpointed(
        &mut self,
        states: &mut HashMap<i32, Pushes>,
        when: CommitWhen,
        out: &Outbox,
    ) -> Result<(), StageError> {
        Ok(state::checkpoint(
            topics::STORE_CREDITS,
            states,
            when,
            out,
            |s| s,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn entry(id: &str, kind: RewardEntryKind, advocate: &str, points: &str) -> RewardEntry {
        RewardEntry {
            entry_id: id.into(),
            request_id: id
                .split("/approval")
                .next()
                .unwrap()
                .split("/reversal")
                .next()
                .unwrap()
                .into(),
            kind,
            advocate_id: advocate.into(),
            advocate_identifier: advocate.into(),
            points: dec(points),
            reason: String::new(),
            at_ms: 0,
        }
    }

    #[test]
    fn reversals_move_the_rounded_difference_so_debits_never_pass_the_credit() {
        use RewardEntryKind::*;
        // 1.01 points at 0.5 is 0.505, credited as 0.51; two reversals of half each must take
        // back 0.51 in total, not 0.25 + 0.25 or 0.26 + 0.26.
        let ledger = [
            entry("r/1", Request, "a", "1.01"),
            entry("r/1/approval", Approval, "a", "1.01"),
            entry("r/1/reversal/1", Reversal, "a", "0.50"),
            entry("r/1/reversal/2", Reversal, "a", "0.51"),
            entry("r/1/void", Void, "a", "0"),
            entry("r/2", Request, "b", "1.01"),
            entry("r/2/approval", Approval, "b", "1.01"),
        ];
        let moves = movements(&ledger, "a", dec("0.5"));
        let amounts: Vec<(StoreCreditDirection, String)> = moves
            .iter()
            .map(|m| (m.direction, m.amount.to_string()))
            .collect();
        assert_eq!(
            amounts,
            [
                (StoreCreditDirection::Credit, "0.51".to_string()),
                (StoreCreditDirection::Debit, "0.25".to_string()),
                (StoreCreditDirection::Debit, "0.26".to_string()),
            ]
        );
        // Another advocate's entries in the same ledger are theirs to move.
        assert_eq!(movements(&ledger, "b", dec("0.5")).len(), 1);
    }

    fn transaction(id: &str, typename: &str, amount: &str) -> Transaction {
        Transaction {
            typename: typename.into(),
            id: Some(id.into()),
            amount: Money {
                amount: dec(amount),
                currency_code: "USD".into(),
            },
        }
    }

    fn pending(cursor: Option<&str>) -> StoreCreditPush {
        StoreCreditPush {
            entry_id: "e".into(),
            shop_domain: "s".into(),
            advocate_id: "a".into(),
            order_id: 1,
            direction: StoreCreditDirection::Credit,
            state: StoreCreditState::Pending,
            amount: dec("5.00"),
            currency: "USD".into(),
            customer_gid: None,
            account_cursor: cursor.map(str::to_owned),
            transaction_id: None,
            reason: String::new(),
            at_ms: 0,
        }
    }

    #[test]
    fn a_push_in_doubt_is_found_only_among_newer_unclaimed_transactions() {
        const CREDIT: &str = "StoreCreditAccountCreditTransaction";
        let newest_first = [
            transaction("t4", CREDIT, "5.00"),
            transaction("t3", CREDIT, "5.00"),
            transaction("t2", CREDIT, "5.00"),
        ];
        // t4 is another entry's; t3 is this one's; t2 is older than the cursor.
        let mut other = pending(None);
        other.entry_id = "other".into();
        other.transaction_id = Some("t4".into());
        let mut state = Pushes::default();
        state.insert(other);
        let pushes = state.claimed(&newest_first).unwrap();
        assert_eq!(pushes, HashSet::from(["t4".to_owned()]));
        assert_eq!(
            settle(&pending(Some("t2")), &newest_first, &pushes, 25),
            Settled::Applied("t3".into())
        );
        // Nothing newer than the cursor but the claimed one: not applied.
        assert_eq!(
            settle(&pending(Some("t3")), &newest_first, &pushes, 25),
            Settled::NotApplied
        );
        // A different amount is not this push.
        let mut debit_sized = pending(Some("t2"));
        debit_sized.amount = dec("4.00");
        assert_eq!(
            settle(&debit_sized, &newest_first, &pushes, 25),
            Settled::NotApplied
        );
        // A full window that never reaches the cursor cannot tell.
        let mut older_cursor = pending(Some("t1"));
        older_cursor.amount = dec("4.00");
        assert_eq!(
            settle(&older_cursor, &newest_first, &pushes, 3),
            Settled::Unknown
        );
        assert_eq!(
            settle(&older_cursor, &newest_first, &pushes, 25),
            Settled::NotApplied
        );
    }
}
