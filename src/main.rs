//! `tributary`: one binary, a subcommand per service and per operator task.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tributary::app;
use tributary::config::Config;
#[cfg(feature = "dev")]
use tributary::{bench, generate};
use tributary::{replay, report};
use tributary_control::connections::{self, ControlPlane};
use tributary_control::files as control_files;
use tributary_runtime::dead_letter::dlq_headers;
use tributary_runtime::kafka::{provision_topics, EmbeddedBroker, ResetTo};
use tributary_runtime::ops::{self, Readiness};
use tributary_runtime::secrets::MasterKey;
use tributary_schemas::{
    topics, AvroRecord, DeadLetter, ManualAttribution, OperatorCommand, RewardApproval,
};
use tributary_sinks::shopify::minting;

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
    /// Run ingest, processor, events stage, ClickHouse sink and Shopify writeback in one process. Without kafka.bootstrap_servers,
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
    /// Run only the events stage (tributary.events: Placed Order, Received Refund, first and
    /// repeat purchase).
    Events,
    /// Run only the ClickHouse sink.
    Sink,
    /// Run only the Shopify writeback sink: tags and a note on each attributed order of the
    /// stores whose toggles ask for them.
    Writeback,
    #[cfg(feature = "dev")]
    /// Serve a fake Shopify Admin API (for the demo and local runs): the stores of a stores.toml
    /// that have `admin` access, answering to their tokens, with Shopify's cost throttling. Point
    /// `shopify.base_url` at it.
    FakeShopify {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:18900")]
        listen: std::net::SocketAddr,
        /// The stores to hold.
        #[arg(long, default_value = "deploy/demo/stores.toml")]
        stores: PathBuf,
        /// Advocates, each held as a customer of their store (for store credit).
        #[arg(long, default_value = "deploy/demo/advocates.csv")]
        advocates: PathBuf,
        /// Cost bucket size in points (Shopify's standard plan: 1000).
        #[arg(long, default_value_t = 1000.0)]
        bucket: f64,
        /// Points restored per second (standard plan: 50).
        #[arg(long, default_value_t = 50.0)]
        restore_rate: f64,
    },
    /// The master key that seals every secret: create it once per deployment, rotate it, and
    /// re-seal stored secrets under the new key. Services never create a key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Stores: load operator-managed ones from a file, or connect, inspect, toggle, check and
    /// disconnect a team's stores (as the admin API of `tributary control` does).
    Stores {
        #[command(subcommand)]
        command: StoresCommand,
    },
    /// Teams of store admins.
    Teams {
        #[command(subcommand)]
        command: TeamsCommand,
    },
    /// Serve the admin API (connections, status, toggles, disconnect, health) and run the
    /// health check of every connected store each `connections.health_interval_s`.
    Control,
    /// Publish advocates from a CSV file to the advocates control topic.
    Advocates {
        #[command(subcommand)]
        command: LoadCommand,
    },
    /// Attribute an order to an advocate by hand. Before the order settles this wins; after, it
    /// moves the order to the new advocate. Excluded orders stay excluded (the command is
    /// dead-lettered with the reason, as are unknown orders and advocates).
    Attribute {
        #[arg(long)]
        shop: String,
        #[arg(long)]
        order: u64,
        /// The advocate's identifier (as in share links).
        #[arg(long)]
        advocate: String,
        /// Who asked; kept in the attribution's reason.
        #[arg(long, default_value = "operator")]
        by: String,
    },
    /// Advocates' discount codes in Shopify: mint the missing ones, show coverage.
    Codes {
        #[command(subcommand)]
        command: CodesCommand,
    },
    /// Reward requests: approve them, list the pending ones.
    Rewards {
        #[command(subcommand)]
        command: RewardsCommand,
    },
    #[cfg(feature = "dev")]
    /// Send a realistic stream of signed webhooks and print what it should add up to.
    Generate(GenerateArgs),
    /// Read through the Admin API the orders Shopify never delivered: one reconciliation pass
    /// over every active store with Admin access (or one), from each store's watermark less the
    /// overlap, into shopify.webhooks; or print the watermarks.
    Reconcile {
        /// Only this store.
        #[arg(long)]
        shop: Option<String>,
        /// Read orders updated since this RFC 3339 time instead (a backfill).
        #[arg(long)]
        since: Option<String>,
        /// Print each store's watermark and last pass instead.
        #[arg(long, conflicts_with_all = ["shop", "since"])]
        status: bool,
    },
    /// Print per-advocate revenue from ClickHouse.
    Report,
    /// Write the attributed orders as CSV (a header row, then one row per order in its current
    /// state, from ClickHouse): shop_domain, order_id, order_name, created_at (UTC),
    /// customer_email, advocate, source, code, currency, gross, refunded, net (shop money),
    /// refund_status.
    Export {
        /// Only this store.
        #[arg(long)]
        shop: Option<String>,
        /// Orders created at or after this RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// Orders created before this RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Replay a topic for a consumer group from the beginning, a time or per-partition offsets
    /// (or skip to the end). Stop the group's services first; start them again and, with
    /// --follow, watch the group work through the topic. Only the groups of the config's stages
    /// are taken, each on the topic it reads (see the error for the list).
    Replay {
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        /// From the first record still in the topic.
        #[arg(long, group = "to")]
        from_beginning: bool,
        /// From the first record produced at or after this time (RFC 3339).
        #[arg(long, group = "to")]
        from_time: Option<String>,
        /// From this offset of one partition, as `PARTITION:OFFSET` (repeat it for more); the
        /// partitions not named keep their committed offsets, so one poison record can be skipped
        /// alone.
        #[arg(long, group = "to", value_parser = parse_partition_offset)]
        from_offset: Vec<(i32, i64)>,
        /// Skip everything not yet processed.
        #[arg(long, group = "to")]
        to_end: bool,
        /// After resetting, show a progress bar until the group has caught up.
        #[arg(long)]
        follow: bool,
    },
    /// Dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    #[cfg(feature = "dev")]
    /// The demo: everything in one process, a generated stream, and ClickHouse's totals beside
    /// the generator's.
    Demo(GenerateArgs),
    #[cfg(feature = "dev")]
    /// Measure each stage on its own (ingest webhooks/s and ack latency, processor events/s, sink
    /// rows/s), then end-to-end latency with all running, Shopify writeback orders/s and codes minted/s under three cost buckets (against the fake Shopify), and peak RSS. Uses an embedded broker
    /// and the `tributary_bench` database; fails if ClickHouse does not match the generator.
    Bench(BenchArgs),
}

