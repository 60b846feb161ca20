#!/usr/bin/env bash
# bench/edge.sh — bow's built-in edge against nginx and HAProxy as reverse proxies to the SAME
# backend, in one run, pinned as in ../shared/recipes/12-proxy-baseline.sh: each proxy alone on
# CPU $PROXY_CPU (one worker: nginx worker_processes 1, HAProxy nbthread 1, bow's agent started
# under taskset so its tokio runtime sees one CPU), wrk and the backend on CPU $WRK_CPU.
#
# Backend (BACKEND=nginx, the default, as in the recipe): two instances of one nginx config
# (one worker each, `return 200` of a 100-byte body, no access log) run by bow as service `web`
# with `replicas: 2` and `routes: ["bench.localhost"]`; nginx and HAProxy balance over the same
# two instance ports (from `bow status --output json`), as bow does. BACKEND=testapp: one
# instance of bow-testapp instead (a thread per connection; GET / answers a ~80-byte JSON). bow's http port only redirects, so bow is measured over
# HTTPS; nginx and HAProxy over HTTPS and, for reference, plain HTTP; `direct` is wrk straight
# to the backend (the ceiling). Every proxy terminates TLS with an ECDSA P-256 certificate
# (bow's local CA issues P-256 leaves; nginx/HAProxy get a self-signed P-256 one).
# wrk resolves bench.localhost through a private mount namespace whose /etc/hosts maps it to
# 127.0.0.1, so SNI and Host are bench.localhost for every target; the real /etc/hosts is untouched.
#
# Per (target, proto, conns), medians over REPS runs of `wrk -t1 -d$DUR --latency`: rps, p50,
# p99, errors, busy % of both cores, foreign % (CPU of processes outside the bench, in % of one
# core; > ~5 means the run was disturbed) and the proxy's CPU µs per request: utime+stime
# deltas from /proc/<pid>/stat over the run / requests — nginx master+worker, HAProxy's process,
# bow's agent and edge processes (all their threads); `direct`: one backend instance.
# Goal (issue 4): bow ≤ 0.9× nginx CPU per request and p99 no worse than nginx (HTTPS).
# Then (STEADY=1) the same HTTPS targets under h2load --h1 with a warm-up: p50/p99 of warm
# connections only (wrk's p99 at 256 connections is mostly wrk's own TLS start; see below).
# Then testssl.sh against bow's edge port; summary kept in bench/results/testssl-edge.txt.
#
#   bash bench/edge.sh                        (DUR=10s REPS=3 CONNS="64 256": about 6 minutes)
#   DUR=3s REPS=1 bash bench/edge.sh          (smoke: under 3 minutes)
# Every measured run follows a WARMUP run of the same target and connection count.
# Knobs: BACKEND=nginx|testapp STEADY=0|1 DUR REPS CONNS WARMUP THREADS WRK_CPU PROXY_CPU NICE TARGETS TESTSSL=0|1
#        TESTSSL_TIMEOUT (s) PROXY_ACCESS_LOG=1 (nginx logs every request, buffered, as bow does) KEEP=1
#        BOW_BIN (another bow binary to measure)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${DUR:-10s}; REPS=${REPS:-3}; CONNS=${CONNS:-"64 256"}; WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}; WRK_CPU=${WRK_CPU:-0}; PROXY_CPU=${PROXY_CPU:-1}; NICE=${NICE:--20}
TARGETS=${TARGETS:-"direct bow nginx haproxy"}; BACKEND=${BACKEND:-nginx}
STEADY=${STEADY:-1}; TESTSSL=${TESTSSL:-1}; TESTSSL_TIMEOUT=${TESTSSL_TIMEOUT:-150}; PROXY_ACCESS_LOG=${PROXY_ACCESS_LOG:-0}
HOST=bench.localhost
# loopback ports (bow's edge binds 0.0.0.0)
BOW_HTTP=19080; BOW_HTTPS=19443; NGX_HTTP=19180; NGX_HTTPS=19543; HAP_HTTP=19280; HAP_HTTPS=19643

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# ---------------------------------------------------------------- install (daemons kept stopped)
need=()
command -v nginx   >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk     >/dev/null || need+=(wrk)
command -v h2load  >/dev/null || need+=(nghttp2-client)
command -v testssl >/dev/null || need+=(testssl.sh)
command -v curl    >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  log "installing: ${need[*]}"
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep maintainer scripts from starting daemons
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
    || die "apt-get install ${need[*]}"
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  for pf in /run/nginx.pid /run/haproxy.pid; do   # in case one started anyway: by PID
    [ -s "$pf" ] && kill -TERM "$(cat "$pf")" 2>/dev/null
  done
