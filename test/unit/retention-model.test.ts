/**
 * Model test of retention: hours of simulated history (random writes of any size and
 * alignment — many over a hot area so most data is soon overwritten — zeroes, trims,
 * flushes, rollbacks, pinned seqs standing for bookmarks and mounts), with the policy applied
 * again and again as the clock moves on (segments compacted while writes continue), and
 * reopens with and without the index checkpoint. After each run, against an oracle that
 * knows the image at any seq:
 * - the expired points are exactly those a naive reading of the policy drops (pins, rollback
 *   targets and the last record kept) and each one is refused (POINT_EXPIRED);
 * - every kept point reads byte for byte as the oracle says, with exact block status;
 * - a time resolves to the last kept point at or before it;
 * - the live volume is exact, the journal shrank (payloads really reclaimed, sealed
 *   segments' compressible payloads compressed), and fsck finds nothing wrong.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { isHindsightError, parseRetention } from '../../src/core/index.js';
import type { RetentionPolicy } from '../../src/core/index.js';
import { RecordType, nodeFileLayer } from '../../src/journal/index.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import type { JournaledDeviceOptions } from '../../src/volume/journaled-device.js';
import { PointView } from '../../src/volume/point-view.js';
import { resolvePoint } from '../../src/volume/points.js';
import type { BookmarkStore } from '../../src/volume/bookmarks.js';
import { applyRetention } from '../../src/volume/retention.js';
import { makeTempDir } from '../helpers/daemon.js';
import { PitOracle, expectedExtents, firstDifference } from '../helpers/pit-oracle.js';
import { Random } from '../helpers/random.js';
import { randomRange } from '../helpers/volume-oracle.js';

const MiB = 1024 * 1024;
const SIZE = 5 * MiB + 3 * 4096 + 512;
const VOLUME_ID = Buffer.from('5e7e471d00c0ffee0123456789abcdef', 'hex');
const T0 = 1_700_000_000_000_000;
const MINUTE = 60e6;
const POLICY = parseRetention('all:20m,1m:2h,10m:6h');
const NO_BOOKMARKS = { get: () => assert.fail('no bookmarks here') } as unknown as BookmarkStore;

function options(directory: string, clock: { us: number }): JournaledDeviceOptions {
  return {
    name: 'keep', directory, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 192 * 1024, checkpointEveryBytes: 256 * 1024,
    idleCheckpointMs: 0, nowUs: () => clock.us,
  };
}

/** The policy read the plain way: is the point at `seq` kept at `nowUs`? */
function keptNaively(policy: RetentionPolicy, oracle: PitOracle, seq: number, durable: number, nowUs: number, pins: Set<number>): boolean {
  if (seq === durable || pins.has(seq)) return true;
  const age = nowUs - oracle.timeOf(seq);
  const tier = policy.tiers.find((t) => age < t.horizonUs);
  if (!tier) return false;
  if (tier.granularityUs === 0) return true;
  return Math.floor(oracle.timeOf(seq + 1) / tier.granularityUs) !== Math.floor(oracle.timeOf(seq) / tier.granularityUs);
}

async function checkPoint(device: JournaledDevice, oracle: PitOracle, seq: number, label: string): Promise<void> {
  const view = new PointView(`p${seq}`, device, seq);
  const got = Buffer.alloc(SIZE);
  try {
    await view.read(0, got);
  } catch (err) {
    throw new Error(`${label}: kept point seq ${seq}: ${(err as Error).message}`);
  }
  const expected = oracle.imageAt(seq);
  const difference = firstDifference(got, expected.data);
  if (difference !== -1) assert.fail(`${label}: kept point seq ${seq} differs at offset ${difference}`);
  const extents = (await view.blockStatus(0, SIZE, 1_000_000)).map((e) => ({ lengthBytes: e.lengthBytes, hole: e.hole, zero: e.zero }));
  assert.deepEqual(extents, expectedExtents(expected, 0, SIZE), `${label}: block status of kept point seq ${seq}`);
}

