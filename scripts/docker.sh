#!/usr/bin/env bash
# scripts/docker.sh start|stop|env — a Docker Engine of the tests' own: Debian's docker.io
# daemon on a private socket, data root and bridge (never the machine's default engine), and
# the test images the container tests run (built here: no registry is reachable).
# `start` prints nothing but errors; `env` prints the DOCKER_HOST line to export.
set -euo pipefail
BASE=${BOW_TEST_DOCKER_DIR:-/var/tmp/bow-test-docker}
SOCK=$BASE/docker.sock
BRIDGE=bowtest0
DK() { /usr/bin/docker -H "unix://$SOCK" "$@"; }

running() { DK version >/dev/null 2>&1; }

# Whether the running daemon works from a directory since removed (an earlier CI clone):
# restarted then, as its children fail without a working directory.
orphaned() {
  local pid
  pid=$(cat "$BASE/dockerd.pid" 2>/dev/null || true)
  [ -n "$pid" ] && [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == *"(deleted)" ]]
}

start() {
  if running && orphaned; then stop; fi
  if running; then return 0; fi
  mkdir -p "$BASE"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add 172.31.254.1/24 dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  # From $BASE: a daemon keeps its working directory, which must outlive a CI clone.
  cd "$BASE"
  setsid /usr/sbin/dockerd --bridge "$BRIDGE" --host "unix://$SOCK" --data-root "$BASE/data" \
    --exec-root "$BASE/exec" --pidfile "$BASE/dockerd.pid" > "$BASE/dockerd.log" 2>&1 < /dev/null &
  for _ in $(seq 120); do running && break; sleep 0.5; done
  if ! running; then
    echo "scripts/docker.sh: dockerd did not start; its log:" >&2
    tail -20 "$BASE/dockerd.log" >&2
    exit 1
  fi
}

stop() {
  local pid
  pid=$(cat "$BASE/dockerd.pid" 2>/dev/null || true)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "DOCKER_HOST=unix://$SOCK" ;;
  *) echo "usage: scripts/docker.sh start|stop|env" >&2; exit 2 ;;
esac
