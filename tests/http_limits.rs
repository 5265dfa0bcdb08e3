//! Stalled clients never exhaust ingest: connections are limited below the file descriptor limit
//! and a connection that does not finish its headers is closed, so `/healthz` and real deliveries
//! are served while a thousand stalled connections come and go.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Whether `url` answers 200 within `within`.
async fn answers(client: &reqwest::Client, url: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let sent = client.get(url).timeout(Duration::from_secs(1)).send().await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_connections_never_exhaust_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config("http_limits", dir.path());
    let (_broker, bootstrap) = broker_process(dir.path(), 4).await;
    load_demo_control(&config, &bootstrap).await;
    let listen = config.ingest.listen;
    // 256 file descriptors, as a small container might give: without a limit, 1,100 stalled
    // connections take them all and ingest accepts nothing more, `/healthz` included.
    let mut ingest = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 256 && exec '{}' ingest",
            env!("CARGO_BIN_EXE_tributary")
        ))
        .env("RUST_LOG", "warn")
        .env("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
        .env("TRIBUTARY_INGEST__LISTEN", listen.to_string())
        .env(
            "TRIBUTARY_OPS__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "TRIBUTARY_SECRETS__MASTER_KEY_FILE",
            config.secrets.master_key_file.as_os_str(),
        )
        .env("TRIBUTARY_HTTP__MAX_CONNECTIONS", "64")
        .env("TRIBUTARY_HTTP__HEADER_READ_TIMEOUT_MS", "1000")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ingest");
    wait_ready(&format!("http://{listen}/readyz")).await;

    let mut stalled = Vec::new();
    for _ in 0..1_100 {
        let Ok(Ok(mut stream)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(listen),
        )
        .await
        else {
            continue; // the listen backlog is full: the kernel holds the rest
        };
        let _ = stream
            .write_all(b"POST /webhooks/shopify HTTP/1.1\r\nHost: x\r\n")
            .await;
        stalled.push(stream);
    }
    let client = reqwest::Client::new();
    assert!(
        answers(
            &client,
            &format!("http://{listen}/healthz"),
            Duration::from_secs(20)
        )
        .await,
        "/healthz answers while {} stalled connections are open",
        stalled.len()
    );
    let order = Order::new(3_400_000_000_001, "5.00");
    let delivery = order.delivery("orders/create", "w-stall", "e-stall");
    let mut status = 0;
    for _ in 0..100 {
        status = post(&format!("http://{listen}/webhooks/shopify"), &delivery).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 200, "a real delivery gets in");
    assert!(
        ingest.try_wait().unwrap().is_none(),
        "ingest is still running"
    );
    drop(stalled);
    ingest.start_kill().unwrap();
}