#[derive(Subcommand)]
enum RewardsCommand {
    /// Approve an order's pending reward request: the advocate's wallet is credited (less what
    /// refunds already took back). Refused, with the reason in the dead-letter topic, when the
    /// order has no pending request.
    Approve {
        #[arg(long)]
        shop: String,
        #[arg(long)]
        order: u64,
        /// Who approved; kept in the ledger entry's reason.
        #[arg(long, default_value = "operator")]
        by: String,
    },
    /// List the reward requests waiting for approval (from ClickHouse).
    Pending {
        /// Only this store.
        #[arg(long)]
        shop: Option<String>,
    },
}

#[derive(Subcommand)]
enum StoresCommand {
    /// Publish stores from a TOML file to the stores control topic (secrets sealed).
    Load { file: PathBuf },
    /// Connect a store for a team: the access token (TRIBUTARY_ACCESS_TOKEN) is verified against
    /// the store, the webhooks are registered, and the store is saved with its app secret
    /// (TRIBUTARY_APP_SECRET), both sealed at once. Secrets come from the environment, never the
    /// command line. Every feature starts off.
    Connect {
        #[arg(long)]
        team: String,
        #[arg(long)]
        domain: String,
    },
    /// A team's stores: connected, status, last synced, product count, API version, features.
    Status {
        #[arg(long)]
        team: String,
    },
    /// Turn features on or off, e.g. --on order_tags,order_notes --off auto_mint_codes.
    Features {
        #[arg(long)]
        team: String,
        #[arg(long)]
        domain: String,
        #[arg(long, value_delimiter = ',')]
        on: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        off: Vec<String>,
    },
    /// Disconnect a store: processing stops at once and its credentials are forgotten; codes
    /// already in Shopify stay.
    Disconnect {
        #[arg(long)]
        team: String,
        #[arg(long)]
        domain: String,
    },
    /// Run the health check now: every connected store, or one.
    Check {
        #[arg(long)]
        shop: Option<String>,
    },
}

