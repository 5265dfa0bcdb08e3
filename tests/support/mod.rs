//! Test harness: an embedded broker, the pipeline in process, a fresh ClickHouse database per test,
//! and helpers to sign webhooks and read results back.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tributary::config::Config;
use tributary::generate::Delivery;
use tributary_control::files as control_files;
use tributary_fakes::shopify::FakeShopify;
use tributary_runtime::kafka::EmbeddedBroker;
use tributary_runtime::secrets::MasterKey;

pub const SHOP: &str = "demo-outdoors.myshopify.com";
pub const SECRET: &str = "demo-app-secret-2025";
pub const PREVIOUS_SECRET: &str = "demo-app-secret-previous";
/// The demo store that holds orders 10 minutes (event time) before settling them.
pub const UPSELL_SHOP: &str = "demo-upsells.myshopify.com";
pub const UPSELL_SECRET: &str = "demo-upsells-secret-2025";

pub fn repo_path(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn clickhouse_url() -> String {
    std::env::var("TRIBUTARY_CH_URL").unwrap_or_else(|_| "http://127.0.0.1:18123".into())
}

/// A port no other test of this process gets, free when asked. Taken below the kernel's
/// ephemeral range (32768 and up on Linux), which outgoing connections draw from: a port found free
/// there can be taken by a client socket (Kafka, ClickHouse) before the service binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    let _ = NEXT.compare_exchange(0, base, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32_000 {
            NEXT.store(20_000, Ordering::SeqCst);
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A config for one test: its own database, ports and master key file.
pub fn test_config(name: &str, dir: &Path) -> Config {
    let mut config = Config::default();
    config.clickhouse.url = clickhouse_url();
    config.clickhouse.database = format!("e2e_{name}_{}", std::process::id());
    config.clickhouse.batch_ms = 100;
    config.ingest.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.processor.commit_interval_ms = 50;
    // Held orders of the demo's delayed store settle soon after a generated stream ends.
    config.processor.idle_tick_ms = 500;
    // Hand-written orders carry fixed 2025 dates while idle ticks carry today's: keep every order
    // however far apart they drift (expiry has its own test).
    config.processor.expire_after_days = 0;
    config.secrets.master_key_file = dir.join("master.key");
    config.kafka.partitions = 4;
    config.shopify.timeout_ms = 2_000;
    config.writeback.batch_ms = 50;
    // Reconciliation passes run when a test asks (tributary::reconcile::run).
    config.reconcile.interval_minutes = 0;
    config.reconcile.bulk_poll_ms = 100;
    config
}

pub struct Pipeline {
    pub config: Config,
    pub bootstrap: String,
    pub shutdown: CancellationToken,
    pub webhook_url: String,
    task: Option<tokio::task::JoinHandle<()>>,
    /// The demo stores' Admin API, for writeback.
    pub shopify: FakeShopify,
    pub _broker: EmbeddedBroker,
    pub _dir: tempfile::TempDir,
}

impl Pipeline {
    /// Starts a broker, loads the demo stores and advocates, and runs the whole pipeline.
    pub async fn start(name: &str, adjust: impl FnOnce(&mut Config)) -> Pipeline {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(name, dir.path());
        let shopify = start_demo_shopify().await;
        config.shopify.base_url = Some(shopify.base_url());
        adjust(&mut config);
        let broker = EmbeddedBroker::start(1, config.kafka.partitions).expect("mock cluster");
        let bootstrap = broker.bootstrap_servers();
        reset_database(&config).await;
        load_demo_control(&config, &bootstrap).await;
        let shutdown = CancellationToken::new();
        let task = Some(spawn_pipeline(&config, &bootstrap, &shutdown));
        let webhook_url = format!("http://{}/webhooks/shopify", config.ingest.listen);
        wait_ready(&format!("http://{}/readyz", config.ingest.listen)).await;
        Pipeline {
            config,
            bootstrap,
            shutdown,
            webhook_url,
            task,
            shopify,
            _broker: broker,
            _dir: dir,
        }
    }

    /// Stops every service (as a deploy would), changes the config, and starts them again on the
    /// same broker and database.
    pub async fn restart(&mut self, adjust: impl FnOnce(&mut Config)) {
        self.stop().await;
        self.start_again(adjust).await;
    }

    /// Stops every service and waits until they have committed and exited.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the pipeline stopped cleanly");
        }
    }

    /// Starts the services again after [`Pipeline::stop`].
    pub async fn start_again(&mut self, adjust: impl FnOnce(&mut Config)) {
        adjust(&mut self.config);
        self.shutdown = CancellationToken::new();
        self.task = Some(spawn_pipeline(
            &self.config,
            &self.bootstrap,
            &self.shutdown,
        ));
        wait_ready(&format!("http://{}/readyz", self.config.ingest.listen)).await;
    }

    /// Waits until `group` has committed everything in `topic`.
    pub async fn drained(&self, group: &str, topic: &str) {
        let poll = Duration::from_millis(100);
        let caught_up = tributary::replay::caught_up(&self.bootstrap, group, topic, poll, None);
        tokio::time::timeout(Duration::from_secs(30), caught_up)
            .await
            .unwrap_or_else(|_| panic!("{group} did not drain {topic}"))
            .expect("group offsets");
    }

    pub fn clickhouse(&self) -> clickhouse::Client {
        self.config.clickhouse.client()
    }

    /// `tributary <args>` as a process of its own, on this pipeline's broker, master key and
    /// fake Shopify (warnings only in its log).
    pub fn cli(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"));
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .env("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", &self.bootstrap)
            .env(
                "TRIBUTARY_SECRETS__MASTER_KEY_FILE",
                &self.config.secrets.master_key_file,
            )
            .env("TRIBUTARY_SHOPIFY__BASE_URL", self.shopify.base_url());
        command
    }
}

