#!/usr/bin/env bash
# scripts/podman.sh start|stop|env — Podman's Docker-compatible API service of the tests' own
# (private root, run root and socket; runc and capped ulimits through a containers.conf of
# its own, which Debian 12's podman 4.3 needs in a machine without systemd). The podman
# tests (tests/containers_podman.rs) point bow's DOCKER_HOST at it.
set -euo pipefail
BASE=${BOW_TEST_PODMAN_DIR:-/var/tmp/bow-test-podman}
SOCK=$BASE/podman.sock
export CONTAINERS_CONF=$BASE/containers.conf

running() { curl -sf --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }

start() {
  if running; then return 0; fi
  mkdir -p "$BASE"
  cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
  setsid podman --root "$BASE/root" --runroot "$BASE/run" system service --time=0 "unix://$SOCK" \
    > "$BASE/service.log" 2>&1 < /dev/null &
  echo $! > "$BASE/service.pid"
  for _ in $(seq 100); do running && break; sleep 0.2; done
  if ! running; then
    echo "scripts/podman.sh: podman's API service did not start; its log:" >&2
    tail -20 "$BASE/service.log" >&2
    exit 1
  fi
}

stop() {
  local pid
  pid=$(cat "$BASE/service.pid" 2>/dev/null || true)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "BOW_TEST_PODMAN_HOST=unix://$SOCK" ;;
  *) echo "usage: scripts/podman.sh start|stop|env" >&2; exit 2 ;;
esac
