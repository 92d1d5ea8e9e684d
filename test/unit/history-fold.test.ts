/**
 * Folding history (History.fold): a volume written for many simulated hours under a short
 * retention policy keeps its history memory and its journal bounded — the records before
 * the oldest kept point leave memory, and the data no kept point can show leaves the disk
 * (folded segments compacted) — while every kept point stays byte-exact, every older point
 * is refused, a rollback's target is never folded while the rollback is not, restarts fold
 * as they load, and folded records can still be read back (replication).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { isHindsightError, parseRetention } from '../../src/core/index.js';
import { RecordFlag, RecordType, nodeFileLayer } from '../../src/journal/index.js';
import { History } from '../../src/index/index.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import type { JournaledDeviceOptions } from '../../src/volume/journaled-device.js';
import { PointView } from '../../src/volume/point-view.js';
import { resolvePoint } from '../../src/volume/points.js';
import type { BookmarkStore } from '../../src/volume/bookmarks.js';
import { applyRetention } from '../../src/volume/retention.js';
import { makeTempDir } from '../helpers/daemon.js';
import { PitOracle, expectedExtents, firstDifference } from '../helpers/pit-oracle.js';
import { Random } from '../helpers/random.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;
const VOLUME_ID = Buffer.from('f01df01df01df01d0123456789abcdef', 'hex');
const T0 = 1_700_000_000_000_000;
const MINUTE = 60e6;
const POLICY = parseRetention('all:5m');
const RUNS = { below: process.env.FOLD_NO_RUNS ? 0 : Infinity };
const NO_BOOKMARKS = { get: () => assert.fail('no bookmarks here') } as unknown as BookmarkStore;

function options(directory: string, clock: { us: number }): JournaledDeviceOptions {
  return {
    name: 'fold', directory, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 256 * KiB, checkpointEveryBytes: 512 * KiB,
    idleCheckpointMs: 0, nowUs: () => clock.us,
  };
}

async function checkPoint(device: JournaledDevice, oracle: PitOracle, seq: number, label: string): Promise<void> {
  const view = new PointView(`p${seq}`, device, seq);
  const got = Buffer.alloc(SIZE);
  await view.read(0, got);
  const expected = oracle.imageAt(seq);
  const difference = firstDifference(got, expected.data);
  if (difference !== -1) assert.fail(`${label}: kept point seq ${seq} differs at offset ${difference}`);
  const extents = (await view.blockStatus(0, SIZE, 1_000_000)).map((e) => ({ lengthBytes: e.lengthBytes, hole: e.hole, zero: e.zero }));
  assert.deepEqual(extents, expectedExtents(expected, 0, SIZE), `${label}: block status of kept point seq ${seq}`);
  view.close();
}

async function checkKept(device: JournaledDevice, oracle: PitOracle, rng: Random, label: string): Promise<void> {
  const history = device.history;
  const oldest = history.oldestKept();
  const kept = [oldest, history.seqLast];
  for (let i = 0; i < 4; i += 1) {
    const seq = oldest + rng.int(history.seqLast - oldest + 1);
    if (history.expiredRunOf(seq) === null) kept.push(seq);
  }
  for (const seq of kept) await checkPoint(device, oracle, seq, label);
  const live = Buffer.alloc(SIZE);
  await device.read(0, live);
  assert.equal(firstDifference(live, oracle.liveImage().data), -1, `${label}: live volume`);
  // Everything before the history kept is refused, by seq and by time.
  if (history.seqFirst > 1) {
    for (const seq of [1, history.seqFirst - 1]) {
      assert.throws(() => resolvePoint('fold', history, NO_BOOKMARKS, `seq:${seq}`), (err) => isHindsightError(err, 'POINT_EXPIRED'), `${label}: seq ${seq} is refused`);
      assert.throws(() => new PointView('x', device, seq), (err) => isHindsightError(err, 'POINT_EXPIRED') || isHindsightError(err, 'POINT_NOT_FOUND'), `${label}: no view of seq ${seq}`);
    }
    const early = new Date((oracle.timeOf(1) + 1000) / 1000).toISOString();
    assert.throws(() => resolvePoint('fold', history, NO_BOOKMARKS, early), (err) => isHindsightError(err, 'POINT_EXPIRED'), `${label}: ${early} is refused`);
    assert.equal(resolvePoint('fold', history, NO_BOOKMARKS, 'latest').seq <= history.seqLast, true);
  }
}

test('folding keeps history memory and the journal bounded under a short policy; kept points stay exact', { timeout: 240_000 }, async () => {
  const dir = makeTempDir('hindsight-fold-');
  const rng = new Random(4242);
  const clock = { us: T0 };
  let device = JournaledDevice.open(options(dir, clock));
  const oracle = new PitOracle(SIZE);
  const pins = new Set<number>();
  const memory: number[] = [];
  const journal: number[] = [];
  const recordsAt: number[] = [];
  let folded = 0;
  let rollback: { seq: number; target: number } | null = null;
  let rollbackFolded = false;
  let stale: PointView | null = null;
  try {
    // The whole volume written first: later writes only replace live data, so what the
    // journal must keep stays the same size.
    for (let at = 0; at < SIZE; at += 256 * KiB) {
      const data = rng.bytes(256 * KiB, true);
      await device.write(at, data, { fua: false });
      oracle.write(at, data, clock.us);
    }
    for (let round = 0; round < 36; round += 1) {
      // Ten minutes: 250 writes, mostly over a hot 512 KiB, some anywhere; a few zeroes.
      for (let i = 0; i < 250; i += 1) {
        clock.us += rng.int(4_800_000);
        const hot = rng.int(8) !== 0;
        const lengthBytes = 512 * (1 + rng.int(16));
        const offsetBytes = 512 * rng.int(((hot ? 512 * KiB : SIZE) - lengthBytes) / 512);
        if (rng.int(20) === 0) {
          await device.writeZeroes(offsetBytes, lengthBytes, { fua: false, mayTrim: false, fastOnly: false });
          oracle.zero(offsetBytes, lengthBytes, true, clock.us);
        } else {
          const data = rng.bytes(lengthBytes, rng.int(3) === 0);
          await device.write(offsetBytes, data, { fua: false });
          oracle.write(offsetBytes, data, clock.us);
        }
      }
      if (round === 14) {
        // A rollback to the oldest kept point: its target expires before the rollback does.
        const target = device.history.oldestKept() + 1;
        const reverted = await device.rollback(target);
        oracle.revert(target, clock.us);
        rollback = { seq: reverted.seq, target };
      }
      if (round === 27) stale = new PointView('stale', device, device.history.oldestKept());
      if (round === 34 && stale) {
        // A view nobody pinned, of a point since expired and folded: refused, never served
        // from the wrong state.
        assert.ok(device.history.seqFirst > stale.seq, 'the unpinned point was folded');
        await assert.rejects(stale.read(0, Buffer.alloc(4096)), (err) => isHindsightError(err, 'POINT_EXPIRED'));
      }
      if (round === 3) pins.add(device.history.seqLast); // a bookmark, deleted at round 8
      if (round === 8) pins.clear();
      await device.flush();
      oracle.flush(clock.us);
      const report = await applyRetention(device, POLICY, { pins: () => pins, nowUs: clock.us, sliceMs: 2, runs: RUNS });
      folded += report.recordsFolded;
      const history = device.history;
      if (rollback && history.seqFirst > rollback.seq) rollbackFolded = true;
      // While the rollback is in history, its target is too (a replay needs it).
      if (rollback && history.seqFirst <= rollback.seq) assert.ok(history.seqFirst <= rollback.target + 1, `round ${round}: seqFirst ${history.seqFirst} past the target ${rollback.target} of a kept rollback`);
      await checkKept(device, oracle, rng, `round ${round}`);
      memory.push(history.memoryBytes);
      recordsAt.push(oracle.seqLast);
      journal.push(device.stats().bytes);
      if (round % 9 === 8) {
        // A restart folds as it loads: the same history kept, no more memory.
        const before = { seqFirst: history.seqFirst, memory: history.memoryBytes };
        await device.close();
        if (round % 18 === 8) fs.rmSync(path.join(dir, 'index.ckpt'), { force: true });
        device = JournaledDevice.open(options(dir, clock));
        assert.equal(device.history.seqFirst, before.seqFirst, `round ${round}: a restart folds as far as before`);
        assert.equal(device.history.seqLast, oracle.seqLast, `round ${round}: every record is there`);
        assert.ok(device.history.memoryBytes <= before.memory * 1.5 + 64 * KiB, `round ${round}: a restart needs no more history memory (${before.memory} -> ${device.history.memoryBytes})`);
        await checkKept(device, oracle, rng, `round ${round} reopened`);
      }
    }
    const history = device.history;
    assert.ok(folded > oracle.seqLast * 0.8, `most records were folded (${folded} of ${oracle.seqLast})`);
    assert.ok(rollback && rollbackFolded, 'the rollback was folded in the end');
    // Bounded: the last rounds hold no more than the rounds after the bookmark went.
    const settled = Math.max(...memory.slice(12, 18));
    const late = Math.max(...memory.slice(-6));
    assert.ok(late <= settled * 1.5, `history memory stays bounded (${settled} then ${late} bytes; ${memory.join(' ')})`);
    // The journal: folded data no point shows is dropped (without that it would grow by
    // about 1 MiB a round). Allowed for: a header for each new record (at most 64 bytes;
    // outside runs, a thinned write between writes a base shows keeps its own entry), and
    // more records kept whole for the part of them the volume still shows.
    const settledJournal = Math.max(...journal.slice(12, 18));
    const lateJournal = Math.max(...journal.slice(-6));
    const headers = 64 * (oracle.seqLast - recordsAt[17]);
    assert.ok(lateJournal <= settledJournal * 1.6 + headers, `the journal stays bounded: folded data no point shows is dropped (${settledJournal} then ${lateJournal} bytes, ${headers} of them headers)`);
    let droppable = 0;
    let shown = 0;
    for (const segment of history.foldedSegments()) {
      const folded = history.foldedSegment(segment)!;
      droppable += folded.droppableBytes;
      for (const bytes of folded.spans) shown += bytes;
    }
    assert.ok(droppable <= (droppable + shown) / 4, `folded segments are compacted: ${droppable} bytes droppable, ${shown} shown`);
    // Folded records that changed nothing share run entries (pack.ts): they cost the disk
    // next to nothing. Not without runs.
    let inRuns = 0;
    let changedNothing = 0;
    for (let seq = 1; seq < history.seqFirst; seq += 1) {
      const entry = device.entryAt(seq);
      if ((entry.flags & RecordFlag.RUN) !== 0) inRuns += 1;
      if ([RecordType.THINNED, RecordType.FLUSH, RecordType.UNCHANGED].includes(entry.type as 8)) changedNothing += 1;
    }
    console.log(`# fold: ${inRuns} records in runs, ${changedNothing} folded records that changed nothing`);
    if (RUNS.below > 0) assert.ok(inRuns >= changedNothing * 0.5, `most folded records that changed nothing are in runs (${inRuns} of ${changedNothing})`);
    else assert.equal(inRuns, 0);
    // Folded records can still be read back whole (a replica's first sync from seq 1).
    assert.equal(device.entryAt(1).seq, 1);
    const records = await device.recordsFrom(1, history.seqFirst - 1, MiB);
    assert.ok(records.length > 0, 'records of a folded segment are read back');
    const fsck = await device.fsck(false);
    assert.deepEqual(fsck.problems, [], 'fsck after folding');
    console.log(`# fold: ${folded} of ${oracle.seqLast} records folded; history memory ${memory.map((b) => Math.round(b / KiB)).join(' ')} KiB; journal ${journal.map((b) => Math.round(b / KiB)).join(' ')} KiB`);
  } finally {
    await device.close().catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a replica folds only as far as its source allows: a rollback it has not received yet still finds its target; the source folds only behind it', async () => {
  const clock = { us: T0 };
  const sourceDir = makeTempDir('hindsight-fold-src-');
  const replicaDir = makeTempDir('hindsight-fold-rep-');
  const source = JournaledDevice.open(options(sourceDir, clock));
  let replica = JournaledDevice.open({ ...options(replicaDir, clock), replica: true, readOnly: true });
  const oracle = new PitOracle(SIZE);
  try {
    const fill = (seed: number) => Buffer.alloc(64 * KiB, seed % 255 + 1);
    for (let i = 0; i < 40; i += 1) {
      clock.us += 1e6;
      await source.write((i % 8) * 64 * KiB, fill(i), { fua: false });
      oracle.write((i % 8) * 64 * KiB, fill(i), clock.us);
    }
    await source.flush();
    oracle.flush(clock.us);
    const target = 10;
    await source.rollback(target);
    oracle.revert(target, clock.us);
    for (let i = 0; i < 20; i += 1) {
      clock.us += 1e6;
      await source.write((i % 8) * 64 * KiB, fill(100 + i), { fua: false });
      oracle.write((i % 8) * 64 * KiB, fill(100 + i), clock.us);
    }
    await source.flush();
    oracle.flush(clock.us);
    await source.expirePoints([[1, 30]]);
    await source.foldHistory();
    assert.ok(source.history.seqFirst <= target + 1, `the source folds no further than its rollback's target (seqFirst ${source.history.seqFirst})`);
    // The replica holds 1..35 and already the expiry (runs travel ahead of records).
    let seq = 1;
    const ship = async (upTo: number) => {
      while (seq <= upTo) {
        const records = await source.recordsFrom(seq, upTo, MiB);
        for (const raw of records) replica.appendReplicated(raw);
        seq += records.length;
      }
      await replica.sync();
    };
    await ship(35);
    replica.history.expire([[1, 30]]);
    assert.equal(await replica.foldHistory(), 0, 'a replica does not fold without its source\'s word');
    // The source's word (replication's STATE foldBefore) takes its rollback into account,
    // even once the source expired the points past it: the replica has not received it yet.
    await source.expirePoints([[31, 50]]);
    assert.ok(source.history.oldestKept() > 42, 'the rollback (seq 42) lies before the source\'s oldest kept point');
    const limit = source.foldLimitForReplicas(35);
    assert.ok(limit > 0 && limit <= target, `the source lets replicas fold only up to its rollback's target (${limit})`);
    replica.setReplicaFoldLimit(limit);
    await replica.foldHistory();
    assert.ok(replica.history.seqFirst <= target + 1, `the replica folds no further (seqFirst ${replica.history.seqFirst})`);
    await ship(source.lastSeq);
    assert.equal(replica.lastSeq, source.lastSeq, 'the rollback and what follows arrive');
    await replica.close();
    replica = JournaledDevice.open({ ...options(replicaDir, clock), replica: true, readOnly: true });
    for (const at of [source.lastSeq, 45]) await checkPoint(replica, oracle, at, `replica seq ${at}`);
    // The rollback received, the source lets it fold further; a restart folds as far again.
    replica.history.expire([[31, 50]]);
    replica.setReplicaFoldLimit(source.foldLimitForReplicas(source.lastSeq));
    const foldedReplica = await replica.foldHistory();
    assert.ok(foldedReplica > 0 && replica.history.seqFirst > target + 1 && replica.history.seqFirst <= 51, `the replica folds as its source allows (${foldedReplica} records, seqFirst ${replica.history.seqFirst})`);
    const replicaFirst = replica.history.seqFirst;
    for (const at of [source.lastSeq, 55]) await checkPoint(replica, oracle, at, `folded replica seq ${at}`);
    await replica.close();
    replica = JournaledDevice.open({ ...options(replicaDir, clock), replica: true, readOnly: true });
    assert.equal(replica.history.seqFirst, replicaFirst, 'a replica folds as it loads, as far as before');
    for (const at of [source.lastSeq, 55]) await checkPoint(replica, oracle, at, `reopened replica seq ${at}`);
    // Failover: the volume is its own now, and folds (the rollback received is in its history).
    replica.promoted();
    replica.history.expire([[1, 59]]);
    const foldedNow = await replica.foldHistory();
    assert.ok(foldedNow > 0, `a promoted replica folds (${foldedNow}; oldest kept ${replica.history.oldestKept()}, segments ${JSON.stringify(replica.history.segmentStarts())}, last ${replica.history.seqLast})`);
    for (const at of [source.lastSeq, 61]) await checkPoint(replica, oracle, at, `promoted seq ${at}`);
    // Made a replica again (a failback): the fold it made as a source is not a replica's.
    await replica.close();
    replica = JournaledDevice.open({ ...options(replicaDir, clock), replica: true, readOnly: true });
    assert.equal(replica.history.seqFirst, 1, 'a fold made as a source: a replica loads unfolded');
    for (const at of [source.lastSeq, 61]) await checkPoint(replica, oracle, at, `a replica again, seq ${at}`);
  } finally {
    await source.close().catch(() => undefined);
    await replica.close().catch(() => undefined);
    fs.rmSync(sourceDir, { recursive: true, force: true });
    fs.rmSync(replicaDir, { recursive: true, force: true });
  }
});

/** A history of `records` 4 KiB writes over `regions` 4 MiB regions, 500 records a segment. */
function syntheticHistory(records: number, regions: number, rng: Random): History {
  const history = new History(regions * 4 * MiB);
  for (let seq = 1; seq <= records; seq += 1) {
    const segment = Math.floor((seq - 1) / 500) + 1;
    history.append({
      seq, type: RecordType.WRITE, flags: 0, offsetBytes: rng.int(regions * 1024) * 4096, lengthBytes: 4096, timeUs: T0 + seq,
      segment, payloadPosition: 64 + ((seq - 1) % 500) * 4160 + 60, payloadBytes: 4096, payloadSkip: 0,
    });
  }
  return history;
}