fi

cargo build --release -q -p bow -p bow-testapp || die "cargo build"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}   # where cargo just built them
BOW=${BOW_BIN:-$TARGET_DIR/release/bow}   # BOW_BIN: compare another build of bow
APP=$TARGET_DIR/release/bow-testapp
for p in $BOW_HTTP $BOW_HTTPS $NGX_HTTP $NGX_HTTPS $HAP_HTTP $HAP_HTTPS; do
  (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is already in use"
done

WORK=$(mktemp -d /tmp/bow-bench-edge.XXXXXX)
chmod 755 "$WORK"   # services run as their own users and must reach their dir
mkdir -p "$WORK"/{tls,nginx,haproxy,raw}
PIDS=()
declare -A PID_OF
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  (cd "$WORK" && timeout 60 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# wrk (and curl) see bench.localhost -> 127.0.0.1 through a private /etc/hosts
{ cat /etc/hosts; echo "127.0.0.1 $HOST"; } > "$WORK/hosts"
in_ns() { unshare -m sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' sh "$WORK/hosts" "$@"; }
in_ns getent hosts "$HOST" >/dev/null || die "private /etc/hosts (unshare -m) does not resolve $HOST"

# ---------------------------------------------------------------- bow: backend + edge
case "$BACKEND" in
  nginx)
    # Each instance writes its own config for the PORT bow gave it and runs nginx in the
    # foreground as the service's user: its files live in a per-port dir under $WORK/backend.
    mkdir -p "$WORK/backend"; chmod 1777 "$WORK/backend"
    cat > "$WORK/backend/run.sh" <<'EOF'
#!/bin/sh
set -e
port=$1; d=$(dirname "$0")/$port
mkdir -p "$d"
body=$(printf 'baseline-backend-ok-%080d' "$port")
cat > "$d/nginx.conf" <<CONF
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  default_type text/plain;
  keepalive_timeout 65;
  keepalive_requests 100000000;
  client_body_temp_path $d/tmp_body;
  proxy_temp_path $d/tmp_proxy;
  fastcgi_temp_path $d/tmp_fcgi;
  uwsgi_temp_path $d/tmp_uwsgi;
  scgi_temp_path $d/tmp_scgi;
  server { listen 127.0.0.1:$port; location / { return 200 "$body"; } }
}
CONF
exec nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -g 'daemon off;'
EOF
    chmod 755 "$WORK/backend/run.sh"
    SERVICE="command: /bin/sh $WORK/backend/run.sh \${PORT}
    replicas: 2
    health: { http: / }";;
  testapp)
    SERVICE="command: $APP
    env: { TESTAPP_QUIET: \"1\" }
    replicas: 1";;
  *) die "BACKEND is nginx or testapp, not $BACKEND";;
esac
cat > "$WORK/bow.yaml" <<EOF
project: bench-edge
edge: { http_port: $BOW_HTTP, https_port: $BOW_HTTPS }
services:
  web:
    $SERVICE
    routes: ["$HOST"]
