//! Writeback: each attributed order's tags and note, written to its store through the Admin API.
//!
//! The offset contract: records are read from the attributions changelog in batches; every write
//! of a batch is made (or dead-lettered) before the batch's offsets are committed. A crash
//! therefore repeats writes, and each write is made idempotent by *reading the order first*: the
//! sink computes the tags and note the order should have, compares them with what Shopify holds,
//! and writes only the difference. A repeated record finds nothing missing and writes nothing;
//! the merchant's own note and tags are never touched.
//!
//! Under each store's toggles (`order_tags`, `order_notes`), for a store that is active and has
//! Admin API access:
//! - tags `<prefix>` and `<prefix>:advocate:<identifier>` (`tagsAdd`); a moved order loses its
//!   previous advocate's tag (`tagsRemove`);
//! - a note block between markers with the advocate's name, the source, the code and a link,
//!   merged into the merchant's note (`orderUpdate`).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use lru::LruCache;
use rdkafka::message::{BorrowedMessage, OwnedMessage};
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tributary_runtime::control::Control;
use tributary_runtime::dead_letter::DeadLetterStage;
use tributary_runtime::kafka::TopicError;
use tributary_runtime::member::Brokers;
use tributary_runtime::stage::{self, FlushError, Input, Outbox, Stage, StageError};
use tributary_schemas::{topics, Attribution, AvroRecord, Outcome, StoreStatus};
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::operations::{
    order_gid, ORDER_NOTE_AND_TAGS, ORDER_UPDATE_NOTE, TAGS_ADD, TAGS_REMOVE,
};
use tributary_shopify::{AdminClient, AdminError, StoreAccess};

/// `[writeback]`: the Shopify writeback sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WritebackConfig {
    /// Consumer group of the writeback sink.
    pub group_id: String,
    /// Orders written at once; each store's cost bucket still paces them.
    pub concurrency: usize,
    /// Most records read before their writes are made and their offsets committed.
    pub batch_records: usize,
    /// Longest wait for a batch to fill.
    pub batch_ms: u64,
    /// The link in the order note; `{shop}` and `{identifier}` are replaced. The default is the
    /// advocate's share link.
    pub link_template: String,
    /// How often stores with `features.auto_mint_codes` are checked for active advocates without
    /// a code (an advocate activated since is minted one).
    pub auto_mint_interval_ms: u64,
    /// Orders whose last write is remembered, so that a revision changing nothing Shopify shows
    /// costs no read; the least recently written are forgotten past this many (about 200 bytes
    /// each), which costs one read when they change again.
    pub applied_cache_orders: NonZeroUsize,
}

impl Default for WritebackConfig {
    fn default() -> Self {
        Self {
            group_id: "tributary-writeback".into(),
            concurrency: 16,
            batch_records: 500,
            batch_ms: 200,
            link_template: "https://{shop}/?ref={identifier}".into(),
            auto_mint_interval_ms: 10_000,
            applied_cache_orders: NonZeroUsize::new(100_000).expect("non-zero"),
        }
    }
}

/// The first line of tributary's block in an order note.
pub const NOTE_START: &str = "--- tributary ---";
/// The last line of tributary's block in an order note.
pub const NOTE_END: &str = "--- /tributary ---";

/// What an attributed order should carry in Shopify.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Wanted {
    /// `(prefix, advocate tag)`, when tags are on.
    pub tags: Option<(String, String)>,
    /// The note block, when notes are on.
    pub note_block: Option<String>,
}

/// The order as Shopify holds it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HeldOrder {
    pub note: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The writes that bring `held` to `wanted`; empty when it is there already.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub remove_tags: Vec<String>,
    pub add_tags: Vec<String>,
    pub note: Option<String>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.remove_tags.is_empty() && self.add_tags.is_empty() && self.note.is_none()
    }
}

/// Compares what Shopify holds with what the order should carry.
pub fn writes_for(held: &HeldOrder, wanted: &Wanted) -> Writes {
    let mut writes = Writes::default();
    // Shopify compares tags without regard to case.
    let has = |tag: &str| held.tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
    if let Some((prefix, advocate_tag)) = &wanted.tags {
        let advocate_prefix = format!("{prefix}:advocate:").to_ascii_lowercase();
        writes.remove_tags = held
            .tags
            .iter()
            .filter(|t| t.to_ascii_lowercase().starts_with(&advocate_prefix))
            .filter(|t| !t.eq_ignore_ascii_case(advocate_tag))
            .cloned()
            .collect();
        writes.add_tags = [prefix, advocate_tag]
            .into_iter()
            .filter(|t| !has(t))
            .cloned()
            .collect();
    }
    if let Some(block) = &wanted.note_block {
        let current = held.note.as_deref().unwrap_or_default();
        let merged = merge_note(current, block);
        if merged != current {
            writes.note = Some(merged);
        }
    }
    writes
}

