//! Credentials that expire: an access token refreshed before it does, by one refresher per
//! connection at a time, each new token (and rotated refresh token) sealed and persisted in
//! `tributary.control.credentials` before anything uses it.
//!
//! The platform's part is [`Refresh`]: given the connection's credential, obtain a new access
//! token. Shopify's expiring offline tokens (a refresh token that rotates on use) and client
//! credentials grant (`tributary_shopify::oauth`) fit it, as do Amazon's LWA refresh-token
//! exchange and TikTok Shop's rotating refresh tokens.
//!
//! Why this order makes a refresh safe:
//! - In one process, callers of a connection share one refresh (a per-connection async mutex;
//!   whoever waited finds the new token and does not refresh again).
//! - A refresh token is used only once the credential holding it has been acknowledged by Kafka:
//!   a process killed after Shopify rotated but before the write starts again from the previous
//!   refresh token, which Shopify still honours since its successor was never used
//!   (shopify.dev/changelog/more-resilient-refreshes-for-expiring-offline-access-tokens); killed
//!   after the write, it starts from the new one.
//! - Several processes follow the same topic: the newest generation wins everywhere, so they
//!   converge on one refresh token. (Two processes refreshing at the same instant both succeed
//!   under the same rule; only the last written pair is used again.)
//! - A refusal that will not change (the refresh token revoked, the app uninstalled) is recorded
//!   on the credential (`failure`); every caller then gets [`TokenError::Locked`] until the store
//!   is connected again, and the caller's health check raises the alert.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;
use tributary_schemas::{topics, Credential, CredentialGrant};

use crate::control::follow_table;
use crate::kafka::{now_ms, publish_record, TopicError};
use crate::secrets::{MasterKey, Secret};

/// A token is refreshed this long before it expires, or half its lifetime if that is shorter.
const REFRESH_MARGIN_MS: i64 = 5 * 60_000;

/// What a refresh is given: the credential's secrets, opened.
pub struct Opened {
    pub grant: CredentialGrant,
    pub client_id: String,
    pub client_secret: Secret,
    pub refresh_token: Option<Secret>,
}

/// A new access token (and, where the platform rotates them, a new refresh token).
pub struct Refreshed {
    pub access_token: String,
    /// Seconds the access token lives.
    pub expires_in_s: u64,
    pub refresh_token: Option<String>,
    pub refresh_token_expires_in_s: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The platform refused for good (an invalid or revoked grant); retrying cannot help.
    #[error("refused: {0}")]
    Refused(String),
    /// Anything else (a timeout, a 5xx): the next call tries again.
    #[error("{0}")]
    Failed(String),
}

/// The platform's token endpoint.
pub trait Refresh: Send + Sync + 'static {
    /// Exchanges `current` for a new access token of `connection`.
    fn refresh(
        &self,
        connection: &str,
        current: &Opened,
    ) -> impl Future<Output = Result<Refreshed, RefreshError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}: no managed credential")]
    Unknown(String),
    #[error("{connection}: the credential was refused for good and the connection is locked until it is connected again: {reason}")]
    Locked { connection: String, reason: String },
    #[error("{connection}: refreshing the access token failed: {error}")]
    Refresh {
        connection: String,
        error: RefreshError,
    },
    #[error("{0}: a sealed credential does not open with this master key")]
    Sealed(String),
    #[error(transparent)]
    Topic(#[from] TopicError),
}

/// Purpose strings binding each sealed part to its connection.
fn purpose(part: &str, connection: &str) -> String {
    format!("credential_{part}:{connection}")
}

/// Seals a new credential for `connection` (the connect flow: `stores load`, the control plane).
/// `refresh_token` is the grant's first refresh token (`None` for client credentials); the first
/// use refreshes, since no access token is held yet.
pub fn seal_new(
    key: &MasterKey,
    connection: &str,
    grant: CredentialGrant,
    client_id: &str,
    client_secret: &str,
    refresh_token: Option<&str>,
) -> Credential {
    Credential {
        connection: connection.to_owned(),
        grant,
        client_id: client_id.to_owned(),
        client_secret_sealed: key.seal(&purpose("client_secret", connection), client_secret),
        access_token_sealed: None,
        access_expires_at_ms: 0,
        refresh_token_sealed: refresh_token
            .map(|t| key.seal(&purpose("refresh_token", connection), t)),
        refresh_token_expires_at_ms: None,
        generation: 0,
        refreshed_at_ms: 0,
        failure: None,
    }
}