EOF
# Started on the proxy core: the agent (and its tokio runtime) sees one CPU. The backend
# instances are moved to the wrk core below.
log "bow up -d (agent on cpu $PROXY_CPU, backend $BACKEND)"
(cd "$WORK" && timeout 120 nice -n "$NICE" taskset -c "$PROXY_CPU" "$BOW" up -d --state-dir "$WORK/state" \
  > "$WORK/up.out" 2>&1) || { cat "$WORK/up.out" >&2; die "bow up -d"; }
"$BOW" status --output json --state-dir "$WORK/state" > "$WORK/status.json" || die "bow status"
# the agent's pid, the edge process's, then "pid:port" of each instance
read -r AGENT EDGE INSTANCES < <(python3 - "$WORK/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
web = [x for x in s["services"] if x["name"] == "web"][0]
edge = s["edge"]["process"].split()[1]
print(s["agent_pid"], edge, " ".join(f"{i['pid']}:{i['port']}" for i in web["instances"]))
PY
) || die "cannot read agent pid / instance ports from bow status"
BPIDS=(); BPORTS=()
for i in $INSTANCES; do BPIDS+=("${i%%:*}"); BPORTS+=("${i##*:}"); done
BPID=${BPIDS[0]}; BPORT=${BPORTS[0]}
log "agent pid $AGENT ($(ls /proc/$AGENT/task | wc -l) threads), edge process $EDGE ($(ls /proc/$EDGE/task | wc -l) threads), backend instances (pid:port) $INSTANCES"
taskset -a -p -c "$PROXY_CPU" "$AGENT" >/dev/null || die "pin agent"
taskset -a -p -c "$PROXY_CPU" "$EDGE" >/dev/null || die "pin the edge process"
descendants() { # pid and all its descendants (an instance's shell, nginx master and worker)
  local c; echo "$1"; for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do descendants "$c"; done
}
BACKEND_PIDS=(); SHIMS=()
for p in "${BPIDS[@]}"; do
  for q in $(descendants "$p"); do
    BACKEND_PIDS+=("$q"); taskset -a -p -c "$WRK_CPU" "$q" >/dev/null || die "pin backend $q"
  done
  shim=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null)
  if [ -n "$shim" ] && [ "$shim" != 1 ] && [ "$shim" != "$AGENT" ]; then
    SHIMS+=("$shim"); taskset -a -p -c "$WRK_CPU" "$shim" >/dev/null 2>&1
  fi
done
BOW_TRUST=$("$BOW" trust --state-dir "$WORK/state" 2>&1) || log "bow trust failed: $BOW_TRUST"
CA=$(echo "$BOW_TRUST" | grep -o "$WORK/state/ca/[^ '\"]*\.pem" | head -1)
[ -n "$CA" ] && [ -s "$CA" ] || die "no CA certificate path in \`bow trust\` output: $BOW_TRUST"
log "bow trust: CA at $CA"

# ---------------------------------------------------------------- nginx + HAProxy to the same instance
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" -days 30 \
  -subj "/CN=$HOST" -addext "subjectAltName=DNS:$HOST" 2>/dev/null || die "openssl req"
cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" > "$WORK/tls/combined.pem"
N=$WORK/nginx
if [ "$PROXY_ACCESS_LOG" = 1 ]; then NGX_LOG="access_log $N/access.log combined buffer=64k flush=1s;"; else NGX_LOG="access_log off;"; fi
# Forwarding headers as bow's edge sends them (X-Forwarded-For/-Proto/-Host).
NGX_LOC="proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme; proxy_set_header X-Forwarded-Host \$host;"
cat > "$N/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 16384;
pid $N/nginx.pid;
error_log $N/error.log warn;
events { worker_connections 8192; }
http {
  $NGX_LOG
  default_type text/plain;
  keepalive_timeout 65;
  keepalive_requests 100000000;
  client_body_temp_path $N/tmp_body;
  proxy_temp_path $N/tmp_proxy;
  fastcgi_temp_path $N/tmp_fcgi;
  uwsgi_temp_path $N/tmp_uwsgi;
  scgi_temp_path $N/tmp_scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
  upstream be { $(for p in "${BPORTS[@]}"; do printf 'server 127.0.0.1:%s; ' "$p"; done)keepalive 256; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$NGX_HTTP; location / { $NGX_LOC } }
  server {
    listen 127.0.0.1:$NGX_HTTPS ssl http2;
    ssl_certificate $WORK/tls/cert.pem; ssl_certificate_key $WORK/tls/key.pem;
    location / { $NGX_LOC }
  }
}
EOF
cat > "$WORK/haproxy/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-keep-alive
  option forwardfor
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 65s
frontend fe_http
  bind 127.0.0.1:$HAP_HTTP
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend be
frontend fe_https
  bind 127.0.0.1:$HAP_HTTPS ssl crt $WORK/tls/combined.pem alpn h2,http/1.1
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend be
backend be
  balance roundrobin
  http-reuse safe
