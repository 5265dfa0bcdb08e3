//! Crash test: the pipeline as separate processes around the standalone embedded broker. The
//! processor and the sink are SIGKILLed at points during the stream and restarted; ClickHouse's
//! per-advocate totals must still equal the generator's to the cent.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::*;
use tokio::process::{Child, Command};
use tributary::{generate, report};

struct Services {
    env: Vec<(String, String)>,
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
        for (k, v) in &self.env {
            command.env(k, v);
        }
        for (k, v) in extra {
            command.env(k, v);
        }
        command.spawn().expect("spawn tributary")
    }
}

async fn start_broker(dir: &Path) -> (Child, String) {
    let file = dir.join("bootstrap");
    let child = Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["broker", "--bootstrap-file"])
        .arg(&file)
        .env("TRIBUTARY_KAFKA__PARTITIONS", "4")
        .stdout(Stdio::null())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_processor_and_sink_mid_stream_keeps_totals_exact() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config("crash", dir.path());
    reset_database(&config).await;
    let (_broker, bootstrap) = start_broker(dir.path()).await;
    load_demo_control(&config, &bootstrap).await;
    let services = Services {
        env: vec![
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
            // Longer than any pause inside a chunk; chunks hold whole orders, so a tick between
            // chunks settles only orders whose every version has been sent.
            ("TRIBUTARY_PROCESSOR__IDLE_TICK_MS".into(), "1000".into()),
        ],
    };
    let ops = |port: u16| [("TRIBUTARY_OPS__LISTEN", format!("127.0.0.1:{port}"))];
    let _ingest = services.spawn("ingest", &[]);
    let mut processor = services.spawn("process", &ops(free_port()));
    let mut sink = services.spawn("sink", &ops(free_port()));
    wait_ready(&format!("http://{}/readyz", config.ingest.listen)).await;

    let plan = demo_plan(1000, 5);
    let url = format!("http://{}/webhooks/shopify", config.ingest.listen);
    // The stream goes out in chunks; after each one a process is killed at a random moment while
    // the pipeline is still working through what was sent.
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    let mut kills = 0;
    for (n, orders) in plan.orders.chunks(plan.orders.len() / 8 + 1).enumerate() {
        let chunk = generate::Plan {
            orders: orders.to_vec(),
            expected: Default::default(),
        };
        let sent = generate::send(&url, &chunk, 8, None).await;
        assert_eq!(sent.failed, 0);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..150))).await;
        if n % 3 == 2 {
            sink.start_kill().unwrap();
            sink.wait().await.unwrap();
            sink = services.spawn("sink", &ops(free_port()));
        } else {
            processor.start_kill().unwrap();
            processor.wait().await.unwrap();
            processor = services.spawn("process", &ops(free_port()));
        }
        kills += 1;
    }
    assert!(kills >= 8, "{kills} kills");

    let ch = config.clickhouse.client();
    let expected_orders = plan.orders.len().to_string();
    eventually(
        &ch,
        "SELECT toString(count()) FROM attributions_current",
        &expected_orders,
    )
    .await;
    let mut last = String::new();
    for _ in 0..100 {
        let (table, matched) =
            report::compare(&report::advocate_totals(&ch).await.unwrap(), &plan.expected);
        if matched {
            eprintln!(
                "crash test: {kills} kills, {} deliveries, totals exact\n{table}",
                plan.deliveries()
            );
            return;
        }
        last = table;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("totals differ after {kills} kills:\n{last}");
}
