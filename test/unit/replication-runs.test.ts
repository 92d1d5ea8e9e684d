/**
 * The run arithmetic replication relies on to send expiry as deltas (sender.ts): subtracting
 * and merging ascending, disjoint seq runs, checked against sets of seqs on random cases.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mergeRuns, subtractRuns } from '../../src/replication/sender.js';
import { Random } from '../helpers/random.js';

function randomRuns(rng: Random, max: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let at = 1 + rng.int(4);
  while (at <= max && runs.length < 12) {
    const end = Math.min(max, at + rng.int(6));
    runs.push([at, end]);
    at = end + 2 + rng.int(5);
  }
  return runs;
}

const seqsOf = (runs: Array<[number, number]>) => new Set(runs.flatMap(([a, b]) => Array.from({ length: b - a + 1 }, (_, i) => a + i)));

function runsOf(seqs: Set<number>): Array<[number, number]> {
  const sorted = [...seqs].sort((x, y) => x - y);
  const runs: Array<[number, number]> = [];
  for (const seq of sorted) {
    const last = runs[runs.length - 1];
    if (last && last[1] + 1 === seq) last[1] = seq;
    else runs.push([seq, seq]);
  }
  return runs;
}

test('subtractRuns and mergeRuns agree with sets of seqs (5,000 random cases)', () => {
  const rng = new Random(20261126);
  for (let i = 0; i < 5_000; i += 1) {
    const a = randomRuns(rng, 60);
    const b = randomRuns(rng, 60);
    const difference = new Set([...seqsOf(a)].filter((seq) => !seqsOf(b).has(seq)));
    assert.deepEqual(subtractRuns(a, b), runsOf(difference), `${JSON.stringify(a)} - ${JSON.stringify(b)}`);
    assert.deepEqual(mergeRuns([...a, ...b].map(([x, y]) => [x, y] as [number, number])), runsOf(new Set([...seqsOf(a), ...seqsOf(b)])), `${JSON.stringify(a)} + ${JSON.stringify(b)}`);
  }
});