$(n=0; for p in "${BPORTS[@]}"; do n=$((n+1)); echo "  server s$n 127.0.0.1:$p"; done)
EOF
start() { # name cmd...
  local name=$1; shift
  nice -n "$NICE" taskset -c "$PROXY_CPU" "$@" > "$WORK/$name.out" 2>&1 &
  PIDS+=($!); PID_OF[$name]=$!
  log "started $name pid $! on cpu $PROXY_CPU"
}
start nginx nginx -p "$N" -e "$N/error.log" -c "$N/nginx.conf" -g 'daemon off;'
start haproxy haproxy -db -f "$WORK/haproxy/haproxy.cfg"
PID_OF[bow]="$AGENT $EDGE"; PID_OF[direct]=$BPID

url() { # target proto
  case "$1:$2" in
    direct:http) echo "http://$HOST:$BPORT/";;
    bow:https) echo "https://$HOST:$BOW_HTTPS/";;
    nginx:http) echo "http://$HOST:$NGX_HTTP/";;    nginx:https) echo "https://$HOST:$NGX_HTTPS/";;
    haproxy:http) echo "http://$HOST:$HAP_HTTP/";;  haproxy:https) echo "https://$HOST:$HAP_HTTPS/";;
  esac
}
protos() { case "$1" in direct) echo http;; bow) echo https;; *) echo "http https";; esac; }
ccurl() { in_ns curl -sS --max-time 2 --cacert "$CA" "$@"; }
serves() { # body: whether it came from one of bow's instances of web
  local p
  case "$BACKEND" in
    testapp) case "$1" in *'"instance":"web.1"'*"\"pid\":$BPID"*) return 0;; esac;;
    nginx) for p in "${BPORTS[@]}"; do [ "$1" = "$(printf 'baseline-backend-ok-%080d' "$p")" ] && return 0; done;;
  esac
  return 1
}
for t in $TARGETS; do for p in $(protos "$t"); do
  u=$(url "$t" "$p"); got=""
  for _ in $(seq 1 100); do
    if [ "$t" = bow ]; then got=$(ccurl "$u" 2>/dev/null); else got=$(ccurl -k "$u" 2>/dev/null); fi
    serves "$got" && break; sleep 0.1
  done
  serves "$got" || {
    [ "$t" = bow ] && { ccurl -v "$u" 2>&1 | tail -20 >&2; tail -20 "$WORK/state/agent.log" >&2 2>/dev/null; }
    die "$t/$p at $u does not serve an instance of web ($INSTANCES): '$got'"; }
done; done
log "all targets serve the instances of web ($INSTANCES): $got"
if [[ " $TARGETS " == *" bow "* ]]; then   # redirect and HSTS, for the record
  log "bow http :$BOW_HTTP -> $(in_ns curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "http://$HOST:$BOW_HTTP/a?b=1" 2>&1)"
  log "bow https headers: $(ccurl -sSI "$(url bow https)" 2>&1 | tr -d '\r' | grep -iE '^(HTTP|strict-transport|server)' | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- measure
