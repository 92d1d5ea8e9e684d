/**
 * Collapsed records (issue 5: history memory follows the points kept, not the writes). Expired
 * points that changed no content — thinned writes, flushes, rewrites of the same bytes — leave
 * the history's table for spans once retention compacted their segment, and as a start loads
 * them. Checked against what the history said before:
 * - every record still reads back whole (from the journal) with the same fingerprint, and
 *   replication sends each with its own header;
 * - kept points read the same, times resolve to the same kept seqs, flush points and the
 *   activity timeline's totals are those of before;
 * - the table holds a fraction of the records, and a restart does not bring them back.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { parseRetention } from '../../src/core/index.js';
import { RecordFlag, RecordType, decodeRecordHeader, nodeFileLayer } from '../../src/journal/index.js';
import { History } from '../../src/index/index.js';
import { fingerprint } from '../../src/replication/fingerprint.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import type { JournaledDeviceOptions } from '../../src/volume/journaled-device.js';
import { PointView } from '../../src/volume/point-view.js';
import { applyRetention } from '../../src/volume/retention.js';
import { makeTempDir } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';

const KiB = 1024;
const SIZE = 8 * 1024 * KiB;
const T0 = 1_700_000_000_000_000;
const SECOND = 1e6;

function options(directory: string, clock: { us: number }): JournaledDeviceOptions {
  return {
    name: 'collapse', directory, sizeBytes: SIZE, volumeId: Buffer.from('c011a95ed00c0ffee0123456789abcde', 'hex').subarray(0, 16), files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 96 * KiB, checkpointEveryBytes: 256 * KiB, idleCheckpointMs: 0, nowUs: () => clock.us,
  };
}

async function pointImage(device: JournaledDevice, seq: number): Promise<Buffer> {
  const out = Buffer.alloc(SIZE);
  await new PointView(`p${seq}`, device, seq).read(0, out);
  return out;
}

test('expired records that changed nothing leave the history table; every record, point and count stays as it was', { timeout: 120_000 }, async (t) => {
  const dir = makeTempDir('hindsight-collapse-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: T0 };
  let device = JournaledDevice.open(options(dir, clock));
  try {
    // A database's hot pages: 16 blocks rewritten over and over (most soon overwritten), a
    // flush after most writes, now and then the same bytes again (UNCHANGED).
    const rng = new Random(7);
    const last = new Map<number, Buffer>();
    for (let i = 0; i < 1500; i += 1) {
      clock.us += SECOND;
      const block = rng.int(16);
      const same = last.has(block) && rng.int(8) === 0;
      const data = same ? last.get(block)! : rng.bytes(4 * KiB);
      last.set(block, data);
      await device.write(block * 64 * KiB, data, { fua: false });
      if (rng.int(4) !== 0) {
        clock.us += SECOND;
        await device.flush();
      }
    }
    await device.flush();
    const history = () => device.history;
    const seqLast = history().seqLast;
    const types = new Map<number, number>();
    const prints = new Map<number, string>();
    for (let seq = 1; seq <= seqLast; seq += 1) {
      types.set(seq, history().typeOf(seq));
      prints.set(seq, fingerprint(device.entryAt(seq)));
    }
    assert.ok([...types.values()].includes(RecordType.UNCHANGED), 'the workload has unchanged writes');
    const times = Array.from({ length: seqLast }, (_, i) => history().timeOf(i + 1));
    const endUs = clock.us + 1;
    const totals = (h: JournaledDevice['history']) => h.timeline(T0, endUs, endUs - T0)[0];
    const totalsBefore = totals(history());
    const rowsBefore = history().recordCount;
    const memoryBefore = history().memoryBytes;
    const sample = Array.from({ length: 40 }, (_, i) => 1 + Math.floor((i * seqLast) / 40));
    const images = new Map<number, Buffer>();
    for (const seq of sample) images.set(seq, await pointImage(device, seq));

    // Two hours on: every write for the last 10 minutes, one point per 10 minutes before.
    clock.us += 2 * 3600 * SECOND;
    const policy = parseRetention('all:10m,10m:1d');
    const report = await applyRetention(device, policy, { pins: () => new Set(), nowUs: clock.us, sliceMs: 2, reclaimShareMin: 1 / 64 });
    assert.ok(report.recordsThinned > 500, `retention thinned the overwritten writes (${JSON.stringify(report)})`);
    assert.equal(history().seqFirst, 1, 'nothing folded: the whole span is collapsed, not folded');

    const check = async (when: string) => {
      const h = history();
      assert.equal(h.seqLast, seqLast, `${when}: every record is there`);
      assert.ok(h.collapsedCount > seqLast / 2, `${when}: most records collapsed (${h.collapsedCount} of ${seqLast})`);
      assert.ok(h.recordCount + h.collapsedCount === seqLast && h.recordCount < rowsBefore / 2, `${when}: the table holds ${h.recordCount} of ${rowsBefore} rows`);
      assert.ok(h.memoryBytes < memoryBefore / 2, `${when}: history memory ${h.memoryBytes} bytes, was ${memoryBefore}`);
      const kept = (seq: number) => h.expiredRunOf(seq) === null;
      for (let seq = 1; seq <= seqLast; seq += 1) {
        // (Read back from the journal when collapsed: what replication fingerprints.)
        assert.equal(fingerprint(device.entryAt(seq)), prints.get(seq), `${when}: seq ${seq} has the fingerprint it had`);
        if (h.isCollapsed(seq)) {
          assert.ok(!kept(seq), `${when}: collapsed seq ${seq} is an expired point`);
          // A flush, an unchanged write, or a write whose data retention reclaimed.
          const now = device.entryAt(seq).type;
          assert.ok(now === RecordType.FLUSH || now === RecordType.UNCHANGED || now === RecordType.THINNED, `${when}: collapsed seq ${seq} changes no content (type ${now})`);
          assert.equal(now === RecordType.THINNED ? RecordType.WRITE : now, types.get(seq), `${when}: collapsed seq ${seq} is the record it was`);
          assert.equal(h.typeOf(seq), 0, `${when}: a collapsed record has no type in memory`);
        } else {
          assert.equal(h.timeOf(seq), times[seq - 1], `${when}: seq ${seq}'s time`);
        }
        if (kept(seq)) assert.equal(h.lastSeqAtOrBefore(times[seq - 1]), seq, `${when}: the time of kept seq ${seq} resolves to it`);
      }
      // Flush points: the kept ones, the first of a row of them (as before collapsing).
      const expected: number[] = [];
      for (let seq = 1; seq <= seqLast; seq += 1) {
        if (types.get(seq) === RecordType.FLUSH && kept(seq) && (seq === 1 || types.get(seq - 1) !== RecordType.FLUSH || !kept(seq - 1))) expected.push(seq);
      }
      assert.deepEqual(h.seqsOfType(RecordType.FLUSH, 0, Number.MAX_SAFE_INTEGER, 1e9), expected, `${when}: flush points`);
      assert.deepEqual(totals(h), totalsBefore, `${when}: activity totals`);
      // Spread over buckets, collapsed records still add up.
      const buckets = h.timeline(T0, endUs, 60 * SECOND);
      for (const key of ['writes', 'bytesWritten', 'flushes'] as const) {
        assert.equal(buckets.reduce((sum, bucket) => sum + bucket[key], 0), totalsBefore[key], `${when}: ${key} by minute add up`);
      }
      for (const seq of sample) {
        if (kept(seq)) assert.ok((await pointImage(device, seq)).equals(images.get(seq)!), `${when}: kept point seq ${seq} reads as before`);
      }
      // What replication sends: each record whole, with its own header, collapsed ones too.
      for (let seq = 1; seq <= seqLast;) {
        const records = await device.recordsFrom(seq, seqLast, 64 * KiB);
        for (const bytes of records) {
          const decoded = decodeRecordHeader(bytes);
          assert.ok(decoded.ok, `${when}: record ${seq} decodes`);
          const { header } = decoded;
          assert.equal(header.seq, seq, `${when}: records come in seq order`);
          assert.equal(fingerprint({ ...header, segment: 0, payloadPosition: 0, payloadSkip: header.payloadSkip ?? 0 }), prints.get(seq), `${when}: record ${seq} sent as it was`);
          seq += 1;
        }
      }
    };
    await check('after retention');
    assert.deepEqual((await device.fsck(false)).problems, [], 'fsck after collapsing');

    // A restart loads the journal collapsing as it goes: no more rows than before it.
    const rows = history().recordCount;
    await device.close();
    device = JournaledDevice.open(options(dir, clock));
    assert.ok(history().recordCount <= rows, `a start holds no more rows (${history().recordCount}, was ${rows})`);
    await check('after a restart');
    fs.rmSync(`${dir}/index.ckpt`, { force: true });
    await device.close();
    device = JournaledDevice.open(options(dir, clock));
    assert.ok(history().recordCount <= rows, `a start without the checkpoint too (${history().recordCount}, was ${rows})`);
    await check('after a restart without checkpoint');
  } finally {
    await device.close().catch(() => undefined);
  }
});

test('expired flushes leave the table when their points expire, even in a segment never compacted again', { timeout: 60_000 }, async (t) => {
  const dir = makeTempDir('hindsight-collapse-expiry-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: T0 };
  // Without reduction nothing is compressed: a segment is compacted only to thin it.
  let device = JournaledDevice.open({ ...options(dir, clock), reduce: false });
  try {
    const rng = new Random(11);
    for (let i = 0; i < 600; i += 1) {
      clock.us += SECOND;
      await device.write(rng.int(SIZE / (4 * KiB)) * 4 * KiB, rng.bytes(4 * KiB), { fua: false });
      // A guest's commit: its journal's flush, and often an fsync's right after.
      for (let flushes = 1 + rng.int(2); flushes > 0; flushes -= 1) {
        clock.us += SECOND;
        await device.flush();
      }
    }
    const seqLast = device.history.seqLast;
    clock.us += 2 * 3600 * SECOND;
    // Thinning never worth it here: only expiry collapses.
    const report = await applyRetention(device, parseRetention('all:10m,10m:1d'), { pins: () => new Set(), nowUs: clock.us, sliceMs: 2, reclaimShareMin: 1 });
    assert.equal(report.segmentsCompacted, 0, `nothing compacted (${JSON.stringify(report)})`);
    // Expired flushes two or more in a row collapse (a lone one between writes stays a row:
    // a span would cost more); every write here stays (none thinned).
    const expiredFlush = (seq: number) => seq >= 1 && seq <= seqLast && device.entryAt(seq).type === RecordType.FLUSH && device.history.expiredRunOf(seq) !== null;
    const inPairs = Array.from({ length: seqLast }, (_, i) => i + 1).filter((seq) => expiredFlush(seq) && (expiredFlush(seq - 1) || expiredFlush(seq + 1))).length;
    assert.ok(inPairs > 250, `flush points expired, many in pairs (${inPairs})`);
    assert.equal(device.history.collapsedCount, inPairs, 'exactly the expired flushes in pairs collapsed');
    for (let seq = 1; seq <= seqLast; seq += 1) assert.equal(device.history.isCollapsed(seq), expiredFlush(seq) && (expiredFlush(seq - 1) || expiredFlush(seq + 1)), `seq ${seq}`);
    const rows = device.history.recordCount;
    await device.close();
    device = JournaledDevice.open({ ...options(dir, clock), reduce: false });
    assert.ok(device.history.recordCount <= rows, `a start holds no more rows (${device.history.recordCount}, was ${rows})`);
    assert.deepEqual((await device.fsck(false)).problems, [], 'fsck');
  } finally {
    await device.close().catch(() => undefined);
  }
});

const SIZE_RUNS = 256 * 4096;

test('a run of thinned records loaded whole (History.appendRun) leaves the history a record-by-record load leaves', () => {
  const rng = new Random(77);
  const byRecord = new History(SIZE_RUNS);
  const whole = new History(SIZE_RUNS);
  let seq = 1;
  let timeUs = 1_700_000_000_000_000;
  const base = { flags: 0, offsetBytes: 0, lengthBytes: 0, payloadPosition: 64, payloadBytes: 0, payloadSkip: 0 };
  for (let step = 0; step < 400; step += 1) {
    const segment = 1 + Math.floor(step / 60);
    const last = segment === 7;
    const kind = rng.int(4);
    if (kind === 0) {
      // A run (pack.ts): its first record's time, the others its last time.
      const count = 2 + rng.int(50);
      const first = { ...base, seq, type: RecordType.THINNED, flags: RecordFlag.RUN | RecordFlag.PACKED, timeUs, segment };
      const lastUs = timeUs + rng.int(1000);
      for (let k = 0; k < count; k += 1) byRecord.append({ ...first, seq: seq + k, timeUs: k === 0 ? timeUs : lastUs }, !last);
      whole.appendRun(first, count, lastUs, !last);
      seq += count;
      timeUs = lastUs;
    } else {
      const type = kind === 1 ? RecordType.THINNED : kind === 2 ? RecordType.FLUSH : RecordType.WRITE;
      const entry = type === RecordType.WRITE
        ? { ...base, seq, type, timeUs, segment, offsetBytes: 4096 * rng.int(64), lengthBytes: 4096, payloadBytes: 4096 }
        : { ...base, seq, type, timeUs, segment, ...(type === RecordType.THINNED ? { offsetBytes: 4096 * rng.int(64), lengthBytes: 4096 } : {}) };
      byRecord.append(entry, !last);
      whole.append(entry, !last);
      seq += 1;
    }
    timeUs += rng.int(2000);
  }
  assert.equal(whole.seqLast, byRecord.seqLast);
  assert.equal(whole.collapsedCount, byRecord.collapsedCount);
  assert.equal(whole.recordCount, byRecord.recordCount);
  assert.equal(whole.thinnedRecords, byRecord.thinnedRecords);
  assert.equal(whole.memoryBytes, byRecord.memoryBytes);
  assert.ok(whole.collapsedCount > seq / 3, `runs collapsed (${whole.collapsedCount} of ${seq - 1})`);
  for (let s = 1; s < seq; s += 1) {
    assert.equal(whole.typeOf(s), byRecord.typeOf(s), `type of seq ${s}`);
    assert.equal(whole.timeOf(s), byRecord.timeOf(s), `time of seq ${s}`);
  }
  assert.deepEqual(whole.timeline(1_700_000_000_000_000, timeUs + 1, 100_000), byRecord.timeline(1_700_000_000_000_000, timeUs + 1, 100_000));
});
