/**
 * Packed records (journal/pack.ts): compaction packs a sealed segment's small records, so 4
 * KiB random writes cost at most 1% more than the bytes written; every read, every point in
 * time, a reopen without checkpoint or tables of contents, fsck, the scrub, replication's
 * reading of records and a failback's cut inside a pack all see exactly the records written;
 * damage to a pack's entries or to a packed payload is refused, never served.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { isHindsightError } from '../../src/core/index.js';
import { RecordFlag, RecordType, crcSeedFor, listSegments, nodeFileLayer, scanJournal, segmentPath } from '../../src/journal/index.js';
import type { ScannedRecord } from '../../src/journal/index.js';
import { copySegmentPrefix } from '../../src/journal/compaction.js';
import { PackBuilder, decodePack } from '../../src/journal/pack.js';
import type { RunPolicy } from '../../src/journal/pack.js';
import { decodeRecordHeader, unfit } from '../../src/journal/record.js';
import type { RecordHeader } from '../../src/journal/record.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import type { JournaledDeviceOptions } from '../../src/volume/journaled-device.js';
import { PointView } from '../../src/volume/point-view.js';
import { reclaimSpace } from '../../src/volume/retention.js';
import { makeTempDir } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 8 * MiB;
const VOLUME_ID = Buffer.from('9ac69ac69ac69ac60123456789abcdef', 'hex');
const CRC_SEED = crcSeedFor(VOLUME_ID);

function options(directory: string, clock: { us: number }, extra: Partial<JournaledDeviceOptions> = {}): JournaledDeviceOptions {
  return {
    name: 'pack', directory, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 2 * MiB, checkpointEveryBytes: 1 * MiB,
    idleCheckpointMs: 0, nowUs: () => (clock.us += 1 + (clock.us % 3)), ...extra,
  };
}

/** Every record of the journal as scanned from disk (packs expanded). */
function scanned(directory: string): ScannedRecord[] {
  const records: ScannedRecord[] = [];
  const result = scanJournal({
    directory: path.join(directory, 'journal'), files: nodeFileLayer, volumeId: VOLUME_ID, crcSeed: CRC_SEED,
    from: { segmentIndex: 0, position: 0 }, expectedSeq: 1, onRecord: (record) => records.push(record),
  });
  assert.equal(result.bad, null, `the journal scans clean: ${JSON.stringify(result.bad)}`);
  return records;
}

/** What identifies a record, whatever its storage. */
function identity(record: ScannedRecord): string {
  const h = record.header;
  return `${h.seq}/${h.type === RecordType.THINNED ? RecordType.WRITE : h.type}/${h.flags & ~(RecordFlag.COMPRESSED | RecordFlag.PACKED)}/${h.offsetBytes}/${h.lengthBytes}/${h.timeUs}`;
}

/** `count` 4 KiB writes of random data at random pages. */
async function randomPages(device: JournaledDevice, rng: Random, count: number, image: Buffer): Promise<void> {
  for (let i = 0; i < count; i += 1) {
    const block = rng.int(SIZE / 4096) * 4096;
    const data = rng.bytes(4096);
    await device.write(block, data, { fua: false });
    data.copy(image, block);
  }
}

/** A workload of small changes of every kind, with the image after each seq listed in `images`. */
async function smallChanges(device: JournaledDevice, rng: Random, count: number, image: Buffer, images: Map<number, Buffer>): Promise<void> {
  for (let i = 0; i < count; i += 1) {
    const kind = rng.int(20);
    const block = rng.int(SIZE / 4096) * 4096;
    if (kind < 12) {
      const data = rng.bytes(4096);
      await device.write(block, data, { fua: false });
      data.copy(image, block);
    } else if (kind < 14) {
      // One sector of a page changes: only that sector is stored.
      const data = Buffer.from(image.subarray(block, block + 4096));
      rng.bytes(512).copy(data, 512 * rng.int(8));
      await device.write(block, data, { fua: false });
      data.copy(image, block);
    } else if (kind === 14) {
      await device.write(block, Buffer.from(image.subarray(block, block + 4096)), { fua: false }); // unchanged
    } else if (kind === 15) {
      await device.writeZeroes(block, 8192 > SIZE - block ? 4096 : 8192, { fua: false, mayTrim: rng.int(2) === 0 });
      image.fill(0, block, Math.min(SIZE, block + 8192));
    } else if (kind === 16) {
      await device.trim(block, 4096, { fua: false });
      image.fill(0, block, block + 4096);
    } else if (kind === 17) {
      // Now and then a large write: it stays a record of its own.
      const offset = rng.int(SIZE / 4096 - 64) * 4096;
      const data = rng.bytes(200 * KiB);
      await device.write(offset, data, { fua: false });
      data.copy(image, offset);
    } else if (kind === 18) {
      await device.flush();
    } else {
      // Odd sizes and alignments.
      const length = 1 + rng.int(9000);
      const offset = rng.int(SIZE - length);
      const data = rng.bytes(length);
      await device.write(offset, data, { fua: false });
      data.copy(image, offset);
    }
    if (rng.int(60) === 0) images.set(device.lastSeq, Buffer.from(image));
  }
  images.set(device.lastSeq, Buffer.from(image));
}

