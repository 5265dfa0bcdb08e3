#!/usr/bin/env bash
# The test command: installs and starts what the tests need, then runs unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/clickhouse.sh start
export TRIBUTARY_CH_URL=${TRIBUTARY_CH_URL:-$(scripts/clickhouse.sh url)}
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release --bins
cargo test --release --workspace --all-targets -- --test-threads=4
