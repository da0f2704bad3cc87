#!/usr/bin/env bash
# The soak (tests/soak.rs): mixed checks and streamed deltas against release permd for
# SECONDS (default 120), the stand-in upstream restarted at random, the cache on; at the end
# every decision must agree with a fresh load of the final snapshot, no check may have failed,
# and RSS may not have grown by more than 64 MiB over its value after 10 s.
#
#   bash bench/soak.sh [SECONDS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS=${1:-120} SOAK_SEED=${2:-1} \
  cargo test --release --test soak -- --ignored --nocapture --test-threads 1
