#!/usr/bin/env bash
# Installs Debian's clickhouse-server if it is missing and runs it as a plain process on a
# project-local directory and ports. Usage: scripts/clickhouse.sh start|stop|status
#
# Environment: TRIBUTARY_CH_DIR (default .tributary/clickhouse), TRIBUTARY_CH_HTTP_PORT (18123),
# TRIBUTARY_CH_TCP_PORT (19000).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${TRIBUTARY_CH_DIR:-$root/.tributary/clickhouse}
http_port=${TRIBUTARY_CH_HTTP_PORT:-18123}
tcp_port=${TRIBUTARY_CH_TCP_PORT:-19000}
url="http://127.0.0.1:$http_port"

install() {
  command -v clickhouse-server >/dev/null 2>&1 && return
  echo "installing clickhouse-server (Debian package)" >&2
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
}

write_config() {
  mkdir -p "$dir"/{data,tmp,log,user_files,format_schemas}
  cat >"$dir/users.xml" <<XML
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
    <profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
XML
  cat >"$dir/config.xml" <<XML
<yandex>
  <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$http_port</http_port>
  <tcp_port>$tcp_port</tcp_port>
  <path>$dir/data/</path>
  <tmp_path>$dir/tmp/</tmp_path>
  <user_files_path>$dir/user_files/</user_files_path>
  <format_schema_path>$dir/format_schemas/</format_schema_path>
  <users_config>$dir/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
</yandex>
XML
}

alive() { curl -fsS "$url/ping" >/dev/null 2>&1; }

case "${1:-start}" in
  start)
    if alive; then echo "clickhouse already running at $url"; exit 0; fi
    install
    write_config
    nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 1 120); do
      alive && { echo "clickhouse running at $url (pid $(cat "$dir/pid"))"; exit 0; }
      sleep 0.5
    done
    echo "clickhouse did not start; see $dir/log" >&2; tail -20 "$dir/log/error.log" >&2 || true; exit 1 ;;
  stop)
    # Wait for the server to exit: a later start must not find it still shutting down.
    if [ -f "$dir/pid" ]; then
      pid=$(cat "$dir/pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    rm -f "$dir/pid" ;;
  status)
    alive && echo "up at $url" || { echo "down"; exit 1; } ;;
  url) echo "$url" ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