/// The merchant's note with tributary's block replaced (or appended): text outside the markers is
/// kept as it is.
pub fn merge_note(current: &str, block: &str) -> String {
    let theirs = match (current.find(NOTE_START), current.find(NOTE_END)) {
        (Some(start), Some(end)) if end > start => {
            let before = current[..start].trim_end();
            let after = current[end + NOTE_END.len()..].trim_start();
            match (before.is_empty(), after.is_empty()) {
                (true, _) => after.to_owned(),
                (false, true) => before.to_owned(),
                (false, false) => format!("{before}\n\n{after}"),
            }
        }
        _ => current.trim_end().to_owned(),
    };
    if theirs.is_empty() {
        block.to_owned()
    } else {
        format!("{theirs}\n\n{block}")
    }
}

/// The note block for an attributed order.
pub fn note_block(
    advocate_name: &str,
    identifier: &str,
    source: &str,
    code: Option<&str>,
    link: &str,
) -> String {
    let name = if advocate_name.is_empty() {
        identifier.to_owned()
    } else {
        format!("{advocate_name} ({identifier})")
    };
    format!(
        "{NOTE_START}\nAdvocate: {name}\nSource: {source}\nCode: {}\nLink: {link}\n{NOTE_END}",
        code.unwrap_or("none")
    )
}

/// Why an order's writeback did not happen.
enum Failure {
    /// Shopify kept failing (5xx, timeouts, throttling past every attempt): try the batch again.
    Retry(String),
    /// It never will: dead-letter the record with the reason.
    DeadLetter(String),
}

impl From<AdminError> for Failure {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::GaveUp { .. } => Failure::Retry(error.to_string()),
            other => Failure::DeadLetter(other.to_string()),
        }
    }
}

/// One order's newest record in a batch, with the message to dead-letter if it fails.
struct Pending {
    record: Attribution,
    message: OwnedMessage,
}

pub struct WritebackSink {
    brokers: Brokers,
    config: WritebackConfig,
    admin: Arc<AdminClient>,
    control: Arc<RwLock<Control>>,
    tokens: AccessTokens,
    /// What this process last wrote (or found) per order, so a revision that changes nothing
    /// Shopify shows (a refund, a reward) costs no read. Bounded (least recently written go
    /// first) and lost on restart, which only costs reads.
    applied: Mutex<LruCache<(String, u64), Wanted>>,
}

impl WritebackSink {
    pub fn new(
        brokers: &Brokers,
        config: WritebackConfig,
        admin: Arc<AdminClient>,
        control: Arc<RwLock<Control>>,
        tokens: AccessTokens,
    ) -> Self {
        Self {
            brokers: brokers.clone(),
            applied: Mutex::new(LruCache::new(config.applied_cache_orders)),
            config,
            admin,
            control,
            tokens,
        }
    }

    /// Consumes `tributary.attributions` until `shutdown`; see [`stage::run`] for the loop and
    /// the module doc for the offset contract.
    pub async fn run(
        &self,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let mut stage = Writer {
            sink: self,
            batch: HashMap::new(),
        };
        let input = Input {
            brokers: &self.brokers,
            group: &self.config.group_id,
            topic: topics::ATTRIBUTIONS,
            commit_interval: Duration::from_millis(self.config.batch_ms),
            max_in_flight: usize::MAX,
        };
        stage::run(&mut stage, input, ready, shutdown).await
    }