/// Every managed credential, followed from `tributary.control.credentials`, with their refreshes.
pub struct Credentials<R> {
    refresh: R,
    key: MasterKey,
    producer: FutureProducer,
    table: Arc<RwLock<HashMap<String, Credential>>>,
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<R: Refresh> Credentials<R> {
    /// Follows the topic in the background; returns once caught up.
    pub async fn follow(
        bootstrap: &str,
        refresh: R,
        key: MasterKey,
        producer: FutureProducer,
        shutdown: &CancellationToken,
    ) -> Result<Self, TopicError> {
        let table: Arc<RwLock<HashMap<String, Credential>>> = Arc::default();
        let followed = table.clone();
        follow_table::<Credential, _>(
            bootstrap,
            topics::CREDENTIALS,
            shutdown,
            move |key, record, _| {
                let mut table = followed.write().unwrap_or_else(|e| e.into_inner());
                match record {
                    Some(record) => keep_newer(&mut table, record),
                    None => {
                        table.remove(key);
                    }
                }
            },
        )
        .await?;
        Ok(Self {
            refresh,
            key,
            producer,
            table,
            refreshing: Mutex::default(),
        })
    }

    /// Whether `connection` has a managed credential.
    pub fn manages(&self, connection: &str) -> bool {
        self.read(connection).is_some()
    }

    fn read(&self, connection: &str) -> Option<Credential> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(connection)
            .cloned()
    }

    /// The connection's access token: the held one while it is fresh, else a new one from one
    /// refresh shared by every concurrent caller, persisted before it is returned.
    pub async fn access_token(&self, connection: &str) -> Result<Secret, TokenError> {
        if let Some(token) = self.fresh(connection)? {
            return Ok(token);
        }
        let gate = self
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(connection.to_owned())
            .or_default()
            .clone();
        let _only_refresher = gate.lock().await;
        // Whoever held the gate before may have refreshed already.
        if let Some(token) = self.fresh(connection)? {
            return Ok(token);
        }
        let current = self
            .read(connection)
            .ok_or_else(|| TokenError::Unknown(connection.to_owned()))?;
        let opened = self.open(&current)?;
        let refreshed = match self.refresh.refresh(connection, &opened).await {
            Ok(refreshed) => refreshed,
            // Another process may have rotated the refresh token meanwhile: its newer credential
            // stands, and nothing is locked on the strength of the older one.
            Err(RefreshError::Refused(_))
                if self
                    .read(connection)
                    .is_some_and(|held| held.generation > current.generation) =>
            {
                return self.open_access(connection);
            }
            Err(RefreshError::Refused(reason)) => {
                let locked = Credential {
                    failure: Some(reason.clone()),
                    ..current
                };
                self.persist(locked).await?;
                metrics::counter!("tributary_credential_refusals_total").increment(1);
                tracing::error!(connection, %reason, "credential refused for good; the connection is locked");
                return Err(TokenError::Locked {
                    connection: connection.to_owned(),
                    reason,
                });
            }
            Err(error) => {
                metrics::counter!("tributary_credential_refresh_failures_total").increment(1);
                // Refreshed early on purpose: the held token still serves until it expires, and
                // the next call tries the refresh again.
                if current.access_token_sealed.is_some() && now_ms() < current.access_expires_at_ms
                {
                    tracing::warn!(connection, %error, "refresh failed; the held token still serves");
                    return self.open_access(connection);
                }
                return Err(TokenError::Refresh {
                    connection: connection.to_owned(),
                    error,
                });
            }
        };
        let now = now_ms();
        let seal = |part: &str, value: &str| self.key.seal(&purpose(part, connection), value);
        // Every part is sealed again under the current master key: a refresh is how a
        // credential follows a key rotation (`keys reseal` leaves this topic to its refreshers).
        let next = Credential {
            client_secret_sealed: seal("client_secret", opened.client_secret.expose()),
            access_token_sealed: Some(seal("access_token", &refreshed.access_token)),
            access_expires_at_ms: now + refreshed.expires_in_s as i64 * 1000,
            refresh_token_sealed: match (&refreshed.refresh_token, &opened.refresh_token) {
                (Some(token), _) => Some(seal("refresh_token", token)),
                (None, Some(kept)) => Some(seal("refresh_token", kept.expose())),
                (None, None) => None,
            },
            refresh_token_expires_at_ms: match refreshed.refresh_token_expires_in_s {
                Some(s) => Some(now + s as i64 * 1000),
                None => current.refresh_token_expires_at_ms,
            },
            generation: current.generation + 1,
            refreshed_at_ms: now,
            failure: None,
            ..current
        };
        // Persisted before use: a crash from here on starts from this pair.
        self.persist(next).await?;
        metrics::counter!("tributary_credential_refreshes_total").increment(1);
        self.open_access(connection)
    }

