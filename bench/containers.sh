#!/usr/bin/env bash
# bench/containers.sh — containers under bow against the engine's own supervision, same run,
# same image (bow-testapp in a rootfs with busybox, built here: no registry):
#  (1) SIGKILL of the container's main process → 127.0.0.1:PORT answers 200 again:
#      bow (a new container, started by bow) vs `docker run --restart=always` (the engine
#      restarts the same container). Kills spaced GAP seconds (> 10 s keeps Docker's restart
#      backoff at its 100 ms base). Goal: bow's median ≤ the engine's.
#  (2) a rolling deploy of 3 containers (max_surge 1): bow apply's duration against its floor,
#      3 × (container start + first healthy check), the start measured with `docker run` here.
# Uses the tests' own engine (scripts/docker.sh).   N=6 GAP=11 bash bench/containers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-6}; GAP=${GAP:-11}
cargo build --release -q -p bow -p bow-testapp
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
BOW=$TARGET/release/bow
APP=$TARGET/release/bow-testapp
bash scripts/docker.sh start
export "$(bash scripts/docker.sh env)"
DK() { /usr/bin/docker "$@"; }
WORK=$(mktemp -d /tmp/bow-bench-containers.XXXXXX)
chmod 755 "$WORK"
cleanup() {
  DK rm -f bow-bench-restart >/dev/null 2>&1 || true
  (cd "$WORK" && timeout 60 "$BOW" down --state-dir "$WORK/state" >/dev/null 2>&1) || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The image: busybox-static, bow-testapp and the libraries it links.
ROOT=$WORK/rootfs
mkdir -p "$ROOT"/{bin,usr/local/bin,etc,tmp,lib/x86_64-linux-gnu,lib64}
cp /bin/busybox "$ROOT/bin/busybox"; ln -s busybox "$ROOT/bin/sh"
cp "$APP" "$ROOT/usr/local/bin/bow-testapp"
cp /lib/x86_64-linux-gnu/{libc.so.6,libgcc_s.so.1,libm.so.6} "$ROOT/lib/x86_64-linux-gnu/"
cp /lib64/ld-linux-x86-64.so.2 "$ROOT/lib64/"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$ROOT/etc/passwd"
IMAGE=bow-bench/testapp:$(sha256sum "$APP" | cut -c1-12)
tar -C "$ROOT" -cf "$WORK/rootfs.tar" .
DK import --change 'CMD ["/usr/local/bin/bow-testapp"]' --change 'ENV TESTAPP_HOST=0.0.0.0' \
  --change 'ENV TESTAPP_QUIET=1' "$WORK/rootfs.tar" "$IMAGE" >/dev/null

echo "== (1a) the engine: docker run --restart=always, kills ${GAP}s apart"
PORT=$(free_port)
DK run -d --name bow-bench-restart --restart=always -e PORT=80 -p "127.0.0.1:$PORT:80" "$IMAGE" >/dev/null
timeout 600 python3 bench/restart_probe.py engine "$N" "$GAP" loop "$PORT" \
  "/usr/bin/docker inspect -f '{{.State.Pid}}' bow-bench-restart" | tee "$WORK/engine.out"
DK rm -f bow-bench-restart >/dev/null

echo "== (1b) bow: one container, kills ${GAP}s apart"
cat > "$WORK/bow.yaml" <<YAML
project: bench-containers
services:
  web:
    image: $IMAGE
    container_port: 80
    env: { APP_VERSION: v1 }
    health: { http: /healthz, interval: 200ms, timeout: 1s, retries: 3 }
YAML
(cd "$WORK" && timeout 120 "$BOW" up -d --state-dir "$WORK/state" >/dev/null)
STATUS="cd $WORK && $BOW status --state-dir $WORK/state --output json"
BPORT=$(eval "$STATUS" | python3 -c 'import json,sys; s=json.load(sys.stdin); print([i for v in s["services"] for i in v["instances"] if i["id"]=="web.1"][0]["port"])')
timeout 600 python3 bench/restart_probe.py bow "$N" "$GAP" loop "$BPORT" \
  "$STATUS | python3 -c 'import json,sys; s=json.load(sys.stdin); print([i for v in s[\"services\"] for i in v[\"instances\"] if i[\"id\"]==\"web.1\"][0][\"pid\"] or \"\")'" \
  | tee "$WORK/bow.out"

echo "== (2) rolling deploy of 3 containers"
sed -i 's/^    env: { APP_VERSION: v1 }/    replicas: 3\n    env: { APP_VERSION: v1 }/' "$WORK/bow.yaml"
(cd "$WORK" && timeout 120 "$BOW" apply --yes --state-dir "$WORK/state" >/dev/null)
# The floor: one container from `docker run` to its first 200.
FLOOR_MS=$(python3 - "$IMAGE" <<'PY'
import socket, subprocess, sys, time
def answers(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n"); ok = b" 200" in s.recv(32)[:16]; s.close(); return ok
    except OSError:
        return False
times = []
for _ in range(3):
    p = socket.socket(); p.bind(("127.0.0.1", 0)); port = p.getsockname()[1]; p.close()
    t0 = time.perf_counter()
    cid = subprocess.run(["/usr/bin/docker", "run", "-d", "-e", "PORT=80", "-p", f"127.0.0.1:{port}:80", sys.argv[1]],
                         capture_output=True, text=True, check=True).stdout.strip()
    while not answers(port):
        time.sleep(0.002)
    times.append((time.perf_counter() - t0) * 1000)
    subprocess.run(["/usr/bin/docker", "rm", "-f", cid], capture_output=True)
times.sort(); print(f"{times[1]:.0f}")
PY
)
sed -i 's/APP_VERSION: v1/APP_VERSION: v2/' "$WORK/bow.yaml"
START=$(date +%s%N)
(cd "$WORK" && timeout 300 "$BOW" apply --yes --state-dir "$WORK/state" >/dev/null)
DEPLOY_MS=$(( ($(date +%s%N) - START) / 1000000 ))

python3 - "$WORK/engine.out" "$WORK/bow.out" "$FLOOR_MS" "$DEPLOY_MS" <<'PY'
import sys
def result(path):
    line = [l for l in open(path) if l.startswith("RESULT")][-1]
    return {k: float(v) for k, v in (f.split("=") for f in line.split()[2:])}
engine, bow = result(sys.argv[1]), result(sys.argv[2])
floor, deploy = float(sys.argv[3]), float(sys.argv[4])
print(f"restart, engine --restart=always: median {engine['median']:.0f} ms, p90 {engine['p90']:.0f} ms")
print(f"restart, bow:                     median {bow['median']:.0f} ms, p90 {bow['p90']:.0f} ms")
ratio = bow["median"] / engine["median"]
print(f"bow/engine: median {ratio:.2f}x (goal <= 1) {'OK' if ratio <= 1 else 'MISSED'}")
print(f"rolling deploy of 3 containers: {deploy:.0f} ms; floor 3 x {floor:.0f} ms (docker run to first 200) "
      f"= {3 * floor:.0f} ms; ratio {deploy / (3 * floor):.2f}x")
PY
