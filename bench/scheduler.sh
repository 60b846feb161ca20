#!/usr/bin/env bash
# bench/scheduler.sh — the placement function as a pure simulation, like Nomad's C1M: HOSTS
# simulated hosts (10% main+worker, 60% worker, 30% data; 16 cores, 64G each) and INSTANCES
# instances of generated services (1-9 replicas, a quarter each per role filter, half spread,
# 0.1-0.5 cores and 128M-512M each). Prints placements per second for a cold placement and
# for the failover path (5% of the hosts lost: their instances move, the rest stay), and
# checks roles and capacity on the result. Peers (their published figures, not run here):
# Nomad C1M ≈ 3,750 placements/s, kube-scheduler 100-300 pods/s. Goal: ≥ 10,000/s.
#   HOSTS=5000 INSTANCES=100000 bash bench/scheduler.sh     (release build; ~1 min cold)
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-5000}; INSTANCES=${INSTANCES:-100000}
cargo build --release -q -p bow-place --example simulate
"${CARGO_TARGET_DIR:-$PWD/target}/release/examples/simulate" "$HOSTS" "$INSTANCES"