impl Drop for Pipeline {
    /// Stops the services while the broker is still up: a consumer or a final commit left
    /// talking to a broker that is gone can block, and the test runtime waits for blocking work
    /// without end when it is dropped.
    fn drop(&mut self) {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                if tokio::time::timeout(Duration::from_secs(30), task)
                    .await
                    .is_err()
                {
                    eprintln!("the pipeline did not stop within 30 s of the test's end");
                }
            })
        });
    }
}

fn spawn_pipeline(
    config: &Config,
    bootstrap: &str,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (config, bootstrap, shutdown) = (config.clone(), bootstrap.to_owned(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = tributary::app::run_all(&config, &bootstrap, shutdown).await {
            panic!("pipeline failed: {e:#}");
        }
    })
}

/// A fake Shopify holding the demo stores that have Admin access, their advocates as customers,
/// with a Shopify Plus sized bucket (10,000 points, 500 a second) so writeback keeps up with a generated stream.
pub async fn start_demo_shopify() -> FakeShopify {
    let stores = control_files::StoresFile::read(&repo_path("deploy/demo/stores.toml"))
        .expect("demo stores");
    let advocates = control_files::read_advocates(&repo_path("deploy/demo/advocates.csv"))
        .expect("demo advocates");
    tributary::dev::start_fake_shopify(
        ([127, 0, 0, 1], 0).into(),
        &stores,
        &advocates,
        10_000.0,
        500.0,
    )
    .await
    .expect("fake Shopify")
}

/// The demo store's Admin API token (as in `deploy/demo/stores.toml`).
pub const ADMIN_TOKEN: &str = "shpat_demo_outdoors_token";

pub async fn reset_database(config: &Config) {
    tributary::app::reset_database(config)
        .await
        .expect("ClickHouse is running");
}

pub async fn load_demo_control(config: &Config, bootstrap: &str) {
    let key = MasterKey::load_or_init_for_dev(&config.secrets.master_key_file).expect("master key");
    control_files::load_stores(bootstrap, &repo_path("deploy/demo/stores.toml"), &key)
        .await
        .expect("stores");
    control_files::load_advocates(bootstrap, &repo_path("deploy/demo/advocates.csv"))
        .await
        .expect("advocates");
}

