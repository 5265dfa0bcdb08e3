#!/usr/bin/env bash
# The benchmark: the demo's setup, then `tributary bench` (method: docs/decisions.md). Extra
# arguments go to `tributary bench` (e.g. --orders 20000 --live-rate 500).
exec "$(dirname "$0")/demo.sh" --bench "$@"
