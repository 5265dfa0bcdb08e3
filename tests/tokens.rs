//! Access tokens that expire, end to end against the fake Shopify's token endpoint (which rotates
//! the refresh token on every use and invalidates a refresh token once its successor is used):
//! many concurrent callers, and processes killed with SIGKILL in the middle of refreshes, never
//! present a stale refresh token or an expired access token, and no call fails for want of one.

mod support;

use std::time::{Duration, Instant};

use rand::Rng;
use support::*;
use tributary_fakes::shopify::OAuthSetup;
use tributary_runtime::credentials::seal_new;
use tributary_runtime::kafka::{publish_record, read_topic};
use tributary_runtime::secrets::MasterKey;
use tributary_schemas::{topics, AvroRecord, Credential, CredentialGrant};
use tributary_shopify::oauth::{connection, AccessTokens};
use tributary_shopify::operations::SHOP as SHOP_QUERY;
use tributary_shopify::{AdminClient, StoreAccess};

const CLIENT_ID: &str = "demo-client-id";
const CLIENT_SECRET: &str = "demo-client-secret-planted-7f3a";

/// Connects the demo store with an expiring token: its first refresh token, sealed, in the
/// credentials topic.
async fn connect_expiring(p: &Pipeline, lifetime: Duration, answer_delay: Duration) -> MasterKey {
    let first = p.shopify.enable_oauth(
        SHOP,
        OAuthSetup {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            access_token_lifetime: lifetime,
            answer_delay,
        },
    );
    let key = MasterKey::load(&p.config.secrets.master_key_file).expect("master key");
    let credential = seal_new(
        &key,
        &connection(SHOP),
        CredentialGrant::RefreshToken,
        CLIENT_ID,
        CLIENT_SECRET,
        Some(&first),
    );
    let producer = tributary_runtime::kafka::producer_config(&p.bootstrap, Duration::from_secs(10))
        .create()
        .expect("producer");
    publish_record(
        &producer,
        topics::CREDENTIALS,
        &credential.connection,
        &credential,
    )
    .await
    .expect("credential published");
    key
}

fn credentials(bootstrap: &str) -> Vec<Credential> {
    let mut out = Vec::new();
    read_topic(bootstrap, topics::CREDENTIALS, |m| {
        if let Some(c) = rdkafka::Message::payload(m).and_then(|p| Credential::from_avro(p).ok()) {
            out.push(c);
        }
    })
    .expect("credentials topic");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_callers_share_each_refresh_and_never_use_a_stale_token() {
    let p = Pipeline::start("tokens", |_| {}).await;
    let key = connect_expiring(&p, Duration::from_secs(2), Duration::from_millis(50)).await;
    let tokens = AccessTokens::follow(&p.bootstrap, &p.config.shopify, key, &p.shutdown)
        .await
        .expect("credentials followed");
    let admin = std::sync::Arc::new(AdminClient::new(p.config.shopify.clone()).unwrap());
    let until = Instant::now() + Duration::from_secs(7);
    let callers: Vec<_> = (0..24)
        .map(|_| {
            let (tokens, admin) = (tokens.clone(), admin.clone());
            tokio::spawn(async move {
                let mut calls = 0u32;
                while Instant::now() < until {
                    // The static token of the store record is not what opens it any more.
                    let token = tokens.open(SHOP, "not-the-token").await.expect("a token");
                    let store = StoreAccess {
                        shop_domain: SHOP,
                        access_token: token.expose(),
                    };
                    admin
                        .run::<serde_json::Value>(store, &SHOP_QUERY, serde_json::json!({}))
                        .await
                        .expect("the call had a live token");
                    calls += 1;
                    let pause = Duration::from_millis(rand::thread_rng().gen_range(5..40));
                    tokio::time::sleep(pause).await;
                }
                calls
            })
        })
        .collect();
    let mut calls = 0;
    for caller in callers {
        calls += caller.await.expect("caller");
    }
    let stats = p.shopify.oauth_stats(SHOP);
    assert_eq!(
        (stats.stale_refreshes, stats.expired_calls),
        (0, 0),
        "{stats:?}"
    );
    // Refreshed when half the 2 s lifetime is left: about 7 over 7 s, once each, not per caller.
    assert!(
        (4..=12).contains(&stats.issued),
        "{stats:?} over {calls} calls"
    );
    let newest = credentials(&p.bootstrap)
        .into_iter()
        .max_by_key(|c| c.generation)
        .expect("credential");
    assert_eq!(
        newest.generation, stats.issued as i64,
        "every refresh persisted"
    );
    assert!(calls > 200, "{calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_killed_mid_refresh_starts_again_from_a_refresh_token_that_still_works() {
    let p = Pipeline::start("tokens_kill", |_| {}).await;
    // Each run finds the token expired and refreshes; the endpoint answers 300 ms after rotating,
    // so kills land before the answer, between the answer and the write, and after.
    connect_expiring(&p, Duration::from_secs(1), Duration::from_millis(300)).await;
    let run = || {
        let mut command = p.cli(&["reconcile", "--shop", SHOP]);
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    let mut rng = rand::thread_rng();
    for round in 0..12 {
        if round % 2 == 0 {
            // Past the 1 s lifetime: this run refreshes.
            std::thread::sleep(Duration::from_millis(1_100));
        }
        let mut child = run().spawn().expect("tributary reconcile");
        if round % 2 == 0 {
            // Killed while Shopify has rotated and not yet answered: the new pair is lost.
            let issued = p.shopify.oauth_stats(SHOP).issued;
            let deadline = Instant::now() + Duration::from_secs(10);
            while p.shopify.oauth_stats(SHOP).issued == issued && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.gen_range(200..2_500)));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..600)));
    }
    let output = run()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("tributary reconcile");
    assert!(output.status.success(), "{output:?}");
    let stats = p.shopify.oauth_stats(SHOP);
    assert_eq!(
        (stats.stale_refreshes, stats.expired_calls),
        (0, 0),
        "{stats:?}"
    );
    let persisted = credentials(&p.bootstrap)
        .iter()
        .map(|c| c.generation)
        .max()
        .unwrap_or_default();
    assert!(
        stats.issued >= persisted as u64 + 6 && persisted >= 1,
        "six rotations were lost to kills, and the runs went on from what was persisted: {stats:?}, {persisted} persisted"
    );
    // The client secret and the tokens are sealed in the topic.
    let planted = CLIENT_SECRET.as_bytes();
    read_topic(&p.bootstrap, topics::CREDENTIALS, |m| {
        let payload = rdkafka::Message::payload(m).unwrap_or_default();
        assert!(!payload.windows(planted.len()).any(|w| w == planted));
        assert!(!payload.windows(6).any(|w| w == b"shprt_" || w == b"shpat_"));
    })
    .expect("credentials topic");
}
