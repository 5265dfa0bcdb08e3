//! `tributary`: one binary, a subcommand per service and per operator task.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tributary::app::{self, Readiness};
use tributary::config::Config;
use tributary::{control_files, generate, report};
use tributary_schemas::kafka::{dlq_headers, provision_topics, EmbeddedBroker};
use tributary_schemas::secrets::MasterKey;
use tributary_schemas::{topics, AvroRecord, DeadLetter};

#[derive(Parser)]
#[command(name = "tributary", version, about = "Shopify and marketplace orders in, attributed revenue out.", long_about = None)]
struct Cli {
    /// Config file (TOML). Default: ./tributary.toml if present. Every key can be overridden
    /// from the environment as TRIBUTARY_<SECTION>__<KEY>.
    #[arg(long, short, global = true, env = "TRIBUTARY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingest, processor and ClickHouse sink in one process. Without kafka.bootstrap_servers,
    /// starts the embedded broker in process and provisions the topics.
    Run,
    /// Run the embedded broker (librdkafka's mock cluster) alone, so separate processes can share
    /// it. Prints its bootstrap servers; nothing is kept on disk.
    Broker {
        /// Also write the bootstrap servers to this file.
        #[arg(long)]
        bootstrap_file: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        brokers: i32,
    },
    /// Run only the Shopify webhook receiver.
    Ingest,
    /// Run only the processor (normalize, dedup, exclusions, attribution).
    Process,
    /// Run only the ClickHouse sink.
    Sink,
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Publish stores from a TOML file to the stores control topic (secrets sealed).
    Stores {
        #[command(subcommand)]
        command: LoadCommand,
    },
    /// Publish advocates from a CSV file to the advocates control topic.
    Advocates {
        #[command(subcommand)]
        command: LoadCommand,
    },
    /// Send a realistic stream of signed webhooks and print what it should add up to.
    Generate(GenerateArgs),
    /// Print per-advocate revenue from ClickHouse.
    Report,
    /// Dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The demo: everything in one process, a generated stream, and ClickHouse's totals beside
    /// the generator's.
    Demo(GenerateArgs),
    /// The demo's path, measured: webhooks/s, ack latency percentiles, end-to-end time to the last
    /// row in ClickHouse, and peak RSS.
    Bench(GenerateArgs),
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every topic of the contract that is missing.
    Create,
}

#[derive(Subcommand)]
enum LoadCommand {
    Load { file: PathBuf },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters with their reason and source.
    List,
}

