#!/usr/bin/env bash
# bench/deploy.sh — how long a zero-downtime deploy of 3 replicas takes, against its floor, and
# how many requests fail meanwhile (must be 0).
#
# The app is bow-testapp with a start delay (START_DELAY, default 500ms: a small web app's
# boot) behind bow's edge, checked every INTERVAL (200ms). The floor of one new instance is
# "app start + one health interval" (it cannot be seen healthy sooner); a rolling deploy with
# max_surge 1 replaces 3 instances one after the other, so its floor is 3 × that; blue-green
# starts all 3 at once, so its floor is 1 ×. Both are measured in the same run, ROUNDS times
# each, under constant HTTPS load through the edge from bench/load_client.py (bounded:
# the deploys' duration plus a few seconds, on loopback).
#   ROUNDS=3 START_DELAY=500ms bash bench/deploy.sh      (about a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; START_DELAY=${START_DELAY:-500ms}; INTERVAL=${INTERVAL:-200ms}
cargo build --release -q -p bow -p bow-testapp
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BOW=$TARGET/release/bow
APP=$TARGET/release/bow-testapp
WORK=$(mktemp -d /tmp/bow-bench-deploy.XXXXXX)
chmod 755 "$WORK"   # services run as their own users and must reach their dir
cleanup() {
  (cd "$WORK" && timeout 60 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP=$(free_port); HTTPS=$(free_port)
HOST=deploy.bench.localhost
export BOW_CODE_VERSION=bench   # the bench dir's files are not the app's code

echo "== app start alone: exec → first 200 (START_DELAY=$START_DELAY), median of 5"
START_MS=$(python3 - "$APP" "$START_DELAY" <<'PY'
import os, socket, subprocess, sys, time, urllib.request
app, delay = sys.argv[1], sys.argv[2]
samples = []
for _ in range(5):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    env = dict(os.environ, PORT=str(port), TESTAPP_START_DELAY=delay, TESTAPP_QUIET="1")
    began = time.monotonic()
    child = subprocess.Popen([app], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.002)
    samples.append((time.monotonic() - began) * 1000)
    child.terminate(); child.wait()
samples.sort()
print(f"{samples[len(samples) // 2]:.0f}")
PY
)
INTERVAL_MS=$(python3 -c "import sys; v=sys.argv[1]; print(int(float(v[:-2])) if v.endswith('ms') else int(float(v[:-1])*1000))" "$INTERVAL")
echo "app start ${START_MS} ms; health interval ${INTERVAL_MS} ms; floor per instance $((START_MS + INTERVAL_MS)) ms"

write_stack() { # $1 strategy, $2 version
  cat > "$WORK/bow.yaml" <<EOF
project: bench-deploy
edge: { http_port: $HTTP, https_port: $HTTPS }
services:
  web:
    command: $APP
    replicas: 3
    routes: ["$HOST"]
    env: { APP_VERSION: "$2", TESTAPP_START_DELAY: $START_DELAY, TESTAPP_QUIET: "1" }
    health: { http: /healthz, interval: $INTERVAL, timeout: 1s, retries: 3, start_period: 10s }
    deploy: { strategy: $1, drain_timeout: 5s }
EOF
}

write_stack rolling v0
(cd "$WORK" && timeout 120 "$BOW" up -d --state-dir "$WORK/state" >/dev/null)
CA=$(cd "$WORK" && "$BOW" trust --state-dir "$WORK/state" 2>/dev/null)
# Long enough for every deploy (generous per round), bounded.
SECONDS_OF_LOAD=$(( 4 + ROUNDS * 2 * (3 * (START_MS + INTERVAL_MS) / 1000 + 8) ))
python3 bench/load_client.py "$HOST" "$HTTPS" "$CA" "$SECONDS_OF_LOAD" "$WORK/marker" > "$WORK/load.json" &
LOAD=$!
sleep 1

: > "$WORK/deploys.txt"
version=0
for strategy in rolling blue-green; do
  for round in $(seq 1 "$ROUNDS"); do
    version=$((version + 1))
    write_stack "$strategy" "v$version"
    began=$(date +%s%N)
    (cd "$WORK" && timeout 300 "$BOW" apply --yes --state-dir "$WORK/state" > "$WORK/apply.out" 2>&1) \
      || { cat "$WORK/apply.out"; echo "apply failed"; exit 1; }
    ended=$(date +%s%N)
    ms=$(( (ended - began) / 1000000 ))
    echo "$strategy $ms" >> "$WORK/deploys.txt"
    echo "$strategy round $round: bow apply took $ms ms ($(grep -o 'release [0-9]* live[^)]*)' "$WORK/apply.out"))"
  done
done
date +%s.%N > "$WORK/marker"   # answers from now on: the last version only
sleep 2
touch "$WORK/marker.stop"
wait $LOAD

(cd "$WORK" && "$BOW" history web --state-dir "$WORK/state" --output json) > "$WORK/history.json"
python3 - "$WORK/deploys.txt" "$WORK/history.json" "$START_MS" "$INTERVAL_MS" "$WORK/load.json" <<'PY'
import json, statistics, sys
deploys, history, start, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
floor_one = start + interval
by = {}
for line in open(deploys):
    strategy, ms = line.split()
    by.setdefault(strategy, []).append(int(ms))
agent = {}
for release in json.load(open(history)):
    if release["strategy"] in ("rolling", "blue-green") and release["finished_at_ms"]:
        agent.setdefault(release["strategy"], []).append(release["finished_at_ms"] - release["created_at_ms"])
for strategy, floor in (("rolling", 3 * floor_one), ("blue-green", floor_one)):
    wall = statistics.median(by[strategy])
    inside = statistics.median(agent.get(strategy, [0]))
    print(f"{strategy:<10}: apply {wall:.0f} ms median (agent: {inside:.0f} ms) vs floor {floor} ms"
          f" ({'3 × ' if strategy == 'rolling' else ''}start {start} + interval {interval}) → {wall / floor:.2f}×")
failed = 0
for path in sys.argv[5:]:
    try:
        report = json.load(open(path))
    except ValueError:
        continue
    failed += report["failed"]
    print(f"load: ok {report['ok']}, failed {report['failed']}, versions {report['versions']},"
          f" after the last deploy {report['after_mark']}"
          + (f", errors {report['errors'][:3]}" if report["errors"] else ""))
print(f"failed requests: {failed} (must be 0) {'OK' if failed == 0 else 'FAILED'}")
sys.exit(0 if failed == 0 else 1)
PY
