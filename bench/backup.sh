#!/usr/bin/env bash
# bench/backup.sh — bow's logical backup and restore of a pgbench database against the bare
# tools in the same run, on the same server:
#   backup:  bow backup run --no-verify (pg_dump → zstd → age → store) to a directory and to
#            the local S3 server (moto, scripts/s3.sh) vs `pg_dump -Fc -Z0 | zstd -3 > file`
#            (the same work without encryption or upload) and `pg_dump -Fc | zstd -3 > file`
#            (pg_dump's default compression as well);
#   restore: bow backup restore vs `zstd -dc file | pg_restore --clean --if-exists
#            --single-transaction`;
#   verify:  bow's restore drill (scratch cluster, pg_amcheck, row counts), for the record.
# Peak RSS: of the whole process tree by /usr/bin/time (pg_dump, pg_restore, the scratch
# server are bow's children), and of bow alone (its VmHWM, sampled every 50 ms until it
# exits). Restores run twice each in the order bow, bare, bare, bow; the figure is the mean.
# Throughput = database size / wall time.
#   SCALE=70 bash bench/backup.sh     (~1.1 GB database; about 10 minutes on 2 cores)
# BOW=path/to/bow uses that binary (default: a release build, built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-70}; VERSION=${VERSION:-15}
PG=/usr/lib/postgresql/$VERSION/bin
for tool in "$PG/pgbench" /usr/bin/zstd /usr/bin/time; do
  [ -x "$tool" ] || { echo "bench/backup.sh: $tool missing (apt-get install postgresql-$VERSION zstd time)" >&2; exit 1; }
done
if [ -z "${BOW:-}" ]; then
  cargo build --release -q -p bow
  BOW=${CARGO_TARGET_DIR:-$PWD/target}/release/bow
