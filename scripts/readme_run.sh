#!/usr/bin/env bash
# scripts/readme_run.sh — runs the README's first set-up command exactly as written (the line
# that starts with `cargo run` under "Set-up"), as a newcomer would on a fresh clone: it must
# build, bring the example up, serve it through the edge (https, the local CA), and stop every
# instance on Ctrl-C (SIGINT to its process group, as a terminal sends it). CI runs it after the
# test suite (which installed python3 and the rest). Exit 0 when all of that held.
set -euo pipefail
cd "$(dirname "$0")/.."

line=$(awk '/^## Set-up/ {inside = 1} inside && /^cargo run/ {print; exit}' README.md)
command=${line%%#*}
if [ -z "$command" ]; then
  echo "readme_run: no 'cargo run' line under the README's Set-up heading" >&2
  exit 1
fi
echo "readme_run: $command"

log=$(mktemp)
# Its own session and process group, so SIGINT reaches it the way Ctrl-C would. No stdin.
setsid bash -c "exec $command" </dev/null >"$log" 2>&1 &
leader=$!
cleanup() {
  if kill -0 "$leader" 2>/dev/null; then kill -KILL -- "-$leader" 2>/dev/null || true; fi
  rm -f "$log"
}
trap cleanup EXIT

fail() {
  echo "readme_run: $*" >&2
  echo "--- output of the command (last 40 lines)" >&2
  tail -n 40 "$log" >&2
  exit 1
}

# The build takes minutes on a fresh 2-core machine (seconds after scripts/test.sh built the
# same debug binary); the start itself seconds.
bow=target/debug/bow
file=examples/hello/bow.yaml
deadline=$((SECONDS + 1200))
until [ -x "$bow" ] && "$bow" status -f "$file" --output json 2>/dev/null \
    | python3 -c 'import json,sys; s=json.load(sys.stdin); i=[x for v in s["services"] for x in v["instances"]]; sys.exit(0 if i and all(x["health"]=="healthy" for x in i) else 1)' 2>/dev/null; do
  kill -0 "$leader" 2>/dev/null || fail "the command exited before the example was healthy"
  [ $SECONDS -lt $deadline ] || fail "the example was not healthy within 20 minutes"
  sleep 1
done
pids=$("$bow" status -f "$file" --output json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(" ".join(str(x["pid"]) for v in s["services"] for x in v["instances"] if x.get("pid")))')
[ -n "$pids" ] || fail "bow status shows no instance pids"
echo "readme_run: every instance is healthy (pids $pids)"

# Through the edge, as the README shows: https://hello.localhost:<port>/ with the local CA.
ca=$("$bow" trust -f "$file" 2>/dev/null)
port=$([ "$(id -u)" -eq 0 ] && echo 443 || echo 8443)
body=$(curl -sS --max-time 10 --cacert "$ca" --resolve "hello.localhost:$port:127.0.0.1" \
  "https://hello.localhost:$port/") || fail "the edge did not answer https://hello.localhost:$port/"
case "$body" in
  *"hello from the api"*) echo "readme_run: the edge serves the example: $body" ;;
  *) fail "unexpected answer from the edge: $body" ;;
esac

kill -INT -- "-$leader"
for _ in $(seq 1 300); do
  kill -0 "$leader" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$leader" 2>/dev/null && fail "the command did not exit within 30 s of Ctrl-C"
wait "$leader" && code=0 || code=$?
# Ctrl-C is the documented way to stop it: a clean stop exits 0 (or 130, "ended by SIGINT").
case "$code" in 0|130) ;; *) fail "the command exited $code after Ctrl-C" ;; esac
if "$bow" status -f "$file" >/dev/null 2>&1; then
  fail "an agent still answers after Ctrl-C"
fi
for pid in $pids; do
  kill -0 "$pid" 2>/dev/null && fail "instance pid $pid still runs after Ctrl-C"
done
echo "readme_run: Ctrl-C stopped everything (exit $code)"