to_ms() { # "412.00us" | "1.20ms" | "1.02s" -> ms
  awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'
}
HZ=$(getconf CLK_TCK)
stat_ticks() { # utime+stime (all threads) of the given pids; missing pids count 0
  local p s=0 l a
  for p in "$@"; do
    l=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    read -ra a <<< "${l##*) }"; s=$((s + a[11] + a[12]))
  done
  echo "$s"
}
proxy_ticks() { # target
  case "$1" in
    bow) stat_ticks ${PID_OF[$1]};;   # the agent and the edge process
    *) stat_ticks $(descendants "${PID_OF[$1]}");;   # nginx master + worker; an instance's tree
  esac
}
bench_pids() { # every process of the bench, for the foreign-CPU estimate
  echo "$AGENT" "$EDGE" "${BACKEND_PIDS[@]}" "${SHIMS[@]}"; for t in nginx haproxy; do descendants "${PID_OF[$t]}"; done
}
tot_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
cpu_busy() { awk '/^cpu[0-9]/{ b=$2+$3+$4+$7+$8; i=$5+$6; print $1, b, i }' /proc/stat; }
wrk_run() { # conns duration url -> wrk output on stdout
  nice -n "$NICE" taskset -c "$WRK_CPU" unshare -m sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' \
    sh "$WORK/hosts" wrk -t"$THREADS" -c"$1" -d"$2" --latency "$3"
}

log "warm-up $WARMUP per endpoint"
for t in $TARGETS; do for p in $(protos "$t"); do wrk_run 64 "$WARMUP" "$(url "$t" "$p")" >/dev/null 2>&1; done; done

