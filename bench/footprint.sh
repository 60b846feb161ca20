#!/usr/bin/env bash
# bench/footprint.sh — memory of bow's supervision with 50 bow-testapp instances: the agent's
# RSS (goal: under 30 MB) and the RSS of each per-instance shim, once all are healthy.
#   INSTANCES=50 bash bench/footprint.sh      (under a minute)
set -euo pipefail
cd "$(dirname "$0")/.."
INSTANCES=${INSTANCES:-50}
cargo build --release -q -p bow -p bow-testapp
BOW=$PWD/target/release/bow
APP=$PWD/target/release/bow-testapp
WORK=$(mktemp -d /tmp/bow-bench-footprint.XXXXXX)
chmod 755 "$WORK"   # services run as their own users and must reach their dir
cleanup() {
  (cd "$WORK" && timeout 120 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cat > "$WORK/bow.yaml" <<EOF
project: bench-footprint
services:
  web:
    command: $APP
    replicas: $INSTANCES
    env: { TESTAPP_QUIET: "1" }
    health: { http: /healthz, interval: 2s, timeout: 1s, retries: 3 }
EOF
START=$(date +%s.%N)
(cd "$WORK" && timeout 300 "$BOW" up -d --state-dir "$WORK/state" >/dev/null)
echo "up -d with $INSTANCES instances: healthy after $(python3 -c "print(f'{$(date +%s.%N) - $START:.1f}')") s"
sleep 5   # a few health-check rounds, so the figure is the steady state

(cd "$WORK" && "$BOW" status --output json --state-dir "$WORK/state") > "$WORK/status.json"
python3 - "$WORK/status.json" "$WORK/state" <<'PY'
import json, os, statistics, sys
status = json.load(open(sys.argv[1]))
state_dir = sys.argv[2]
def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def pss_kib(pid):
    """Proportional set size: shared pages (the bow binary's text) split among the sharers."""
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
instances = [i for s in status["services"] for i in s["instances"]]
healthy = sum(1 for i in instances if i["health"] == "healthy")
agent = status["agent_pid"]
agent_kib = rss_kib(agent)
shims, shim_pss, apps = [], [], []
for i in instances:
    handle = json.load(open(os.path.join(state_dir, "run", i["id"], "state.json")))
    shims.append(rss_kib(handle["shim_pid"]))
    shim_pss.append(pss_kib(handle["shim_pid"]))
    apps.append(rss_kib(handle["pid"]))
print(f"instances: {len(instances)} ({healthy} healthy)")
print(f"agent (pid {agent}): VmRSS {agent_kib / 1024:.1f} MiB (goal < 30 MB) "
      f"{'OK' if agent_kib * 1024 < 30e6 else 'MISSED'}")
print(f"shim:  VmRSS median {statistics.median(shims) / 1024:.2f} MiB, max {max(shims) / 1024:.2f} MiB, "
      f"total {sum(shims) / 1024:.1f} MiB for {len(shims)} shims")
print(f"shim:  PSS median {statistics.median(shim_pss) / 1024:.2f} MiB, "
      f"total {sum(shim_pss) / 1024:.1f} MiB (shared binary pages counted once)")
print(f"testapp (for scale): VmRSS median {statistics.median(apps) / 1024:.2f} MiB")
print(f"supervision total (agent RSS + shim PSS): {(agent_kib + sum(shim_pss)) / 1024:.1f} MiB")
PY