#[derive(Subcommand)]
enum TeamsCommand {
    /// Create a team; prints its id and API key (shown this once, kept only as a digest).
    Create {
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum CodesCommand {
    /// Mint a code for every active advocate of a store who has none, from the store's
    /// `code_pattern` on its `discount_template_id`, paced under Shopify's cost limit. Safe to run
    /// again: advocates with a code are left alone, and codes an interrupted run created are
    /// recognised, not created twice. An advocate whose codes are all taken is skipped with an
    /// alert on tributary.alerts.
    Mint {
        #[arg(long)]
        shop: String,
    },
    /// Active advocates with a code and without one, per store.
    Stats {
        /// Only this store.
        #[arg(long)]
        shop: Option<String>,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every topic of the contract that is missing.
    Create,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create the master key at secrets.master_key_file (mode 0600); refuses if one exists.
    Init,
    /// Put a new key first in the key file, keeping the old one so that every secret still
    /// opens. Restart the services, then run `keys reseal --retire`.
    Rotate,
    /// Seal every store's secrets again under the current key and publish the stores.
    Reseal {
        /// Then drop the earlier keys from the key file.
        #[arg(long)]
        retire: bool,
    },
}

#[derive(Subcommand)]
enum LoadCommand {
    Load { file: PathBuf },
}

/// `PARTITION:OFFSET`, as `replay --from-offset` takes it.
fn parse_partition_offset(value: &str) -> Result<(i32, i64), String> {
    let (partition, offset) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} is not PARTITION:OFFSET"))?;
    let partition = partition
        .trim()
        .parse()
        .map_err(|e| format!("partition {partition:?}: {e}"))?;
    let offset = offset
        .trim()
        .parse()
        .map_err(|e| format!("offset {offset:?}: {e}"))?;
    Ok((partition, offset))
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters with their reason and source.
    List,
    /// Send dead letters back to their source topic (same key and partition) to be judged again,
    /// e.g. a refund that arrived before its order. Prints where the next replay should start.
    Replay {
        /// First dead-letter offset to replay.
        #[arg(long, default_value_t = 0)]
        from_offset: i64,
        /// Only letters of this stage: decode, normalize, refund, manual, approval, encode,
        /// writeback, store-credit, events, events-repartition, sink-clickhouse.
        #[arg(long)]
        stage: Option<tributary_runtime::dead_letter::DeadLetterStage>,
    },
}

#[cfg(feature = "dev")]
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

#[cfg(feature = "dev")]
#[derive(clap::Args, Clone)]
struct BenchArgs {
    /// `--orders` is the backlog per store for the throughput stages.
    #[command(flatten)]
    generate: GenerateArgs,
    /// Orders per store in the end-to-end stage.
    #[arg(long, default_value_t = 1000)]
    live_orders: usize,
    /// Orders started per second in the end-to-end stage.
    #[arg(long, default_value_t = 200.0)]
    live_rate: f64,
    /// Measure only the on-disk state of settled orders, with this many orders: memory per
    /// order on disk and in memory, write rate, restart to the first order.
    #[arg(long)]
    settled_orders: Option<usize>,
    /// Measure only the reconciliation pull: read this many orders of one store back through the
    /// Admin API (a fake Shopify under the standard and Plus cost buckets, and unthrottled).
    #[arg(long)]
    reconcile_orders: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run());
    // Dropping a runtime waits without end for blocking work, and a final synchronous offset
    // commit to a broker that has gone away may never return; a stop must still end.
    runtime.shutdown_timeout(std::time::Duration::from_secs(15));
    result
}

async fn run() -> anyhow::Result<()> {
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
            let metrics = ops::install_metrics()?;
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
        Command::Events => {
            let (readiness, bootstrap) =
                (serve_ops(&config, shutdown.clone())?, bootstrap(&config)?);
            app::run_events(&config, &bootstrap, readiness, shutdown).await
        }
        Command::Sink => {
            let (readiness, bootstrap) =
                (serve_ops(&config, shutdown.clone())?, bootstrap(&config)?);
            app::run_sink(&config, &bootstrap, readiness, shutdown).await
        }
        Command::Writeback => {
            let (readiness, bootstrap) =
                (serve_ops(&config, shutdown.clone())?, bootstrap(&config)?);
            app::run_writeback(&config, &bootstrap, readiness, shutdown).await
        }
        #[cfg(feature = "dev")]
        Command::FakeShopify {
            listen,
            stores,
            advocates,
            bucket,
            restore_rate,
        } => {
            let stores = control_files::StoresFile::read(&stores)?;
            let advocates = control_files::read_advocates(&advocates)?;
            let fake = tributary::dev::start_fake_shopify(
                listen,
                &stores,
                &advocates,
                bucket,
                restore_rate,
            )
            .await?;
            println!("fake Shopify Admin API at {}", fake.base_url());
            shutdown.cancelled().await;
            Ok(())
        }
        Command::Keys { command } => keys(&config, command).await,
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
        Command::Stores { command } => stores(&config, command, shutdown).await,
        Command::Teams {
            command: TeamsCommand::Create { name },
        } => {
            let plane =
                ControlPlane::start(&config.control_plane(), &bootstrap(&config)?, &shutdown)
                    .await?;
            let (team, key) = plane.create_team(&name).await?;
            println!(
                "team {} ({})\napi key (shown once): {key}",
                team.team_id, team.name
            );
            Ok(())
        }
        Command::Control => {
            connections::run_control(&config.control_plane(), &bootstrap(&config)?, shutdown).await
        }
        Command::Advocates {
            command: LoadCommand::Load { file },
        } => {
            let n = control_files::load_advocates(&bootstrap(&config)?, &file).await?;
            println!("published {n} advocate(s)");
            Ok(())
        }
        Command::Attribute {
            shop,
            order,
            advocate,
            by,
        } => {
            let shop = shop.trim().to_ascii_lowercase();
            let command = OperatorCommand::Attribute(ManualAttribution {
                order_id: order,
                advocate_identifier: advocate.clone(),
                requested_by: by,
            });
            control_files::publish_commands(&bootstrap(&config)?, &[(shop.clone(), command)])
                .await?;
            println!("queued: order {order} of {shop} to {advocate}");
            Ok(())
        }
        Command::Codes { command } => codes(&config, command, shutdown).await,
        Command::Rewards {
            command: RewardsCommand::Approve { shop, order, by },
        } => {
            let shop = shop.trim().to_ascii_lowercase();
            let command = OperatorCommand::ApproveReward(RewardApproval {
                order_id: order,
                approved_by: by,
            });
            control_files::publish_commands(&bootstrap(&config)?, &[(shop.clone(), command)])
                .await?;
            println!("queued: approval of order {order} of {shop}");
            Ok(())
        }
        Command::Rewards {
            command: RewardsCommand::Pending { shop },
        } => {
            let pending =
                report::pending_rewards(&config.clickhouse.client(), shop.as_deref()).await?;
            println!("{pending}");
            Ok(())
        }
        #[cfg(feature = "dev")]
        Command::Generate(args) => {
            let plan = plan(&args)?;
            let report = send_with_progress(&args.url, &plan, args.concurrency).await;
            println!(
                "sent {} deliveries ({} failed) in {:.1?}",
                report.sent, report.failed, report.elapsed
            );
            match &config.kafka.bootstrap_servers {
                Some(bootstrap) => {
                    let n = plan.publish_commands(bootstrap).await?;
                    println!("published {n} operator command(s)");
                }
                None => println!(
                    "{} operator command(s) not published: kafka.bootstrap_servers is not set",
                    plan.commands.len()
                ),
            }
            let (table, _) = report::compare(&Default::default(), &plan.expected);
            println!("expected per advocate (the orders and gross columns are empty: this is the generator's side)\n{table}");
            Ok(())
        }
        Command::Reconcile {
            shop,
            since,
            status,
        } => {
            let bootstrap = bootstrap(&config)?;
            if status {
                return tributary::reconcile::status(&bootstrap, &shutdown).await;
            }
            let request = tributary::reconcile::Request {
                shop,
                since,
                progress: true,
            };
            tributary::reconcile::run(&config, &bootstrap, &request, &shutdown).await?;
            Ok(())
        }
        Command::Export {
            shop,
            from,
            to,
            output,
        } => {
            let request = tributary::export::Request { shop, from, to };
            let client = config.clickhouse.client();
            let written = match &output {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    tributary::export::write_csv(&client, &request, std::io::BufWriter::new(file))
                        .await?
                }
                None => tributary::export::write_csv(&client, &request, std::io::stdout()).await?,
            };
            eprintln!("{written} attributed order(s) exported");
            Ok(())
        }
        Command::Report => {
            let totals = report::advocate_totals(&config.clickhouse.client()).await?;
            for ((shop, advocate), totals) in totals {
                println!(
                    "{shop:<32} {advocate:<12} {:>8} {:>14} {:>14}",
                    totals.orders,
                    totals.gross.round_dp(2),
                    totals.net.round_dp(2)
                );
            }
            Ok(())
        }
        Command::Dlq {
            command: DlqCommand::List,
        } => list_dead_letters(&bootstrap(&config)?),
        Command::Dlq {
            command: DlqCommand::Replay { from_offset, stage },
        } => {
            let report =
                replay::replay_dead_letters(&bootstrap(&config)?, from_offset, stage).await?;
            println!(
                "replayed {} dead letter(s), skipped {}",
                report.replayed, report.skipped
            );
            if report.cut > 0 {
                println!("{} letter(s) not replayable: their payload was cut to fit; each names its source record", report.cut);
            }
            match stage {
                Some(stage) => println!(
                    "next time for {stage}: --stage {stage} --from-offset {} (letters of other stages are not covered by it)",
                    report.next_offset
                ),
                None => println!("next time: --from-offset {}", report.next_offset),
            }
            Ok(())
        }
        Command::Replay {
            group,
            topic,
            from_beginning,
            from_time,
            from_offset,
            to_end,
            follow,
        } => {
            let to = match (from_beginning, from_time, from_offset, to_end) {
                (true, ..) => ResetTo::Beginning,
                (_, Some(time), ..) => ResetTo::Time(
                    tributary_schemas::time::parse_rfc3339_ms(&time)
                        .with_context(|| format!("{time} is not an RFC 3339 time"))?,
                ),
                (_, _, offsets, _) if !offsets.is_empty() => ResetTo::Offsets(offsets),
                (.., true) => ResetTo::End,
                _ => anyhow::bail!(
                    "say where to: --from-beginning, --from-time, --from-offset or --to-end"
                ),
            };
            let readers = replay::groups_reading(&config, &topic);
            if !readers.contains(&group.as_str()) {
                anyhow::bail!(
                    "no stage of this config reads {topic} as group {group:?}; its groups: {}",
                    if readers.is_empty() {
                        "none".to_owned()
                    } else {
                        readers.join(", ")
                    }
                );
            }
            let bootstrap = bootstrap(&config)?;
            for (partition, offset) in replay::reset(&bootstrap, &group, &topic, to).await? {
                println!("{group} on {topic} [{partition}]: next offset {offset}");
            }
            if follow {
                replay::follow(&bootstrap, &group, &topic).await?;
            }
            Ok(())
        }
        #[cfg(feature = "dev")]
        Command::Demo(args) => demo(config, args, shutdown).await,
        #[cfg(feature = "dev")]
        Command::Bench(args) if args.reconcile_orders.is_some() => {
            let orders = args.reconcile_orders.unwrap_or_default();
            let stores = control_files::StoresFile::read(&args.generate.stores)?.store;
            let advocates = control_files::read_advocates(&args.generate.advocates)?;
            let figures =
                bench::reconcile_throughput(&stores, &advocates, orders, args.generate.seed)
                    .await?;
            println!("reconciliation pull, {orders} orders of one store:");
            for f in figures {
                let seconds = f.elapsed.as_secs_f64().max(1e-9);
                println!(
                    "  {:<40} {:>7} orders in {:>7.2} s: {:>8.1} orders/s, {} requests",
                    f.bucket,
                    f.orders,
                    seconds,
                    f.orders as f64 / seconds,
                    f.requests
                );
            }
            Ok(())
        }
        #[cfg(feature = "dev")]
        Command::Bench(args) if args.settled_orders.is_some() => {
            let orders = args.settled_orders.unwrap_or_default();
            let stores = control_files::StoresFile::read(&args.generate.stores)?.store;
            let advocates = control_files::read_advocates(&args.generate.advocates)?;
            let plan = generate::plan(&stores, &advocates, 1, args.generate.seed)?;
            let dir = tempfile_dir()?;
            let r = bench::settled_state(&plan, orders, &dir)?;
            let _ = std::fs::remove_dir_all(&dir);
            println!(
                "settled orders: {}\n  on disk: {:.0} bytes/order of resident memory growth (redb page cache included, capped at 64 MiB), {:.0} orders/s written, file {:.0} bytes/order\n  in memory (no state_dir, {} orders): {:.0} bytes/order\n  restart to the first order: {:.1} ms\n  peak RSS: {} MiB",
                r.orders,
                r.disk_bytes_per_order,
                r.write_orders_per_s,
                r.file_bytes as f64 / r.orders.max(1) as f64,
                r.memory_sample,
                r.memory_bytes_per_order,
                r.reopen_ms,
                r.peak_rss_kib / 1024
            );
            Ok(())
        }
        #[cfg(feature = "dev")]
        Command::Bench(args) => {
            // The throughput stages run without settle delays (held orders would wait for the
            // idle tick); the memory of held orders is measured on its own.
            let mut stores = control_files::StoresFile::read(&args.generate.stores)?.store;
            for store in &mut stores {
                store.settle_delay_minutes = 0;
            }
            let advocates = control_files::read_advocates(&args.generate.advocates)?;
            let (orders, seed) = (args.generate.orders, args.generate.seed);
            let report = bench::run(
                config,
                bench::BenchPlan {
                    backlog: generate::plan(&stores, &advocates, orders, seed)?,
                    live: generate::plan(&stores, &advocates, args.live_orders, seed + 1)?,
                    live_orders_per_second: args.live_rate,
                    concurrency: args.generate.concurrency,
                    stores,
                    advocates: args.generate.advocates,
                },
            )
            .await?;
            println!("{report}");
            println!(
                "\nper-advocate revenue, both streams: ClickHouse beside the generator\n{}",
                report.totals_table
            );
            Ok(())
        }
    }
}