RES="$WORK/results.tsv"
for rep in $(seq 1 "$REPS"); do
  for c in $CONNS; do
    for p in http https; do
      for t in $TARGETS; do
        [[ " $(protos "$t") " == *" $p "* ]] || continue
        f="$WORK/raw/${t}_${p}_c${c}_r${rep}.txt"
        # Each proxy starts its run with warm upstream connections: the app closes idle ones
        # after 30 s, and a target whose pool went cold meanwhile (bow has no http run to keep
        # it warm) would be measured opening them anew while the others were not.
        wrk_run "$c" "$WARMUP" "$(url "$t" "$p")" >/dev/null 2>&1
        b0=$(cpu_busy); tb0=$(tot_busy); mt0=$(stat_ticks $(bench_pids)); pt0=$(proxy_ticks "$t"); w0=$(date +%s.%N)
        TIMEFORMAT='%3U %3S'
        { time wrk_run "$c" "$DUR" "$(url "$t" "$p")" > "$f" 2>&1; } 2> "$f.time"
        b1=$(cpu_busy); tb1=$(tot_busy); mt1=$(stat_ticks $(bench_pids)); pt1=$(proxy_ticks "$t"); w1=$(date +%s.%N)
        nreq=$(awk '/requests in/{print $1}' "$f")
        us_req=$(awk -v d="$((pt1-pt0))" -v hz="$HZ" -v n="${nreq:-0}" 'BEGIN{ if (n>0) printf "%.2f", d/hz*1e6/n; else print 0 }')
        foreign=$(awk -v hz="$HZ" -v tb="$((tb1-tb0))" -v mt="$((mt1-mt0))" -v w0="$w0" -v w1="$w1" -v wt="$(cat "$f.time")" \
          'BEGIN{ split(wt, x, " "); f=(tb-mt)/hz - (x[1]+x[2]); if (f<0) f=0; printf "%.0f", 100*f/(w1-w0) }')
        rps=$(awk '/^Requests\/sec/{print $2}' "$f")
        p50=$(to_ms "$(awk '$1=="50%"{print $2}' "$f")")
        p99=$(to_ms "$(awk '$1=="99%"{print $2}' "$f")")
        errs=$(awk '/Socket errors/{gsub(/,/,""); s+=$4+$6+$8+$10} /Non-2xx/{s+=$NF} END{print s+0}' "$f")
        busy=$(printf '%s\n%s\n' "$b0" "$b1" | awk -v a="cpu$WRK_CPU" -v b="cpu$PROXY_CPU" '
          { if (seen[$1]++) { db=$2-B[$1]; di=$3-I[$1]; u[$1]=(db+di>0)?100*db/(db+di):0 } else { B[$1]=$2; I[$1]=$3 } }
          END { printf "%.0f\t%.0f", u[a], u[b] }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" "$p" "$c" "${rps:-0}" "$p50" "$p99" \
          "$errs" "$busy" "$foreign" "$us_req" >> "$RES"
        log "rep $rep $t/$p c=$c rps=${rps:-0} p50=${p50}ms p99=${p99}ms err=$errs cpu(wrk,proxy)%=$(echo "$busy" | tr '\t' ,) foreign%=$foreign us/req=$us_req"
      done
    done
  done
done
# ---------------------------------------------------------------- steady state (h2load)
# wrk times every request of a run, the first ones too: those go out while wrk is still doing
# the client side of $c TLS handshakes on its one core, and their responses wait in wrk until
# it is done (a packet capture shows the proxy answering them in under 4 ms and wrk reading
# the answers up to 250 ms later). The faster a proxy completes handshakes, the more of them
# pile up in wrk at once, so wrk's p99 at 256 connections mostly measures wrk's own start.
# h2load (HTTP/1.1, same pinning) opens its connections during --warm-up-time and logs each
# request of the measured part only: the proxies' latency on warm connections.
STEADY_RES="$WORK/steady.tsv"; : > "$STEADY_RES"
if [ "$STEADY" = 1 ]; then
  h2load_run() { # conns url log -> h2load summary on stdout
    nice -n "$NICE" taskset -c "$WRK_CPU" unshare -m sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' \
      sh "$WORK/hosts" h2load --h1 -t1 -c"$1" -D "$DUR" --warm-up-time "$WARMUP" --log-file "$3" "$2"
  }
  for rep in $(seq 1 "$REPS"); do
    for c in $CONNS; do
      for t in $TARGETS; do
        [ "$t" = direct ] && continue
        f="$WORK/raw/${t}_steady_c${c}_r${rep}"
        h2load_run "$c" "$(url "$t" https)" "$f.log" > "$f.txt" 2>&1
        read -r n p50 p99 < <(python3 - "$f.log" <<'PY'
import sys
v = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.count("\t") >= 2)
n = len(v)
q = lambda p: v[min(n - 1, int(n * p))] / 1000 if n else 0
print(n, f"{q(.5):.3f}", f"{q(.99):.3f}")
PY
)
        # failed + errored + timed out, and 4xx/5xx answers
        failed=$(awk '/^requests:/{s+=$10+$12+$14} /^status codes:/{s+=$7+$9} END{print s+0}' "$f.txt")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$t" "$c" "${n:-0}" "${p50:-0}" "${p99:-0}" "${failed:-0}" >> "$STEADY_RES"
        log "rep $rep steady $t/https c=$c requests=$n p50=${p50}ms p99=${p99}ms failed=${failed:-?}"
      done
    done
  done
fi
kill -0 "$AGENT" 2>/dev/null || log "WARNING: the agent (pid $AGENT) is gone after the runs"

# ---------------------------------------------------------------- report
echo
echo "# medians of $REPS x wrk -t$THREADS -d$DUR --latency; backend $BACKEND ($INSTANCES); wrk+backend on cpu$WRK_CPU, proxy on cpu$PROXY_CPU;" \
  "$(nproc) cpus, kernel $(uname -r); $(nginx -v 2>&1 | sed 's/.*: //'), haproxy $(haproxy -v | awk 'NR==1{print $3}'), bow $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- crates || echo +dirty)"
[ "$PROXY_ACCESS_LOG" = 1 ] && echo "# nginx writes a buffered access log (PROXY_ACCESS_LOG=1)" \
  || echo "# nginx/HAProxy: no access log; bow's edge writes one JSON line per request to <state>/edge/access.log"
