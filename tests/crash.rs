//! Crash test: the pipeline as separate processes around the standalone embedded broker. Ingest,
//! the processor, the events stage, the ClickHouse sink and the Shopify writeback are SIGKILLed at
//! random moments while the stream is being sent and restarted; ClickHouse's per-advocate orders,
//! gross, net and reward balances must still equal the generator's oracle to the cent, every
//! event must be emitted once, and every attributed order must carry its advocate's tags and note
//! in the fake Shopify with no write made twice. The stream has redeliveries, re-sent events, out-of-order versions, refunds
//! (some redelivered) and a store whose orders are held 10 minutes of event time.
//!
//! `TRIBUTARY_CRASH_ORDERS` (orders per store, default 600) and `TRIBUTARY_CRASH_KILLS` (default
//! 12) make the longer run: `TRIBUTARY_CRASH_ORDERS=5000 TRIBUTARY_CRASH_KILLS=60 cargo test
//! --release --test crash`; its stream is several times what the broker keeps per partition, so
//! retention deletes webhooks while processes are down (asserted), and ingest's unread budget
//! must hold deliveries back until the processor has read them.

mod support;

use std::process::Stdio;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use support::*;
use tokio::process::{Child, Command};
use tributary::{generate, report};

struct Services {
    env: Vec<(String, String)>,
    writeback_log: std::path::PathBuf,
}

impl Services {
    fn spawn(&self, subcommand: &str, extra: &[(&str, String)]) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
        command
            .arg(subcommand)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if subcommand == "writeback" {
            // Its logs, at debug, are searched for the store's Admin token at the end.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.writeback_log.as_path())
                .expect("writeback log");
            command
                .env(
                    "RUST_LOG",
                    "warn,tributary=debug,tributary_sinks=debug,tributary_shopify=debug",
                )
                .stderr(log);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        command.spawn().expect("spawn tributary")
    }
}

/// What the embedded broker (librdkafka's mock cluster) keeps of each partition.
const EMBEDDED_RETENTION_BYTES: usize = 5 * 1024 * 1024;