#[cfg(feature = "dev")]
/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tributary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
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
    let router = ops::ops_router(readiness.clone(), ops::install_metrics()?);
    let (listen, limits) = (config.ops.listen, config.http.clone());
    tokio::spawn(async move {
        if let Err(error) = ops::serve_with(listen, router, &limits, shutdown).await {
            tracing::error!(%error, "ops server stopped");
        }
    });
    Ok(readiness)
}

#[cfg(feature = "dev")]
fn plan(args: &GenerateArgs) -> anyhow::Result<generate::Plan> {
    let stores = control_files::StoresFile::read(&args.stores)?;
    let advocates = control_files::read_advocates(&args.advocates)?;
    generate::plan(&stores.store, &advocates, args.orders, args.seed)
}

async fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let path = &config.secrets.master_key_file;
    match command {
        KeysCommand::Init => {
            MasterKey::init(path)?;
            println!("created the master key at {}; give every service the same file (or its contents in TRIBUTARY_MASTER_KEY)", path.display());
        }
        KeysCommand::Rotate => {
            let ring = MasterKey::rotate(path)?;
            println!(
                "a new master key is current at {} ({} earlier key(s) kept); restart every service, then run `tributary keys reseal --retire`",
                path.display(),
                ring.previous_keys()
            );
        }
        KeysCommand::Reseal { retire } => {
            let key = MasterKey::load(path)?;
            let n = tributary_control::keys::reseal_stores(&bootstrap(config)?, &key).await?;
            println!("published {n} store record(s), every store's secrets now sealed under the current key");
            if retire {
                MasterKey::retire_previous(path)?;
                println!("earlier keys dropped from {}", path.display());
            }
        }
    }
    Ok(())
}

