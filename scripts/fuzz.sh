#!/usr/bin/env bash
# Long fuzzing of the NBD server (the CI runs 15 s of it): scripts/fuzz.sh [SECONDS] [FIRST_SEED]
# A failure prints the seed to replay and saves its input to test/protocol/fuzz-corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HINDSIGHT_FUZZ_SECONDS="${1:-3600}" HINDSIGHT_FUZZ_SEED="${2:-$RANDOM$RANDOM}"
echo "fuzzing for ${HINDSIGHT_FUZZ_SECONDS} s from seed ${HINDSIGHT_FUZZ_SEED}"
exec node --import tsx --test --test-reporter=spec test/protocol/fuzz.test.ts
