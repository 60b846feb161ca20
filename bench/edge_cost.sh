#!/usr/bin/env bash
# bench/edge_cost.sh — contention-proof cost per request of bow's edge against nginx, for
# iterating on the edge's hot path on a busy machine (bench/edge.sh is the real table).
#
# A bare edge (crates/bow-edge/examples/edge_load.rs: the agent's runtime shape and access
# log, no supervisor) and nginx (one worker, same TLS key type, same forwarding headers) both
# proxy HTTPS to one bow-testapp; wrk sends requests over $CONNS keep-alive
# connections for $DUR. Per target it reports CPU ns per request from the
# scheduler's own accounting (/proc/<pid>/task/*/schedstat, ns resolution, all threads) and,
# with CALLGRIND=1, instructions per request under valgrind (slow). The proxy
# runs on CPU $PROXY_CPU, wrk and the backend on CPU $WRK_CPU; loopback ports 19700-19799.
#
#   bash bench/edge_cost.sh                       DUR=5s CONNS="64 256" TARGETS="bow nginx"
#   CALLGRIND=1 DUR=10s CONNS=64 bash bench/edge_cost.sh
#   PERF=1 ...: also a flat perf profile per run in $RESULTS/perf.<target>.<conns>.data
#   STRACE=1 ...: syscall counts per run in $RESULTS/strace.<target>.<conns>.txt
#   STAT=1 ...: syscalls, context switches and wake-ups per request (perf tracepoints)
#   EDGE_BIN=/path/to/edge_load bash bench/edge_cost.sh   (compare another build)
#   IDLE=35 ...: each run starts after the app closed the proxy's idle upstream connections
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${DUR:-5s}; CONNS=${CONNS:-"64 256"}; TARGETS=${TARGETS:-"bow nginx"}
WRK_CPU=${WRK_CPU:-0}; PROXY_CPU=${PROXY_CPU:-1}; CALLGRIND=${CALLGRIND:-0}; REPS=${REPS:-1}
RESULTS=${RESULTS:-/tmp/bow-edge-cost}; mkdir -p "$RESULTS"
HOST=bench.localhost; BE=19701; BOWP=19743; NGXP=19744
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${EDGE_BIN:-}" ]; then
  cargo build --release -q -p bow-edge --example edge_load || die "cargo build edge_load"
fi
cargo build --release -q -p bow-testapp || die "cargo build bow-testapp"
EDGE=${EDGE_BIN:-$TARGET_DIR/release/examples/edge_load}
APP=$TARGET_DIR/release/bow-testapp

WORK=$(mktemp -d /tmp/bow-edge-cost.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  [ "${KEEP:-0}" = 1 ] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
{ cat /etc/hosts; echo "127.0.0.1 $HOST"; } > "$WORK/hosts"
in_ns() { unshare -m sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' sh "$WORK/hosts" "$@"; }

PORT=$BE TESTAPP_QUIET=1 taskset -c "$WRK_CPU" "$APP" > "$WORK/app.out" 2>&1 &
PIDS+=($!)
VG=()
if [ "$CALLGRIND" = 1 ]; then
  VG=(valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" --instr-atstart=no)
fi
mkdir -p "$WORK/edge"
mkfifo "$WORK/edge.stdin"
EDGE_DIR=$WORK/edge EDGE_PORT=$BOWP BACKEND_PORT=$BE taskset -c "$PROXY_CPU" "${VG[@]}" "$EDGE" \
  < "$WORK/edge.stdin" > "$WORK/edge.out" 2>&1 &
EDGE_PID=$!; PIDS+=($EDGE_PID)
exec 9> "$WORK/edge.stdin"   # the edge runs until this closes

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -days 3 \
  -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" 2>/dev/null || die "openssl req"
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx/nginx.conf" <<NGX
worker_processes 1;
$([ "$CALLGRIND" = 1 ] && echo "master_process off;")
worker_rlimit_nofile 16384;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_timeout 65; keepalive_requests 100000000;
  client_body_temp_path $WORK/nginx/b; proxy_temp_path $WORK/nginx/p; fastcgi_temp_path $WORK/nginx/f;
  uwsgi_temp_path $WORK/nginx/u; scgi_temp_path $WORK/nginx/s;
  ssl_protocols TLSv1.2 TLSv1.3;
  upstream be { server 127.0.0.1:$BE; keepalive 256; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$NGXP ssl http2;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host; }
  }
}
NGX
taskset -c "$PROXY_CPU" "${VG[@]}" nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" \
  -c "$WORK/nginx/nginx.conf" -g 'daemon off;' > "$WORK/nginx.out" 2>&1 &
NGX_PID=$!; PIDS+=($NGX_PID)

wait_ok() { # url
  for _ in $(seq 1 300); do
    [ "$(in_ns curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "$1")" = 200 ] && return 0
    sleep 0.2
  done
  die "$1 not serving"
}
url_of() { case $1 in bow) echo "https://$HOST:$BOWP/";; nginx) echo "https://$HOST:$NGXP/";; esac; }
pid_of() { case $1 in bow) echo "$EDGE_PID";; nginx) echo "$NGX_PID";; esac; }
for t in $TARGETS; do wait_ok "$(url_of "$t")"; done

