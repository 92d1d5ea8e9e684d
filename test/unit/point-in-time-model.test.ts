/**
 * Model test of reading a volume as it was: thousands of random changes (writes of any size
 * and alignment, zeroes with and without mayTrim, trims, flushes), random time gaps (equal
 * times and a clock stepping back included), reopens (with, without and with a stale
 * index.ckpt), chained rollbacks (to 0, to the first and the last seq, into abandoned
 * branches) and a hot region whose extents and postings outgrow the history's snapshot gap;
 * then hundreds of points read byte for byte against an oracle that knows the image at any
 * seq, block status checked at each, times resolved to seqs, writable clones of random
 * points checked against base+overlay, and the source reopened and fsck'd after it all.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { LRUCache } from 'lru-cache';
import type { BlockDevice, Extent } from '../../src/core/index.js';
import { PointIndex } from '../../src/index/index.js';
import { RecordType, nodeFileLayer, isClientWrite } from '../../src/journal/index.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import type { JournaledDeviceOptions } from '../../src/volume/journaled-device.js';
import { PointView } from '../../src/volume/point-view.js';
import { reclaimSpace } from '../../src/volume/retention.js';
import { makeTempDir } from '../helpers/daemon.js';
import { PitOracle, expectedExtents, firstDifference, firstNonZero } from '../helpers/pit-oracle.js';
import type { Image, PitRecord } from '../helpers/pit-oracle.js';
import { Random } from '../helpers/random.js';
import { randomRange } from '../helpers/volume-oracle.js';

const MiB = 1024 * 1024;
/** Two 4 MiB regions, the second partial; not a multiple of 4 KiB. */
const SIZE = 5 * MiB + 3 * 4096 + 512;
const REGION = 4 * MiB;
const SOURCE_ID = Buffer.from('0f1e2d3c4b5a69788796a5b4c3d2e1f0', 'hex');
const T0 = 1_700_000_000_000_000;

interface Clock { us: number }

function deviceOptions(directory: string, clock: Clock, volumeId: Buffer, base?: BlockDevice): JournaledDeviceOptions {
  return {
    name: 'pit', directory, sizeBytes: SIZE, volumeId, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 384 * 1024, checkpointEveryBytes: 160 * 1024,
    idleCheckpointMs: 0, nowUs: () => clock.us, base,
  };
}

/** Moves the clock: often not at all (equal times), sometimes back (the journal keeps time monotonic). */
function tick(rng: Random, clock: Clock): void {
  const r = rng.int(20);
  if (r < 5) return;
  if (r < 10) clock.us += 1 + rng.int(10);
  else if (r < 16) clock.us += 1 + rng.int(5000);
  else if (r < 19) clock.us += 1 + rng.int(10_000_000);
  else clock.us -= 1 + rng.int(50);
}

/** The oracle's kind of a history record: a client write is a write however it was stored. */
function kindOf(type: number, flags = 0): PitRecord['kind'] | string {
  if (isClientWrite(type, flags)) return 'write';
  switch (type) {
    case RecordType.ZERO: return 'zero';
    case RecordType.TRIM: return 'trim';
    case RecordType.FLUSH: return 'flush';
    case RecordType.REVERT: return 'revert';
    default: return `type ${type}`;
  }
}

/** A volume under test with its oracle. */
class Subject {
  device: JournaledDevice;
  /** An index.ckpt kept aside (and the seqLast when it was kept): reopening with it replays a longer tail. */
  staleCheckpoint: { bytes: Buffer; seq: number } | null = null;
  /** Payloads compressed by compactions along the way. */
  compactions = 0;
  readonly flushSeqs: number[] = [];
  reopens = { checkpoint: 0, none: 0, stale: 0 };
  /** History records read from segment tables of contents at reopens (instead of the segments). */
  recordsFromTocs = 0;
  /** Set: the clock moves only when the test moves it. */
  frozen = false;
  /** Draws of its own for page updates, so the main draws (and known seeds) stay as they were. */
  readonly updates: Random;

  constructor(readonly label: string, readonly rng: Random, readonly clock: Clock, readonly options: JournaledDeviceOptions, readonly oracle: PitOracle) {
    this.device = JournaledDevice.open(options);
    this.updates = new Random(0x9a6e ^ options.sizeBytes ^ label.length);
  }

  get seqLast(): number {
    return this.oracle.seqLast;
  }