async function readPoint(device: JournaledDevice, seq: number): Promise<Buffer> {
  const view = new PointView(`p${seq}`, device, seq);
  try {
    const got = Buffer.alloc(SIZE);
    await view.read(0, got);
    return got;
  } finally {
    view.close();
  }
}

async function checkReads(device: JournaledDevice, image: Buffer, images: Map<number, Buffer>, label: string): Promise<void> {
  const whole = Buffer.alloc(SIZE);
  await device.read(0, whole);
  assert.ok(whole.equals(image), `${label}: the volume reads what was written`);
  for (const [seq, expected] of images) assert.ok((await readPoint(device, seq)).equals(expected), `${label}: point seq ${seq} reads as it was`);
}

test('a pack round-trips its records, and its entries are checked', () => {
  const rng = new Random(5);
  const builder = new PackBuilder();
  const payload = rng.bytes(5000);
  const table = Buffer.alloc(8);
  const base = { flags: 0, seqDurable: 3, payloadSkip: 0 };
  assert.ok(builder.add({ header: { ...base, type: RecordType.WRITE, seq: 10, timeUs: 1e15, offsetBytes: 2 ** 49 + 4096, lengthBytes: 5000, payloadBytes: 5000 }, table, payload }));
  assert.ok(builder.add({ header: { ...base, type: RecordType.THINNED, seq: 11, timeUs: 1e15 + 5, offsetBytes: 0, lengthBytes: 4096, payloadBytes: 0 }, table: null, payload: null }));
  assert.ok(builder.add({ header: { ...base, type: RecordType.REVERT, seq: 12, timeUs: 1e15 + 6, offsetBytes: 4, lengthBytes: 0, payloadBytes: 0, seqDurable: 11 }, table: null, payload: null }));
  assert.equal(builder.add({ header: { ...base, type: RecordType.FLUSH, seq: 13, timeUs: 1e15 + 6 + 2 ** 32, offsetBytes: 0, lengthBytes: 0, payloadBytes: 0 }, table: null, payload: null }), false,
    'a time step past 2^32 µs starts a new pack');
  const { buffers, span, payloadPositions } = builder.take(1000, CRC_SEED);
  const bytes = Buffer.concat(buffers);
  assert.equal(bytes.length, span);
  assert.equal(span % 8, 0);
  const header = decodeRecordHeader(bytes);
  assert.ok(header.ok && header.header.type === RecordType.PACK && header.header.lengthBytes === 3 && header.header.seqDurable === 11);
  const entries = bytes.subarray(56, 56 + 3 * 28);
  const decoded = decodePack(header.header, entries, 1000);
  assert.ok(decoded.ok, 'the pack decodes');
  assert.deepEqual(decoded.records.map((r) => [r.header.seq, r.header.type, r.header.offsetBytes, r.header.timeUs, r.payloadPosition]),
    [[10, RecordType.WRITE, 2 ** 49 + 4096, 1e15, payloadPositions[0]], [11, RecordType.THINNED, 0, 1e15 + 5, payloadPositions[1]], [12, RecordType.REVERT, 4, 1e15 + 6, payloadPositions[2]]]);
  assert.ok(bytes.subarray(payloadPositions[0] - 1000, payloadPositions[0] - 1000 + 5000).equals(payload), 'the payload lies where the entry says');
  assert.ok(decoded.records.every((r) => (r.header.flags & RecordFlag.PACKED) !== 0), 'records read from a pack say so');
  const bad = Buffer.from(entries);
  bad.writeUInt32LE(4097, 28 + 16); // the THINNED record given a payload
  assert.equal(decodePack(header.header, bad, 1000).ok, false);
});

