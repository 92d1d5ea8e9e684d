/** The retention policy grammar and which points a policy keeps (core/retention.ts). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { expiringRuns, granularityAt, keepAllUs, parseRetention, retentionHorizonUs } from '../../src/core/index.js';

const S = 1e6;
const M = 60 * S;
const H = 60 * M;
const D = 24 * H;

test('policies parse into tiers, normalised', () => {
  const policy = parseRetention(' all:24h, 1m:7d ,1h:30d,1d:1y ');
  assert.equal(policy.text, 'all:24h,1m:7d,1h:30d,1d:1y');
  assert.deepEqual(policy.tiers, [
    { granularityUs: 0, horizonUs: D }, { granularityUs: M, horizonUs: 7 * D }, { granularityUs: H, horizonUs: 30 * D }, { granularityUs: D, horizonUs: 365 * D },
  ]);
  assert.equal(retentionHorizonUs(policy), 365 * D);
  assert.equal(keepAllUs(policy), D);
  assert.equal(retentionHorizonUs(parseRetention('all:forever')), Infinity);
  assert.equal(keepAllUs(parseRetention('1h:2w')), 0);
  assert.equal(granularityAt(policy, 0), 0);
  assert.equal(granularityAt(policy, D), M);
  assert.equal(granularityAt(policy, 364 * D), D);
  assert.equal(granularityAt(policy, 365 * D), -1);
});

test('bad policies are refused with RETENTION_INVALID and a reason', () => {
  const cases: Array<[string, RegExp]> = [
    ['', /expected tiers/],
    ['all', /GRANULARITY:HORIZON/],
    ['all:24h:1', /GRANULARITY:HORIZON/],
    ['1m:7d,all:24h', /"all" can only be the first tier/],
    ['all:24h,1m:7d,1h:7d', /kept longer than the tier before/],
    ['all:24h,1h:7d,1m:30d', /whole multiple/],
    ['all:24h,7m:7d,1h:30d', /whole multiple/],
    ['1h:1h', /shorter than how long it is kept/],
    ['all:forever,1d:1y', /nothing can follow a tier kept forever/],
    ['all:1.5h', /not a duration/],
    ['all:0h', /not a duration/],
    ['all:24x', /not a duration/],
  ];
  for (const [text, reason] of cases) {
    assert.throws(() => parseRetention(text), (err: Error & { code?: string }) => err.code === 'RETENTION_INVALID' && reason.test(err.message), text);
  }
});

test('a policy keeps every point in its all window, the last of each interval after, pins and the last record', () => {
  const policy = parseRetention('all:10m,1m:1h');
  const now = 100 * H;
  // Records: 3 a minute from 2 hours ago to now.
  const times: number[] = [];
  for (let t = now - 2 * H; t <= now; t += 20 * S) times.push(t);
  const timeOf = (seq: number) => times[seq - 1];
  const last = times.length;
  const pins = new Set([5, 200]);
  const runs = expiringRuns(policy, now, timeOf, 1, last, pins);
  const expired = (seq: number) => runs.some(([a, b]) => seq >= a && seq <= b);
  for (let seq = 1; seq <= last; seq += 1) {
    const age = now - timeOf(seq);
    let kept: boolean;
    if (pins.has(seq) || seq === last || age < 10 * M) kept = true;
    else if (age >= H) kept = false;
    else kept = Math.floor(timeOf(seq + 1) / M) !== Math.floor(timeOf(seq) / M);
    assert.equal(!expired(seq), kept, `seq ${seq}, age ${age / M} min`);
  }
  // Runs are ascending, disjoint, and separated by kept points.
  for (let i = 1; i < runs.length; i += 1) assert.ok(runs[i][0] > runs[i - 1][1] + 1);
  assert.deepEqual(expiringRuns(parseRetention('all:forever'), now, timeOf, 1, last, new Set()), []);
});