#[derive(clap::Args, Clone)]
struct GenerateArgs {
    /// Webhook endpoint (generate only; the demo uses its own receiver).
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/shopify")]
    url: String,
    #[arg(long, default_value = "deploy/demo/stores.toml")]
    stores: PathBuf,
    #[arg(long, default_value = "deploy/demo/advocates.csv")]
    advocates: PathBuf,
    /// Orders per store.
    #[arg(long, default_value_t = 2000)]
    orders: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Concurrent HTTP requests.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    let shutdown = CancellationToken::new();
    app::shutdown_on_signal(shutdown.clone());
    match cli.command {
        Command::Run => {
            let (_embedded, bootstrap) = broker_or_embedded(&config).await?;
            app::run_all(&config, &bootstrap, shutdown).await
        }
        Command::Broker {
            bootstrap_file,
            brokers,
        } => {
            let broker = EmbeddedBroker::start(brokers, config.kafka.partitions)?;
            let bootstrap = broker.bootstrap_servers();
            if let Some(path) = bootstrap_file {
                std::fs::write(&path, &bootstrap)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{bootstrap}");
            shutdown.cancelled().await;
            Ok(())
        }
        Command::Ingest => {
            let metrics = app::install_metrics()?;
            app::run_ingest(
                &config,
                &bootstrap(&config)?,
                Readiness::default(),
                metrics,
                shutdown,
            )
            .await
        }
        Command::Process => {
            let (readiness, bootstrap) =
                (serve_ops(&config, shutdown.clone())?, bootstrap(&config)?);
            app::run_processor(&config, &bootstrap, readiness, shutdown).await
        }
        Command::Sink => {
            let (readiness, bootstrap) =
                (serve_ops(&config, shutdown.clone())?, bootstrap(&config)?);
            app::run_sink(&config, &bootstrap, readiness, shutdown).await
        }
        Command::Topics {
            command: TopicsCommand::Create,
        } => {
            let created = provision_topics(
                &bootstrap(&config)?,
                config.kafka.partitions,
                config.kafka.replication,
            )
            .await?;
            println!("created {} topic(s): {}", created.len(), created.join(", "));
            Ok(())
        }
        Command::Stores {
            command: LoadCommand::Load { file },
        } => {
            let key = MasterKey::load(&config.secrets.master_key_file, true)?;
            let n = control_files::load_stores(&bootstrap(&config)?, &file, &key).await?;
            println!("published {n} store(s)");
            Ok(())
        }
        Command::Advocates {
            command: LoadCommand::Load { file },
        } => {
            let n = control_files::load_advocates(&bootstrap(&config)?, &file).await?;
            println!("published {n} advocate(s)");
            Ok(())
        }
        Command::Generate(args) => {
            let plan = plan(&args)?;
            let report = send_with_progress(&args.url, &plan, args.concurrency).await;
            println!(
                "sent {} deliveries ({} failed) in {:.1?}",
                report.sent, report.failed, report.elapsed
            );
            let (table, _) = report::compare(&Default::default(), &plan.expected);
            println!("expected per advocate (the orders and gross columns are empty: this is the generator's side)\n{table}");
            Ok(())
        }
        Command::Report => {
            let totals = report::advocate_totals(&config.clickhouse.client()).await?;
            for ((shop, advocate), (orders, gross)) in totals {
                println!(
                    "{shop:<32} {advocate:<12} {orders:>8} {:>14}",
                    gross.round_dp(2)
                );
            }
            Ok(())
        }
        Command::Dlq {
            command: DlqCommand::List,
        } => list_dead_letters(&bootstrap(&config)?),
        Command::Demo(args) => demo(config, args, shutdown, false).await,
        Command::Bench(args) => demo(config, args, shutdown, true).await,
    }
}

fn bootstrap(config: &Config) -> anyhow::Result<String> {
    config.kafka.bootstrap_servers.clone().context(
        "kafka.bootstrap_servers is not set (TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS); start one with `tributary broker`",
    )
}

/// The configured broker, or an embedded one (kept alive by the returned guard) with its topics.
async fn broker_or_embedded(config: &Config) -> anyhow::Result<(Option<EmbeddedBroker>, String)> {
    if let Some(bootstrap) = &config.kafka.bootstrap_servers {
        return Ok((None, bootstrap.clone()));
    }
    let broker = EmbeddedBroker::start(1, config.kafka.partitions)?;
    let bootstrap = broker.bootstrap_servers();
    tracing::info!(%bootstrap, "embedded broker started");
    Ok((Some(broker), bootstrap))
}

fn serve_ops(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Readiness> {
    let readiness = Readiness::default();
    let router = app::ops_router(readiness.clone(), app::install_metrics()?);
    let listen = config.ops.listen;
    tokio::spawn(async move {
        if let Err(error) = app::serve(listen, router, shutdown).await {
            tracing::error!(%error, "ops server stopped");
        }
    });
    Ok(readiness)
}

fn plan(args: &GenerateArgs) -> anyhow::Result<generate::Plan> {
    let stores = control_files::StoresFile::read(&args.stores)?;
    let advocates = control_files::read_advocates(&args.advocates)?;
    generate::plan(&stores.store, &advocates, args.orders, args.seed)
}

async fn send_with_progress(
    url: &str,
    plan: &generate::Plan,
    concurrency: usize,
) -> generate::SendReport {
    let bar = indicatif::ProgressBar::new(plan.deliveries() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} sending webhooks {bar:40} {pos}/{len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = generate::send(url, plan, concurrency, Some(bar.clone())).await;
    bar.finish();
    report
}

async fn demo(
    mut config: Config,
    args: GenerateArgs,
    shutdown: CancellationToken,
    bench: bool,
) -> anyhow::Result<()> {
    if config.clickhouse.database == "tributary" {
        config.clickhouse.database = "tributary_demo".into();
    }
    let client = config.clickhouse.client();
    let _ = client
        .query(&format!(
            "DROP DATABASE IF EXISTS `{}`",
            config.clickhouse.database
        ))
        .execute()
        .await;
    let (_embedded, bootstrap) = broker_or_embedded(&config).await?;
    let key = MasterKey::load(&config.secrets.master_key_file, true)?;
    control_files::load_stores(&bootstrap, &args.stores, &key).await?;
    control_files::load_advocates(&bootstrap, &args.advocates).await?;
    let pipeline = {
        let (config, bootstrap, shutdown) = (config.clone(), bootstrap.clone(), shutdown.clone());
        tokio::spawn(async move { app::run_all(&config, &bootstrap, shutdown).await })
    };
    let url = format!("http://{}/webhooks/shopify", config.ingest.listen);
    wait_ready(&format!("http://{}/readyz", config.ingest.listen)).await?;
    let plan = plan(&args)?;
    println!(
        "sending {} deliveries for {} orders to {url}",
        plan.deliveries(),
        plan.orders.len()
    );
    let sent = send_with_progress(&url, &plan, args.concurrency).await;
    println!(
        "sent {} ({} failed) in {:.1?}; waiting for ClickHouse",
        sent.sent, sent.failed, sent.elapsed
    );
    let drained = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let (table, matched) = loop {
        let actual = report::advocate_totals(&client).await.unwrap_or_default();
        let (table, matched) = report::compare(&actual, &plan.expected);
        if matched || tokio::time::Instant::now() > deadline {
            break (table, matched);
        }
        tokio::time::sleep(Duration::from_millis(if bench { 50 } else { 500 })).await;
    };
    if bench {
        print_bench(&plan, &sent, sent.elapsed + drained.elapsed());
    }
    println!("\nper-advocate revenue: ClickHouse (orders, gross) beside the generator's expectation\n{table}");
    println!(
        "unattributed orders expected: {}, excluded orders expected: {}",
        plan.expected.unattributed_orders, plan.expected.excluded_orders
    );
    shutdown.cancel();
    let _ = pipeline.await;
    anyhow::ensure!(matched, "ClickHouse does not match the generator");
    println!("ClickHouse matches the generator to the cent.");
    Ok(())
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{url} did not become ready")
}

fn list_dead_letters(bootstrap: &str) -> anyhow::Result<()> {
    use rdkafka::message::{Headers, Message};
    let mut count = 0;
    tributary_schemas::kafka::read_topic(bootstrap, topics::DEAD_LETTERS, |message| {
        count += 1;
        let header = |name: &str| {
            message
                .headers()
                .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let letter = message.payload().map(DeadLetter::from_avro);
        let bytes = letter
            .as_ref()
            .and_then(|l| l.as_ref().ok())
            .map(|l| l.payload.len())
            .unwrap_or_default();
        println!(
            "{}:{}@{}\tstage={}\terror={}\tpayload={} bytes",
            header(dlq_headers::SOURCE_TOPIC),
            header(dlq_headers::SOURCE_PARTITION),
            header(dlq_headers::SOURCE_OFFSET),
            header(dlq_headers::STAGE),
            header(dlq_headers::ERROR),
            bytes
        );
    })?;
    println!("{count} dead letter(s)");
    Ok(())
}

fn print_bench(plan: &generate::Plan, sent: &generate::SendReport, to_last_row: Duration) {
    let mut latencies = sent.latencies_us.clone();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let mean_body = plan
        .orders
        .iter()
        .flatten()
        .map(|d| d.body.len())
        .sum::<usize>()
        / plan.deliveries().max(1);
    let peak_rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    println!("\nbench ({} deliveries, mean body {} bytes, one process: ingest + processor + sink + embedded broker + generator)", plan.deliveries(), mean_body);
    println!(
        "  ingest: {:.0} webhooks/s acknowledged",
        sent.sent as f64 / sent.elapsed.as_secs_f64()
    );
    println!(
        "  ack latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5) as f64 / 1e3,
        pct(0.9) as f64 / 1e3,
        pct(0.99) as f64 / 1e3,
        pct(1.0) as f64 / 1e3
    );
    println!("  end to end: first webhook to the last row in ClickHouse {:.2?} ({:.0} orders/s through processor and sink)", to_last_row, plan.orders.len() as f64 / to_last_row.as_secs_f64());
    println!("  peak RSS: {} MiB", peak_rss_kb / 1024);
}