async fn stores(
    config: &Config,
    command: StoresCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let StoresCommand::Load { file } = &command {
        let key = MasterKey::load(&config.secrets.master_key_file)?;
        let n = control_files::load_stores(&bootstrap(config)?, file, &key).await?;
        println!("published {n} store(s)");
        return Ok(());
    }
    // Every other store command works through the control plane, as the admin API does.
    let plane =
        ControlPlane::start(&config.control_plane(), &bootstrap(config)?, &shutdown).await?;
    let show = |views: &[connections::StoreView]| -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(views)?);
        Ok(())
    };
    match command {
        // Published above, without the control plane.
        StoresCommand::Load { .. } => Ok(()),
        StoresCommand::Connect { team, domain } => {
            let secret = |name: &str| {
                std::env::var(name).with_context(|| format!("{name} must hold the secret"))
            };
            let request = connections::ConnectRequest {
                domain,
                access_token: secret("TRIBUTARY_ACCESS_TOKEN")?,
                app_secret: secret("TRIBUTARY_APP_SECRET")?,
            };
            show(&[plane.connect(&team, request).await?])
        }
        StoresCommand::Status { team } => show(&plane.list(&team)),
        StoresCommand::Features {
            team,
            domain,
            on,
            off,
        } => {
            let mut changes = connections::StoreChanges::default();
            for (names, value) in [(on, true), (off, false)] {
                for name in names {
                    let slot = match name.trim() {
                        "auto_mint_codes" => &mut changes.auto_mint_codes,
                        "order_attribution" => &mut changes.order_attribution,
                        "order_notes" => &mut changes.order_notes,
                        "order_tags" => &mut changes.order_tags,
                        "attribution_rewards" => &mut changes.attribution_rewards,
                        "reward_store_credit" => &mut changes.reward_store_credit,
                        other => anyhow::bail!("no feature {other}"),
                    };
                    *slot = Some(value);
                }
            }
            show(&[plane.change(&team, &domain, changes).await?])
        }
        StoresCommand::Disconnect { team, domain } => {
            show(&[plane.disconnect(&team, &domain).await?])
        }
        StoresCommand::Check { shop } => {
            let reports = match shop {
                Some(shop) => vec![plane.check_health(&shop).await],
                None => plane.check_all().await,
            };
            for report in reports {
                match report {
                    Ok(r) if r.healthy => println!("{}: healthy", r.domain),
                    Ok(r) => println!("{}: locked: {}", r.domain, r.problems.join("; ")),
                    Err(error) => println!("check failed: {error}"),
                }
            }
            Ok(())
        }
    }
}