/// Polls `observe` until `done`, for as long as what it sees keeps changing: writeback and store
/// credit share the store's cost bucket, so a long run takes a while, but a stall of 15 s fails.
async fn while_progressing<T: PartialEq>(
    mut observe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let mut seen = observe();
    let mut last_change = std::time::Instant::now();
    while !done(&seen) && last_change.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = observe();
        if now != seen {
            last_change = std::time::Instant::now();
        }
        seen = now;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_ingest_processor_and_sink_at_random_keeps_totals_exact() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config("crash", dir.path());
    reset_database(&config).await;
    let (_broker, bootstrap) = broker_process(dir.path(), 4).await;
    load_demo_control(&config, &bootstrap).await;
    let shopify = start_demo_shopify().await;
    let services = Services {
        writeback_log: dir.path().join("writeback.log"),
        env: vec![
            ("TRIBUTARY_SHOPIFY__BASE_URL".into(), shopify.base_url()),
            ("TRIBUTARY_SHOPIFY__TIMEOUT_MS".into(), "2000".into()),
            ("TRIBUTARY_WRITEBACK__BATCH_MS".into(), "100".into()),
            (
                "TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS".into(),
                bootstrap.clone(),
            ),
            (
                "TRIBUTARY_SECRETS__MASTER_KEY_FILE".into(),
                config.secrets.master_key_file.display().to_string(),
            ),
            (
                "TRIBUTARY_INGEST__LISTEN".into(),
                config.ingest.listen.to_string(),
            ),
            (
                "TRIBUTARY_CLICKHOUSE__URL".into(),
                config.clickhouse.url.clone(),
            ),
            (
                "TRIBUTARY_CLICKHOUSE__DATABASE".into(),
                config.clickhouse.database.clone(),
            ),
            ("TRIBUTARY_CLICKHOUSE__BATCH_MS".into(), "100".into()),
            (
                "TRIBUTARY_PROCESSOR__COMMIT_INTERVAL_MS".into(),
                "300".into(),
            ),
            // State on disk: each restart after a kill -9 reads the store and the changelog's
            // tail, never the whole history.
            (
                "TRIBUTARY_PROCESSOR__STATE_DIR".into(),
                dir.path().join("processor-state").display().to_string(),
            ),
            // The events stage's and store credit's state on disk too: a kill -9 between a
            // produce and the next flush must neither repeat an event nor push credit twice.
            (
                "TRIBUTARY_EVENTS__STATE_DIR".into(),
                dir.path().join("events-state").display().to_string(),
            ),
            (
                "TRIBUTARY_STORE_CREDIT__STATE_DIR".into(),
                dir.path().join("store-credit-state").display().to_string(),
            ),
            // Longer than ingest takes to come back, so a tick only settles orders whose every
            // version has been sent (the generator retries through the outage).
            ("TRIBUTARY_PROCESSOR__IDLE_TICK_MS".into(), "5000".into()),
            // The broker is the embedded one reached by address, so ingest's unread-bytes budget
            // is set as an operator would (docs/decisions.md, "Ingest backpressure"): the stream
            // is larger than the broker's retention, and a processor down for a restart must
            // find every webhook it has not read still in the log.
            (
                "TRIBUTARY_INGEST__MAX_UNREAD_BYTES".into(),
                (4 * 1024 * 1024).to_string(),
            ),
        ],
    };
    let ops = |port: u16| [("TRIBUTARY_OPS__LISTEN", format!("127.0.0.1:{port}"))];
    let mut ingest = services.spawn("ingest", &[]);
    let mut processor = services.spawn("process", &ops(free_port()));
    let mut sink = services.spawn("sink", &ops(free_port()));
    let mut events = services.spawn("events", &ops(free_port()));
    let mut writeback = services.spawn("writeback", &ops(free_port()));
    wait_ready(&format!("http://{}/readyz", config.ingest.listen)).await;

    let setting = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (orders, planned_kills) = (
        setting("TRIBUTARY_CRASH_ORDERS", 600),
        setting("TRIBUTARY_CRASH_KILLS", 12),
    );
    let plan = demo_plan(orders, 5);
    let url = format!("http://{}/webhooks/shopify", config.ingest.listen);
    // The stream goes out in chunks; while each is being sent, one process is killed at a random
    // moment and restarted.
    let seed = std::process::id() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = [0; 5];
    // Victims in shuffled rounds, so every service is killed about equally often.
    let mut round = [0usize, 1, 2, 3, 4];
    for (index, chunk) in plan.chunks(planned_kills).into_iter().enumerate() {
        let url = url.clone();
        let bootstrap = bootstrap.clone();
        let sending = tokio::spawn(async move {
            let sent = generate::send(&url, &chunk, 8, None).await;
            chunk.publish_commands(&bootstrap).await.unwrap();
            sent
        });
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        if index % round.len() == 0 {
            round.shuffle(&mut rng);
        }
        let victim = round[index % round.len()];
        let (child, name, extra) = match victim {
            0 => (&mut ingest, "ingest", vec![]),
            1 => (&mut processor, "process", ops(free_port()).to_vec()),
            2 => (&mut events, "events", ops(free_port()).to_vec()),
            3 => (&mut sink, "sink", ops(free_port()).to_vec()),
            _ => (&mut writeback, "writeback", ops(free_port()).to_vec()),
        };
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        *child = services.spawn(name, &extra);
        kills[victim] += 1;
        let sent = sending.await.unwrap();
        assert_eq!(
            sent.failed, 0,
            "the generator's retries outlast an ingest restart"
        );
    }
    let total_kills: usize = kills.iter().sum();
    assert!(total_kills >= 10, "{total_kills} kills");
    // In the longer run, the broker's retention deletes webhooks: the totals below are exact over
    // a stream the broker could not hold whole.
    let progress = tributary_runtime::kafka::GroupProgress::new(
        &bootstrap,
        &config.processor.group_id,
        tributary_schemas::topics::WEBHOOKS,
    )
    .unwrap();
    let partitions = tokio::task::spawn_blocking(move || progress.partitions())
        .await
        .unwrap()
        .unwrap();
    let deleted: i64 = partitions.iter().map(|p| p.log_start).sum();
    let held: i64 = partitions.iter().map(|p| p.log_end - p.log_start).sum();
    // The bodies alone, with room for an uneven spread over partitions, outgrow what the broker
    // keeps (docs/decisions.md): then retention must have deleted webhooks.
    let sent_bytes: usize = plan.orders.iter().flatten().map(|d| d.body.len()).sum();
    if sent_bytes > 3 * partitions.len() * EMBEDDED_RETENTION_BYTES / 2 {
        assert!(
            deleted > 0,
            "{sent_bytes} bytes sent and nothing deleted: {partitions:?}"
        );
    }

    let ch = config.clickhouse.client();
    let expected_orders = plan.orders.len().to_string();
    eventually_orders(&ch, &expected_orders).await;
    let (table, matched) = report::await_match(&ch, &plan.expected, Duration::from_secs(30)).await;
    assert!(
        matched,
        "totals differ after {total_kills} kills ({kills:?}):\n{table}"
    );
    // Every order that is not excluded is placed once, and no event is emitted twice.
    let placed = plan.orders.len() - plan.expected.excluded_orders as usize;
    let mut emitted = Vec::new();
    for _ in 0..300 {
        emitted = read_events(&bootstrap);
        let placed_so_far = emitted
            .iter()
            .filter(|e| e.kind == tributary_schemas::CustomerEventKind::PlacedOrder)
            .count();
        if placed_so_far >= placed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: std::collections::HashSet<&str> =
        emitted.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), emitted.len(), "an event was emitted twice");
    let placed_events = emitted
        .iter()
        .filter(|e| e.kind == tributary_schemas::CustomerEventKind::PlacedOrder)
        .count();
    assert_eq!(placed_events, placed);

    // Every attributed order of the store with Admin access carries its advocate's tags and one
    // note block, and no write was ever made twice.
    let attributed: Vec<(u64, String)> = ch
        .query("SELECT order_id, advocate_identifier FROM attributions_current WHERE shop_domain = ? AND outcome = 'ATTRIBUTED'")
        .bind(SHOP)
        .fetch_all()
        .await
        .unwrap();
    assert!(
        attributed.len() > 100,
        "{} attributed orders",
        attributed.len()
    );
    let written = |id: u64, identifier: &str| {
        shopify.order(SHOP, id).is_some_and(|order| {
            let advocate_tags: Vec<&String> = order
                .tags
                .iter()
                .filter(|t| t.starts_with("tributary:advocate:"))
                .collect();
            let note = order.note.unwrap_or_default();
            order.tags.contains("tributary")
                && advocate_tags == [&format!("tributary:advocate:{identifier}")]
                && note.matches("--- tributary ---").count() == 1
                && note.contains(&format!("({identifier})\n"))
        })
    };
    let missing = while_progressing(
        || {
            attributed
                .iter()
                .filter(|(id, who)| !written(*id, who))
                .count()
        },
        |missing| *missing == 0,
    )
    .await;
    assert_eq!(missing, 0, "attributed orders without their writeback");
    assert_eq!(shopify.redundant_writes(SHOP), 0, "a write was made twice");

    // Approved rewards became store credit (a point is worth 1): every advocate's account holds
    // their wallet balance to the cent, with one transaction per approval and reversal.
    let wallets: Vec<(String, String, u64)> = ch
        .query("SELECT advocate_id, toString(sumIf(points, kind = 'APPROVAL') - sumIf(points, kind = 'REVERSAL')), countIf(kind IN ('APPROVAL', 'REVERSAL') AND points > 0) FROM reward_ledger FINAL WHERE shop_domain = ? GROUP BY advocate_id ORDER BY advocate_id")
        .bind(SHOP)
        .fetch_all()
        .await
        .unwrap();
    let advocates =
        tributary_control::files::read_advocates(&repo_path("deploy/demo/advocates.csv")).unwrap();
    let store_credit = || -> Vec<(String, String, u64)> {
        wallets
            .iter()
            .map(|(advocate_id, _, _)| {
                let email = &advocates
                    .iter()
                    .find(|a| &a.id == advocate_id)
                    .unwrap()
                    .email;
                let customer = shopify.customer_id(SHOP, email).unwrap();
                let transactions = shopify.store_credit_transactions(SHOP, customer);
                let balance: Decimal = transactions.iter().map(|t| t.amount).sum();
                (
                    advocate_id.clone(),
                    balance.normalize().to_string(),
                    transactions.len() as u64,
                )
            })
            .collect()
    };
    let expected: Vec<(String, String, u64)> = wallets
        .iter()
        .map(|(id, balance, n)| (id.clone(), dec(balance).normalize().to_string(), *n))
        .collect();
    let pushed = while_progressing(store_credit, |pushed| pushed == &expected).await;
    assert_eq!(
        pushed, expected,
        "store credit differs from the reward ledger"
    );
    let credit_transactions: u64 = expected.iter().map(|w| w.2).sum();
    let writes = shopify.writes(SHOP);
    let log = std::fs::read_to_string(&services.writeback_log).unwrap_or_default();
    assert!(
        !log.contains(ADMIN_TOKEN),
        "the Admin token is in the writeback's log"
    );
    eprintln!(
        "crash test: {total_kills} kills (ingest {}, processor {}, events {}, sink {}, writeback {}), {} deliveries ({sent_bytes} bytes; {deleted} records deleted by the broker's retention, {held} held), {} events, totals exact; {} orders written back and {credit_transactions} store credit transactions for {} advocates with {writes:?}, none twice\n{table}",
        kills[0], kills[1], kills[2], kills[3], kills[4],
        plan.deliveries(),
        emitted.len(),
        attributed.len(),
        expected.len(),
    );
}
