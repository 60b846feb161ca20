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

# Whether the running daemon works from a directory since removed (an earlier CI clone):
# restarted then, as its children fail without a working directory.
orphaned() {
  local pid
  pid=$(cat "$BASE/service.pid" 2>/dev/null || true)
  [ -n "$pid" ] && [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == *"(deleted)" ]]
}

start() {
  if running && orphaned; then stop; fi
  if running; then return 0; fi
  mkdir -p "$BASE"
  cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
  # From $BASE: a daemon keeps the working directory it starts in, and conmon (each
  # container's monitor) fails with "Failed to get working directory" once that is gone —
  # as a CI clone under /tmp is when it is removed.
  cd "$BASE"
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
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "BOW_TEST_PODMAN_HOST=unix://$SOCK" ;;
  *) echo "usage: scripts/podman.sh start|stop|env" >&2; exit 2 ;;
esac
