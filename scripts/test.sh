#!/usr/bin/env bash
# scripts/test.sh — the whole test suite on a fresh Debian 12 machine (run as root).
# Installs what the tests need, then builds once and runs every test in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use (real processes, python venvs, curl). Installed only when
# missing, so a warm machine skips apt entirely.
# pebble: a test ACME CA and its DNS (tests/acme.rs starts both on free ports).
# postgresql-15: the server binaries of postgres services (tests/postgres.rs, bench/postgres.sh);
# its maintainer scripts create a default cluster, which policy-rc.d keeps from starting.
# prometheus: the real Prometheus and promtool that scrape the agent (tests/metrics.rs starts
# its own on a free loopback port); chromium: the headless browser of the dashboard test.
# openssh-server, nginx, fcgiwrap: the private git servers of tests/follow_private.rs (sshd with
# a deploy key; git-http-backend behind TLS and basic auth), started per test on free ports.
# nghttp2-client: h2load, the HTTP/2 load of tests/edge_process.rs.
PACKAGES=(python3 python3-venv python3-pip curl openssl ca-certificates procps iproute2 passwd git util-linux
  docker.io busybox-static iptables docker-compose python3-yaml podman runc containernetworking-plugins
  docker-registry apache2-utils pebble openssh-server openssh-client nginx fcgiwrap
  postgresql-15
  prometheus chromium nghttp2-client)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: missing packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  # No init system here: keep maintainer scripts from starting daemons.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Node.js and npm (Debian's, unless a node is already installed) for the OpenID provider that
# tests/oidc.rs runs: npm's oidc-provider, pinned, in a cache dir outside the work tree.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
fi
OIDC_PROVIDER_DIR=/var/cache/bow-tests/oidc-provider
if [ ! -f "$OIDC_PROVIDER_DIR/node_modules/oidc-provider/package.json" ]; then
  mkdir -p "$OIDC_PROVIDER_DIR"
  npm install --prefix "$OIDC_PROVIDER_DIR" --no-audit --no-fund --loglevel=error oidc-provider@8.8.1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi

# The container tests' own Docker Engine (private socket, data root and bridge; never the
# machine's default engine); every bow the tests start reaches it through DOCKER_HOST.
bash scripts/docker.sh start
export "$(bash scripts/docker.sh env)"
# And Podman's Docker-compatible service, for tests/containers_podman.rs.
bash scripts/podman.sh start
export "$(bash scripts/podman.sh env)"
# An S3-protocol server (moto, loopback) for tests/backups.rs.
bash scripts/s3.sh start
export "$(bash scripts/s3.sh env)"

# One build of every test binary, then all tests in parallel; never stop at the first failure.
cargo nextest run --workspace --no-fail-fast "$@"
