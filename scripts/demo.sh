#!/usr/bin/env bash
# The demo: installs what is missing, starts ClickHouse, builds tributary, and runs the pipeline
# over a generated stream of signed webhooks, printing ClickHouse's per-advocate revenue beside the
# generator's own expectation. Extra arguments go to `tributary demo` (e.g. --orders 5000).
# scripts/bench.sh runs `tributary bench` the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
subcommand=demo
if [[ "${1:-}" == "--bench" ]]; then subcommand=bench; shift; fi
scripts/setup.sh
scripts/clickhouse.sh start
cargo build --release --bin tributary --features dev
TRIBUTARY_CLICKHOUSE__URL=${TRIBUTARY_CLICKHOUSE__URL:-$(scripts/clickhouse.sh url)} \
  RUST_LOG=${RUST_LOG:-warn} ./target/release/tributary "$subcommand" "$@"
