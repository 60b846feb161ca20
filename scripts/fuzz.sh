#!/usr/bin/env bash
# scripts/fuzz.sh — runs every fuzz target (fuzz/, cargo-fuzz) for a bounded time.
#   FUZZ_SECONDS   seconds per target (default 20: CI); the longer run in docs/fuzzing.md
#   FUZZ_TARGETS   targets to run (default: all of them)
#   FUZZ_JOBS      libFuzzer processes per target (default 1; more runs -fork=N)
#   FUZZ_SANITIZER cargo-fuzz sanitizer (default none: the parsers are safe Rust, and
#                  without ASan a run makes ~2x the executions; `address` works too)
# Corpora start from seeds taken from the tests (the framing cases, the path cases, the
# bow.yaml fixtures) and grow in fuzz/corpus/<target> (not committed). A crash stops the
# script with exit 1 and leaves its input in fuzz/artifacts/<target>/: turn it into a
# regression test, then run `cargo fuzz run <target> <that file>` to see it fixed.
# cargo-fuzz needs nightly flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-20}
JOBS=${FUZZ_JOBS:-1}
SANITIZER=${FUZZ_SANITIZER:-none}
TARGETS=${FUZZ_TARGETS:-request_head chunked_body path_route bow_yaml}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

# Seeds from the tests, written afresh each run (the corpus keeps what the fuzzer found).
python3 - <<'PY'
import glob, hashlib, os, re

def unescape(text):
    out, at = bytearray(), 0
    while at < len(text):
        if text[at] != '\\':
            out += text[at].encode(); at += 1; continue
        code = text[at + 1]
        if code == 'x':
            out.append(int(text[at + 2:at + 4], 16)); at += 4; continue
        out.append({'r': 13, 'n': 10, 't': 9, '0': 0, '\\': 92}[code]); at += 2
    return bytes(out)

def seed(target, data):
    directory = f"fuzz/corpus/{target}"
    os.makedirs(directory, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(directory, name), "wb") as out:
        out.write(data)

for line in open("crates/bow-edge/tests/framing/cases.txt", encoding="utf-8"):
    if line.startswith("#") or not line.strip():
        continue
    request = unescape(line.rstrip("\n").split(" | ", 2)[2])
    seed("request_head", request)
    head, _, body = request.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        for cut in (0, 3, 7):
            seed("chunked_body", bytes([cut]) + body)
for source in ("crates/bow-edge/src/uri.rs", "crates/bow-edge/tests/paths.rs",
               "crates/bow-edge/src/routes.rs"):
    text = open(source, encoding="utf-8").read()
    for literal in re.findall(r'"(/[^"\\]*)"', text):
        seed("path_route", literal.encode())
for pattern in ("tests/fixtures/**/*.yaml", "examples/**/bow.yaml", "crates/bow-spec/tests/**/*.yaml"):
    for path in glob.glob(pattern, recursive=True):
        data = open(path, "rb").read()
        if len(data) <= 64 * 1024:
            seed("bow_yaml", data)
PY

for target in $TARGETS; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  before=$(ls "fuzz/corpus/$target" | wc -l)
  echo "fuzz.sh: $target for ${SECONDS_EACH}s from $before inputs" >&2
  fork=()
  [ "$JOBS" -gt 1 ] && fork=(-fork="$JOBS")
  (cd fuzz && cargo fuzz run --release --sanitizer "$SANITIZER" "$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" "${fork[@]}" -max_len=65536 -timeout=10 \
      -rss_limit_mb=2048 -artifact_prefix="artifacts/$target/" -print_final_stats=1)
  echo "fuzz.sh: $target done, corpus $(ls "fuzz/corpus/$target" | wc -l) inputs" >&2
done
