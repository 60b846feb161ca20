#!/usr/bin/env bash
# bench/postgres.sh — a postgres service run by bow against the same PostgreSQL binaries
# started by hand (initdb + pg_ctl), in the same run: pgbench throughput (select-only and
# tpcb-like, same scale, same clients) and the time from nothing to a server that answers.
#
# Both clusters are fresh, under a temp dir, on free ports (never the machine's 5432), with
# the same initdb options bow uses (data checksums on, so the comparison is of supervision,
# not of checksums) and otherwise default settings. pgbench connects to bow's server on its
# instance port (what supervision costs: shim, cgroup, user) and, for select-only, also
# through the service's address (the agent's TCP forwarding that other services use).
#   SECONDS_EACH=20 SCALE=10 CLIENTS=4 bash bench/postgres.sh      (about 3.5 minutes)
# BOW=path/to/bow uses that binary (default: a release build, built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${SECONDS_EACH:-20}; SCALE=${SCALE:-10}; CLIENTS=${CLIENTS:-4}; VERSION=${VERSION:-15}
PG=/usr/lib/postgresql/$VERSION/bin
[ -x "$PG/pgbench" ] || { echo "bench/postgres.sh: $PG/pgbench missing; apt-get install postgresql-$VERSION" >&2; exit 1; }
if [ -z "${BOW:-}" ]; then
  cargo build --release -q -p bow
  BOW=${CARGO_TARGET_DIR:-$PWD/target}/release/bow
