#!/usr/bin/env bash
# bench/plan.sh — how long `bow plan` (and `bow validate`) take on a generated 500-service
# stack, end to end as a user runs them (process start, read, parse, validate, plan, print).
# Peer in the same run: `/bin/true`, the floor of starting any process. Goal: plan < 50 ms.
#   N=30 SERVICES=500 bash bench/plan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-30}; SERVICES=${SERVICES:-500}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
cargo build --release -q -p bow
BOW=$PWD/target/release/bow

python3 - "$SERVICES" > "$WORK/bow.yaml" <<'PY'
import sys
n = int(sys.argv[1])
print("project: big\nvars:\n  domain: big.localhost\nenvironments:\n  production:\n    vars: { domain: big.example.com }")
print("    services:")
for i in range(0, n, 10):
    print(f"      svc-{i}: {{ replicas: 3 }}")
print("services:")
for i in range(n):
    deps = "[]" if i == 0 else f"[svc-{i-1}]" if i < 3 else f"[svc-{i-1}, svc-{i//2}]"
    print(f"""  svc-{i}:
    command: python3 -m http.server --bind 127.0.0.1 ${{PORT}}
    dir: ./svc-{i}
    port: {10000 + i}
    replicas: {1 + i % 3}
    routes: ["svc-{i}.${{domain}}", "${{domain}}/svc-{i}"]
    env: {{ SERVICE_INDEX: "{i}", MODE: production }}
    health: {{ http: /healthz, interval: 2s, timeout: 1s, retries: 3, start_period: 5s }}
    depends_on: {deps}
    resources: {{ memory: 256M, cpu: 0.5 }}
    deploy: {{ strategy: rolling, timeout: 1m }}""")
PY

time_ms() {  # median wall time in ms of N runs of "$@" (exit codes 0 and 2 are both fine)
  python3 - "$N" "$@" <<'PY'
import subprocess, sys, time
n, cmd = int(sys.argv[1]), sys.argv[2:]
runs = []
for _ in range(n):
    t = time.perf_counter()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    runs.append((time.perf_counter() - t) * 1000)
    if rc not in (0, 2):
        sys.exit(f"{cmd} exited {rc}")
runs.sort()
print(f"{runs[len(runs)//2]:.2f}")
PY
}

LINES=$(wc -l < "$WORK/bow.yaml")
FLOOR=$(time_ms /bin/true)
PLAN=$(time_ms "$BOW" plan -f "$WORK/bow.yaml" --state-dir "$WORK/state")
PLAN_PROD=$(time_ms "$BOW" plan -f "$WORK/bow.yaml" -e production --state-dir "$WORK/state")
VALIDATE=$(time_ms "$BOW" validate -f "$WORK/bow.yaml")
echo "stack: $SERVICES services, $LINES lines; median of $N runs each"
echo "/bin/true (process floor)        ${FLOOR} ms"
echo "bow plan (development)           ${PLAN} ms   ($(python3 -c "print(f'{$PLAN/$FLOOR:.1f}')")x the floor)"
echo "bow plan -e production           ${PLAN_PROD} ms"
echo "bow validate (all environments)  ${VALIDATE} ms"
python3 -c "import sys; sys.exit(0 if $PLAN < 50 else 1)" && echo "goal (< 50 ms): met" || echo "goal (< 50 ms): NOT met"