    /// The held access token if it is not due for a refresh.
    fn fresh(&self, connection: &str) -> Result<Option<Secret>, TokenError> {
        let Some(current) = self.read(connection) else {
            return Err(TokenError::Unknown(connection.to_owned()));
        };
        if let Some(reason) = current.failure {
            return Err(TokenError::Locked {
                connection: connection.to_owned(),
                reason,
            });
        }
        let lifetime = current.access_expires_at_ms - current.refreshed_at_ms;
        let margin = REFRESH_MARGIN_MS.min(lifetime / 2);
        if current.access_token_sealed.is_none()
            || now_ms() >= current.access_expires_at_ms - margin
        {
            return Ok(None);
        }
        self.open_access(connection).map(Some)
    }

    fn open_access(&self, connection: &str) -> Result<Secret, TokenError> {
        let sealed = self
            .read(connection)
            .and_then(|c| c.access_token_sealed)
            .ok_or_else(|| TokenError::Unknown(connection.to_owned()))?;
        self.key
            .open(&purpose("access_token", connection), &sealed)
            .map_err(|_| TokenError::Sealed(connection.to_owned()))
    }

    fn open(&self, current: &Credential) -> Result<Opened, TokenError> {
        let connection = &current.connection;
        let open = |part: &str, sealed: &str| {
            self.key
                .open(&purpose(part, connection), sealed)
                .map_err(|_| TokenError::Sealed(connection.clone()))
        };
        Ok(Opened {
            grant: current.grant,
            client_id: current.client_id.clone(),
            client_secret: open("client_secret", &current.client_secret_sealed)?,
            refresh_token: current
                .refresh_token_sealed
                .as_deref()
                .map(|sealed| open("refresh_token", sealed))
                .transpose()?,
        })
    }

    /// Writes `credential` and waits for Kafka's acknowledgement, then holds it.
    async fn persist(&self, credential: Credential) -> Result<(), TokenError> {
        publish_record(
            &self.producer,
            topics::CREDENTIALS,
            &credential.connection,
            &credential,
        )
        .await?;
        keep_newer(
            &mut self.table.write().unwrap_or_else(|e| e.into_inner()),
            credential,
        );
        Ok(())
    }
}

/// Holds `record` unless a later generation is held: a process's own write may be applied before
/// the follower reads an older one back. A reconnect (generation 0) replaces anything.
fn keep_newer(table: &mut HashMap<String, Credential>, record: Credential) {
    let newer = table
        .get(&record.connection)
        .is_none_or(|held| record.generation == 0 || record.generation >= held.generation);
    if newer {
        table.insert(record.connection.clone(), record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(generation: i64) -> Credential {
        let key = MasterKey::generate();
        Credential {
            generation,
            ..seal_new(
                &key,
                "shopify/a.myshopify.com",
                CredentialGrant::RefreshToken,
                "id",
                "secret",
                Some("r0"),
            )
        }
    }

    #[test]
    fn an_older_generation_never_replaces_a_newer_one_but_a_reconnect_does() {
        let mut table = HashMap::new();
        keep_newer(&mut table, credential(3));
        keep_newer(&mut table, credential(2));
        assert_eq!(table["shopify/a.myshopify.com"].generation, 3);
        keep_newer(&mut table, credential(0));
        assert_eq!(table["shopify/a.myshopify.com"].generation, 0);
    }
}