  /** After each record: the seq is the next one, and the record's time is as the oracle says. */
  private recorded(step: string): void {
    const seq = this.oracle.seqLast;
    assert.equal(this.device.stats().seqLast, seq, `${this.label} ${step}: seq is gap-free`);
    assert.equal(this.device.history.seqLast, seq, `${this.label} ${step}: history has every record`);
    assert.equal(this.device.history.timeOf(seq), this.oracle.timeOf(seq), `${this.label} ${step}: time of seq ${seq}`);
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    if (!this.frozen) tick(this.rng, this.clock);
    await this.device.write(offsetBytes, data, { fua: this.rng.int(60) === 0 });
    this.oracle.write(offsetBytes, data, this.clock.us);
    this.recorded(`write ${offsetBytes}+${data.length}`);
  }

  async zero(offsetBytes: number, lengthBytes: number, mayTrim: boolean): Promise<void> {
    if (!this.frozen) tick(this.rng, this.clock);
    await this.device.writeZeroes(offsetBytes, lengthBytes, { fua: this.rng.int(60) === 0, mayTrim, fastOnly: this.rng.int(2) === 0 });
    this.oracle.zero(offsetBytes, lengthBytes, !mayTrim, this.clock.us);
    this.recorded(`zero ${offsetBytes}+${lengthBytes}`);
  }

  async trim(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (!this.frozen) tick(this.rng, this.clock);
    await this.device.trim(offsetBytes, lengthBytes, { fua: false });
    this.oracle.trim(offsetBytes, lengthBytes, this.clock.us);
    this.recorded(`trim ${offsetBytes}+${lengthBytes}`);
  }

  async flush(): Promise<void> {
    if (!this.frozen) tick(this.rng, this.clock);
    await this.device.flush();
    this.flushSeqs.push(this.oracle.flush(this.clock.us));
    this.recorded('flush');
    assert.equal(this.device.history.typeOf(this.seqLast), RecordType.FLUSH, `${this.label}: a flush appends a FLUSH marker`);
  }

  async rollback(target: number): Promise<void> {
    if (!this.frozen) tick(this.rng, this.clock);
    const result = await this.device.rollback(target);
    const seq = this.oracle.revert(target, this.clock.us);
    assert.deepEqual(result, { seq, timeUs: this.oracle.timeOf(seq) }, `${this.label}: rollback to ${target} is record ${seq}`);
    this.recorded(`rollback to ${target}`);
    assert.equal(this.device.history.typeOf(seq), RecordType.REVERT);
    assert.equal(this.device.history.entry(seq).offsetBytes, target, 'a REVERT names its target');
  }

  /** One random change anywhere (or, with `hot`, a small one within [hot, hot+REGION)). */
  async randomChange(hot?: number): Promise<void> {
    const rng = this.rng;
    let { offsetBytes, lengthBytes } = randomRange(rng, SIZE, 128 * 1024);
    if (hot !== undefined) {
      const aligned = rng.int(4) === 0;
      lengthBytes = aligned ? 512 * (1 + rng.int(8)) : 1 + rng.int(3000);
      offsetBytes = hot + (aligned ? 512 * rng.int((REGION - lengthBytes) / 512) : rng.int(REGION - lengthBytes));
      offsetBytes = Math.min(offsetBytes, SIZE - lengthBytes);
    }
    const action = rng.int(hot !== undefined ? 24 : 20);
    if (action < 12 || action >= 20) {
      let data = rng.bytes(lengthBytes, rng.int(5) === 0);
      if (offsetBytes % 512 === 0 && lengthBytes % 512 === 0 && this.updates.int(3) === 0) {
        // A page update: what is there with one sector changed (only that span is stored, its
        // payload skip > 0: tables of contents and replays must keep it).
        const current = Buffer.alloc(lengthBytes);
        await this.device.read(offsetBytes, current);
        const sector = this.updates.int(lengthBytes / 512) * 512;
        data.copy(current, sector, sector, sector + 512);
        data = current;
      }
      await this.write(offsetBytes, data);
    } else if (action < 15) {
      // Zeroes may be large: they are metadata.
      if (hot === undefined && rng.int(4) === 0) lengthBytes = Math.min(SIZE - offsetBytes, 1 + rng.int(MiB));
      await this.zero(offsetBytes, lengthBytes, rng.int(2) === 0);
    } else if (action < 17) {
      await this.trim(offsetBytes, lengthBytes);
    } else if (action < 19) {
      await this.flush();
    } else {
      await this.device.checkpoint();
    }
  }

  /** A rollback target: 0, 1, the last seq, an abandoned seq, an earlier revert or its target, recent, any. */
  rollbackTarget(): number {
    const rng = this.rng;
    const last = this.oracle.seqLast;
    const reverts = this.oracle.revertSeqs;
    switch (rng.int(9)) {
      case 0: return 0;
      case 1: return Math.min(1, last);
      case 2: return last;
      case 3: {
        const abandoned = this.oracle.abandonedSeqs();
        if (abandoned.length > 0) return abandoned[rng.int(abandoned.length)];
        break;
      }
      case 4:
        if (reverts.length > 0) return reverts[rng.int(reverts.length)];
        break;
      case 5:
        if (reverts.length > 0) return (this.oracle.record(reverts[rng.int(reverts.length)]) as { target: number }).target;
        break;
      case 6: return Math.max(0, last - rng.int(60));
      default: break;
    }
    return rng.int(last + 1);
  }