async fn codes(
    config: &Config,
    command: CodesCommand,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let bootstrap = bootstrap(config)?;
    let control = tributary_runtime::control::follow_stores_and_advocates(
        &bootstrap,
        &shutdown,
        &Readiness::default(),
    )
    .await?;
    match command {
        CodesCommand::Stats { shop } => {
            let control = control.read().unwrap_or_else(|p| p.into_inner());
            let mut shops: Vec<String> = control.stores().map(|s| s.domain.clone()).collect();
            shops.sort();
            println!("{:<36} {:>10} {:>10}", "store", "have one", "need one");
            for domain in shops
                .iter()
                .filter(|d| shop.as_ref().is_none_or(|s| s == *d))
            {
                let stats = minting::code_stats(&control, domain);
                println!(
                    "{domain:<36} {:>10} {:>10}",
                    stats.with_code, stats.without_code
                );
            }
        }
        CodesCommand::Mint { shop } => {
            let shop = shop.trim().to_ascii_lowercase();
            let master_key = MasterKey::load(&config.secrets.master_key_file)?;
            let tokens = tributary_shopify::oauth::AccessTokens::follow(
                &bootstrap,
                &config.shopify,
                master_key,
                &shutdown,
            )
            .await?;
            let admin = tributary_shopify::AdminClient::new(config.shopify.clone())?;
            let producer: rdkafka::producer::FutureProducer =
                tributary_runtime::kafka::producer_config(&bootstrap, Duration::from_secs(30))
                    .create()?;
            let bar = tributary::progress::bar(0, "minting codes");
            let started = std::time::Instant::now();
            let summary = minting::mint_missing(
                &admin,
                &control,
                &tokens,
                &producer,
                &shop,
                &|needing| bar.set_length(needing as u64),
                &|settled| bar.set_position(settled as u64),
            )
            .await?;
            bar.finish();
            let elapsed = started.elapsed();
            println!(
                "{shop}: minted {} code(s) in {elapsed:.1?} ({:.1} codes/s), skipped {}",
                summary.minted,
                summary.minted as f64 / elapsed.as_secs_f64().max(1e-9),
                summary.skipped.len()
            );
            for (advocate, reason) in &summary.skipped {
                println!("  skipped {advocate}: {reason}");
            }
        }
    }
    Ok(())
}