# user and system ticks of a process and its children
ticks() {
  local p=$1 c u=0 k=0 f
  for c in $p $(cat /proc/"$p"/task/*/children 2>/dev/null); do
    f=$(sed 's/^.*) //' /proc/"$c"/stat); set -- $f; u=$((u + ${12})); k=$((k + ${13}))
  done
  echo "$u $k"
}
# ns of CPU of a process and its children (nginx workers), all threads
cpu_ns() {
  local p=$1 s=0 c t
  for c in $p $(cat /proc/"$p"/task/*/children 2>/dev/null); do
    for t in /proc/"$c"/task/*/schedstat; do s=$((s + $(cut -d' ' -f1 "$t" 2>/dev/null || echo 0))); done
  done
  echo $s
}
callgrind() { [ "$CALLGRIND" = 1 ] && callgrind_control "$@" "$1" >/dev/null 2>&1; }
printf '%-6s %5s %9s %9s %9s %9s %8s %6s %12s\n' target conns requests rps p50_ms p99_ms ns/req user% instr/req
for rep in $(seq 1 "$REPS"); do
for c in $CONNS; do
  for t in $TARGETS; do
    u=$(url_of "$t"); p=$(pid_of "$t")
    in_ns taskset -c "$WRK_CPU" wrk -t1 -c"$c" -d2s "$u" >/dev/null 2>&1   # connect + warm
    # IDLE=N: wait N s first, past the app's keep-alive timeout (bow-testapp: 30 s), so that
    # the run starts with every upstream connection to be opened anew.
    [ "${IDLE:-0}" -gt 0 ] && sleep "$IDLE"
    if [ "$CALLGRIND" = 1 ]; then callgrind_control -i on "$p" >/dev/null; callgrind_control -z "$p" >/dev/null; fi
    n0=$(cpu_ns "$p"); t0=$(ticks "$p")
    [ "${STRACE:-0}" = 1 ] && { strace -c -f -o "$RESULTS/strace.$t.$c.txt" -p "$(ls /proc/"$p"/task | paste -sd, -),$(cat /proc/"$p"/task/*/children | tr ' ' ,)" 2>/dev/null & STRACE_PID=$!; sleep 0.5; }
    [ "${STAT:-0}" = 1 ] && { perf stat -x, -o "$WORK/stat.txt" -e raw_syscalls:sys_enter,sched:sched_switch,sched:sched_wakeup,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto \
      -p "$p$(for ch in $(cat /proc/"$p"/task/*/children); do printf ',%s' "$ch"; done)" >/dev/null 2>&1 & STAT_PID=$!; sleep 0.2; }
    [ "${PERF:-0}" = 1 ] && { perf record -q ${PERF_ARGS:-} -e cpu-clock -F 4999 -p "$p$(for ch in $(cat /proc/"$p"/task/*/children); do printf ",%s" "$ch"; done)" -o "$RESULTS/perf.$t.$c.data" >/dev/null 2>&1 & PERF_PID=$!; }
    in_ns taskset -c "$WRK_CPU" wrk -t1 -c"$c" -d"$DUR" --latency "$u" > "$WORK/wrk.out" 2>&1
    [ "${PERF:-0}" = 1 ] && { kill -INT "$PERF_PID"; wait "$PERF_PID"; }
    [ "${STRACE:-0}" = 1 ] && { kill -INT "$STRACE_PID"; wait "$STRACE_PID"; }
    [ "${STAT:-0}" = 1 ] && { kill -INT "$STAT_PID"; wait "$STAT_PID"; }
    n1=$(cpu_ns "$p"); t1=$(ticks "$p")
    instr=-
    if [ "$CALLGRIND" = 1 ]; then
      rm -f "$WORK"/cg.*; callgrind_control -d "$p" >/dev/null; callgrind_control -i off "$p" >/dev/null
      sleep 1
      ir=$(cat "$WORK"/cg.* 2>/dev/null | awk '/^summary:/{s+=$2} END{print s+0}')
      reqs=$(awk '/requests in/{print $1}' "$WORK/wrk.out")
      instr=$(awk -v i="$ir" -v n="$reqs" 'BEGIN{printf "%.0f", i/n}')
      [ "${KEEP:-0}" = 1 ] && mkdir -p "$WORK/keep" && cp "$WORK"/cg.* "$WORK/keep/" 2>/dev/null && for f in "$WORK"/keep/cg.*; do mv "$f" "$f.$t.$c"; done
    fi
    reqs=$(awk '/requests in/{print $1}' "$WORK/wrk.out")
    rps=$(awk '/^Requests\/sec/{print $2}' "$WORK/wrk.out")
    ms_at() { awk -v q="$1" '$1==q{v=$2; n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.2f", n}' "$WORK/wrk.out"; }
    p50=$(ms_at 50%); p99=$(ms_at 99%)
    [ "${STAT:-0}" = 1 ] && awk -F, -v n="$reqs" -v t="$t" -v c="$c" '$3 ~ /:/ { split($3, e, ":"); printf "  %s c=%s %s/req %.2f\n", t, c, e[2], $1/n }' "$WORK/stat.txt" >&2
    grep -q 'Non-2xx' "$WORK/wrk.out" && log "non-2xx answers from $t"
    usr=$(echo "$t0 $t1" | awk '{u=$3-$1; k=$4-$2; printf "%.0f", (u+k>0) ? 100*u/(u+k) : 0}')
    printf '%-6s %5s %9s %9s %9s %9s %8.0f %6s %12s\n' "$t" "$c" "$reqs" "${rps%.*}" "$p50" "$p99" \
      "$(awk -v a="$n0" -v b="$n1" -v n="$reqs" 'BEGIN{print (b-a)/n}')" "$usr" "$instr"
  done
done
done