python3 - "$RES" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault((r[1], r[2], int(r[3])), []).append(r)
med = lambda rs, i: st.median(float(r[i]) for r in rs)
order = {"bow": 0, "nginx": 1, "haproxy": 2, "direct": 3}
print(f"{'target':8} {'proto':5} {'conns':>5} {'rps':>9} {'p50_ms':>8} {'p99_ms':>8} {'errors':>6} "
      f"{'cpuW%':>5} {'cpuP%':>5} {'foreign%':>8} {'us/req':>7}")
M = {}
for k in sorted(groups, key=lambda k: (k[1] != "https", k[2], order.get(k[0], 9))):
    rs = groups[k]
    m = dict(rps=med(rs, 4), p50=med(rs, 5), p99=med(rs, 6), err=sum(int(r[7]) for r in rs),
             w=med(rs, 8), p=med(rs, 9), f=med(rs, 10), us=med(rs, 11))
    M[k] = m
    print(f"{k[0]:8} {k[1]:5} {k[2]:>5} {m['rps']:>9.0f} {m['p50']:>8.3f} {m['p99']:>8.3f} {m['err']:>6} "
          f"{m['w']:>5.0f} {m['p']:>5.0f} {m['f']:>8.0f} {m['us']:>7.1f}")
print()
conns = sorted({k[2] for k in M})
for c in conns:
    b, n, h = M.get(("bow", "https", c)), M.get(("nginx", "https", c)), M.get(("haproxy", "https", c))
    if not (b and n):
        continue
    cpu, p99 = b["us"] / n["us"], b["p99"] / n["p99"]
    hap = f"; bow/haproxy: CPU/req {b['us'] / h['us']:.2f}x, p99 {b['p99'] / h['p99']:.2f}x" if h else ""
    print(f"https c={c}: bow/nginx CPU/req {cpu:.2f}x (goal <= 0.90x) {'MET' if cpu <= 0.9 else 'MISSED'}; "
          f"p99 {p99:.2f}x (goal <= 1.00x) {'MET' if b['p99'] <= n['p99'] else 'MISSED'}; "
          f"rps {b['rps'] / n['rps']:.2f}x{hap}")
    if b["err"]:
        print(f"  bow had {b['err']} errors (socket errors + non-2xx) at c={c}")
# Paired: bow's run against nginx's run of the same rep (seconds apart), so that the drift of a
# shared VM between reps cancels out; the median of those ratios, and their range.
pairs = {}
for r in rows:
    if r[2] == "https" and r[1] in ("bow", "nginx"):
        pairs.setdefault((int(r[3]), r[0]), {})[r[1]] = r
for c in conns:
    ratios = [(float(p["bow"][11]) / float(p["nginx"][11]), float(p["bow"][6]) / float(p["nginx"][6]))
              for (cc, _), p in sorted(pairs.items()) if cc == c and len(p) == 2
              and float(p["nginx"][11]) > 0 and float(p["nginx"][6]) > 0]
    if not ratios:
        continue
    cpu, p99 = st.median(x[0] for x in ratios), st.median(x[1] for x in ratios)
    print(f"https c={c} paired over {len(ratios)} reps: bow/nginx CPU/req median {cpu:.2f}x "
          f"[{min(x[0] for x in ratios):.2f}-{max(x[0] for x in ratios):.2f}] "
          f"{'MET' if cpu <= 0.9 else 'MISSED'}; p99 median {p99:.2f}x "
          f"[{min(x[1] for x in ratios):.2f}-{max(x[1] for x in ratios):.2f}] {'MET' if p99 <= 1 else 'MISSED'}")
PY
if [ -s "$STEADY_RES" ]; then
  echo
  echo "# steady state: medians of $REPS x h2load --h1 -t1 -D $DUR after --warm-up-time $WARMUP (connections opened" \
    "during the warm-up; every request of the measured part logged); HTTPS"
  python3 - "$STEADY_RES" <<'PY'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault((r[1], int(r[2])), []).append(r)
