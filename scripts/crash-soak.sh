#!/usr/bin/env bash
# Nightly crash soak (not run in CI): many more seeds of the randomized journal crash test
# (test/crash/journal-crash.test.ts on the fault-injecting file layer) than CI's 300 rounds,
# split over parallel jobs, plus the targeted fault tests once.
#
#   scripts/crash-soak.sh [ROUNDS]      default 20000 rounds (each 2-4 crash points)
#
# Env: HINDSIGHT_JOURNAL_CRASH_SEED    first seed (default: a new range each day, so nights differ)
#      HINDSIGHT_JOURNAL_CRASH_JOBS    parallel jobs (default: the number of CPUs)
# A failing round prints the line that replays it alone, e.g.
#   HINDSIGHT_JOURNAL_CRASH_SEED=123456 HINDSIGHT_JOURNAL_CRASH_ROUNDS=1 node --import tsx --test test/crash/journal-crash.test.ts
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/setup.sh
hs_ensure_node_modules

rounds=${1:-${HINDSIGHT_JOURNAL_CRASH_ROUNDS:-20000}}
jobs=${HINDSIGHT_JOURNAL_CRASH_JOBS:-$(nproc)}
seed_first=${HINDSIGHT_JOURNAL_CRASH_SEED:-$(( ($(date +%s) / 86400 % 40000) * 100000 + 1000 ))}
per_job=$(( (rounds + jobs - 1) / jobs ))
logs=$(mktemp -d "${TMPDIR:-/tmp}/hindsight-crash-soak.XXXXXX")
echo "crash soak: $rounds rounds from seed $seed_first in $jobs jobs; logs in $logs" >&2

node --import tsx --test --test-reporter=spec test/crash/journal-faults.test.ts >"$logs/faults.log" 2>&1 || {
  echo "crash soak: the targeted fault tests failed (see $logs/faults.log)" >&2
  exit 1
}

pids=()
for ((job = 0; job < jobs; job++)); do
  first=$(( seed_first + job * per_job ))
  count=$(( rounds - job * per_job < per_job ? rounds - job * per_job : per_job ))
  [ "$count" -gt 0 ] || break
  HINDSIGHT_JOURNAL_CRASH_SEED=$first HINDSIGHT_JOURNAL_CRASH_ROUNDS=$count \
    node --import tsx --test --test-reporter=spec test/crash/journal-crash.test.ts >"$logs/job-$job.log" 2>&1 &
  pids+=($!)
done

failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
points=$(grep -ho 'crash points: [0-9]*' "$logs"/job-*.log | awk '{ sum += $3 } END { print sum + 0 }')
if [ "$failed" -ne 0 ]; then
  echo "crash soak: FAILED after $points crash points; replay with:" >&2
  grep -ho 'HINDSIGHT_JOURNAL_CRASH_SEED=[0-9]* HINDSIGHT_JOURNAL_CRASH_ROUNDS=1' "$logs"/job-*.log | sort -u | sed 's/$/ node --import tsx --test test\/crash\/journal-crash.test.ts/' >&2
  exit 1
fi
echo "crash soak: passed, $rounds rounds, $points crash points" >&2

# The real daemon under kill -9 and on-disk corruption, with seeds CI does not use (it runs
# the fixed default seed). KILL9_RUNS runs of HINDSIGHT_CRASH_ROUNDS rounds each.
npx tsc -p tsconfig.json
for ((run = 0; run < ${KILL9_RUNS:-5}; run++)); do
  seed=$(( seed_first + 7919 * (run + 1) ))
  HINDSIGHT_CRASH_SEED=$seed HINDSIGHT_CRASH_ROUNDS=${HINDSIGHT_CRASH_ROUNDS:-20} \
    node --import tsx --test --test-reporter=spec test/crash/kill9.test.ts test/crash/corruption.test.ts >"$logs/daemon-$run.log" 2>&1 || {
    echo "crash soak: kill -9 / corruption FAILED; replay with HINDSIGHT_CRASH_SEED=$seed (log: $logs/daemon-$run.log)" >&2
    exit 1
  }
done
echo "crash soak: kill -9 and corruption passed with ${KILL9_RUNS:-5} extra seeds" >&2
rm -rf "$logs"