test('a fold lets other work run while it works out the bases, ends as a fold at once would, and is called off by a rollback into it', async () => {
  const [a, b] = [syntheticHistory(20_000, 64, new Random(8)), syntheticHistory(20_000, 64, new Random(8))];
  const seqNew = 15_001;
  a.fold(seqNew);
  let turns = 0;
  let spinning = true;
  const spin = () => {
    turns += 1;
    if (spinning) setImmediate(spin);
  };
  setImmediate(spin);
  assert.equal(await b.foldAsync(seqNew, 0), true);
  spinning = false;
  assert.ok(turns >= 64, `other work ran between regions (${turns} turns)`);
  assert.equal(b.seqFirst, a.seqFirst);
  assert.equal(b.memoryBytes, a.memoryBytes);
  for (let region = 0; region < 64; region += 1) {
    for (const seq of [seqNew - 1, 17_000, 20_000]) assert.deepEqual(b.regionAt(region, seq)?.used, a.regionAt(region, seq)?.used, `region ${region} at seq ${seq}`);
  }
  assert.deepEqual(b.foldedSegments(), a.foldedSegments());
  for (const segment of a.foldedSegments()) assert.deepEqual(b.foldedSegment(segment), a.foldedSegment(segment));

  // A rollback into the records being folded, while the fold works: nothing is folded.
  const c = syntheticHistory(20_000, 64, new Random(8));
  const folding = c.foldAsync(seqNew, 0);
  c.append({ seq: 20_001, type: RecordType.REVERT, flags: 0, offsetBytes: 14_000, lengthBytes: 0, timeUs: T0 + 20_001, segment: 41, payloadPosition: 120, payloadBytes: 0, payloadSkip: 0 });
  assert.equal(await folding, false);
  assert.equal(c.seqFirst, 1, 'nothing folded');
  assert.ok(c.regionAt(0, 14_500) !== undefined || c.regionAt(1, 14_500) !== undefined, 'old points still build');
});