  /** Keeps the current index.ckpt aside: reopening with it later replays a tail with rollbacks. */
  keepCheckpoint(): void {
    const file = path.join(this.options.directory, 'index.ckpt');
    if (fs.existsSync(file)) this.staleCheckpoint = { bytes: fs.readFileSync(file), seq: this.seqLast };
  }

  /**
   * Compacts the sealed segments not compressed yet (retention with nothing expired): every
   * payload moves, compressible ones into containers; every point must read the same.
   */
  async compact(): Promise<void> {
    const report = await reclaimSpace(this.device, { sliceMs: 1 });
    this.compactions += report.recordsCompressed;
  }

  async reopen(mode: 'checkpoint' | 'none' | 'stale', base?: () => BlockDevice): Promise<void> {
    if (mode === 'stale' && !this.staleCheckpoint) mode = 'checkpoint';
    const generationBefore = this.device.retention.compactions;
    await this.device.close();
    const file = path.join(this.options.directory, 'index.ckpt');
    if (mode === 'none') fs.rmSync(file, { force: true });
    if (mode === 'stale') fs.writeFileSync(file, this.staleCheckpoint!.bytes);
    this.device = JournaledDevice.open(base ? { ...this.options, base: base() } : this.options);
    this.reopens[mode] += 1;
    this.recordsFromTocs += this.device.openReport.historyFromTocs;
    // (The checkpoint's compaction generation is at byte 104; the volume's is in retention.json.)
    if (mode === 'stale' && Number(this.staleCheckpoint!.bytes.readBigUInt64LE(104)) !== generationBefore) {
      // Made before a compaction: it names positions that moved, so it must not be used.
      assert.match(this.device.openReport.checkpoint, /^ignored \(made before compaction/, `${this.label}: a checkpoint from before a compaction is ignored`);
    } else {
      assert.equal(this.device.openReport.checkpoint, mode === 'none' ? 'absent' : 'loaded', `${this.label}: reopen (${mode})`);
    }
    assert.equal(this.device.openReport.tornTail, null, `${this.label}: a clean close leaves no torn tail`);
    assert.equal(this.device.stats().seqLast, this.seqLast, `${this.label}: reopen (${mode}) keeps every record`);
    assert.equal(this.device.history.seqLast, this.seqLast, `${this.label}: reopen (${mode}) rebuilds the whole history`);
    // Every other reopen, the background warm-up completes the snapshots (as the daemon does
    // after the scrub), in small slices; points must read the same either way.
    if ((this.reopens.checkpoint + this.reopens.none + this.reopens.stale) % 2 === 0) while (!this.device.history.warm(0));
  }

  /** The history's record table against the oracle's records: type, target and time. */
  checkRecords(): void {
    for (let seq = 1; seq <= this.seqLast; seq += 1) {
      const record = this.oracle.record(seq);
      const entry = this.device.history.entry(seq);
      if (kindOf(entry.type, entry.flags) !== record.kind || entry.timeUs !== record.timeUs || (record.kind === 'revert' && entry.offsetBytes !== record.target)) {
        assert.fail(`${this.label}: history record ${seq} is ${kindOf(entry.type, entry.flags)}@${entry.timeUs} (offset ${entry.offsetBytes}), expected ${JSON.stringify({ ...record, data: undefined })}`);
      }
    }
  }

  point(seq: number): PointView {
    return new PointView(`${this.label}@${seq}`, this.device, seq);
  }
}

/** The whole device against an image; read in one piece or in random pieces. */
async function checkImage(device: BlockDevice, expected: Image, label: string, rng: Random): Promise<void> {
  const got = Buffer.alloc(SIZE);
  if (rng.int(3) === 0) {
    for (let at = 0; at < SIZE;) {
      const length = Math.min(SIZE - at, 1 + rng.int(rng.int(2) === 0 ? 8192 : 512 * 1024));
      await device.read(at, got.subarray(at, at + length));
      at += length;
    }
  } else {
    await device.read(0, got);
  }
  const difference = firstDifference(got, expected.data);
  if (difference !== -1) {
    assert.fail(`${label}: image differs from the oracle first at offset ${difference} (got ${got[difference]}, expected ${expected.data[difference]}, expected allocation ${expected.alloc[difference]})`);
  }
}

/** Random sub-ranges against an image. */
async function checkRanges(device: BlockDevice, expected: Image, label: string, rng: Random, count: number): Promise<void> {
  for (let i = 0; i < count; i += 1) {
    const { offsetBytes, lengthBytes } = randomRange(rng, SIZE, 256 * 1024);
    const got = Buffer.alloc(lengthBytes);
    await device.read(offsetBytes, got);
    const difference = firstDifference(got, expected.data.subarray(offsetBytes, offsetBytes + lengthBytes));
    if (difference !== -1) {
      assert.fail(`${label}: read ${offsetBytes}+${lengthBytes} differs first at offset ${offsetBytes + difference} (got ${got[difference]}, expected ${expected.data[offsetBytes + difference]})`);
    }
  }
}

function plain(extents: Extent[]): Extent[] {
  return extents.map((e) => ({ lengthBytes: e.lengthBytes, hole: e.hole, zero: e.zero }));
}

/**
 * Block status of a range: what it calls hole or zero reads as zeroes (required), it covers
 * the range, and it is exactly the allocation the records made (zero allocated vs hole); a
 * small extentsMax gives a prefix of the same answer.
 */
async function checkStatus(device: BlockDevice, expected: Image, offsetBytes: number, lengthBytes: number, label: string, rng: Random): Promise<void> {
  const extents = await device.blockStatus(offsetBytes, lengthBytes, 1_000_000);
  let at = offsetBytes;
  for (const extent of extents) {
    assert.ok(extent.lengthBytes > 0, `${label}: empty extent at ${at}`);
    if (extent.hole || extent.zero) {
      const slice = expected.data.subarray(at, Math.min(at + extent.lengthBytes, offsetBytes + lengthBytes));
      const nonZero = firstNonZero(slice);
      if (nonZero !== -1) {
        assert.fail(`${label}: block status calls ${at}+${extent.lengthBytes} ${extent.hole ? 'a hole' : 'zero'}, but offset ${at + nonZero} holds ${slice[nonZero]}`);
      }
    }
    at += extent.lengthBytes;
  }
  assert.equal(at, offsetBytes + lengthBytes, `${label}: extents cover ${offsetBytes}+${lengthBytes} exactly`);
  const exact = expectedExtents(expected, offsetBytes, lengthBytes);
  if (JSON.stringify(plain(extents)) !== JSON.stringify(exact)) {
    let position = offsetBytes;
    let i = 0;
    while (i < Math.min(extents.length, exact.length) && JSON.stringify(plain([extents[i]])[0]) === JSON.stringify(exact[i])) {
      position += exact[i].lengthBytes;
      i += 1;
    }
    assert.fail(`${label}: block status of ${offsetBytes}+${lengthBytes} differs from the records' allocation from offset ${position}: got ${JSON.stringify(plain(extents.slice(i, i + 2)))}, expected ${JSON.stringify(exact.slice(i, i + 2))}`);
  }
  const max = 1 + rng.int(3);
  const few = plain(await device.blockStatus(offsetBytes, lengthBytes, max));
  assert.ok(few.length >= 1 && few.length <= max, `${label}: ${few.length} extents for extentsMax ${max}`);
  for (let i = 0; i < few.length; i += 1) {
    const last = i === few.length - 1;
    assert.equal(few[i].hole, exact[i].hole, `${label}: extentsMax ${max}, extent ${i}`);
    assert.equal(few[i].zero, exact[i].zero, `${label}: extentsMax ${max}, extent ${i}`);
    if (last) assert.ok(few[i].lengthBytes > 0 && few[i].lengthBytes <= exact[i].lengthBytes, `${label}: extentsMax ${max}, last extent within the range's`);
    else assert.equal(few[i].lengthBytes, exact[i].lengthBytes, `${label}: extentsMax ${max}, extent ${i}`);
  }
}

/** A point: whole image, random ranges, block status of the whole and of a random range. */
async function checkPoint(subject: Subject, seq: number, rng: Random, ranges = 3): Promise<void> {
  const label = `${subject.label} seq ${seq}/${subject.seqLast}`;
  const view = subject.point(seq);
  const expected = subject.oracle.imageAt(seq);
  await checkImage(view, expected, label, rng);
  await checkRanges(view, expected, label, rng, ranges);
  await checkStatus(view, expected, 0, SIZE, label, rng);
  const { offsetBytes, lengthBytes } = randomRange(rng, SIZE, 512 * 1024);
  await checkStatus(view, expected, offsetBytes, lengthBytes, label, rng);
  if (rng.int(4) === 0) {
    // A point whose region cache holds almost nothing: every region is evicted and rebuilt.
    const tiny = new PointIndex(subject.device.history, seq, new LRUCache<string, { region: { entries: Uint32Array } | undefined }>({ maxSize: 1 + rng.int(4096), sizeCalculation: (held) => 64 + (held.region?.entries.byteLength ?? 0) }));
    const got = Buffer.alloc(SIZE);
    for (let at = 0; at < SIZE;) {
      const length = Math.min(SIZE - at, 1 + rng.int(3 * REGION / 2));
      await subject.device.readAt(tiny, at, got.subarray(at, at + length));
      at += length;
    }
    const difference = firstDifference(got, expected.data);
    if (difference !== -1) assert.fail(`${label} (region cache of a few bytes): image differs first at offset ${difference}`);
  }
}

/** A cheap look during the run: one range of the live volume and one of a random earlier point. */
async function probe(subject: Subject, step: string): Promise<void> {
  const rng = subject.rng;
  await checkRanges(subject.device, subject.oracle.liveImage(), `${subject.label} ${step} live`, rng, 1);
  if (subject.seqLast === 0) return;
  const seq = 1 + rng.int(subject.seqLast);
  const view = subject.point(seq);
  const expected = subject.oracle.imageAt(seq);
  await checkRanges(view, expected, `${subject.label} ${step} seq ${seq}`, rng, 1);
  const { offsetBytes, lengthBytes } = randomRange(rng, SIZE, 256 * 1024);
  await checkStatus(view, expected, offsetBytes, lengthBytes, `${subject.label} ${step} seq ${seq}`, rng);
}

/** Resolving times to seqs: before the first record, at a record's time, between records, after the last. */
function checkTimes(subject: Subject, rng: Random, count: number): number {
  const { oracle, device } = subject;
  const last = oracle.seqLast;
  const times: number[] = [oracle.timeOf(1) - 1, oracle.timeOf(1) - 1 - rng.int(1_000_000), 0, oracle.timeOf(1), oracle.timeOf(last), oracle.timeOf(last) + 1, oracle.timeOf(last) + rng.int(1e9)];
  let equalRuns = 0;
  for (let seq = 2; seq <= last; seq += 1) if (oracle.timeOf(seq) === oracle.timeOf(seq - 1)) equalRuns += 1;
  for (let i = 0; i < count; i += 1) {
    const seq = 1 + rng.int(last);
    const time = oracle.timeOf(seq);
    switch (rng.int(4)) {
      case 0: times.push(time); break;
      case 1: times.push(time - 1); break;
      case 2: times.push(time + 1); break;
      default: times.push(seq < last ? time + rng.int(oracle.timeOf(seq + 1) - time + 1) : time + rng.int(1000)); break;
    }
  }
  for (const time of times) {
    assert.equal(device.history.lastSeqAtOrBefore(time), oracle.seqAtTime(time), `${subject.label}: last record at or before time ${time} (T0${time - T0 >= 0 ? '+' : ''}${time - T0})`);
  }
  return equalRuns;
}

/** The points worth a full check: 1, the last, around every revert, flushes, abandoned seqs, random. */
function interestingPoints(subject: Subject, rng: Random, extra: number[], randomCount: number): number[] {
  const { oracle } = subject;
  const last = oracle.seqLast;
  const points = new Set<number>([1, 2, last, last - 1, ...extra]);
  for (const revert of oracle.revertSeqs) {
    const target = (oracle.record(revert) as { target: number }).target;
    for (const seq of [revert - 1, revert, revert + 1, target, target + 1]) points.add(seq);
  }
  const flushes = subject.flushSeqs;
  for (let i = 0; i < Math.min(10, flushes.length); i += 1) points.add(flushes[rng.int(flushes.length)]);
  const abandoned = oracle.abandonedSeqs();
  for (let i = 0; i < Math.min(25, abandoned.length); i += 1) points.add(abandoned[rng.int(abandoned.length)]);
  for (let i = 0; i < randomCount; i += 1) points.add(1 + rng.int(last));
  return [...points].filter((seq) => seq >= 1 && seq <= last).sort((a, b) => a - b);
}

interface RunResult {
  subject: Subject;
  hotFrom: number;
  hotTo: number;
}

/** Builds a history of thousands of records with reopens, rollbacks and a hot region. */
async function buildHistory(dir: string, seed: number, changes: number, hotChanges: number): Promise<RunResult> {
  const rng = new Random(seed);
  const clock = { us: T0 };
  const subject = new Subject(`seed ${seed}`, rng, clock, deviceOptions(dir, clock, SOURCE_ID), new PitOracle(SIZE));
  const hotStart = Math.floor(changes / 2);
  let hotFrom = 0;
  let hotTo = 0;
  for (let step = 0; step < changes + hotChanges; step += 1) {
    const inHot = step >= hotStart && step < hotStart + hotChanges;
    if (step === hotStart) hotFrom = subject.seqLast + 1;
    if (inHot) {
      await subject.randomChange(0); // all of region 0: its extents and postings outgrow the snapshot gap
      // A rollback or two inside the hot phase: the history takes a snapshot right after each.
      if (rng.int(150) === 0) {
        if (rng.int(2) === 0) subject.keepCheckpoint();
        await subject.rollback(rng.int(2) === 0 ? hotFrom - 1 + rng.int(subject.seqLast - hotFrom + 2) : subject.rollbackTarget());
      }
      if (rng.int(40) === 0) await probe(subject, `hot step ${step}`);
      if (step === hotStart + hotChanges - 1) hotTo = subject.seqLast;
      continue;
    }
    const action = rng.int(1000);
    if (action < 9) {
      if (rng.int(2) === 0) subject.keepCheckpoint();
      await subject.rollback(subject.rollbackTarget());
      await checkImage(subject.device, subject.oracle.liveImage(), `${subject.label} after rollback (seq ${subject.seqLast})`, rng);
    } else if (action < 11) {
      await subject.reopen('checkpoint');
    } else if (action < 13) {
      await subject.reopen('none');
    } else if (action < 15) {
      await subject.reopen('stale');
    } else if (action < 18) {
      await subject.compact();
    } else {
      await subject.randomChange();
    }
    if (rng.int(40) === 0) await probe(subject, `step ${step}`);
  }
  return { subject, hotFrom, hotTo };
}

/**
 * A writable clone of `seq`: random changes against base+overlay; reopened; the source's
 * records untouched by the clone. The source itself goes on changing (and rolls back)
 * meanwhile: the clone's base is a point, so that must not show through.
 */
async function checkClone(source: Subject, seq: number, cloneDir: string, index: number): Promise<void> {
  const rng = new Random(source.rng.next());
  const volumeId = rng.bytes(16);
  const label = `${source.label} clone ${index} of seq ${seq}`;
  const baseImage = source.oracle.imageAt(seq);
  const base = () => new PointView('p', source.device, seq);
  const clock = { us: source.clock.us + 1_000_000 };
  const clone = new Subject(label, rng, clock, deviceOptions(cloneDir, clock, volumeId, base()), new PitOracle(SIZE, baseImage, 3));
  // Untouched, the clone is its base.
  await checkImage(clone.device, clone.oracle.liveImage(), `${label} (fresh)`, rng);
  await checkStatus(clone.device, clone.oracle.liveImage(), 0, SIZE, `${label} (fresh)`, rng);
  for (let step = 0; step < 160; step += 1) {
    const sourceSeqLast = source.seqLast;
    if (step === 100) await clone.rollback(clone.rollbackTarget());
    else if (step === 130) await clone.rollback(0);
    else await clone.randomChange(step >= 60 && step < 80 ? REGION - MiB : undefined);
    assert.equal(source.device.stats().seqLast, sourceSeqLast, `${label} step ${step}: the clone's records go to its own journal`);
    if (rng.int(12) === 0) await probe(clone, `step ${step}`);
    if (step === 50) await source.rollback(source.rollbackTarget());
    else if (rng.int(8) === 0) await source.randomChange();
  }
  // Points of the clone: around its rollbacks, and a few more.
  const candidates = interestingPoints(clone, rng, [], 4);
  const clonePoints = [...new Set([1, clone.seqLast, ...clone.oracle.revertSeqs, ...Array.from({ length: 6 }, () => candidates[rng.int(candidates.length)])])];
  const check = async (when: string) => {
    await checkImage(clone.device, clone.oracle.liveImage(), `${label} ${when} live`, rng);
    await checkStatus(clone.device, clone.oracle.liveImage(), 0, SIZE, `${label} ${when} live`, rng);
    for (const at of clonePoints) await checkPoint(clone, at, rng, 1);
    clone.checkRecords();
  };
  const sourceSeqLast = source.seqLast;
  await check('');
  assert.equal(source.device.stats().seqLast, sourceSeqLast, `${label}: reading the clone appends nothing to the source`);
  await clone.reopen('checkpoint', base);
  await check('reopened');
  await clone.reopen('none', base);
  await check('reopened without index.ckpt');
  const report = await clone.device.fsck(false);
  assert.deepEqual(report.problems, [], `${label}: fsck`);
  await clone.device.close();
  // The source: only its own records, its content as the oracle says.
  assert.equal(source.device.stats().seqLast, sourceSeqLast, `${label}: the source's history is untouched`);
  source.checkRecords();
  await checkImage(source.device, source.oracle.liveImage(), `${label}: source live`, rng);
  for (let i = 0; i < 2; i += 1) await checkPoint(source, 1 + rng.int(sourceSeqLast), rng, 1);
  await checkPoint(source, seq, rng, 1);
}

/** PIT_SEEDS=1,2,3 runs other seeds (a longer soak); the default three take ~10 s each. */
const SEEDS = process.env.PIT_SEEDS ? process.env.PIT_SEEDS.split(',').map(Number) : [101, 202, 303];

for (const seed of SEEDS) {
  test(`points in history match the oracle: reads, block status, times, clones, reopen (seed ${seed})`, async (t) => {
    const dir = makeTempDir('hindsight-pit-');
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const started = Date.now();
    const sourceDir = path.join(dir, 'source');
    fs.mkdirSync(sourceDir);
    const { subject, hotFrom, hotTo } = await buildHistory(sourceDir, seed, 2600, 420);
    const rng = subject.rng;
    const { oracle } = subject;
    const built = Date.now();
    // The hot region outgrew the history's snapshot gap (64 postings, or as many as extents).
    let hotExtents = 0;
    for (let seq = hotFrom; seq <= hotTo; seq += 7) hotExtents = Math.max(hotExtents, subject.device.history.regionAt(0, seq)?.count ?? 0);
    assert.ok(hotExtents > 64, `the hot region has up to ${hotExtents} extents in ${hotFrom}..${hotTo}`);
    assert.ok(hotTo - hotFrom > 2 * 64, 'the hot region has hundreds of postings');
    assert.ok(oracle.revertSeqs.length >= 5, `rollbacks happened (${oracle.revertSeqs.length})`);
    assert.ok(subject.device.stats().segments > 5, 'segments rolled');
    await checkImage(subject.device, oracle.liveImage(), `${subject.label} live`, rng);
    await checkStatus(subject.device, oracle.liveImage(), 0, SIZE, `${subject.label} live`, rng);
    subject.checkRecords();

    // Hundreds of points.
    const hot = Array.from({ length: 12 }, () => hotFrom + rng.int(hotTo - hotFrom + 1));
    const points = interestingPoints(subject, rng, [hotFrom - 1, hotFrom, hotTo, hotTo + 1, ...hot], 40);
    for (const seq of points) await checkPoint(subject, seq, rng);
    for (const seq of [0, subject.seqLast + 1]) {
      assert.throws(() => subject.point(seq === 0 ? subject.seqLast + 2 : seq), { code: 'POINT_NOT_FOUND' });
    }
    const view = subject.point(1);
    await assert.rejects(view.write(), { code: 'READ_ONLY' });
    const pointed = Date.now();

    // Times.
    const equalTimes = checkTimes(subject, rng, 300);
    assert.ok(equalTimes > 100, `many records share a time (${equalTimes})`);

    // Writable clones of random points: an abandoned seq, a revert, anything.
    const abandoned = oracle.abandonedSeqs();
    const cloneSeqs = [
      abandoned.length > 0 ? abandoned[rng.int(abandoned.length)] : 1,
      oracle.revertSeqs[rng.int(oracle.revertSeqs.length)],
      hotFrom + rng.int(hotTo - hotFrom + 1),
    ];
    for (let i = 0; i < cloneSeqs.length; i += 1) {
      const cloneDir = path.join(dir, `clone-${i}`);
      fs.mkdirSync(cloneDir);
      await checkClone(subject, cloneSeqs[i], cloneDir, i);
    }
    const cloned = Date.now();

    // The source after it all, reopened every way: live image, points, times, fsck.
    const modes: Array<'checkpoint' | 'none' | 'stale'> = ['checkpoint', 'none', 'stale'];
    for (const mode of modes) {
      await subject.reopen(mode);
      await checkImage(subject.device, oracle.liveImage(), `${subject.label} reopened (${mode}) live`, rng);
      await checkStatus(subject.device, oracle.liveImage(), 0, SIZE, `${subject.label} reopened (${mode}) live`, rng);
      subject.checkRecords();
      checkTimes(subject, rng, 50);
      const some = interestingPoints(subject, rng, [], 3);
      for (let i = 0; i < 8; i += 1) await checkPoint(subject, some[rng.int(some.length)], rng, 1);
      const report = await subject.device.fsck(false);
      assert.deepEqual(report.problems, [], `${subject.label}: fsck after reopen (${mode})`);
      assert.equal(report.records, subject.seqLast);
    }
    await subject.device.close();
    t.diagnostic(`seed ${seed}: ${subject.seqLast} records, ${oracle.revertSeqs.length} rollbacks, hot ${hotFrom}..${hotTo}, ${points.length} points, ` +
      `reopens ${JSON.stringify(subject.reopens)} (${subject.recordsFromTocs} records from tables of contents), ${subject.compactions} payloads compressed by compactions, equal-time records ${equalTimes}, oracle images ${oracle.imagesBuilt}; ` +
      `build ${built - started} ms, points ${pointed - built} ms, clones ${cloned - pointed} ms, reopen ${Date.now() - cloned} ms`);
  });
}

test('rollback chains: to 0, to the first and last seq, into an abandoned branch; every seq keeps its image', async (t) => {
  const dir = makeTempDir('hindsight-pit-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const rng = new Random(7);
  const clock = { us: T0 };
  const subject = new Subject('chain', rng, clock, deviceOptions(dir, clock, SOURCE_ID), new PitOracle(SIZE));
  const block = (_: number, length = 4096) => rng.bytes(length);
  await subject.write(0, block(1));                     // 1
  await subject.write(REGION - 2048, block(2));         // 2: straddles the regions
  await subject.flush();                                 // 3
  await subject.zero(0, 1024, false);                    // 4
  await subject.rollback(0);                             // 5: empty
  await subject.write(8192, block(3, 100));              // 6
  await subject.rollback(4);                             // 7: into the abandoned branch
  await subject.trim(REGION, 1000);                      // 8
  await subject.rollback(6);                             // 9: the branch of 5, which 7 abandoned
  await subject.rollback(9);                             // 10: the last seq (no change)
  await subject.rollback(1);                             // 11: the first seq
  await subject.write(SIZE - 3, block(4, 3));            // 12: the last bytes
  await subject.rollback(8);                             // 13
  for (let seq = 1; seq <= subject.seqLast; seq += 1) await checkPoint(subject, seq, rng, 2);
  await checkImage(subject.device, subject.oracle.liveImage(), 'chain live', rng);
  for (const mode of ['none', 'checkpoint'] as const) {
    await subject.reopen(mode);
    for (let seq = 1; seq <= subject.seqLast; seq += 1) await checkPoint(subject, seq, rng, 1);
    await checkImage(subject.device, subject.oracle.liveImage(), `chain live reopened (${mode})`, rng);
  }
  assert.deepEqual((await subject.device.fsck(false)).problems, []);
  await subject.device.close();
});

test('a rollback as the very first record, and points with equal times', async (t) => {
  const dir = makeTempDir('hindsight-pit-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const rng = new Random(11);
  const clock = { us: T0 };
  const subject = new Subject('first', rng, clock, deviceOptions(dir, clock, SOURCE_ID), new PitOracle(SIZE));
  await subject.rollback(0);                                     // 1: nothing to go back from
  await subject.write(REGION - 1, rng.bytes(2));                 // 2
  await subject.flush();                                          // 3
  await subject.rollback(1);                                     // 4: the empty volume again
  await subject.write(0, rng.bytes(512));                        // 5
  await subject.rollback(2);                                     // 6: the abandoned write of 2
  for (let seq = 1; seq <= subject.seqLast; seq += 1) await checkPoint(subject, seq, rng, 1);
  // Several records at one time (and a clock stepping back): a time resolves to the last of them.
  subject.frozen = true;
  const time = subject.oracle.timeOf(subject.seqLast);
  clock.us = time;
  await subject.write(4096, rng.bytes(100));                     // 7
  await subject.zero(0, 100, true);                               // 8
  subject.keepCheckpoint();                                       // as of the rollback at 6
  clock.us = time - 5;
  await subject.rollback(5);                                     // 9
  await subject.trim(8192, 4096);                                 // 10
  clock.us = time + 1;
  await subject.write(16384, rng.bytes(4096));                    // 11
  for (let seq = 6; seq <= 10; seq += 1) assert.equal(subject.oracle.timeOf(seq), time, `seq ${seq} keeps the time of seq 6`);
  assert.equal(subject.device.history.lastSeqAtOrBefore(time), 10);
  assert.equal(subject.device.history.lastSeqAtOrBefore(time - 1), subject.oracle.seqAtTime(time - 1));
  assert.equal(subject.device.history.lastSeqAtOrBefore(time + 1), 11);
  assert.equal(subject.device.history.lastSeqAtOrBefore(subject.oracle.timeOf(1) - 1), 0);
  for (let seq = 1; seq <= subject.seqLast; seq += 1) await checkPoint(subject, seq, rng, 1);
  for (const mode of ['stale', 'none', 'checkpoint'] as const) {
    await subject.reopen(mode);
    subject.checkRecords();
    assert.equal(subject.device.history.lastSeqAtOrBefore(time), 10, `reopened (${mode})`);
    for (let seq = 1; seq <= subject.seqLast; seq += 1) await checkPoint(subject, seq, rng, 1);
    await checkImage(subject.device, subject.oracle.liveImage(), `first live reopened (${mode})`, rng);
  }
  assert.deepEqual((await subject.device.fsck(false)).problems, []);
  await subject.device.close();
});
