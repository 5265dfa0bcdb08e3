//! Access tokens that expire: Shopify's token endpoint as a [`Refresh`], and [`AccessTokens`],
//! the one way every stage gets a store's token.
//!
//! `POST https://{shop}/admin/oauth/access_token` (shopify.dev/docs/apps/build/authentication-authorization):
//! - expiring offline tokens: `{"client_id", "client_secret", "grant_type": "refresh_token",
//!   "refresh_token"}` as JSON answers `{"access_token", "expires_in", "refresh_token",
//!   "refresh_token_expires_in", "scope"}`; the refresh token rotates on every use (Shopify's own
//!   library sends JSON, `refresh-token.ts`);
//! - the client credentials grant of Dev Dashboard apps: `grant_type=client_credentials&client_id&
//!   client_secret`, form-encoded, answers `{"access_token", "expires_in", "scope"}` (about 24 h).
//!
//! A 400 or 401 (`invalid_grant`, `invalid_client`) is a refusal for good; anything else is tried
//! again at the next call.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tributary_runtime::credentials::{
    Credentials, Opened, Refresh, RefreshError, Refreshed, TokenError,
};
use tributary_runtime::kafka::{producer_config, TopicError};
use tributary_runtime::secrets::{MasterKey, Secret, UnopenedAccessToken};
use tributary_schemas::CredentialGrant;

use crate::AdminConfig;

/// The credential of a store's Admin API connection in `tributary.control.credentials`.
pub fn connection(shop_domain: &str) -> String {
    format!("shopify/{shop_domain}")
}

/// Shopify's token endpoint.
pub struct ShopifyOAuth {
    http: reqwest::Client,
    base_url: Option<String>,
}

impl ShopifyOAuth {
    pub fn new(config: &AdminConfig) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(config.timeout_ms))
                .build()?,
            base_url: config.base_url.clone(),
        })
    }

    fn endpoint(&self, shop: &str) -> String {
        match &self.base_url {
            Some(base) => format!(
                "{}/{shop}/admin/oauth/access_token",
                base.trim_end_matches('/')
            ),
            None => format!("https://{shop}/admin/oauth/access_token"),
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    refresh_token_expires_in: Option<u64>,
}

impl Refresh for ShopifyOAuth {
    async fn refresh(&self, connection: &str, current: &Opened) -> Result<Refreshed, RefreshError> {
        let shop = connection.strip_prefix("shopify/").unwrap_or(connection);
        let request = self.http.post(self.endpoint(shop));
        let request = match (current.grant, &current.refresh_token) {
            (CredentialGrant::RefreshToken, Some(refresh_token)) => request.json(&json!({
                "client_id": current.client_id,
                "client_secret": current.client_secret.expose(),
                "grant_type": "refresh_token",
                "refresh_token": refresh_token.expose(),
            })),
            (CredentialGrant::RefreshToken, None) => {
                return Err(RefreshError::Refused("no refresh token is held".into()))
            }
            (CredentialGrant::ClientCredentials, _) => request.form(&[
                ("grant_type", "client_credentials"),
                ("client_id", current.client_id.as_str()),
                ("client_secret", current.client_secret.expose()),
            ]),
        };
        let answer = request
            .send()
            .await
            .map_err(|e| RefreshError::Failed(e.without_url().to_string()))?;
        let status = answer.status();
        if status.as_u16() == 400 || status.as_u16() == 401 {
            // The body names the OAuth error (`invalid_grant`); it holds no secret.
            let body = answer.text().await.unwrap_or_default();
            return Err(RefreshError::Refused(format!("HTTP {status}: {body}")));
        }
        if !status.is_success() {
            return Err(RefreshError::Failed(format!("HTTP {status}")));
        }
        let token: TokenAnswer = answer
            .json()
            .await
            .map_err(|e| RefreshError::Failed(format!("unexpected answer: {}", e.without_url())))?;
        Ok(Refreshed {
            access_token: token.access_token,
            // Shopify gives expires_in for every expiring token; without one, an hour.
            expires_in_s: token.expires_in.unwrap_or(3_600),
            refresh_token: token.refresh_token,
            refresh_token_expires_in_s: token.refresh_token_expires_in,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessTokenError {
    #[error(transparent)]
    Sealed(#[from] UnopenedAccessToken),
    #[error(transparent)]
    Managed(#[from] TokenError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("the token endpoint's HTTP client: {0}")]
    Client(String),
}

impl AccessTokenError {
    /// The credential was refused for good: the store must be connected again.
    pub fn is_locked(&self) -> bool {
        matches!(self, Self::Managed(TokenError::Locked { .. }))
    }

    /// A later call may get a token (the token endpoint or Kafka did not answer); anything else
    /// (a refused or unopenable credential) will not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Managed(TokenError::Refresh { .. } | TokenError::Topic(_)) | Self::Topic(_)
        )
    }
}

/// A stage that could not get a token: a later call may (retry the record), or no call will
/// (dead-letter it with the reason).
impl From<AccessTokenError> for tributary_runtime::stage::Failure {
    fn from(error: AccessTokenError) -> Self {
        match error.is_transient() {
            true => Self::Retry(error.to_string()),
            false => Self::DeadLetter(error.to_string()),
        }
    }
}

/// Every store's Admin API token: a managed credential's (refreshed when due, see
/// [`tributary_runtime::credentials`]) where the store has one, else the non-expiring token
/// sealed in its store record.
#[derive(Clone)]
pub struct AccessTokens {
    key: MasterKey,
    managed: Option<Arc<Credentials<ShopifyOAuth>>>,
}

impl AccessTokens {
    /// Only tokens sealed in store records (tests and tools without a broker).
    pub fn sealed_only(key: MasterKey) -> Self {
        Self { key, managed: None }
    }

    /// Follows `tributary.control.credentials`; returns once caught up.
    pub async fn follow(
        bootstrap: &str,
        config: &AdminConfig,
        key: MasterKey,
        shutdown: &CancellationToken,
    ) -> Result<Self, AccessTokenError> {
        let oauth =
            ShopifyOAuth::new(config).map_err(|e| AccessTokenError::Client(e.to_string()))?;
        let producer = producer_config(bootstrap, Duration::from_secs(30))
            .create()
            .map_err(TopicError::from)?;
        let managed =
            Credentials::follow(bootstrap, oauth, key.clone(), producer, shutdown).await?;
        Ok(Self {
            key,
            managed: Some(Arc::new(managed)),
        })
    }

    /// The store's access token. `sealed_static` is the token of its store record, used when no
    /// managed credential exists.
    pub async fn open(
        &self,
        shop_domain: &str,
        sealed_static: &str,
    ) -> Result<Secret, AccessTokenError> {
        let connection = connection(shop_domain);
        match &self.managed {
            Some(managed) if managed.manages(&connection) => {
                Ok(managed.access_token(&connection).await?)
            }
            _ => Ok(self.key.open_access_token(shop_domain, sealed_static)?),
        }
    }
}