    /// Brings one order in Shopify to what its record says; a no-op when it is there already.
    async fn write_order(&self, record: &Attribution) -> Result<(), Failure> {
        let Some((sealed_token, wanted)) = self.wanted(record)? else {
            return Ok(());
        };
        let key = (record.shop_domain.clone(), record.order_id);
        if self
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            == Some(&wanted)
        {
            return Ok(());
        }
        // Opened only for orders that need Shopify, not for every revision read.
        let token = self
            .tokens
            .open(&record.shop_domain, &sealed_token)
            .await
            .map_err(|e| match e.is_transient() {
                true => Failure::Retry(e.to_string()),
                false => Failure::DeadLetter(e.to_string()),
            })?;
        let store = StoreAccess {
            shop_domain: &record.shop_domain,
            access_token: token.expose(),
        };
        let id = order_gid(record.order_id);
        #[derive(Deserialize)]
        struct OrderData {
            order: Option<HeldOrder>,
        }
        let held = self
            .admin
            .run::<OrderData>(store, &ORDER_NOTE_AND_TAGS, json!({ "id": id }))
            .await?
            .order
            .ok_or_else(|| {
                Failure::DeadLetter(format!(
                    "{}: order {} is not in the store",
                    record.shop_domain, record.order_id
                ))
            })?;
        let writes = writes_for(&held, &wanted);
        if !writes.remove_tags.is_empty() {
            self.admin
                .run::<serde_json::Value>(
                    store,
                    &TAGS_REMOVE,
                    json!({"id": id, "tags": writes.remove_tags}),
                )
                .await?;
        }
        if !writes.add_tags.is_empty() {
            self.admin
                .run::<serde_json::Value>(
                    store,
                    &TAGS_ADD,
                    json!({"id": id, "tags": writes.add_tags}),
                )
                .await?;
            metrics::counter!("tributary_writeback_tags_total").increment(1);
        }
        if let Some(note) = &writes.note {
            self.admin
                .run::<serde_json::Value>(
                    store,
                    &ORDER_UPDATE_NOTE,
                    json!({"id": id, "note": note}),
                )
                .await?;
            metrics::counter!("tributary_writeback_notes_total").increment(1);
        }
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(key, wanted);
        Ok(())
    }

    /// The store's sealed token and what the order should carry; `None` when nothing is to be written
    /// (not attributed, store inactive or without Admin access, toggles off).
    fn wanted(&self, record: &Attribution) -> Result<Option<(String, Wanted)>, Failure> {
        if record.outcome != Outcome::Attributed {
            return Ok(None);
        }
        let Some(identifier) = record.advocate_identifier.as_deref() else {
            return Ok(None);
        };
        let control = self.control.read().unwrap_or_else(|e| e.into_inner());
        let Some(store) = control
            .store(&record.shop_domain)
            .filter(|s| s.status == StoreStatus::Active)
        else {
            return Ok(None);
        };
        let Some(admin) = &store.admin else {
            return Ok(None);
        };
        let features = &store.features;
        if !features.order_tags && !features.order_notes {
            return Ok(None);
        }
        let sealed_token = admin.access_token_sealed.clone();
        let advocate_name = record
            .advocate_id
            .as_deref()
            .and_then(|id| control.advocates(&record.shop_domain).by_id(id))
            .map(|a| a.first_name.clone())
            .unwrap_or_default();
        let link = self
            .config
            .link_template
            .replace("{shop}", &record.shop_domain)
            .replace("{identifier}", identifier);
        let wanted = Wanted {
            tags: features.order_tags.then(|| {
                let prefix = admin.tag_prefix.clone();
                let advocate_tag = format!("{prefix}:advocate:{identifier}");
                (prefix, advocate_tag)
            }),
            note_block: features.order_notes.then(|| {
                note_block(
                    &advocate_name,
                    identifier,
                    record.source.label(),
                    record.code.as_deref(),
                    &link,
                )
            }),
        };
        Ok(Some((sealed_token, wanted)))
    }
}

/// Writeback as a stage: `process` keeps each order's newest record of the batch, `flush` makes
/// the batch's writes.
struct Writer<'a> {
    sink: &'a WritebackSink,
    batch: HashMap<(String, u64), Pending>,
}

