#!/usr/bin/env bash
# scripts/s3.sh start|stop|env — an S3-protocol server of the tests' own: moto's server (from
# PyPI, in a venv of its own) on loopback port 18910, its pid recorded and stopped by it.
# `start` prints nothing but errors; `env` prints the BOW_TEST_S3 line to export.
set -euo pipefail
BASE=${BOW_TEST_S3_DIR:-/var/tmp/bow-test-s3}
PORT=${BOW_TEST_S3_PORT:-18910}
URL=http://127.0.0.1:$PORT

running() { curl -sf -o /dev/null "$URL/moto-api/"; }

start() {
  if running; then return 0; fi
  mkdir -p "$BASE"
  if [ ! -x "$BASE/venv/bin/moto_server" ]; then
    python3 -m venv "$BASE/venv"
    "$BASE/venv/bin/pip" install -q 'moto[server]==5.*'
  fi
  # From $BASE: a daemon keeps its working directory, which must outlive a CI clone.
  cd "$BASE"
  setsid "$BASE/venv/bin/moto_server" -H 127.0.0.1 -p "$PORT" > "$BASE/moto.log" 2>&1 < /dev/null &
  echo $! > "$BASE/moto.pid"
  for _ in $(seq 100); do running && break; sleep 0.2; done
  if ! running; then
    echo "scripts/s3.sh: moto_server did not start; its log:" >&2
    tail -20 "$BASE/moto.log" >&2
    exit 1
  fi
}

stop() {
  local pid
  pid=$(cat "$BASE/moto.pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "$BASE/moto.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "BOW_TEST_S3=$URL" ;;
  *) echo "usage: scripts/s3.sh start|stop|env" >&2; exit 2 ;;
esac
