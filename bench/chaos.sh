#!/usr/bin/env bash
# bench/chaos.sh — serving while instances keep dying: 3 replicas of bow-testapp behind bow's
# edge under constant HTTPS load (wrk, keep-alive, 8 connections), with no drill, then with
# `bow chaos kill` every 500 ms and every 100 ms, each for DURATION. Prints requests served,
# failed (non-2xx and socket errors) and wrk's p99 latency, and the p99 ratio to the quiet run.
# Bounded: three runs of DURATION on loopback.
#   DURATION=60 bash bench/chaos.sh        (about 3.5 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null
cargo build --release -q -p bow -p bow-testapp
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BOW=$TARGET/release/bow
APP=$TARGET/release/bow-testapp
WORK=$(mktemp -d /tmp/bow-bench-chaos.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  (cd "$WORK" && timeout 60 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP=$(free_port); HTTPS=$(free_port)
HOST=chaos.bench.localhost
export BOW_CODE_VERSION=bench
cat > "$WORK/bow.yaml" <<YAML
project: bench-chaos
chaos: allow
edge: { http_port: $HTTP, https_port: $HTTPS }
services:
  web:
    command: $APP
    replicas: 3
    routes: ["$HOST"]
    env: { TESTAPP_QUIET: "1" }
    health: { http: /healthz, interval: 100ms, timeout: 300ms, retries: 2 }
    stop_timeout: 1s
YAML
B() { (cd "$WORK" && "$BOW" "$@" --state-dir "$WORK/state"); }
B up -d >/dev/null

load() {  # one wrk run of DURATION seconds; prints "requests failed p99_ms"
  wrk -t1 -c8 -d"${DURATION}s" --latency -H "Host: $HOST" "https://127.0.0.1:$HTTPS/" > "$WORK/wrk.out" 2>&1
  python3 - "$WORK/wrk.out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
requests = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
print(requests, non2xx + errors, float(p99.group(1)) * scale)
PY
}

echo "== quiet: no drill, ${DURATION}s"
QUIET=$(load)
RESULTS="quiet $QUIET"
for EVERY in 500ms 100ms; do
  echo "== bow chaos kill web --every $EVERY --for ${DURATION}s"
  B chaos kill web --every "$EVERY" --for "${DURATION}s" --seed 42 > "$WORK/drill.out" 2>&1 &
  DRILL=$!
  LINE=$(load)
  wait "$DRILL" || echo "(the drill says the system did not come back; see below)"
  grep -E "^(drill|restarts|healthy again|orphans|not back)" "$WORK/drill.out" | sed 's/^/   /'
  RESULTS="$RESULTS
kill-every-$EVERY $LINE"
done

python3 - <<PY
rows = [line.split() for line in """$RESULTS""".strip().splitlines()]
quiet_p99 = float(rows[0][3])
print(f"{'run':<20} {'served':>9} {'failed':>7} {'p99 ms':>8} {'p99 vs quiet':>13}")
for name, served, failed, p99 in rows:
    print(f"{name:<20} {int(served):>9} {int(failed):>7} {float(p99):>8.2f} {float(p99) / quiet_p99:>12.2f}x")
PY