#[cfg(feature = "dev")]
/// Waits for the writeback to tag every attributed order of the stores with Admin access, then
/// prints a few orders as Shopify now holds them, and the advocates' store credit.
async fn show_writeback(
    client: &clickhouse::Client,
    fake: &tributary_fakes::shopify::FakeShopify,
    stores: &control_files::StoresFile,
    advocates: &[control_files::AdvocateLine],
) -> anyhow::Result<()> {
    for store in stores.store.iter().filter(|s| s.admin.is_some()) {
        let shop = store.domain.trim().to_ascii_lowercase();
        let attributed =
            tributary_sinks::clickhouse::queries::attributed_orders(client, &shop).await?;
        let tagged = |id: &u64| fake.order(&shop, *id).is_some_and(|o| !o.tags.is_empty());
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while attributed.iter().any(|id| !tagged(id)) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let done = attributed.iter().filter(|id| tagged(id)).count();
        println!(
            "\nwriteback to {shop}: {done} of {} attributed orders tagged and noted; Admin API writes {:?}",
            attributed.len(),
            fake.writes(&shop)
        );
        for id in attributed.iter().take(3) {
            if let Some(order) = fake.order(&shop, *id) {
                let tags: Vec<&str> = order.tags.iter().map(String::as_str).collect();
                println!(
                    "\norder {id}: tags {}\n{}",
                    tags.join(", "),
                    order.note.unwrap_or_default()
                );
            }
        }
        if !store.features.reward_store_credit {
            continue;
        }
        // One Shopify transaction per approval and reversal, once the stage has caught up.
        let moves =
            tributary_sinks::clickhouse::queries::store_credit_movements(client, &shop).await?;
        let customers: Vec<(&control_files::AdvocateLine, u64)> = advocates
            .iter()
            .filter(|a| a.shop_domain.trim().eq_ignore_ascii_case(&shop))
            .filter_map(|a| Some((a, fake.customer_id(&shop, a.email.trim())?)))
            .collect();
        let pushed = || -> u64 {
            customers
                .iter()
                .map(|(_, id)| fake.store_credit_transactions(&shop, *id).len() as u64)
                .sum()
        };
        while pushed() < moves && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let credit: Vec<String> = customers
            .iter()
            .filter_map(|&(a, customer)| {
                let transactions = fake.store_credit_transactions(&shop, customer).len();
                let balances = fake.store_credit(&shop, customer);
                let (currency, balance) = balances.iter().next()?;
                Some(format!(
                    "{} {balance} {currency} ({transactions} transactions)",
                    a.identifier
                ))
            })
            .collect();
        println!(
            "\nstore credit in {shop} from approved rewards ({} of {moves} approvals and reversals pushed): {}",
            pushed(),
            credit.join(", ")
        );
    }
    Ok(())
}

