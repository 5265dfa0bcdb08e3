#!/usr/bin/env bash
# The test command: installs and starts what the tests need, then runs unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/clickhouse.sh start
export TRIBUTARY_CH_URL=${TRIBUTARY_CH_URL:-$(scripts/clickhouse.sh url)}
cargo fmt --all --check
# The release build (no dev tools) must be clean on its own, and the suite builds with them.
cargo clippy --release --bins -- -D warnings
cargo clippy --release --workspace --all-targets --features tributary/dev -- -D warnings
cargo build --release --bins --features tributary/dev
cargo test --release --workspace --all-targets --features tributary/dev -- --test-threads=4