/// `tributary broker` in a process of its own (the embedded broker, `partitions` per topic), as
/// services run as separate processes use it; returns the child and its bootstrap address.
pub async fn broker_process(dir: &Path, partitions: i32) -> (tokio::process::Child, String) {
    let file = dir.join("bootstrap");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["broker", "--bootstrap-file"])
        .arg(&file)
        .env("TRIBUTARY_KAFKA__PARTITIONS", partitions.to_string())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn broker");
    for _ in 0..200 {
        if let Ok(bootstrap) = std::fs::read_to_string(&file) {
            if !bootstrap.is_empty() {
                return (child, bootstrap);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker did not start");
}

pub async fn wait_ready(url: &str) {
    tributary::app::wait_ready(url, Duration::from_secs(30))
        .await
        .expect("the pipeline becomes ready");
}

/// A Shopify order payload with the fields attribution reads.
#[derive(Clone)]
pub struct Order {
    pub id: u64,
    pub total: &'static str,
    pub codes: Vec<&'static str>,
    pub landing_site: &'static str,
    pub email: &'static str,
    pub source_name: &'static str,
    pub tags: &'static str,
    pub test: bool,
    pub updated_minute: i64,
    /// Minutes after 2025-11-28T12:00:00Z that the order was created.
    pub created_minute: i64,
    pub shop: &'static str,
    pub secret: &'static str,
}

impl Order {
    pub fn new(id: u64, total: &'static str) -> Self {
        Order {
            created_minute: 0,
            shop: SHOP,
            secret: SECRET,
            id,
            total,
            codes: vec![],
            landing_site: "/",
            email: "shopper@example.net",
            source_name: "web",
            tags: "",
            test: false,
            updated_minute: 0,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        let created = self.created_ms();
        serde_json::to_vec(&json!({
            "id": self.id, "name": format!("#{}", self.id % 100_000), "email": self.email,
            "created_at": tributary_schemas::time::format_rfc3339_ms(created),
            "updated_at": tributary_schemas::time::format_rfc3339_ms(created + self.updated_minute * 60_000),
            "currency": "USD", "current_total_price": self.total, "total_price": self.total,
            "current_total_price_set": {"shop_money": {"amount": self.total, "currency_code": "USD"},
                                        "presentment_money": {"amount": self.total, "currency_code": "USD"}},
            "discount_codes": self.codes.iter().map(|c| json!({"code": c, "amount": "1.00", "type": "fixed_amount"})).collect::<Vec<_>>(),
            "landing_site": self.landing_site, "source_name": self.source_name, "tags": self.tags, "test": self.test,
            "financial_status": "paid", "cancelled_at": null, "line_items": [], "customer": {"id": 42, "email": self.email}
        }))
        .expect("json")
    }

    fn created_ms(&self) -> i64 {
        1_764_331_200_000 + self.created_minute * 60_000 // 2025-11-28T12:00:00Z
    }

    pub fn delivery(&self, topic: &'static str, webhook_id: &str, event_id: &str) -> Delivery {
        Delivery {
            shop: self.shop.into(),
            order_id: self.id,
            topic,
            webhook_id: webhook_id.into(),
            event_id: event_id.into(),
            triggered_at_ms: self.created_ms() + self.updated_minute * 60_000 + 100,
            body: self.body(),
            secret: self.secret.into(),
        }
    }
}

impl Order {
    /// A `refunds/create` for this order with one successful refund transaction of `amount`
    /// (and a failed one, which must not count).
    pub fn refund(&self, refund_id: u64, amount: &str) -> Delivery {
        let body = serde_json::to_vec(&json!({
            "id": refund_id, "order_id": self.id, "created_at": "2025-11-29T12:00:00Z",
            "transactions": [
                {"id": 1, "kind": "refund", "status": "success", "amount": amount, "currency": "USD"},
                {"id": 2, "kind": "refund", "status": "failure", "amount": "999.00", "currency": "USD"}
            ]
        }))
        .expect("json");
        Delivery {
            topic: "refunds/create",
            webhook_id: format!("w-refund-{refund_id}"),
            event_id: format!("e-refund-{refund_id}"),
            triggered_at_ms: self.created_ms() + 86_400_000,
            body,
            ..self.delivery("orders/create", "", "")
        }
    }
}

pub async fn post(url: &str, delivery: &Delivery) -> u16 {
    delivery
        .request(&reqwest::Client::new(), url)
        .send()
        .await
        .expect("http")
        .status()
        .as_u16()
}

/// Posts a delivery and asserts the receiver took it (200).
pub async fn accepted(url: &str, delivery: &Delivery) {
    assert_eq!(post(url, delivery).await, 200, "{}", delivery.webhook_id);
}

/// Polls ClickHouse until it holds `orders` orders (any outcome).
pub async fn eventually_orders(client: &clickhouse::Client, orders: &str) {
    eventually(
        client,
        "SELECT toString(count()) FROM attributions_current",
        orders,
    )
    .await;
}

/// Polls ClickHouse until `query` (one String column) returns `expected`, or fails after 30 s.
pub async fn eventually(client: &clickhouse::Client, query: &str, expected: &str) {
    let mut last = String::new();
    for _ in 0..300 {
        if let Ok(rows) = client.query(query).fetch_all::<String>().await {
            last = normalize_decimals(&rows.join("|"));
            if last == expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("query {query}\n  expected {expected}\n  last got {last}");
}

/// The dead letters' "stage: reason", sorted, once there are at least `at_least` of them (or
/// after 10 s).
pub async fn dead_letter_reasons(bootstrap: &str, at_least: usize) -> Vec<String> {
    use rdkafka::Message;
    use tributary_schemas::AvroRecord;
    let mut reasons = Vec::new();
    for _ in 0..100 {
        reasons.clear();
        tributary_runtime::kafka::read_topic(
            bootstrap,
            tributary_schemas::topics::DEAD_LETTERS,
            |m| {
                if let Some(Ok(letter)) = m.payload().map(tributary_schemas::DeadLetter::from_avro)
                {
                    reasons.push(format!("{}: {}", letter.stage, letter.error));
                }
            },
        )
        .expect("dead letters readable");
        if reasons.len() >= at_least {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reasons.sort();
    reasons
}

/// Every record of `tributary.events`.
pub fn read_events(bootstrap: &str) -> Vec<tributary_schemas::CustomerEvent> {
    use rdkafka::Message;
    use tributary_schemas::AvroRecord;
    let mut events = Vec::new();
    tributary_runtime::kafka::read_topic(bootstrap, tributary_schemas::topics::EVENTS, |m| {
        let payload = m.payload().expect("events have values");
        events.push(tributary_schemas::CustomerEvent::from_avro(payload).expect("an event"));
    })
    .expect("read events");
    events
}

/// Events by kind: how many, and the sum of their amounts.
pub fn event_counts(
    bootstrap: &str,
) -> std::collections::BTreeMap<tributary_schemas::CustomerEventKind, (u64, Decimal)> {
    let mut counts = std::collections::BTreeMap::new();
    for event in read_events(bootstrap) {
        let entry: &mut (u64, Decimal) = counts.entry(event.kind).or_default();
        entry.0 += 1;
        entry.1 += event.amount;
    }
    counts
}

/// One order's current row: outcome, source, advocate, gross.
pub async fn order_row(client: &clickhouse::Client, id: u64) -> String {
    let query = format!(
        "SELECT concat(outcome, ',', source, ',', advocate_identifier, ',', toString(gross)) FROM attributions_current WHERE order_id = {id}"
    );
    normalize_decimals(
        &client
            .query(&query)
            .fetch_all::<String>()
            .await
            .expect("query")
            .join("|"),
    )
}

/// ClickHouse 18.16 prints Decimal(18, 4) as `100.0000`, newer releases as `100`: compare values.
pub fn normalize_decimals(text: &str) -> String {
    let mut out = String::new();
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        match token.parse::<Decimal>() {
            Ok(d) if token.contains('.') => out.push_str(&d.normalize().to_string()),
            _ => out.push_str(token),
        }
        token.clear();
    };
    for c in text.chars() {
        if matches!(c, ':' | ',' | '|' | '=' | ' ') {
            flush(&mut token, &mut out);
            out.push(c);
        } else {
            token.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

pub fn dec(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

/// A TCP proxy in front of ClickHouse that can refuse connections, to take ClickHouse "down".
pub struct Switch {
    pub url: String,
    pub up: Arc<AtomicBool>,
}

pub async fn clickhouse_switch() -> Switch {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let target = clickhouse_url().trim_start_matches("http://").to_owned();
    let up = Arc::new(AtomicBool::new(true));
    let flag = up.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !flag.load(Ordering::SeqCst) {
                continue; // dropped: connection reset
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Switch {
        url: format!("http://127.0.0.1:{port}"),
        up,
    }
}

/// A generated stream over the demo stores and advocates.
pub fn demo_plan(orders: usize, seed: u64) -> tributary::generate::Plan {
    let stores =
        control_files::StoresFile::read(&repo_path("deploy/demo/stores.toml")).expect("stores");
    let advocates =
        control_files::read_advocates(&repo_path("deploy/demo/advocates.csv")).expect("advocates");
    tributary::generate::plan(&stores.store, &advocates, orders, seed).expect("plan")
}

/// A generated stream over the demo stores and advocates in which `lost_percent`% of the
/// webhooks of the stores with Admin access never arrive (see `generate::plan_with_losses`).
pub fn demo_plan_with_losses(
    orders: usize,
    seed: u64,
    lost_percent: u32,
) -> tributary::generate::Plan {
    let stores =
        control_files::StoresFile::read(&repo_path("deploy/demo/stores.toml")).expect("stores");
    let advocates =
        control_files::read_advocates(&repo_path("deploy/demo/advocates.csv")).expect("advocates");
    tributary::generate::plan_with_losses(&stores.store, &advocates, orders, seed, lost_percent)
        .expect("plan")
}

/// Partitions `group` has revoked from its members in this process so far (its metrics).
pub async fn revoked(p: &Pipeline, group: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", p.config.ingest.listen))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let series = format!("tributary_group_revoked_partitions_total{{group=\"{group}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().expect("a count"))
}
