#!/usr/bin/env bash
# bench/sandbox.sh — what confinement costs: the same app (bow-testapp) as two services, one
# with the default sandbox and one with `sandbox: {level: off}`, in one stack. Measures, for
# each, from the shims' own logs (`started pid N in X us`): fork + confinement + exec of every
# start; and end to end: SIGKILL → answering HTTP again (bench/restart_probe.py; a run that
# was healthy restarts at once, so no backoff is involved), and `bow restart` → healthy.
# Goal (issue 23): less than 2 ms added per start. Prints medians and the difference.
#   N=12 GAP=2 BUILD=release bash bench/sandbox.sh      (about 2 minutes after the build)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-12}; GAP=${GAP:-2}; BUILD=${BUILD:-release}
if [ "$BUILD" = release ]; then
  cargo build --release -q -p bow -p bow-testapp
else
  cargo build -q -p bow -p bow-testapp
fi
BOW=$PWD/target/$BUILD/bow
APP=$PWD/target/$BUILD/bow-testapp
PROBE=$PWD/bench/restart_probe.py
WORK=$(mktemp -d /tmp/bow-bench-sandbox.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  (cd "$WORK" && timeout 60 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cat > "$WORK/bow.yaml" <<YAML
project: bench-sandbox
services:
  confined:
    command: $APP
    env: { TESTAPP_QUIET: "1" }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
  open:
    command: $APP
    env: { TESTAPP_QUIET: "1" }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
    sandbox: { level: off }
YAML
(cd "$WORK" && timeout 120 "$BOW" up -d --state-dir "$WORK/state" >/dev/null)

echo "== SIGKILL → answering again, $N kills each, ${GAP}s apart (alternating services)"
for i in $(seq 1 "$N"); do
  for service in confined open; do
    timeout 120 python3 "$PROBE" "$service" 1 0.3 bow "$WORK/state/run/$service.1" \
      | grep '^RESULT' | sed "s/^RESULT/TRIAL/" >> "$WORK/kills.out"
  done
  sleep "$GAP"
done

echo "== bow restart (stop, start, healthy), $N times each"
for i in $(seq 1 "$N"); do
  for service in confined open; do
    start=$(date +%s%N)
    (cd "$WORK" && "$BOW" restart --state-dir "$WORK/state" "$service" >/dev/null 2>&1)
    echo "RESTART $service $(( ($(date +%s%N) - start) / 1000 ))" >> "$WORK/restarts.out"
  done
done

for service in confined open; do
  grep -h "started pid" "$WORK"/state/run/"$service".*/shim.log \
    | sed -n "s/.*started pid [0-9]* in \([0-9]*\) us.*/SPAWN $service \1/p" >> "$WORK/spawn.out"
done

python3 - "$WORK" <<'PY'
import re, statistics, sys
work = sys.argv[1]
def rows(name, tag):
    out = {"confined": [], "open": []}
    for line in open(f"{work}/{name}"):
        parts = line.split()
        if parts[0] == tag:
            if tag == "TRIAL":
                out[parts[1]].append(float(re.search(r"median=([0-9.]+)", line).group(1)))
            else:
                out[parts[1]].append(float(parts[2]) / 1000.0)
    return out
print()
print(f"{'(ms, median over runs)':38} {'sandbox default':>16} {'sandbox off':>12} {'added':>8} {'ratio':>6}")
for label, name, tag in [
    ("fork + confinement + exec (shim)", "spawn.out", "SPAWN"),
    ("SIGKILL -> serving again", "kills.out", "TRIAL"),
    ("bow restart -> healthy", "restarts.out", "RESTART"),
]:
    data = rows(name, tag)
    on, off = statistics.median(data["confined"]), statistics.median(data["open"])
    print(f"{label:38} {on:16.2f} {off:12.2f} {on - off:8.2f} {on / off:6.2f}   (n={len(data['confined'])}/{len(data['open'])})")
PY
