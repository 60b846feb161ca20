#!/usr/bin/env bash
# bench/restart.sh — time from SIGKILL of an instance until it answers HTTP 200 again, under
# bow versus a bash `while true` loop restarting the same server (bow-testapp) in the same run.
# (../shared/recipes/13-restart-latency.sh measured the loop at ~2–5 ms and Docker's
# restart=always at ~185 ms.) Goal: bow's median within 5× the loop's.
#
# bow restarts a crashed instance at once, then backs off 100 ms doubling; the delay resets
# after 10 s healthy. So the measured kills are spaced GAP_BOW=11.5 s apart (the instance is
# healthy ~0.2 s after it starts), which keeps every restart at the base case; a short
# back-to-back series afterwards shows the backoff. A restarted instance gets a new PORT, so
# the probe follows the instance (run/web.1/state.json → pid → PORT) rather than one port.
#   N_LOOP=20 N_BOW=8 GAP_BOW=11.5 bash bench/restart.sh      (about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
N_LOOP=${N_LOOP:-20}; N_BOW=${N_BOW:-8}; GAP_BOW=${GAP_BOW:-11.5}; N_B2B=${N_B2B:-4}
cargo build --release -q -p bow -p bow-testapp
BOW=$PWD/target/release/bow
APP=$PWD/target/release/bow-testapp
PROBE=$PWD/bench/restart_probe.py
WORK=$(mktemp -d /tmp/bow-bench-restart.XXXXXX)
chmod 755 "$WORK"   # services run as their own users and must reach their dir
LOOP=""
cleanup() {
  if [ -n "$LOOP" ]; then
    CHILD=$(ps -o pid= --ppid "$LOOP" 2>/dev/null || true)
    kill -TERM "$LOOP" 2>/dev/null || true
    sleep 0.2
    [ -n "$CHILD" ] && kill -TERM $CHILD 2>/dev/null || true
  fi
  (cd "$WORK" && timeout 60 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "== (a) bash while-true loop restarting bow-testapp on 127.0.0.1:$PORT"
setsid bash -c "echo \$\$ > $WORK/loop.pid; while true; do PORT=$PORT TESTAPP_QUIET=1 $APP; done" \
  >/dev/null 2>&1 </dev/null &
for _ in $(seq 1 50); do [ -s "$WORK/loop.pid" ] && break; sleep 0.1; done
LOOP=$(cat "$WORK/loop.pid")
timeout 120 python3 "$PROBE" loop "$N_LOOP" 0.2 loop "$PORT" "ps -o pid= --ppid $LOOP" | tee "$WORK/loop.out"

echo "== (b) bow: one instance of bow-testapp, kills spaced ${GAP_BOW}s (backoff at its base)"
cat > "$WORK/bow.yaml" <<EOF
project: bench-restart
services:
  web:
    command: $APP
    env: { TESTAPP_QUIET: "1" }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
EOF
(cd "$WORK" && timeout 120 "$BOW" up -d --state-dir "$WORK/state" >/dev/null)
timeout 300 python3 "$PROBE" bow "$N_BOW" "$GAP_BOW" bow "$WORK/state/run/web.1" | tee "$WORK/bow.out"

echo "-- back-to-back kills (backoff: at once, then 100, 200, 400 ms ...), for information"
timeout 60 python3 "$PROBE" bow-b2b "$N_B2B" 0.2 bow "$WORK/state/run/web.1"

python3 - "$WORK/loop.out" "$WORK/bow.out" <<'PY'
import sys
def result(path):
    line = [l for l in open(path) if l.startswith("RESULT")][-1]
    return {k: float(v) for k, v in (f.split("=") for f in line.split()[2:])}
loop, bow = result(sys.argv[1]), result(sys.argv[2])
print(f"loop: median {loop['median']:.1f} ms, p90 {loop['p90']:.1f} ms")
print(f"bow:  median {bow['median']:.1f} ms, p90 {bow['p90']:.1f} ms")
ratio = bow["median"] / loop["median"]
print(f"bow/loop: median {ratio:.1f}x, p90 {bow['p90'] / loop['p90']:.1f}x (goal: within 5x) "
      f"{'OK' if ratio <= 5 else 'MISSED'}")
PY
