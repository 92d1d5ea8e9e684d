#!/usr/bin/env bash
# Soak (hours, not in CI; CI runs the same test for 60 s, unthrottled): 32 NBD connections over 8 volumes
# writing 8 MiB/s in all, keeping 2 minutes of history (so hours fit on the disk),
# a slow client and quitters, every byte checked against an oracle, the daemon's RSS (less
# the history it keeps by design) and descriptors sampled: no growth after warm-up.
#   scripts/soak.sh [SECONDS]      (default 3600; HINDSIGHT_SOAK_KEEP=POLICY instead of all:2m)
set -euo pipefail
cd "$(dirname "$0")/.."
export HINDSIGHT_LOAD_SECONDS="${1:-3600}"
exec node --import tsx --test --test-reporter=spec test/interop/load.test.ts