async function run(seed: number): Promise<{ thinned: number; compressed: number; reclaimed: number; expired: number; kept: number; folded: number; collapsed: number }> {
  const dir = makeTempDir(`retention-${seed}`);
  const rng = new Random(seed);
  const clock = { us: T0 };
  let device = JournaledDevice.open(options(dir, clock));
  const oracle = new PitOracle(SIZE);
  const pins = new Set<number>();
  const label = `seed ${seed}`;
  let thinned = 0;
  let compressed = 0;
  let reclaimed = 0;
  let folded = 0;
  let collapsed = 0;
  try {
    for (let round = 0; round < 14; round += 1) {
      // About 40 minutes of activity per round, in bursts.
      const changes = 150 + rng.int(150);
      for (let i = 0; i < changes; i += 1) {
        clock.us += rng.int(10) === 0 ? rng.int(5 * MINUTE) : rng.int(1e6);
        const hot = rng.int(4) !== 0;
        let { offsetBytes, lengthBytes } = randomRange(rng, hot ? MiB / 4 : SIZE, 64 * 1024);
        if (rng.int(2) === 0) {
          offsetBytes -= offsetBytes % 512;
          lengthBytes = Math.max(512, lengthBytes - (lengthBytes % 512));
        }
        const action = rng.int(40);
        if (action < 30) {
          const data = rng.bytes(lengthBytes, rng.int(6) === 0);
          await device.write(offsetBytes, data, { fua: false });
          oracle.write(offsetBytes, data, clock.us);
        } else if (action < 33) {
          const mayTrim = rng.int(2) === 0;
          await device.writeZeroes(offsetBytes, lengthBytes, { fua: false, mayTrim, fastOnly: false });
          oracle.zero(offsetBytes, lengthBytes, !mayTrim, clock.us);
        } else if (action < 35) {
          await device.trim(offsetBytes, lengthBytes, { fua: false });
          oracle.trim(offsetBytes, lengthBytes, clock.us);
        } else if (action < 39) {
          await device.flush();
          oracle.flush(clock.us);
        } else if (rng.int(3) === 0) {
          // Rollback to a kept point (a user cannot pick an expired one).
          let target = 1 + rng.int(oracle.seqLast);
          if (device.history.expiredRunOf(target)) target = oracle.seqLast;
          await device.rollback(target);
          oracle.revert(target, clock.us);
        } else if (rng.int(3) === 0 && pins.size > 0) {
          pins.delete([...pins][rng.int(pins.size)]); // a bookmark deleted, a mount gone
        } else {
          const seq = 1 + rng.int(oracle.seqLast);
          if (!device.history.expiredRunOf(seq)) pins.add(seq); // a bookmark or a mount
        }
        assert.equal(device.history.seqLast, oracle.seqLast, `${label}: seqs follow`);
      }
      await device.flush();
      oracle.flush(clock.us);
      const before = device.stats().bytes;
      const report = await applyRetention(device, POLICY, { pins: () => pins, nowUs: clock.us, sliceMs: 2, reclaimShareMin: 1 / 16 });
      if (process.env.RETENTION_DEBUG) console.log(label, round, JSON.stringify(report), device.sealedSeqLast(), device.history.expired.length);
      thinned += report.recordsThinned;
      compressed += report.recordsCompressed;
      reclaimed += report.bytesReclaimed;
      folded += report.recordsFolded;
      assert.equal(before - device.stats().bytes, report.bytesReclaimed, `${label}: the journal shrank by what the run reclaimed`);
      await checkRound(device, oracle, pins, clock.us, rng, `${label} round ${round}`);
      collapsed = Math.max(collapsed, device.history.collapsedCount);
      if (rng.int(3) === 0) {
        await device.close();
        if (rng.int(2) === 0) fs.rmSync(path.join(dir, 'index.ckpt'), { force: true });
        device = JournaledDevice.open(options(dir, clock));
        assert.equal(device.history.seqLast, oracle.seqLast, `${label}: reopen keeps every record`);
        await checkRound(device, oracle, pins, clock.us, rng, `${label} round ${round} reopened`);
      }
    }
    const fsck = await device.fsck(false);
    assert.deepEqual(fsck.problems, [], `${label}: fsck after retention`);
    const expired = device.history.expired.reduce((sum, [a, b]) => sum + b - a + 1, 0);
    return { thinned, compressed, reclaimed, expired, kept: oracle.seqLast - expired, folded, collapsed };
  } finally {
    await device.close().catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function checkRound(device: JournaledDevice, oracle: PitOracle, pins: Set<number>, nowUs: number, rng: Random, label: string): Promise<void> {
  const history = device.history;
  const durable = oracle.seqLast;
  // Expired exactly as the policy says (a run can only have removed more if an older run
  // with an older `now` did: pins only get added and tiers nest, so it cannot). Rollback
  // targets are not pinned: what a rollback brings back is kept for the points after it.
  const revertTargets = new Set(history.revertTargets);
  const kept: number[] = [];
  for (let seq = 1; seq <= durable; seq += 1) {
    const expected = keptNaively(POLICY, oracle, seq, durable, nowUs, pins);
    const expired = history.expiredRunOf(seq) !== null;
    if (expected === expired) assert.fail(`${label}: seq ${seq} (age ${(nowUs - oracle.timeOf(seq)) / MINUTE} min) is ${expired ? 'expired' : 'kept'}, the policy says ${expected ? 'kept' : 'expired'}`);
    if (!expired) kept.push(seq);
  }
  // Kept points, byte for byte: every pin and rollback target, the oldest, and a sample.
  // Kept points right after rollbacks: built from the rollback's target, kept or not.
  const afterReverts = oracle.revertSeqs.flatMap((seq) => [seq, seq + 1]).filter((seq) => seq <= durable && !history.expiredRunOf(seq));
  const sample = new Set<number>([kept[0], kept[kept.length - 1], ...[...pins].filter((s) => s <= durable).slice(-8), ...[...revertTargets].filter((s) => s > 0 && !history.expiredRunOf(s)).slice(-4), ...afterReverts]);
  for (let i = 0; i < 8; i += 1) sample.add(kept[rng.int(kept.length)]);
  for (const seq of sample) await checkPoint(device, oracle, seq, label);
  // Collapsed records (expired, no content changed) read back from the journal as they were.
  for (const [a, b] of history.expired.slice(-6)) {
    for (const seq of [a, b, a + rng.int(b - a + 1)]) {
      if (seq < history.seqFirst || !history.isCollapsed(seq)) continue;
      const entry = device.entryAt(seq);
      assert.ok(entry.seq === seq && entry.timeUs === oracle.timeOf(seq), `${label}: collapsed seq ${seq} reads back from the journal`);
    }
  }
  // Expired points are refused, by seq and when viewed.
  const expiredSeqs = history.expired.flatMap(([a, b]) => [a, b, a + rng.int(b - a + 1)]);
  for (const seq of expiredSeqs.slice(-12)) {
    assert.throws(() => resolvePoint('keep', history, NO_BOOKMARKS, `seq:${seq}`), (err) => isHindsightError(err, 'POINT_EXPIRED'), `${label}: expired seq ${seq} is refused`);
    assert.throws(() => new PointView('x', device, seq), (err) => isHindsightError(err, 'POINT_EXPIRED'), `${label}: no view of expired seq ${seq}`);
  }
  // Times: the last kept point at or before (or an earlier kept seq with the same content).
  for (let i = 0; i < 10; i += 1) {
    const timeUs = Math.floor((oracle.timeOf(1) + rng.int(oracle.timeLastUs - oracle.timeOf(1) + 1)) / 1000) * 1000;
    const iso = new Date(timeUs / 1000).toISOString();
    const keptSeq = lastKeptAtOrBefore(history, oracle.seqAtTime(timeUs));
    let resolved;
    try {
      resolved = resolvePoint('keep', history, NO_BOOKMARKS, iso);
    } catch (err) {
      if (isHindsightError(err, 'POINT_EXPIRED') || isHindsightError(err, 'POINT_BEFORE_HISTORY')) {
        assert.ok(keptSeq === 0 || oracle.imageAt(keptSeq).data.equals(oracle.imageAt(0).data), `${label}: ${iso} refused (${(err as Error).message}) though seq ${keptSeq} is kept`);
        continue;
      }
      throw err;
    }
    assert.ok(resolved.seq <= keptSeq && history.expiredRunOf(resolved.seq) === null, `${label}: ${iso} resolves to kept seq ${resolved.seq}, at or before ${keptSeq}`);
    assert.ok(oracle.imageAt(resolved.seq).data.equals(oracle.imageAt(keptSeq).data), `${label}: ${iso} shows the last kept point at or before it (seq ${keptSeq})`);
  }
  // The live volume.
  const live = Buffer.alloc(SIZE);
  await device.read(0, live);
  assert.equal(firstDifference(live, oracle.liveImage().data), -1, `${label}: live volume`);
  assert.ok(history.typeOf(durable) !== RecordType.THINNED, `${label}: the last record keeps its data`);
}

function lastKeptAtOrBefore(history: JournaledDevice['history'], seq: number): number {
  let at = seq;
  while (at > 0 && history.expiredRunOf(at)) at -= 1;
  return at;
}

// HINDSIGHT_RETENTION_SEEDS=FIRST:COUNT runs other seeds (a soak).
const [SEED_FIRST, SEED_COUNT] = (process.env.HINDSIGHT_RETENTION_SEEDS ?? '11:3').split(':').map(Number);

test('retention keeps exactly the points of its policy, byte for byte, and reclaims the rest', { timeout: 90_000 * SEED_COUNT }, async () => {
  const totals = { thinned: 0, compressed: 0, reclaimed: 0, expired: 0, kept: 0, folded: 0, collapsed: 0 };
  for (let seed = SEED_FIRST; seed < SEED_FIRST + SEED_COUNT; seed += 1) {
    const result = await run(seed).catch((err: unknown) => {
      console.log(`# replay: HINDSIGHT_RETENTION_SEEDS=${seed}:1`);
      throw err;
    });
    for (const key of Object.keys(totals) as Array<keyof typeof totals>) totals[key] += result[key];
  }
  // The test must have exercised what it claims: points expired, payloads reclaimed.
  assert.ok(totals.expired > 1000 && totals.thinned > 200 && totals.compressed > 100 && totals.reclaimed > 4 * MiB, `retention did real work: ${JSON.stringify(totals)}`);
  // And folded history out of memory (History.fold), checked by every later round and reopen.
  assert.ok(totals.folded > 500 * SEED_COUNT / 3, `history was folded: ${JSON.stringify(totals)}`);
  // And collapsed expired records out of its table (History.collapseSegments).
  assert.ok(totals.collapsed > 100 * SEED_COUNT / 3, `records were collapsed: ${JSON.stringify(totals)}`);
  console.log(`# retention model: ${JSON.stringify(totals)}`);
});