med = lambda rs, i: st.median(float(r[i]) for r in rs)
order = {"bow": 0, "nginx": 1, "haproxy": 2}
print(f"{'target':8} {'conns':>5} {'requests':>9} {'p50_ms':>8} {'p99_ms':>8} {'failed':>6}")
M = {}
for k in sorted(groups, key=lambda k: (k[1], order.get(k[0], 9))):
    rs = groups[k]
    M[k] = m = dict(n=med(rs, 3), p50=med(rs, 4), p99=med(rs, 5), failed=sum(int(r[6]) for r in rs))
    print(f"{k[0]:8} {k[1]:>5} {m['n']:>9.0f} {m['p50']:>8.3f} {m['p99']:>8.3f} {m['failed']:>6}")
print()
for c in sorted({k[1] for k in M}):
    b, n, h = M.get(("bow", c)), M.get(("nginx", c)), M.get(("haproxy", c))
    if not (b and n) or not n["p99"]:
        continue
    hap = f"; bow/haproxy p99 {b['p99'] / h['p99']:.2f}x" if h and h["p99"] else ""
    print(f"steady https c={c}: bow/nginx p99 {b['p99'] / n['p99']:.2f}x (goal <= 1.00x) "
          f"{'MET' if b['p99'] <= n['p99'] else 'MISSED'}; requests {b['n'] / n['n']:.2f}x{hap}")
PY
fi
echo "# raw per-run results: $RES (kept only with KEEP=1)"

# ---------------------------------------------------------------- testssl.sh against the edge
if [ "$TESTSSL" = 1 ] && [[ " $TARGETS " == *" bow "* ]]; then
  mkdir -p "$ROOT/bench/results"
  OUT=$ROOT/bench/results/testssl-edge.txt
  log "testssl.sh against bow's edge $HOST:$BOW_HTTPS (timeout ${TESTSSL_TIMEOUT}s)"
  # --ip: no DNS for bench.localhost; no --phone-out: no CRL/OCSP fetches; --add-ca: trust bow's CA
  timeout "$TESTSSL_TIMEOUT" testssl --quiet --color 0 --warnings off --sneaky --openssl-timeout 5 \
    --ip 127.0.0.1 --add-ca "$CA" "https://$HOST:$BOW_HTTPS/" > "$WORK/testssl.txt" 2>&1
  rc=$?
  { echo "# testssl.sh $(dpkg-query -W -f='${Version}' testssl.sh 2>/dev/null) against bow's edge (bench/edge.sh," \
      "$(date -u +%Y-%m-%dT%H:%MZ), bow $(git -C "$ROOT" rev-parse --short HEAD)); exit $rc$([ $rc = 124 ] && echo ' (timed out)')"
    sed -e '/^ *$/N;/^\n$/D' "$WORK/testssl.txt"; } > "$OUT"
  echo
  echo "# testssl.sh summary (full output: bench/results/testssl-edge.txt)"
  grep -E '^ (SSLv2 |SSLv3 |TLS 1 |TLS 1\.[123] |ALPN/HTTP2|NULL ciphers|Anonymous NULL|Export ciphers|LOW: |Triple DES|Obsolete CBC|Strong encryption|PFS is offered|Elliptic curves|Has server cipher order|Negotiated protocol|Negotiated cipher  |Trust \(hostname\)|Chain of trust|Strict Transport|Heartbleed|CCS|Ticketbleed|ROBOT|Secure Renegotiation|Secure Client-Initiated|CRIME|BREACH|POODLE|TLS_FALLBACK|SWEET32|FREAK|DROWN|LOGJAM|BEAST|LUCKY13|RC4|Rating|Overall Grade)' "$OUT" \
    | sed 's/  */ /g'
  if grep -E '^ (SSLv2|SSLv3|TLS 1|TLS 1\.1) ' "$OUT" | grep -v 'not offered' | grep -q offered; then
    echo "!! a protocol below TLS 1.2 is offered"
  fi
fi
