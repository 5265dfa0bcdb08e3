//! The Shopify webhook receiver.
//!
//! `POST /webhooks/shopify` verifies `X-Shopify-Hmac-Sha256` against the store's secret(s) and
//! answers 200 only once the delivery is durably in `shopify.webhooks` (idempotent producer,
//! acks=all). Answers, in the order they are checked:
//!
//! | status | when |
//! |---|---|
//! | 413 | the body is larger than `max_body_bytes`, or the delivery with its headers is larger than the event log takes (`MAX_MESSAGE_BYTES`); Shopify's retries cannot help |
//! | 400 | `X-Shopify-Shop-Domain` is missing |
//! | 404 | the shop is not a connected store (unknown or disconnected): nothing is produced, and Shopify's retries give a store that is being connected a second chance |
//! | 401 | the signature is missing, not base64, or matches none of the store's secrets |
//! | 400 | a signed request lacks `X-Shopify-Topic`, `X-Shopify-Webhook-Id` or `X-Shopify-Api-Version`, or `X-Shopify-Triggered-At` is not an RFC 3339 time |
//! | 503 | Kafka did not acknowledge within `produce_timeout_ms`, or the processor is so far behind that retention would delete what it has not read (see [`Backpressure`]); Shopify retries |
//! | 200 | the delivery is in Kafka |
//!
//! A signed body that is not valid JSON is still accepted: it came from Shopify, and the normalizer
//! sends it to the dead-letter topic with the parse error, where an operator can see and replay it.

mod backlog;
mod signature;
mod stores;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tributary_runtime::kafka::{now_ms, MAX_MESSAGE_BYTES};
use tributary_schemas::time::parse_rfc3339_ms;
use tributary_schemas::{topics, AvroRecord, WebhookEnvelope};

pub use backlog::Backpressure;
pub use signature::{sign, verify};
pub use stores::StoreSecrets;

/// Configuration of the webhook receiver (`[ingest]` in the config file).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the receiver listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest body accepted, in bytes; a larger one gets 413. At most
    /// [`MAX_BODY_BYTES_LIMIT`], so that every body taken fits in `shopify.webhooks` with its
    /// headers (checked by [`Config::validate`]).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Refuse deliveries (503) while the processor's unread records in a partition of
    /// `shopify.webhooks` exceed this many bytes (uncompressed, estimated from what ingest
    /// produced); see [`Backpressure`]. Unset: 4 MiB with the embedded broker, whose partitions
    /// keep about 5 MiB, and no budget with a real broker (whose retention is far larger; the
    /// near-retention rule still applies).
    #[serde(default)]
    pub max_unread_bytes: Option<u64>,
    /// How long to wait for Kafka's acknowledgement before answering 503. Shopify gives up on a
    /// delivery after 5 s, so keep this well below.
    #[serde(default = "default_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body_bytes() -> usize {
    2 * 1024 * 1024
}
fn default_produce_timeout_ms() -> u64 {
    2500
}

/// The largest `max_body_bytes` allowed: a Kafka record with room for the envelope's headers.
pub const MAX_BODY_BYTES_LIMIT: usize = MAX_MESSAGE_BYTES - 64 * 1024;

impl Config {
    /// Refuses a body limit the event log could not take: a body accepted by the limit must never
    /// meet a refusal from Kafka (which would be answered 503, and retried by Shopify forever).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(format!(
                "ingest.max_body_bytes = {} is larger than the event log's records can hold; at most {MAX_BODY_BYTES_LIMIT}",
                self.max_body_bytes
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_unread_bytes: None,
            produce_timeout_ms: default_produce_timeout_ms(),
        }
    }
}

#[derive(Clone)]
struct Receiver {
    producer: FutureProducer,
    stores: StoreSecrets,
    produce_timeout: Duration,
    backpressure: Backpressure,
}

/// The receiver's routes; the caller adds health and metrics routes and serves it.
pub fn router(
    config: &Config,
    producer: FutureProducer,
    stores: StoreSecrets,
    backpressure: Backpressure,
) -> Router {
    let receiver = Arc::new(Receiver {
        producer,
        stores,
        produce_timeout: Duration::from_millis(config.produce_timeout_ms),
        backpressure,
    });
    Router::new()
        .route("/webhooks/shopify", post(receive))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(receiver)
}

