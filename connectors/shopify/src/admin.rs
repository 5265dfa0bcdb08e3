//! The Admin GraphQL client.
//!
//! One client serves every store. For each request it:
//! 1. waits on a per-store request limiter (governor), so no store is flooded;
//! 2. waits until the store's cost bucket holds the operation's estimated cost (see [`crate::bucket`]);
//! 3. sends, and adopts the `throttleStatus` the answer reports.
//!
//! Failures it recovers from by itself: `THROTTLED` (an HTTP 200 whose `errors` say so; waits for
//! the refill), 429 (waits `Retry-After`), 5xx, timeouts and broken connections (exponential
//! backoff with full jitter). Everything else is an [`AdminError`] for the caller, including the
//! `userErrors` a mutation returns. No error ever carries the access token.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::bucket::{CostBucket, ThrottleStatus};
use crate::operations::Operation;

/// The Admin API version tributary is built and tested against.
pub const API_VERSION: &str = "2026-04";

/// How tributary reaches the Admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The Admin API version in every request's path (default `2026-04`). Shopify supports a
    /// stable version for at least 12 months and answers a retired one with the oldest it still
    /// supports (shopify.dev/docs/api/usage/versioning): 2025-10 lost support on 2026-10-01, and
    /// 2026-04 is supported until 2027-04-01. Every document tributary sends is validated in tests
    /// against this version's published schema (`fakes/shopify-admin-schema/`).
    pub api_version: String,
    /// Where the Admin API lives. Unset: `https://<shop domain>`, as in production. Set (a fake
    /// Shopify for tests and the demo): `<base_url>/<shop domain>`.
    pub base_url: Option<String>,
    /// A request that has not answered after this long is abandoned and retried.
    pub timeout_ms: u64,
    /// Attempts per request before giving up, counting the first.
    pub max_attempts: u32,
    /// Requests per second per store, whatever their cost: a ceiling against runaway loops. The
    /// GraphQL Admin API itself limits by cost, which the client paces separately.
    pub requests_per_second: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            api_version: API_VERSION.into(),
            base_url: None,
            timeout_ms: 10_000,
            max_attempts: 8,
            requests_per_second: 200,
        }
    }
}

/// A store's address and credential for one call.
#[derive(Clone, Copy)]
pub struct StoreAccess<'a> {
    pub shop_domain: &'a str,
    pub access_token: &'a str,
}

impl std::fmt::Debug for StoreAccess<'_> {
    // The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAccess")
            .field("shop_domain", &self.shop_domain)
            .field("access_token", &"<redacted>")
            .finish()
    }
}

/// A `userErrors` entry of a mutation's answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserError {
    #[serde(default)]
    pub field: Option<Vec<String>>,
    pub message: String,
    #[serde(default)]
    pub code: Option<String>,
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {}", field.join("."), self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{shop}: the access token was refused (HTTP {status})")]
    Unauthorized { shop: String, status: u16 },
    #[error("{shop}: no such store (HTTP 404)")]
    UnknownStore { shop: String },
    #[error("{shop}: {operation} answered HTTP {status}")]
    Http {
        shop: String,
        operation: &'static str,
        status: u16,
    },
    #[error("{shop}: {operation} failed: {}", .messages.join("; "))]
    Graphql {
        shop: String,
        operation: &'static str,
        messages: Vec<String>,
    },
    #[error("{shop}: {operation} refused: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    UserErrors {
        shop: String,
        operation: &'static str,
        errors: Vec<UserError>,
    },
    #[error("{shop}: {operation} gave up after {attempts} attempts; last: {last}")]
    GaveUp {
        shop: String,
        operation: &'static str,
        attempts: u32,
        last: String,
    },
    #[error("{shop}: {operation} answered something unexpected: {detail}")]
    Decode {
        shop: String,
        operation: &'static str,
        detail: String,
    },
    /// The call may or may not have been applied (a 5xx, a timeout), and the operation is not
    /// safe to repeat: the caller must find out by reading.
    #[error("{shop}: {operation} may or may not have been applied: {detail}")]
    InDoubt {
        shop: String,
        operation: &'static str,
        detail: String,
    },
    #[error("bad Admin API address: {0}")]
    Address(String),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GraphqlRequest<'a> {
    query: &'a str,
    operation_name: &'a str,
    variables: &'a Value,
}

#[derive(Deserialize)]
struct GraphqlResponse {
    data: Option<Value>,
    #[serde(default)]
    errors: Vec<GraphqlError>,
    extensions: Option<Extensions>,
}

#[derive(Deserialize)]
struct GraphqlError {
    message: String,
    #[serde(default)]
    extensions: Option<ErrorExtensions>,
}