impl Stage for Writer<'_> {
    const NAME: &'static str = "writeback";
    const DEAD_LETTERS: DeadLetterStage = DeadLetterStage::Writeback;
    type State = ();

    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        _state: &mut (),
        _out: &mut Outbox,
    ) -> Result<(), stage::Failure> {
        match message.payload().map(Attribution::from_avro) {
            // Only the newest revision of an order in a batch matters.
            Some(Ok(record)) => {
                let key = (record.shop_domain.clone(), record.order_id);
                let message = message.detach();
                self.batch.insert(key, Pending { record, message });
            }
            // Never skipped: what came before it is written and committed, then the stage
            // stops before it.
            Some(Err(error)) => {
                return Err(TopicError::unreadable(topics::ATTRIBUTIONS, message, error).into())
            }
            None => {}
        }
        Ok(())
    }

    fn wants_flush(&self) -> bool {
        self.batch.len() >= self.sink.config.batch_records
    }

    /// Makes the batch's writes, `concurrency` orders at once; an order that can never be
    /// written is dead-lettered, and one that Shopify keeps failing keeps the batch for a retry
    /// (the orders already written are not written again).
    async fn flush(&mut self, out: &mut Outbox) -> Result<(), FlushError> {
        // Owned items: a stream over borrowed ones does not make a `Send` future.
        let work: Vec<((String, u64), Attribution)> = self
            .batch
            .iter()
            .map(|(key, pending)| (key.clone(), pending.record.clone()))
            .collect();
        let sink = self.sink;
        let outcomes = futures::stream::iter(work)
            .map(|(key, record)| async move { (key, sink.write_order(&record).await) })
            .buffer_unordered(sink.config.concurrency.max(1))
            .collect::<Vec<((String, u64), Result<(), Failure>)>>()
            .await;
        let mut retry = None;
        for (key, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    self.batch.remove(&key);
                }
                Err(Failure::DeadLetter(reason)) => {
                    // Out of the batch only once its letter is enqueued.
                    if let Some(pending) = self.batch.get(&key) {
                        out.dead_letter(&pending.message, &reason).await?;
                        self.batch.remove(&key);
                    }
                }
                Err(Failure::Retry(reason)) => {
                    retry = Some(format!("{} order {}: {reason}", key.0, key.1));
                }
            }
        }
        match retry {
            Some(reason) => Err(FlushError::Retry(reason)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(identifier: &str) -> Wanted {
        Wanted {
            tags: Some((
                "tributary".into(),
                format!("tributary:advocate:{identifier}"),
            )),
            note_block: Some(note_block(
                "Anna",
                identifier,
                "Discount Code",
                Some("ANNA10"),
                "https://s/?ref=anna",
            )),
        }
    }

    #[test]
    fn the_merchants_note_is_kept_and_the_block_is_written_once() {
        let want = wanted("anna");
        let held = HeldOrder {
            note: Some("Gift wrap, please.".into()),
            tags: vec!["VIP".into()],
        };
        let writes = writes_for(&held, &want);
        let note = writes.note.clone().expect("a note to write");
        assert!(note.starts_with("Gift wrap, please.\n\n--- tributary ---\nAdvocate: Anna (anna)\nSource: Discount Code\nCode: ANNA10"));
        assert_eq!(
            writes.add_tags,
            vec!["tributary", "tributary:advocate:anna"]
        );
        // Once written, nothing is missing.
        let after = HeldOrder {
            note: Some(note.clone()),
            tags: vec![
                "VIP".into(),
                "Tributary".into(),
                "tributary:advocate:anna".into(),
            ],
        };
        assert!(writes_for(&after, &want).is_empty());
        // The merchant edits their part; the block stays once.
        let edited = merge_note(
            &note.replace("Gift wrap", "No gift wrap"),
            want.note_block.as_ref().unwrap(),
        );
        assert_eq!(edited.matches(NOTE_START).count(), 1);
        assert!(edited.starts_with("No gift wrap, please."));
    }

    #[test]
    fn a_moved_order_swaps_its_advocate_tag_and_rewrites_its_block() {
        let held = HeldOrder {
            note: Some(merge_note("", wanted("anna").note_block.as_ref().unwrap())),
            tags: vec!["tributary".into(), "tributary:advocate:anna".into()],
        };
        let mut to_ben = wanted("ben");
        to_ben.note_block = Some(note_block(
            "Ben",
            "ben",
            "Manual",
            None,
            "https://s/?ref=ben",
        ));
        let writes = writes_for(&held, &to_ben);
        assert_eq!(writes.remove_tags, vec!["tributary:advocate:anna"]);
        assert_eq!(writes.add_tags, vec!["tributary:advocate:ben"]);
        let note = writes.note.unwrap();
        assert!(
            note.starts_with(NOTE_START)
                && note.contains("Advocate: Ben (ben)")
                && !note.contains("Anna")
        );
    }
}