fi
bash scripts/s3.sh start
S3=$(bash scripts/s3.sh env); S3=${S3#BOW_TEST_S3=}
WORK=$(mktemp -d /tmp/bow-bench-backup.XXXXXX)
chmod 755 "$WORK"
export BOW_CODE_VERSION=bench BOW_AGE_KEY_FILE=$WORK/keys/bench.key
BUCKET=bench-$$
cleanup() {
  (cd "$WORK" && timeout 60 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT
bow() { (cd "$WORK" && "$BOW" "$@" --state-dir "$WORK/state"); }
curl -sf -X PUT --aws-sigv4 aws:amz:us-east-1:s3 --user test:test "$S3/$BUCKET" >/dev/null
write_file() { # $1: the backup section
  cat > "$WORK/bow.yaml" <<EOF
project: bench-backup
services:
  db:
    postgres: { version: $VERSION, database: bench, user: bench, password_secret: db_password }
    backup: $1
EOF
}
DIR_BACKUP="{ to: $WORK/store, keep: 100 }"
S3_BACKUP="{ to: 's3://$BUCKET/b', endpoint: '$S3', access_key_secret: s3_id, secret_key_secret: s3_key, keep: 100 }"
write_file "$DIR_BACKUP"
bow secret init >/dev/null 2>&1
for pair in db_password:bench-pw s3_id:test s3_key:test; do
  printf '%s' "${pair#*:}" | bow secret set "${pair%%:*}" >/dev/null 2>&1
done
bow up -d >/dev/null
PORT=$(bow status --output json | python3 -c 'import json,sys; s=json.load(sys.stdin); print([i["port"] for v in s["services"] for i in v["instances"]][0])')
echo "== pgbench -i -s $SCALE"
PGPASSWORD=bench-pw "$PG/pgbench" -q -i -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U bench bench >/dev/null 2>&1
SOCK=$WORK/state/volumes/db/run
SIZE=$(runuser -u bow-db -- "$PG/psql" -X -A -t -h "$SOCK" -p "$PORT" -d bench -c "SELECT pg_database_size('bench')")
echo "database: $((SIZE / 1048576)) MiB"
sync
secs() { python3 -c "import sys; print(f'{(int(sys.argv[2]) - int(sys.argv[1])) / 1000:.2f}')" "$1" "$2"; }
now_ms() { date +%s%3N; }
mbps() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1048576 / float(sys.argv[2]):.0f}')" "$SIZE" "$1"; }
timed() { # $1 label; rest: a command; prints seconds and peak RSS (tree, and bow's own)
  local label=$1; shift
  local start end pid hwm own=0
  start=$(now_ms)
  /usr/bin/time -f "%M" -o "$WORK/rss" "$@" > "$WORK/out" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for bow_pid in $(pgrep -f "^$BOW (backup|restore-all)" || true); do
      hwm=$(awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/$bow_pid/status" 2>/dev/null || echo 0)
      [ "${hwm:-0}" -gt "$own" ] && own=$hwm
    done
    sleep 0.05
  done
  wait "$pid" || { cat "$WORK/out"; exit 1; }
  end=$(now_ms)
  T=$(secs "$start" "$end"); RSS=$(( $(cat "$WORK/rss") / 1024 )); OWN=$own
  printf '%-52s %7s s %6s MiB/s  peak RSS tree %4s MiB, bow %3s MiB\n' "$label" "$T" "$(mbps "$T")" "$RSS" "$OWN"
}
bare_dump() { runuser -u bow-db -- "$PG/pg_dump" -h "$SOCK" -p "$PORT" "$@" bench | zstd -q -3 > "$WORK/bare.dump.zst"; }
echo "== backup"
timed "pg_dump -Fc -Z0 | zstd -3 > file" bash -c "$(declare -f bare_dump); PG=$PG SOCK=$SOCK PORT=$PORT WORK=$WORK; bare_dump -Fc -Z0"; BARE0=$T
timed "pg_dump -Fc | zstd -3 > file" bash -c "$(declare -f bare_dump); PG=$PG SOCK=$SOCK PORT=$PORT WORK=$WORK; bare_dump -Fc"; BAREZ=$T
timed "bow backup run --no-verify (directory)" bash -c "cd $WORK && $BOW backup run db --no-verify --state-dir $WORK/state"; BOWDIR=$T; RSSDIR=$OWN
grep -o '[0-9.]* [KMG]iB stored' "$WORK/out" | sed 's/^/  /'
write_file "$S3_BACKUP"
timed "bow backup run --no-verify (S3, moto on loopback)" bash -c "cd $WORK && $BOW backup run db --no-verify --state-dir $WORK/state"; BOWS3=$T; RSSS3=$OWN
echo "== restore"
bare_restore() { zstd -q -dc "$WORK/bare.dump.zst" | runuser -u bow-db -- "$PG/pg_restore" -h "$SOCK" -p "$PORT" --clean --if-exists --single-transaction -d bench; }
timed "bow backup restore (S3)" bash -c "cd $WORK && $BOW backup restore db --yes --state-dir $WORK/state"; BOWR1=$T
timed "zstd -dc file | pg_restore --single-transaction" bash -c "$(declare -f bare_restore); PG=$PG SOCK=$SOCK PORT=$PORT WORK=$WORK; bare_restore"; BARER1=$T
timed "zstd -dc file | pg_restore --single-transaction" bash -c "$(declare -f bare_restore); PG=$PG SOCK=$SOCK PORT=$PORT WORK=$WORK; bare_restore"; BARER2=$T
timed "bow backup restore (S3)" bash -c "cd $WORK && $BOW backup restore db --yes --state-dir $WORK/state"; BOWR2=$T; RSSR=$OWN
BOWR=$(python3 -c "import sys; print((float(sys.argv[1]) + float(sys.argv[2])) / 2)" "$BOWR1" "$BOWR2")
BARER=$(python3 -c "import sys; print((float(sys.argv[1]) + float(sys.argv[2])) / 2)" "$BARER1" "$BARER2")
echo "== verify (the restore drill)"
timed "bow backup verify (S3)" bash -c "cd $WORK && $BOW backup verify db --state-dir $WORK/state"; RSSV=$OWN
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
echo "== ratios (bare time / bow time: 1.00 is as fast as the bare tools; the issue asks >= 0.80)"
echo "backup to a directory vs pg_dump -Z0 | zstd:  $(ratio "$BARE0" "$BOWDIR")   (vs pg_dump -Fc | zstd: $(ratio "$BAREZ" "$BOWDIR"))"
echo "backup to S3 vs pg_dump -Z0 | zstd:           $(ratio "$BARE0" "$BOWS3")   (vs pg_dump -Fc | zstd: $(ratio "$BAREZ" "$BOWS3"))"
echo "restore from S3 vs zstd -dc | pg_restore:     $(ratio "$BARER" "$BOWR")   (bow also counts every table's rows after it)"
echo "peak RSS of bow itself (MiB): backup dir $RSSDIR, backup S3 $RSSS3, restore $RSSR, verify $RSSV (the issue asks < 100)"