#[derive(Deserialize)]
struct ErrorExtensions {
    code: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Extensions {
    cost: Option<Cost>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cost {
    requested_query_cost: Option<f64>,
    throttle_status: ThrottleStatus,
}

/// What one attempt came to.
enum Attempt {
    Done(Value),
    /// Try again after this long; the string says why, for the log and a final error.
    RetryAfter(Duration, String),
    /// Back off exponentially; the string says why. `maybe_applied`: the request may have been
    /// executed (a 5xx, a timeout, a broken connection), not only refused.
    Backoff {
        why: String,
        maybe_applied: bool,
    },
}

pub struct AdminClient {
    http: reqwest::Client,
    config: AdminConfig,
    limiter: DefaultKeyedRateLimiter<String>,
    buckets: Mutex<HashMap<String, CostBucket>>,
}

impl AdminClient {
    pub fn new(config: AdminConfig) -> Result<Self, AdminError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| AdminError::Address(e.to_string()))?;
        let per_second = NonZeroU32::new(config.requests_per_second).unwrap_or(NonZeroU32::MIN);
        Ok(Self {
            http,
            limiter: RateLimiter::keyed(Quota::per_second(per_second)),
            buckets: Mutex::new(HashMap::new()),
            config,
        })
    }

    pub fn api_version(&self) -> &str {
        &self.config.api_version
    }

    fn endpoint(&self, shop: &str) -> Result<url::Url, AdminError> {
        let version = &self.config.api_version;
        let address = match &self.config.base_url {
            Some(base) => format!(
                "{}/{shop}/admin/api/{version}/graphql.json",
                base.trim_end_matches('/')
            ),
            None => format!("https://{shop}/admin/api/{version}/graphql.json"),
        };
        url::Url::parse(&address).map_err(|e| AdminError::Address(format!("{address}: {e}")))
    }

    /// Runs `operation` and decodes its `data`. A mutation's `userErrors` become
    /// [`AdminError::UserErrors`].
    pub async fn run<T: DeserializeOwned>(
        &self,
        store: StoreAccess<'_>,
        operation: &Operation,
        variables: Value,
    ) -> Result<T, AdminError> {
        let data = self.run_value(store, operation, &variables).await?;
        let shop = store.shop_domain;
        if let Some(errors) = user_errors(&data) {
            return Err(AdminError::UserErrors {
                shop: shop.into(),
                operation: operation.name,
                errors,
            });
        }
        serde_json::from_value(data).map_err(|e| AdminError::Decode {
            shop: shop.into(),
            operation: operation.name,
            detail: e.to_string(),
        })
    }