/** Packs `headers` with `runs` and reads them back as records. */
function packAndRead(headers: RecordHeader[], runs?: RunPolicy): { records: RecordHeader[]; entries: number; bytes: number } {
  const builder = new PackBuilder(runs);
  for (const header of headers) assert.ok(builder.add({ header, table: null, payload: null }), `seq ${header.seq} fits`);
  const { buffers, span } = builder.take(0, CRC_SEED);
  const bytes = Buffer.concat(buffers);
  const decoded = decodeRecordHeader(bytes);
  assert.ok(decoded.ok && decoded.header.type === RecordType.PACK);
  const pack = decodePack(decoded.header, bytes.subarray(56, 56 + decoded.header.lengthBytes * 28), 0);
  assert.ok(pack.ok, 'the pack decodes');
  return { records: pack.records.map((r) => ({ ...r.header, flags: r.header.flags & ~RecordFlag.PACKED })), entries: decoded.header.lengthBytes, bytes: span };
}

test('runs: records of folded history that changed nothing share one entry; a run made before stays as it is, whatever the limit', () => {
  const rng = new Random(8);
  const base = { seqDurable: 1, payloadSkip: 0, payloadBytes: 0 };
  const headers: RecordHeader[] = [];
  let timeUs = 1e15;
  for (let seq = 1; seq <= 400; seq += 1) {
    timeUs += rng.int(3) === 0 ? 0 : rng.int(5000);
    const kind = rng.int(10);
    const type = kind < 5 ? RecordType.THINNED : kind < 7 ? RecordType.FLUSH : kind < 8 ? RecordType.UNCHANGED : kind < 9 ? RecordType.ZERO : RecordType.TRIM;
    const ranged = type !== RecordType.FLUSH;
    headers.push({ ...base, type, flags: 0, seq, timeUs, offsetBytes: ranged ? 4096 * rng.int(100) : 0, lengthBytes: ranged ? 4096 : 0 });
  }
  // Without a limit nothing changes: one entry a record.
  const plain = packAndRead(headers);
  assert.equal(plain.entries, headers.length);
  assert.deepEqual(plain.records, headers);
  // Below 300, except seq 150: stretches that changed nothing become runs (packs of 50
  // records, so that runs of different packs meet).
  const packs = [0, 50, 100, 150, 200, 250, 300, 350].map((at) => packAndRead(headers.slice(at, at + 50), { below: 300, exact: 150 }));
  const runs = { records: packs.flatMap((pack) => pack.records), entries: packs.reduce((sum, pack) => sum + pack.entries, 0) };
  assert.ok(runs.entries < headers.length * 0.7, `runs take fewer entries (${runs.entries} of ${headers.length})`);
  assert.equal(runs.records.length, headers.length, 'every seq is still there');
  for (const [i, record] of runs.records.entries()) {
    const original = headers[i];
    assert.equal(record.seq, original.seq);
    if ((record.flags & RecordFlag.RUN) !== 0) {
      assert.ok(original.seq < 300 && original.seq !== 150 && [RecordType.THINNED, RecordType.FLUSH, RecordType.UNCHANGED].includes(original.type as 8), `seq ${record.seq} may be in a run`);
      assert.equal(record.type, RecordType.THINNED);
      assert.deepEqual([record.offsetBytes, record.lengthBytes], [0, 0]);
    } else {
      assert.deepEqual(record, original, `seq ${record.seq} outside runs keeps its own fields`);
    }
    if (i > 0) assert.ok(record.timeUs >= runs.records[i - 1].timeUs, 'times never go back');
  }
  const inRun = runs.records.filter((r) => (r.flags & RecordFlag.RUN) !== 0);
  assert.ok(inRun.length > 100, `most records that changed nothing below the limit are in runs (${inRun.length})`);
  // Packed again with any limit — none, a lower one, the same — a run made before keeps every
  // record's fields (a replica holding them compares them); only below the limit may runs grow.
  for (const below of [0, 120, 300]) {
    const again = packAndRead(runs.records, { below, exact: 150 });
    for (const [i, record] of again.records.entries()) {
      if (record.seq >= below) assert.deepEqual(record, runs.records[i], `below ${below}: seq ${record.seq} unchanged`);
    }
    assert.ok(again.entries <= runs.entries, `below ${below}: no more entries than before (${again.entries}, ${runs.entries})`);
  }
  assert.deepEqual(packAndRead(runs.records).records, runs.records, 'without a limit too');
  // A run's entry is checked like any other.
  const builder = new PackBuilder({ below: 300 });
  for (const header of headers.slice(0, 40)) builder.add({ header, table: null, payload: null });
  const bytes = Buffer.concat(builder.take(0, CRC_SEED).buffers);
  const decoded = decodeRecordHeader(bytes);
  assert.ok(decoded.ok);
  const entries = Buffer.from(bytes.subarray(56, 56 + decoded.header.lengthBytes * 28));
  const runAt = [...Array(decoded.header.lengthBytes).keys()].find((i) => ((entries.readUInt32LE(i * 28 + 4) >>> 18) & 0xff) === RecordFlag.RUN);
  assert.ok(runAt !== undefined, 'the first 40 records hold a run');
  const bad = Buffer.from(entries);
  bad.writeUInt32LE(4096, runAt * 28 + 0);
  assert.equal(decodePack(decoded.header, bad, 0).ok, false, 'a run with a range is refused');
  const short = Buffer.from(entries);
  short.writeUInt32LE(short.readUInt32LE(runAt * 28 + 12) + 1, runAt * 28 + 12);
  assert.equal(decodePack(decoded.header, short, 0).ok, false, 'a run longer than the pack says is refused');
  // A record of a run on its own (replication sends them so) is a thinned record without a range.
  assert.equal(unfit({ ...base, type: RecordType.THINNED, flags: RecordFlag.RUN, seq: 9, timeUs, offsetBytes: 0, lengthBytes: 0 }), null);
  assert.notEqual(unfit({ ...base, type: RecordType.FLUSH, flags: RecordFlag.RUN, seq: 9, timeUs, offsetBytes: 0, lengthBytes: 0 }), null);
  assert.notEqual(unfit({ ...base, type: RecordType.THINNED, flags: RecordFlag.RUN, seq: 9, timeUs, offsetBytes: 0, lengthBytes: 4096 }), null);
});

