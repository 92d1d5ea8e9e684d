#!/usr/bin/env bash
# Long fuzzing of the NBD server and the replication listener (the CI runs 15 s of each):
# scripts/fuzz.sh [SECONDS] [FIRST_SEED]. A failure prints the seed to replay (the NBD fuzzer
# also saves its input to test/protocol/fuzz-corpus/).
set -euo pipefail
cd "$(dirname "$0")/.."
export HINDSIGHT_FUZZ_SECONDS="${1:-3600}" HINDSIGHT_FUZZ_SEED="${2:-$RANDOM$RANDOM}"
echo "fuzzing for ${HINDSIGHT_FUZZ_SECONDS} s (each) from seed ${HINDSIGHT_FUZZ_SEED}"
exec node --import tsx --test --test-reporter=spec --test-concurrency=1 test/protocol/fuzz.test.ts test/protocol/replication-fuzz.test.ts