fi
WORK=$(mktemp -d /tmp/bow-bench-pg.XXXXXX)
chmod 755 "$WORK"
export BOW_CODE_VERSION=bench BOW_AGE_KEY_FILE=$WORK/keys/bench.key
cleanup() {
  (cd "$WORK" && timeout 60 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  [ -d "$WORK/plain" ] && runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/plain" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

cat > "$WORK/bow.yaml" <<EOF
project: bench-pg
services:
  db:
    postgres: { version: $VERSION, database: bench, user: bench, password_secret: db_password }
EOF
(cd "$WORK" && "$BOW" secret init >/dev/null 2>&1 && printf 'bench-pw' | "$BOW" secret set db_password >/dev/null 2>&1)

ROUNDS=${ROUNDS:-3}
echo "== time to a server that answers: a fresh cluster each time, median of $ROUNDS"
PLAIN_PORT=$(free_port)
mkdir -p "$WORK/plain-log" && chown postgres: "$WORK/plain-log"
plain_start() {
  rm -rf "$WORK/plain" && mkdir -p "$WORK/plain" && chown postgres: "$WORK/plain"
  runuser -u postgres -- "$PG/initdb" -D "$WORK/plain" --auth=trust --data-checksums -E UTF8 --locale=C.UTF-8 >/dev/null
  runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/plain" -l "$WORK/plain-log/server.log" -w \
    -o "-p $PLAIN_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK/plain" start >/dev/null
}
BOW_SAMPLES=(); PLAIN_SAMPLES=()
for round in $(seq "$ROUNDS"); do
  if [ "$round" -gt 1 ]; then
    (cd "$WORK" && "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1 && "$BOW" volume rm db --yes --state-dir "$WORK/state" >/dev/null 2>&1)
    runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/plain" -m fast -w stop >/dev/null
  fi
  START=$(now_ms)
  (cd "$WORK" && "$BOW" up -d --state-dir "$WORK/state" >/dev/null 2>&1)
  BOW_SAMPLES+=($(( $(now_ms) - START )))
  START=$(now_ms)
  plain_start
  PLAIN_SAMPLES+=($(( $(now_ms) - START )))
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
BOW_MS=$(median "${BOW_SAMPLES[@]}"); PLAIN_MS=$(median "${PLAIN_SAMPLES[@]}")
echo "bow up -d (agent, initdb, start, role, database, login + SELECT 1): ${BOW_SAMPLES[*]} ms, median ${BOW_MS}"
echo "initdb + pg_ctl start -w:                                        ${PLAIN_SAMPLES[*]} ms, median ${PLAIN_MS}"
STATUS=$(cd "$WORK" && "$BOW" status --output json --state-dir "$WORK/state")
BOW_PORT=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print([i["port"] for v in s["services"] for i in v["instances"]][0])' "$STATUS")
SERVICE_ADDRESS=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print([d["address"] for d in s["discovery"] if d["service"]=="db"][0])' "$STATUS")
[ "${PGBENCH:-1}" = 0 ] && exit 0

echo "== pgbench -i -s $SCALE on both"
tps() { sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1; }
run() { # $1 label, $2 host, $3 port, $4 user, $5 db, $6 password, rest: pgbench options
  local label=$1 host=$2 port=$3 user=$4 db=$5 password=$6; shift 6
  PGPASSWORD=$password "$PG/pgbench" -h "$host" -p "$port" -U "$user" -c "$CLIENTS" -j 2 -T "$SECONDS_EACH" "$@" "$db" 2>/dev/null | tps
}
HOST=${SERVICE_ADDRESS%:*}; SPORT=${SERVICE_ADDRESS##*:}
init_first() { PGPASSWORD=bench-pw "$PG/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$BOW_PORT" -U bench bench >/dev/null 2>&1; "$PG/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$PLAIN_PORT" -U postgres postgres >/dev/null 2>&1; }
init_first
mean() { python3 -c "import sys; print(f'{(float(sys.argv[1]) + float(sys.argv[2])) / 2:.0f}')" "$1" "$2"; }
# Each pair runs twice in the order bow, pg_ctl, pg_ctl, bow: drift (checkpoints, the page
# cache, a busy neighbour) weighs on both sides alike. The figure is the mean of the two.
# A write workload slows down as its tables grow (dead rows, WAL, checkpoints): with
# FRESH=1 the tables are made again (pgbench -i) before each run, so every run starts alike.
init_bow() { PGPASSWORD=bench-pw "$PG/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$BOW_PORT" -U bench bench >/dev/null 2>&1; }
init_plain() { "$PG/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$PLAIN_PORT" -U postgres postgres >/dev/null 2>&1; }
pair() { # $1 label; rest: pgbench options. Sets A (bow) and B (pg_ctl).
  shift
  local a1 b1 b2 a2
  [ "$FRESH" = 1 ] && init_bow; a1=$(run bow 127.0.0.1 "$BOW_PORT" bench bench bench-pw "$@")
  [ "$FRESH" = 1 ] && init_plain; b1=$(run plain 127.0.0.1 "$PLAIN_PORT" postgres postgres "" "$@")
  [ "$FRESH" = 1 ] && init_plain; b2=$(run plain 127.0.0.1 "$PLAIN_PORT" postgres postgres "" "$@")
  [ "$FRESH" = 1 ] && init_bow; a2=$(run bow 127.0.0.1 "$BOW_PORT" bench bench bench-pw "$@")
  A=$(mean "$a1" "$a2"); B=$(mean "$b1" "$b2")
}
echo "== pgbench, $CLIENTS clients, ${SECONDS_EACH} s per run, 4 runs per workload (same binaries, same scale)"
FRESH=0; pair select -S; S_BOW=$A; S_PLAIN=$B
S_ADDR=$(run address "$HOST" "$SPORT" bench bench bench-pw -S)
FRESH=1; pair tpcb; T_BOW=$A; T_PLAIN=$B
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.3f}')" "$1" "$2"; }
printf '%-44s %10s %10s %7s\n' "workload" "bow tps" "pg_ctl tps" "ratio"
printf '%-44s %10s %10s %7s\n' "select-only, instance port" "$S_BOW" "$S_PLAIN" "$(ratio "$S_BOW" "$S_PLAIN")"
printf '%-44s %10.0f %10s %7s\n' "select-only, service address (agent forwards)" "$S_ADDR" "$S_PLAIN" "$(ratio "$S_ADDR" "$S_PLAIN")"
printf '%-44s %10s %10s %7s\n' "tpcb-like, instance port" "$T_BOW" "$T_PLAIN" "$(ratio "$T_BOW" "$T_PLAIN")"
echo "time to a server that answers: bow ${BOW_MS} ms vs initdb + pg_ctl ${PLAIN_MS} ms: ratio $(ratio "$BOW_MS" "$PLAIN_MS")"