test('compaction packs small records: 4 KiB random writes cost at most 1% more; every read and point stays exact', async (t) => {
  const dir = makeTempDir('hindsight-pack-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_700_000_000_000_000 };
  const rng = new Random(77);
  let device = JournaledDevice.open(options(dir, clock));
  const image = Buffer.alloc(SIZE);
  const images = new Map<number, Buffer>();
  // First: 4 KiB random writes only, to measure the overhead.
  const before = device.stats().bytes;
  await randomPages(device, rng, 1500, image);
  await device.seal();
  const live = device.stats().bytes - before;
  await reclaimSpace(device, { sliceMs: 1 });
  const segments = device.stats().segments;
  const packedBytes = device.stats().bytes - before - 64 * segments;
  const ratio = packedBytes / (1500 * 4096);
  assert.ok(live / (1500 * 4096) > 1.015, `live records cost 64 bytes each (${live})`);
  assert.ok(ratio <= 1.01, `packed: ${ratio.toFixed(4)} bytes stored per byte written`);
  images.set(device.lastSeq, Buffer.from(image));

  await smallChanges(device, rng, 2500, image, images);
  await device.seal();
  const identities = scanned(dir).map(identity);
  await reclaimSpace(device, { sliceMs: 1 });
  const after = scanned(dir);
  assert.deepEqual(after.map(identity), identities, 'compaction keeps every record, seq, time and range');
  assert.ok(after.filter((r) => (r.header.flags & RecordFlag.PACKED) !== 0).length > 3000, 'most records are packed');
  assert.ok(after.some((r) => r.header.type === RecordType.WRITE && (r.header.flags & RecordFlag.PACKED) === 0), 'large writes stand alone');
  await checkReads(device, image, images, 'after compaction');

  // Replication reads packed records as records of their own, which a replica takes.
  const replicaDir = makeTempDir('hindsight-pack-replica-');
  t.after(() => fs.rmSync(replicaDir, { recursive: true, force: true }));
  const replica = JournaledDevice.open({ ...options(replicaDir, { us: 0 }), replica: true });
  for (let seq = 1; seq <= device.lastSeq;) {
    const records = await device.recordsFrom(seq, device.lastSeq, 256 * KiB);
    assert.ok(records.length > 0);
    for (const raw of records) replica.appendReplicated(raw);
    seq += records.length;
  }
  await replica.sync();
  const copy = Buffer.alloc(SIZE);
  await replica.read(0, copy);
  assert.ok(copy.equals(image), 'a replica fed from packed records reads the same');
  assert.deepEqual(scanned(replicaDir).map(identity), identities, 'and holds the same records');
  await replica.close();

  // Tables of contents list packed records: a reopen takes the history from them, the same
  // history a scan of the packs gives.
  const entries = (d: JournaledDevice) => {
    const out: string[] = [];
    for (let seq = 1; seq <= d.lastSeq; seq += 1) {
      const e = d.history.entry(seq);
      out.push(`${e.seq}/${e.type}/${e.flags}/${e.segment}/${e.payloadPosition}/${e.payloadBytes}/${e.payloadSkip}/${e.logicalBytes ?? 0}/${e.timeUs}/${e.offsetBytes}/${e.lengthBytes}`);
    }
    return out;
  };
  const known = entries(device);
  await device.checkpoint();
  await device.close();
  device = JournaledDevice.open(options(dir, clock));
  assert.ok(device.openReport.historyFromTocs > 3000, `the history came from tables of contents (${device.openReport.historyFromTocs} records)`);
  assert.deepEqual(entries(device), known, 'tables of contents give the history a scan gives');
  await checkReads(device, image, images, 'after a reopen from tables of contents');

  // A reopen without checkpoint nor tables of contents reads the packs themselves.
  await device.close();
  const journal = path.join(dir, 'journal');
  for (const name of fs.readdirSync(journal)) if (name.endsWith('.toc')) fs.rmSync(path.join(journal, name));
  fs.rmSync(path.join(dir, 'index.ckpt'), { force: true });
  device = JournaledDevice.open(options(dir, clock));
  assert.deepEqual(entries(device), known, 'the packs give the history the tables gave');
  await checkReads(device, image, images, 'after a reopen from the journal alone');
  assert.deepEqual((await device.fsck(false)).problems, [], 'fsck is clean');
  await device.scrub();
  assert.equal(device.corruptionError, null, 'the scrub finds nothing');

  // More writes, then retention compacts packed segments again: still exact.
  await smallChanges(device, rng, 800, image, images);
  await device.seal();
  await reclaimSpace(device, { sliceMs: 1 });
  await checkReads(device, image, images, 'after compacting again');
  await device.close();
  device = JournaledDevice.open(options(dir, clock));
  await checkReads(device, image, images, 'after a reopen');
  await device.close();
});

test('damage to a pack is refused: its entries at open, a packed payload at read and by fsck', async (t) => {
  const dir = makeTempDir('hindsight-pack-damage-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_700_000_000_000_000 };
  const rng = new Random(9);
  let device = JournaledDevice.open(options(dir, clock));
  const image = Buffer.alloc(SIZE);
  await randomPages(device, rng, 600, image);
  await device.seal();
  await reclaimSpace(device, { sliceMs: 1 });
  // Records after the packs, made durable: they say the packs were durable (else a damaged
  // last record could be a torn tail).
  await device.write(0, rng.bytes(4096), { fua: true }).then(() => device.read(0, image.subarray(0, 4096)));
  const packed = scanned(dir).find((r) => (r.header.flags & RecordFlag.PACKED) !== 0 && r.header.type === RecordType.WRITE && r.header.seq > 100)!;
  assert.ok(packed, 'a packed write');
  // The live volume still shows it? Find a block whose current content is that record's.
  const current = device.history.entry(packed.header.seq);
  await device.close();
  const file = segmentPath(path.join(dir, 'journal'), packed.segmentIndex);
  const original = fs.readFileSync(file);

  // A flipped byte in a packed payload: a read of it is refused, and fsck reports it.
  const damagedPayload = Buffer.from(original);
  damagedPayload[packed.payloadPosition + 100] ^= 0x40;
  fs.writeFileSync(file, damagedPayload);
  device = JournaledDevice.open(options(dir, clock));
  const got = Buffer.alloc(4096);
  const view = new PointView('p', device, packed.header.seq);
  await assert.rejects(view.read(current.offsetBytes, got), (err) => isHindsightError(err, 'JOURNAL_CORRUPT'), 'the damaged payload is not served');
  view.close();
  const report = await device.fsck(false).catch((err) => err);
  assert.ok(isHindsightError(report, 'JOURNAL_CORRUPT') || report.problems.length > 0, 'fsck reports the damage');
  await device.close().catch(() => undefined);

  // A flipped byte in a pack's entry table: the pack fails its CRC, and no start serves it.
  const damagedEntry = Buffer.from(original);
  damagedEntry[packed.recordPosition + 56 + 5] ^= 0x01;
  fs.writeFileSync(file, damagedEntry);
  fs.rmSync(path.join(dir, 'index.ckpt'), { force: true });
  assert.throws(() => JournaledDevice.open(options(dir, clock)), (err) => isHindsightError(err, 'JOURNAL_CORRUPT'));
  fs.writeFileSync(file, original);
  device = JournaledDevice.open(options(dir, clock));
  const whole = Buffer.alloc(SIZE);
  await device.read(0, whole);
  assert.ok(whole.equals(image), 'restored, the volume reads as written');
  await device.close();
});

test('a failback cut inside a pack keeps exactly the records up to the common seq', async (t) => {
  const dir = makeTempDir('hindsight-pack-cut-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_700_000_000_000_000 };
  const rng = new Random(13);
  const device = JournaledDevice.open(options(dir, clock));
  const image = Buffer.alloc(SIZE);
  const images = new Map<number, Buffer>();
  await smallChanges(device, rng, 700, image, images);
  await device.seal();
  await reclaimSpace(device, { sliceMs: 1 });
  await device.close();
  const records = scanned(dir);
  const journal = path.join(dir, 'journal');
  const segment = listSegments(nodeFileLayer, journal)[0];
  const inSegment = records.filter((r) => r.segmentIndex === segment);
  // A common seq in the middle of a pack, and one at a record of its own.
  const cutInPack = inSegment.find((r, i) => i > 10 && (r.header.flags & RecordFlag.PACKED) !== 0 && inSegment[i + 1]?.recordPosition === r.recordPosition)!;
  const cutAlone = inSegment.find((r) => (r.header.flags & RecordFlag.PACKED) === 0 && r.header.seq > 1);
  for (const cut of [cutInPack, cutAlone]) {
    if (!cut) continue;
    const target = makeTempDir('hindsight-pack-cut-copy-');
    t.after(() => fs.rmSync(target, { recursive: true, force: true }));
    fs.mkdirSync(path.join(target, 'journal'));
    await copySegmentPrefix({ files: nodeFileLayer, directory: journal, crcSeed: CRC_SEED }, segment, inSegment[0].header.seq, cut.header.seq, segmentPath(path.join(target, 'journal'), segment));
    const copied = scanned(target);
    assert.deepEqual(copied.map(identity), inSegment.filter((r) => r.header.seq <= cut.header.seq).map(identity), `cut at seq ${cut.header.seq}`);
    const reopened = JournaledDevice.open(options(target, { ...clock }));
    // (A packed record's seqDurable is its pack's: the cut must not claim seqs it lacks.)
    assert.ok(reopened.durableSeq <= reopened.lastSeq, `cut at seq ${cut.header.seq}: durable ${reopened.durableSeq}, last ${reopened.lastSeq}`);
    const expected = [...images.entries()].filter(([seq]) => seq <= cut.header.seq).pop();
    if (expected) assert.ok((await readPoint(reopened, expected[0])).equals(expected[1]), `cut at seq ${cut.header.seq}: point seq ${expected[0]} reads as it was`);
    await reopened.close();
  }
  assert.ok(cutInPack, 'a cut inside a pack was tried');
});

test('a damaged last pack is corruption, not a torn tail: no start cuts durable records', async (t) => {
  const dir = makeTempDir('hindsight-pack-last-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_700_000_000_000_000 };
  const device = JournaledDevice.open(options(dir, clock));
  await randomPages(device, new Random(21), 300, Buffer.alloc(SIZE));
  await device.seal();
  await reclaimSpace(device, { sliceMs: 1 });
  await device.close();
  // The last pack of the journal, nothing after it claiming it durable, no checkpoint.
  const last = scanned(dir).filter((r) => (r.header.flags & RecordFlag.PACKED) !== 0 && r.header.payloadBytes > 0).pop()!;
  const file = segmentPath(path.join(dir, 'journal'), last.segmentIndex);
  const bytes = fs.readFileSync(file);
  bytes[last.payloadPosition + 7] ^= 0x10;
  fs.writeFileSync(file, bytes);
  fs.rmSync(path.join(dir, 'index.ckpt'), { force: true });
  assert.throws(() => JournaledDevice.open(options(dir, clock)), (err) => isHindsightError(err, 'JOURNAL_CORRUPT'));
  assert.equal(fs.readFileSync(file).length, bytes.length, 'nothing was cut');
});