    async fn run_value(
        &self,
        store: StoreAccess<'_>,
        operation: &Operation,
        variables: &Value,
    ) -> Result<Value, AdminError> {
        let shop = store.shop_domain;
        let endpoint = self.endpoint(shop)?;
        let cost = operation.estimated_cost(variables);
        let mut last = String::new();
        for attempt in 1..=self.config.max_attempts.max(1) {
            self.limiter.until_key_ready(&shop.to_owned()).await;
            self.take_points(shop, cost).await;
            let sent = self
                .http
                .post(endpoint.clone())
                .header("X-Shopify-Access-Token", store.access_token)
                .json(&GraphqlRequest {
                    query: operation.document,
                    operation_name: operation.name,
                    variables,
                })
                .send()
                .await;
            let outcome = match sent {
                Ok(response) => self.read(shop, operation, cost, response).await?,
                Err(error) => transport_failure(&error),
            };
            match outcome {
                Attempt::Done(data) => return Ok(data),
                Attempt::RetryAfter(wait, why) => {
                    tracing::debug!(
                        shop,
                        operation = operation.name,
                        attempt,
                        ?wait,
                        why,
                        "retrying"
                    );
                    last = why;
                    tokio::time::sleep(wait).await;
                }
                Attempt::Backoff { why, maybe_applied } => {
                    if maybe_applied && !operation.safe_to_repeat {
                        return Err(AdminError::InDoubt {
                            shop: shop.into(),
                            operation: operation.name,
                            detail: why,
                        });
                    }
                    let wait = backoff(attempt);
                    tracing::warn!(
                        shop,
                        operation = operation.name,
                        attempt,
                        ?wait,
                        why,
                        "Admin API call failed; backing off"
                    );
                    last = why;
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Err(AdminError::GaveUp {
            shop: shop.into(),
            operation: operation.name,
            attempts: self.config.max_attempts.max(1),
            last,
        })
    }

    /// Runs `f` on the store's bucket mirror (Shopify's standard plan until the first answer).
    fn with_bucket<T>(&self, shop: &str, f: impl FnOnce(&mut CostBucket, Instant) -> T) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let bucket = buckets
            .entry(shop.to_owned())
            .or_insert_with(|| CostBucket::standard(now));
        f(bucket, now)
    }

    /// Waits until the store's bucket holds `cost` points, and takes them.
    async fn take_points(&self, shop: &str, cost: f64) {
        loop {
            let wait = match self.with_bucket(shop, |bucket, now| bucket.reserve(cost, now)) {
                Ok(()) => return,
                Err(wait) => wait,
            };
            metrics::counter!("tributary_shopify_throttle_waits_total").increment(1);
            tokio::time::sleep(wait).await;
        }
    }

    async fn read(
        &self,
        shop: &str,
        operation: &Operation,
        cost: f64,
        response: reqwest::Response,
    ) -> Result<Attempt, AdminError> {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        match status.as_u16() {
            401 | 403 => {
                return Err(AdminError::Unauthorized {
                    shop: shop.into(),
                    status: status.as_u16(),
                })
            }
            404 => return Err(AdminError::UnknownStore { shop: shop.into() }),
            429 => {
                return Ok(Attempt::RetryAfter(
                    retry_after.unwrap_or(Duration::from_secs(1)),
                    "HTTP 429".into(),
                ))
            }
            s if status.is_server_error() => {
                return Ok(Attempt::Backoff {
                    why: format!("HTTP {s}"),
                    maybe_applied: true,
                })
            }
            s if !status.is_success() => {
                return Err(AdminError::Http {
                    shop: shop.into(),
                    operation: operation.name,
                    status: s,
                })
            }
            _ => {}
        }
        let body: GraphqlResponse = match response.json().await {
            Ok(body) => body,
            // A body cut off mid-way is a transport failure, not an answer.
            Err(error) if !error.is_decode() => return Ok(transport_failure(&error)),
            Err(error) => {
                return Err(AdminError::Decode {
                    shop: shop.into(),
                    operation: operation.name,
                    detail: error.to_string(),
                })
            }
        };
        let requested = body
            .extensions
            .as_ref()
            .and_then(|e| e.cost.as_ref())
            .and_then(|c| c.requested_query_cost)
            .unwrap_or(cost);
        let wait_for_refill = match body.extensions.and_then(|e| e.cost) {
            Some(reported) => self.with_bucket(shop, |bucket, now| {
                bucket.observe(reported.throttle_status, now);
                bucket.wait_for(requested, now)
            }),
            None => Duration::from_secs(1),
        };
        let throttled = body
            .errors
            .iter()
            .any(|e| e.extensions.as_ref().and_then(|x| x.code.as_deref()) == Some("THROTTLED"));
        if throttled {
            metrics::counter!("tributary_shopify_throttled_total").increment(1);
            // The points are taken again before the retry, so the wait is for the refill only.
            return Ok(Attempt::RetryAfter(wait_for_refill, "THROTTLED".into()));
        }
        if !body.errors.is_empty() {
            return Err(AdminError::Graphql {
                shop: shop.into(),
                operation: operation.name,
                messages: body.errors.into_iter().map(|e| e.message).collect(),
            });
        }
        body.data
            .map(Attempt::Done)
            .ok_or_else(|| AdminError::Decode {
                shop: shop.into(),
                operation: operation.name,
                detail: "no data and no errors".into(),
            })
    }
}

/// The `userErrors` of any root field of a mutation's data, when there are some.
fn user_errors(data: &Value) -> Option<Vec<UserError>> {
    let errors: Vec<UserError> = data
        .as_object()?
        .values()
        .filter_map(|field| field.get("userErrors"))
        .filter_map(|list| serde_json::from_value::<Vec<UserError>>(list.clone()).ok())
        .flatten()
        .collect();
    (!errors.is_empty()).then_some(errors)
}

/// A transport failure, named by its kind (without the URL or anything sent). Only a failed
/// connect is sure to have executed nothing.
fn transport_failure(error: &reqwest::Error) -> Attempt {
    let why = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "connection broken"
    };
    Attempt::Backoff {
        why: why.into(),
        maybe_applied: !error.is_connect(),
    }
}

/// Exponential backoff, 250 ms doubling to at most 10 s, with jitter (half to all of it) so that many workers
/// retrying at once do not arrive together.
fn backoff(attempt: u32) -> Duration {
    let ceiling_ms = (250u64 << attempt.saturating_sub(1).min(6)).min(10_000);
    Duration::from_millis(rand::thread_rng().gen_range(ceiling_ms / 2..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_are_found_under_any_root_field() {
        let data = serde_json::json!({
            "tagsAdd": {"node": null, "userErrors": [{"field": ["id"], "message": "Order does not exist"}]}
        });
        let errors = user_errors(&data).expect("one user error");
        assert_eq!(errors[0].to_string(), "id: Order does not exist");
        assert!(user_errors(&serde_json::json!({"tagsAdd": {"userErrors": []}})).is_none());
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..20 {
            let wait = backoff(attempt);
            let ceiling = (250u64 << (attempt - 1).min(6)).min(10_000);
            assert!(wait <= Duration::from_millis(ceiling));
            assert!(wait >= Duration::from_millis(ceiling / 2));
        }
    }

    #[test]
    fn the_token_is_redacted_from_debug_output() {
        let access = StoreAccess {
            shop_domain: "a.myshopify.com",
            access_token: "shpat_planted_secret",
        };
        assert!(!format!("{access:?}").contains("planted"));
    }
}