#[cfg(feature = "dev")]
async fn send_with_progress(
    url: &str,
    plan: &generate::Plan,
    concurrency: usize,
) -> generate::SendReport {
    let bar = tributary::progress::bar(plan.deliveries(), "sending webhooks");
    let report = generate::send(url, plan, concurrency, Some(bar.clone())).await;
    bar.finish();
    report
}

#[cfg(feature = "dev")]
async fn demo(
    mut config: Config,
    args: GenerateArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if config.clickhouse.database == "tributary" {
        config.clickhouse.database = "tributary_demo".into();
    }
    // The demo's stream ends and then sits idle: settle the delayed store's orders soon after.
    config.processor.idle_tick_ms = config.processor.idle_tick_ms.min(1_000);
    app::reset_database(&config).await?;
    let client = config.clickhouse.client();
    let (_embedded, bootstrap) = broker_or_embedded(&config).await?;
    let key = MasterKey::load_or_init_for_dev(&config.secrets.master_key_file)?;
    // Shopify cannot be reached from here: unless shopify.base_url says otherwise, writeback goes
    // to a fake Shopify in this process, sized as a Shopify Plus store so it keeps up.
    let stores = control_files::StoresFile::read(&args.stores)?;
    let advocates = control_files::read_advocates(&args.advocates)?;
    let fake = match config.shopify.base_url {
        Some(_) => None,
        None => {
            let fake = tributary::dev::start_fake_shopify(
                ([127, 0, 0, 1], 0).into(),
                &stores,
                &advocates,
                10_000.0,
                500.0,
            )
            .await?;
            config.shopify.base_url = Some(fake.base_url());
            println!("fake Shopify Admin API at {}", fake.base_url());
            Some(fake)
        }
    };
    control_files::load_stores(&bootstrap, &args.stores, &key).await?;
    control_files::load_advocates(&bootstrap, &args.advocates).await?;
    let pipeline = {
        let (config, bootstrap, shutdown) = (config.clone(), bootstrap.clone(), shutdown.clone());
        tokio::spawn(async move { app::run_all(&config, &bootstrap, shutdown).await })
    };
    let url = format!("http://{}/webhooks/shopify", config.ingest.listen);
    app::wait_ready(
        &format!("http://{}/readyz", config.ingest.listen),
        Duration::from_secs(30),
    )
    .await?;
    let plan = plan(&args)?;
    println!(
        "sending {} deliveries for {} orders to {url}",
        plan.deliveries(),
        plan.orders.len()
    );
    let sent = send_with_progress(&url, &plan, args.concurrency).await;
    let commands = plan.publish_commands(&bootstrap).await?;
    println!(
        "sent {} ({} failed) in {:.1?} and {commands} operator command(s); waiting for ClickHouse",
        sent.sent, sent.failed, sent.elapsed
    );
    let (table, matched) =
        report::await_match(&client, &plan.expected, Duration::from_secs(300)).await;
    println!("\nper advocate: ClickHouse (orders, gross, net, reward balance) beside the generator's expectation\n{table}");
    println!(
        "unattributed orders expected: {}, excluded orders expected: {}",
        plan.expected.unattributed_orders, plan.expected.excluded_orders
    );
    if let Some(fake) = &fake {
        show_writeback(&client, fake, &stores, &advocates).await?;
    }
    shutdown.cancel();
    let _ = pipeline.await;
    anyhow::ensure!(matched, "ClickHouse does not match the generator");
    println!("ClickHouse matches the generator to the cent.");
    Ok(())
}

fn list_dead_letters(bootstrap: &str) -> anyhow::Result<()> {
    use rdkafka::message::{Headers, Message};
    let mut count = 0;
    tributary_runtime::kafka::read_topic(bootstrap, topics::DEAD_LETTERS, |message| {
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
