//! The control plane through the real path: `tributary control` as its own process, two teams,
//! the fake Shopify, the control topics and ingest.

mod support;

use std::process::Stdio;
use std::time::Duration;

use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::*;
use tokio_util::sync::CancellationToken;
use tributary_control::connections::ControlPlane;
use tributary_fakes::shopify::ShopSetup;
use tributary_runtime::kafka::read_topic;
use tributary_schemas::{topics, Alert, AlertStatus, AvroRecord, Store, StoreStatus};

const NORTH: &str = "north-trail.myshopify.com";
const NORTH_TOKEN: &str = "shpat_planted_north_7d1c";
const NORTH_SECRET: &str = "planted-app-secret-north-44b";
const SOUTH: &str = "south-peak.myshopify.com";

struct Api {
    http: reqwest::Client,
    base: String,
    /// Every body the API answered, searched for planted secrets at the end.
    seen: std::sync::Mutex<String>,
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the admin API answers");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        self.seen.lock().unwrap().push_str(&text);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

fn newest_store(bootstrap: &str, domain: &str) -> Store {
    let mut newest = None;
    read_topic(bootstrap, topics::STORES, |m| {
        if let Some(Ok(store)) = m.payload().map(Store::from_avro) {
            if store.domain == domain {
                newest = Some(store);
            }
        }
    })
    .unwrap();
    newest.expect("the store is in the stores topic")
}

fn newest_alert(bootstrap: &str, id: &str) -> Option<Alert> {
    let mut newest = None;
    read_topic(bootstrap, topics::ALERTS, |m| {
        if let Some(Ok(alert)) = m.payload().map(Alert::from_avro) {
            if alert.alert_id == id {
                newest = Some(alert);
            }
        }
    })
    .unwrap();
    newest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn teams_connect_check_and_disconnect_only_their_own_stores_and_secrets_never_show() {
    let p = Pipeline::start("connections", |_| {}).await;
    p.shopify.add_shop(ShopSetup::new(NORTH, NORTH_TOKEN));
    p.shopify.add_shop(ShopSetup::new(SOUTH, "shpat_south"));
    let shutdown = CancellationToken::new();
    let plane = ControlPlane::start(&p.config.control_plane(), &p.bootstrap, &shutdown)
        .await
        .unwrap();
    let (team_a, key_a) = plane.create_team("North outfitters").await.unwrap();
    let (_, key_b) = plane.create_team("South outfitters").await.unwrap();
    shutdown.cancel();

    let listen = format!("127.0.0.1:{}", free_port());
    let log_path = p._dir.path().join("control.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _control = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .arg("control")
        .env(
            "RUST_LOG",
            "debug,rdkafka=info,hyper=info,hyper_util=info,reqwest=info,h2=info",
        )
        .env("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", &p.bootstrap)
        .env(
            "TRIBUTARY_SECRETS__MASTER_KEY_FILE",
            &p.config.secrets.master_key_file,
        )
        .env("TRIBUTARY_SHOPIFY__BASE_URL", p.shopify.base_url())
        .env("TRIBUTARY_CONNECTIONS__LISTEN", &listen)
        .env("TRIBUTARY_CONNECTIONS__WEBHOOK_URL", &p.webhook_url)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("tributary control");
    tributary::app::wait_ready(&format!("http://{listen}/healthz"), Duration::from_secs(30))
        .await
        .unwrap();
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{listen}"),
        seen: Default::default(),
    };
    let (a, b) = (Some(key_a.as_str()), Some(key_b.as_str()));
    let connect =
        |token: &str| json!({"domain": NORTH, "access_token": token, "app_secret": NORTH_SECRET});

    // No key, or a key no team has: 401.
    assert_eq!(
        api.call("GET", "/api/stores", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call("GET", "/api/stores", Some("trb_guess"), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // A token the store refuses is not saved; a malformed body is a 400 that names the problem.
    let (status, body) = api
        .call(
            "POST",
            "/api/stores",
            a,
            Some(connect("shpat_wrong_planted")),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("the store refused the access token")
        )
    );
    let (status, body) = api
        .call("POST", "/api/stores", a, Some(json!({"domain": NORTH})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("missing field"),
        "{body}"
    );

    // Connected: verified, webhooks registered, every feature off.
    let (status, view) = api
        .call("POST", "/api/stores", a, Some(connect(NORTH_TOKEN)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{view}");
    assert_eq!(
        (
            view["connected"].as_bool(),
            view["status"].as_str(),
            view["product_count"].as_i64(),
            view["api_version"].as_str()
        ),
        (Some(true), Some("active"), Some(42), Some("2026-04"))
    );
    assert!(view["last_synced_at"].is_string());
    assert!(
        view["features"]
            .as_object()
            .unwrap()
            .values()
            .all(|on| on == false),
        "{view}"
    );
    assert_eq!(p.shopify.webhook_topics(NORTH).len(), 10);
    // Again: idempotent, no second subscription.
    assert_eq!(
        api.call("POST", "/api/stores", a, Some(connect(NORTH_TOKEN)))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        p.shopify.writes(NORTH).get("webhookSubscriptionCreate"),
        Some(&10)
    );

    // Team B can neither see nor change team A's store, nor take it over.
    let north = format!("/api/stores/{NORTH}");
    for (method, path, body) in [
        ("GET", north.clone(), None),
        ("PATCH", north.clone(), Some(json!({"order_tags": true}))),
        ("DELETE", north.clone(), None),
        ("POST", format!("{north}/health"), None),
    ] {
        assert_eq!(
            api.call(method, &path, b, body).await.0,
            StatusCode::NOT_FOUND,
            "{method} {path}"
        );
    }
    assert_eq!(api.call("GET", "/api/stores", b, None).await.1, json!([]));
    // Without the store's token, team B cannot even learn that it is connected.
    assert_eq!(
        api.call("POST", "/api/stores", b, Some(connect("shpat_guess")))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        api.call("POST", "/api/stores", b, Some(connect(NORTH_TOKEN)))
            .await
            .0,
        StatusCode::CONFLICT
    );

    // What the API cannot take is refused before anything is done in Shopify, each with its
    // status; the bearer scheme is matched in any case.
    let subscriptions = p
        .shopify
        .writes(NORTH)
        .get("webhookSubscriptionCreate")
        .copied();
    let raw = |content_type: &'static str, body: Vec<u8>, key: &str| {
        api.http
            .post(format!("{}/api/stores", api.base))
            .header("authorization", format!("bearer {key}"))
            .header("content-type", content_type)
            .body(body)
    };
    // A 3 MB body is answered 413 once more than the limit has arrived.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&listen).await.unwrap();
        let head = format!("POST /api/stores HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key_a}\r\nContent-Type: application/json\r\nContent-Length: 3000000\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let _ = stream.write_all(&[b' '; 70_000]).await;
        let mut answer = vec![0u8; 64];
        let n = stream.read(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    let status = raw(
        "text/plain",
        serde_json::to_vec(&connect(NORTH_TOKEN)).unwrap(),
        &key_a,
    )
    .send()
    .await
    .unwrap()
    .status();
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let long_secret =
        json!({"domain": NORTH, "access_token": NORTH_TOKEN, "app_secret": "s".repeat(40_000)});
    let (status, body) = api.call("POST", "/api/stores", a, Some(long_secret)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for domain in [
        "x..myshopify.com",
        "evil.com",
        &format!("{}.myshopify.com", "a".repeat(5_000)),
    ] {
        let request =
            json!({"domain": domain, "access_token": NORTH_TOKEN, "app_secret": NORTH_SECRET});
        assert_eq!(
            api.call("POST", "/api/stores", a, Some(request)).await.0,
            StatusCode::BAD_REQUEST,
            "{domain}"
        );
    }
    assert_eq!(
        p.shopify
            .writes(NORTH)
            .get("webhookSubscriptionCreate")
            .copied(),
        subscriptions,
        "nothing was registered in Shopify"
    );
    let status = api
        .http
        .get(format!("{}/api/stores", api.base))
        .header("authorization", format!("BEARER {key_a}"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        newest_store(&p.bootstrap, NORTH).team_id.as_deref(),
        Some(team_a.team_id.as_str())
    );

    // Team A turns tags and notes on; the store's webhooks now reach ingest.
    let (status, view) = api
        .call(
            "PATCH",
            &north,
            a,
            Some(json!({"order_tags": true, "order_notes": true})),
        )
        .await;
    assert_eq!(
        (status, view["features"]["order_tags"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    let mut order = Order::new(9_300_000_000_001, "20.00");
    order.shop = NORTH;
    order.secret = NORTH_SECRET;
    let status_of = |topic: &'static str, id: &'static str| {
        let (order, url) = (order.clone(), p.webhook_url.clone());
        async move {
            let client = reqwest::Client::new();
            order
                .delivery(topic, id, id)
                .request(&client, &url)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    // Ingest follows the stores topic: the store is known there a moment after connecting.
    let mut accepted = StatusCode::NOT_FOUND;
    for _ in 0..100 {
        accepted = status_of("orders/create", "n1").await;
        if accepted != StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accepted, StatusCode::OK);

    // A scope revoked in Shopify: the check locks the store and opens an alert; restored, it
    // unlocks and archives the alert.
    p.shopify
        .set_scopes(NORTH, &["read_orders", "read_products"]);
    let (_, report) = api.call("POST", &format!("{north}/health"), a, None).await;
    assert_eq!(report["healthy"], false);
    assert_eq!(report["problems"], json!(["missing scopes: write_orders"]));
    assert_eq!(report["store"]["status"], "locked");
    let alert_id = format!("{NORTH}/CONNECTION_UNHEALTHY/connection");
    assert_eq!(
        newest_alert(&p.bootstrap, &alert_id).map(|a| a.status),
        Some(AlertStatus::Open)
    );
    p.shopify
        .set_scopes(NORTH, &["read_orders", "write_orders"]);
    let (_, report) = api.call("POST", &format!("{north}/health"), a, None).await;
    assert_eq!(
        (
            report["healthy"].as_bool(),
            report["store"]["status"].as_str()
        ),
        (Some(true), Some("active"))
    );
    assert_eq!(
        newest_alert(&p.bootstrap, &alert_id).map(|a| a.status),
        Some(AlertStatus::Archived)
    );

    // Disconnected: credentials gone, webhooks refused at once.
    let (status, view) = api.call("DELETE", &north, a, None).await;
    assert_eq!(
        (status, view["status"].as_str(), view["connected"].as_bool()),
        (StatusCode::OK, Some("disconnected"), Some(false))
    );
    let stored = newest_store(&p.bootstrap, NORTH);
    assert_eq!(
        (
            stored.status,
            stored.admin.is_none(),
            stored.webhook_secrets_sealed.is_empty()
        ),
        (StoreStatus::Disconnected, true, true)
    );
    let client = reqwest::Client::new();
    let mut refused = StatusCode::OK;
    for _ in 0..100 {
        refused = order
            .delivery("orders/updated", "n2", "n2")
            .request(&client, &p.webhook_url)
            .send()
            .await
            .unwrap()
            .status();
        if refused == StatusCode::NOT_FOUND {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused, StatusCode::NOT_FOUND);

    // The planted token and app secret are in no topic, no answer and no log line.
    let mut everywhere = api.seen.lock().unwrap().clone();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("store connected") && log.contains("health check failed"),
        "the log is searched: {log}"
    );
    everywhere.push_str(&log);
    for topic in topics::ALL {
        read_topic(&p.bootstrap, topic.name, |m| {
            everywhere.push_str(&String::from_utf8_lossy(m.key().unwrap_or_default()));
            everywhere.push_str(&String::from_utf8_lossy(m.payload().unwrap_or_default()));
        })
        .unwrap();
    }
    assert!(
        everywhere.contains(NORTH),
        "the search covers what the API, the log and the topics said"
    );
    for planted in [NORTH_TOKEN, NORTH_SECRET] {
        assert!(!everywhere.contains(planted), "{planted} leaked");
    }
}
