#!/usr/bin/env bash
# bench/observability.sh — what issue 20's observability costs.
#
# 1. Agent memory: 50 bow-testapp instances (SERVICES services × REPLICAS) with `admin:` on (the
#    dashboard's per-service ring sampling every 10 s, /metrics scraped, the page and its live
#    stream loaded) against the same system without `admin:`; VmRSS of the agent in each
#    (goal: < 40 MB with the rings).
# 2. The edge's CPU per request: bench/edge_cost.sh's bare edge built from this tree against
#    the same built from BASE (a commit before the per-method counters, bytes, in-flight
#    gauges and traceparent; default: the first parent of the branch's first observability
#    commit), CPU ns per request from the scheduler's accounting (goal: within 3%).
#
#    AB=1: instead, the same build with its per-route counters on and off
#    (EDGE_ROUTE_METRICS=0: `EdgeConfig::route_metrics`), runs interleaved: no second build, and
#    no difference of code layout between two builds in the ratio. MEMORY=0 skips part 1.
#
#   bash bench/observability.sh            BASE=9f5eb29 SERVICES=50 REPLICAS=1 DUR=5s CONNS=64
#   AB=1 MEMORY=0 REPS=6 bash bench/observability.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SERVICES=${SERVICES:-50}; REPLICAS=${REPLICAS:-1}
BASE=${BASE:-9f5eb29}; DUR=${DUR:-5s}; CONNS=${CONNS:-64}; REPS=${REPS:-3}
AB=${AB:-0}; MEMORY=${MEMORY:-1}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

cargo build --release -q -p bow -p bow-testapp
BOW=$ROOT/target/release/bow
APP=$ROOT/target/release/bow-testapp

footprint() {  # $1: with admin (1) or not (0); prints the agent's VmRSS in KiB
  local work admin port
  work=$(mktemp -d /tmp/bow-bench-obs.XXXXXX); chmod 755 "$work"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  admin=""; [ "$1" = 1 ] && admin="admin: { listen: 127.0.0.1:$port }"
  {
    echo "project: bench-obs-$1"
    echo "$admin"
    echo "services:"
    for s in $(seq 1 "$SERVICES"); do
      echo "  s$s:"
      echo "    command: $APP"
      echo "    replicas: $REPLICAS"
      echo "    env: { TESTAPP_QUIET: \"1\" }"
      echo "    health: { http: /healthz, interval: 2s, timeout: 1s, retries: 3 }"
    done
  } > "$work/bow.yaml"
  (cd "$work" && timeout 300 "$BOW" up -d --state-dir "$work/state" >/dev/null)
  if [ "$1" = 1 ]; then
    # Three samples in the rings, a few scrapes, pages and a live stream.
    for _ in 1 2 3; do
      curl -sf "http://127.0.0.1:$port/metrics" >/dev/null
      curl -sf "http://127.0.0.1:$port/" >/dev/null
      timeout 3 curl -sN "http://127.0.0.1:$port/events" >/dev/null || true
      sleep 8
    done
  else
    sleep 30
  fi
  local pid rss
  pid=$(cat "$work/state/agent.pid")
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  (cd "$work" && timeout 120 "$BOW" down --state-dir "$work/state" >/dev/null 2>&1) || true
  rm -rf "$work"
  echo "$rss"
}

if [ "$MEMORY" = 1 ]; then
log "agent memory, $SERVICES services x $REPLICAS replicas"
without=$(footprint 0)
with=$(footprint 1)
printf 'agent VmRSS without admin: %.1f MiB; with admin (metrics, dashboard, rings): %.1f MiB (goal < 40 MB: %s)\n' \
  "$(echo "$without/1024" | bc -l)" "$(echo "$with/1024" | bc -l)" \
  "$([ $((with * 1024)) -lt 40000000 ] && echo OK || echo MISSED)"
echo "one full ring (360 samples) per service: about $(( (360 * (48 + 8 * 13 + 16)) / 1024 )) KiB; $SERVICES services: about $(( SERVICES * 360 * (48 + 8 * 13 + 16) / 1048576 )) MiB after an hour"

fi

if [ "$AB" = 1 ]; then
  log "edge cost: this build with per-route counters on and off, interleaved"
  cargo build --release -q -p bow-edge --example edge_load
  cp target/release/examples/edge_load /tmp/bow-obs-edge-ab
  for rep in $(seq 1 "$REPS"); do
    for metrics in 1 0; do
      EDGE_ROUTE_METRICS=$metrics EDGE_BIN=/tmp/bow-obs-edge-ab TARGETS=bow DUR=$DUR CONNS=$CONNS \
        bash bench/edge_cost.sh 2>/dev/null | awk -v m="metrics=$metrics" -v r="$rep" 'NR>1 {print m, r, $0}'
    done
  done
  exit 0
fi

log "edge cost: this tree against $BASE"
cargo build --release -q -p bow-edge --example edge_load
cp target/release/examples/edge_load /tmp/bow-obs-edge-branch
BASE_TREE=$(mktemp -d /tmp/bow-obs-base.XXXXXX)
git worktree add -q --detach "$BASE_TREE" "$BASE"
trap 'git worktree remove --force "$BASE_TREE" 2>/dev/null || true' EXIT
(cd "$BASE_TREE" && CARGO_TARGET_DIR=$ROOT/target cargo build --release -q -p bow-edge --example edge_load)
cp target/release/examples/edge_load /tmp/bow-obs-edge-base
for rep in $(seq 1 "$REPS"); do
  for build in base branch; do
    EDGE_BIN=/tmp/bow-obs-edge-$build TARGETS=bow DUR=$DUR CONNS=$CONNS bash bench/edge_cost.sh 2>/dev/null \
      | awk -v b="$build" -v r="$rep" 'NR>1 {print b, r, $0}'
  done
done
