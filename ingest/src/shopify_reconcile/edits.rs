//! `orders/edited`: an order edited in Shopify (an item added, a quantity changed) is read again
//! through the Admin API and flows as a new version of the order.
//!
//! The webhook carries only the edit (`order_edit` with line item changes, no totals;
//! shopify.dev/docs/api/webhooks, topic `orders/edited`), so the processor cannot apply it. This
//! stage consumes `shopify.webhooks` in its own group (`reconcile.edits_group_id`), and for each
//! `orders/edited` of an active store with Admin access reads the order ([`read_order_again`]) and produces
//! it as a reconciled order (the same record as the reconciliation pull) into the order's
//! partition. It commits an input offset only once that record is acknowledged; a record read
//! twice (a replay, a retry) is harmless, since the processor drops a version it has seen.
//! A store without Admin access keeps the previous behaviour: the edit is skipped and the next
//! `orders/updated` brings the totals.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::message::BorrowedMessage;
use rdkafka::Message;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tributary_runtime::control::Control;
use tributary_runtime::dead_letter::DeadLetterStage;
use tributary_runtime::kafka::now_ms;
use tributary_runtime::member::Brokers;
use tributary_runtime::stage::{self, Failure, Input, Outbox, Output, Stage, StageError};
use tributary_schemas::{topics, AvroRecord, WebhookEnvelope};
use tributary_shopify::oauth::AccessTokens;
use tributary_shopify::{AdminClient, AdminError, StoreAccess};

use super::{admin_order_record, admin_token, read_order_again, Config};

/// The `orders/edited` stage.
pub struct OrderEdits {
    brokers: Brokers,
    config: Config,
    admin: Arc<AdminClient>,
    control: Arc<RwLock<Control>>,
    tokens: AccessTokens,
}

#[derive(Deserialize)]
struct EditedProbe {
    order_edit: EditProbe,
}

#[derive(Deserialize)]
struct EditProbe {
    order_id: u64,
}

impl OrderEdits {
    pub fn new(
        brokers: &Brokers,
        config: Config,
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

    /// Consumes `shopify.webhooks` until `shutdown` (see [`stage::run`] for the loop).
    pub async fn run(
        &mut self,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Result<(), StageError> {
        let (brokers, group) = (self.brokers.clone(), self.config.edits_group_id.clone());
        let input = Input {
            brokers: &brokers,
            group: &group,
            topic: topics::WEBHOOKS,
            commit_interval: Duration::from_millis(200),
            max_in_flight: 1_000,
        };
        stage::run(self, input, ready, shutdown).await
    }

    /// The store's sealed token if it is active with Admin access.
    fn sealed_token(&self, shop: &str) -> Option<String> {
        let control = self.control.read().unwrap_or_else(|e| e.into_inner());
        control.store(shop).and_then(admin_token)
    }
}

impl Stage for OrderEdits {
    const NAME: &'static str = "order_edits";
    const DEAD_LETTERS: DeadLetterStage = DeadLetterStage::OrderEdits;
    type State = ();

    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        _state: &mut (),
        out: &mut Outbox,
    ) -> Result<(), Failure> {
        let envelope = match message.payload().map(WebhookEnvelope::from_avro) {
            Some(Ok(envelope)) => envelope,
            // The processor stops before a record it cannot read; this stage has nothing to do
            // with one.
            Some(Err(_)) | None => return Ok(()),
        };
        if envelope.topic != "orders/edited" || envelope.source != WebhookEnvelope::SOURCE_WEBHOOK {
            return Ok(());
        }
        let shop = envelope.shop_domain.as_str();
        let Some(sealed) = self.sealed_token(shop) else {
            return Ok(());
        };
        let order_id = serde_json::from_slice::<EditedProbe>(&envelope.body)
            .map_err(|e| Failure::DeadLetter(format!("not an orders/edited body: {e}")))?
            .order_edit
            .order_id;
        let token = self.tokens.open(shop, &sealed).await?;
        let store = StoreAccess {
            shop_domain: shop,
            access_token: token.expose(),
        };
        let node = match read_order_again(&self.admin, store, order_id).await {
            Ok(node) => node.ok_or_else(|| {
                Failure::DeadLetter(format!("{shop}: order {order_id} is not in the store"))
            })?,
            Err(error @ AdminError::GaveUp { .. }) => {
                return Err(Failure::Retry(error.to_string()))
            }
            Err(error) => return Err(Failure::DeadLetter(error.to_string())),
        };
        let (key, payload) = admin_order_record(shop, &node, self.admin.api_version(), now_ms())
            .map_err(|e| Failure::DeadLetter(e.to_string()))?;
        out.send(Output {
            topic: topics::WEBHOOKS,
            partition: None,
            key: key.into_bytes(),
            payload: Some(payload),
            headers: None,
        })
        .await
        .map_err(Failure::Stop)?;
        metrics::counter!("tributary_order_edits_reread_total", "shop" => shop.to_owned())
            .increment(1);
        Ok(())
    }
}