#[derive(Debug)]
struct Rejection(StatusCode, String);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        metrics::counter!("tributary_webhooks_total", "status" => self.0.as_u16().to_string())
            .increment(1);
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn reject(status: StatusCode, message: impl Into<String>) -> Rejection {
    Rejection(status, message.into())
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Rejection> {
    let started = Instant::now();
    let shop = shopify_header(&headers, "shopify-shop-domain")
        .ok_or_else(|| reject(StatusCode::BAD_REQUEST, "missing X-Shopify-Shop-Domain"))?
        .to_ascii_lowercase();
    let secrets = receiver
        .stores
        .secrets_for(&shop)
        .ok_or_else(|| reject(StatusCode::NOT_FOUND, "unknown store"))?;
    let signature = shopify_header(&headers, "shopify-hmac-sha256")
        .ok_or_else(|| reject(StatusCode::UNAUTHORIZED, "missing X-Shopify-Hmac-Sha256"))?;
    if !verify(&secrets, &body, signature) {
        return Err(reject(StatusCode::UNAUTHORIZED, "invalid signature"));
    }
    if receiver.backpressure.refusing() {
        metrics::counter!("tributary_ingest_backpressure_refusals_total").increment(1);
        return Err(reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline is behind; retry later",
        ));
    }
    let envelope = envelope(&headers, shop, body)?;
    let key = topics::webhook_key(&envelope.topic, &envelope.shop_domain, &envelope.body);
    let payload = envelope.to_avro().map_err(|e| {
        reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding envelope: {e}"),
        )
    })?;
    if payload.len() + key.len() > MAX_MESSAGE_BYTES {
        return Err(too_large(payload.len() + key.len()));
    }
    produce(&receiver, &key, &payload).await?;
    receiver.backpressure.produced(key.len() + payload.len());
    metrics::counter!("tributary_webhooks_total", "status" => "200").increment(1);
    metrics::histogram!("tributary_webhook_ack_seconds").record(started.elapsed().as_secs_f64());
    Ok(StatusCode::OK)
}

fn envelope(
    headers: &HeaderMap,
    shop_domain: String,
    body: Bytes,
) -> Result<WebhookEnvelope, Rejection> {
    let required = |name: &'static str| {
        shopify_header(headers, name)
            .ok_or_else(|| reject(StatusCode::BAD_REQUEST, format!("missing x-{name}")))
    };
    let triggered_at = required("shopify-triggered-at")?;
    let triggered_at_ms = parse_rfc3339_ms(triggered_at).ok_or_else(|| {
        reject(
            StatusCode::BAD_REQUEST,
            "X-Shopify-Triggered-At is not an RFC 3339 time",
        )
    })?;
    Ok(WebhookEnvelope {
        source: WebhookEnvelope::SOURCE_WEBHOOK.to_owned(),
        shop_domain,
        topic: required("shopify-topic")?.to_owned(),
        webhook_id: required("shopify-webhook-id")?.to_owned(),
        event_id: shopify_header(headers, "shopify-event-id").map(str::to_owned),
        triggered_at_ms,
        api_version: required("shopify-api-version")?.to_owned(),
        received_at_ms: now_ms(),
        body: body.to_vec(),
    })
}

/// A delivery the event log can never take, however often Shopify retries it.
fn too_large(bytes: usize) -> Rejection {
    tracing::error!(
        bytes,
        "a signed delivery is larger than the event log's records; refused with 413"
    );
    reject(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the delivery is {bytes} bytes with its headers; the event log takes at most {MAX_MESSAGE_BYTES}"),
    )
}

/// Produces and waits for the broker's acknowledgement, at most `produce_timeout`. A record
/// Kafka refuses for its size gets 413 (it never will be taken); anything else 503.
async fn produce(receiver: &Receiver, key: &str, payload: &[u8]) -> Result<(), Rejection> {
    let refused = |error: KafkaError| {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
            return too_large(payload.len() + key.len());
        }
        tracing::warn!(%error, "kafka did not take a webhook; answering 503 so Shopify retries");
        reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "event log unavailable, retry later",
        )
    };
    let unavailable = |why: &str| {
        tracing::warn!(%why, "kafka did not take a webhook; answering 503 so Shopify retries");
        reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "event log unavailable, retry later",
        )
    };
    let record = FutureRecord::to(topics::WEBHOOKS).key(key).payload(payload);
    let delivery = receiver
        .producer
        .send_result(record)
        .map_err(|(e, _)| refused(e))?;
    match tokio::time::timeout(receiver.produce_timeout, delivery).await {
        Ok(Ok(Ok(_))) => Ok(()),
        Ok(Ok(Err((e, _)))) => Err(refused(e)),
        Ok(Err(_canceled)) => Err(unavailable("producer shut down")),
        Err(_elapsed) => Err(unavailable("acknowledgement timed out")),
    }
}

/// A Shopify header by its name without the `X-` prefix (`shopify-topic`): the classic
/// `X-Shopify-*` family first, else the newer un-prefixed one that Events subscriptions send
/// (shopify.dev/docs/apps/build/events/verify-deliveries). Header names are case-insensitive.
fn shopify_header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    header(headers, &format!("x-{name}")).or_else(|| header(headers, name))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}
