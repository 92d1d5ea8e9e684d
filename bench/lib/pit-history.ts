/**
 * Builds big volume histories fast for pit-bench.ts: a JournaledDevice of the frozen build
 * snapshot, opened in this process on a volume directory the daemon created (same options as
 * VolumeManager.load: LIMITS, node file layer, volume id from volume.json), written to
 * directly, then closed (index checkpoint written) so the daemon can serve it.
 *
 * Two shapes:
 * - buildPitHistory: many 4 KiB writes at random offsets of a big volume, some of them into
 *   a few hot zones, with flushes in between, on a synthetic clock spread over some hours.
 *   Every payload carries a stamp (magic, seq, offset) in its first 16 bytes, and the
 *   offset, seq and time of every write are kept, so that a read at any point can be
 *   checked exactly.
 * - buildSeqVolume: a volume filled with 1 MiB writes and then overwritten in two phases
 *   (1 MiB and 4 KiB writes at random places); the point between the phases is "old".
 *   Payloads are slices of a random pool, and the SHA-256 of the whole image at the old
 *   point and at the end are computed from the model, independently of Hindsight.
 */
import { createHash, randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export const STAMP_MAGIC = 0x48535042;
const BLOCK = 4096;
const MIB = 1024 * 1024;

interface Device {
  write(offsetBytes: number, data: Buffer, options: { fua: boolean }): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  stats(): Record<string, number>;
  openReport: Record<string, unknown>;
}

export interface HindsightModules {
  openDevice(options: { name: string; directory: string; sizeBytes: number; volumeIdHex: string; nowUs: () => number }): Device;
}

/** Loads JournaledDevice, LIMITS and the node file layer from a snapshot's dist/. */
export async function loadHindsightModules(root: string): Promise<HindsightModules> {
  const load = (file: string) => import(pathToFileURL(path.join(root, 'dist', file)).href);
  const { JournaledDevice } = await load('volume/journaled-device.js');
  const { LIMITS } = await load('core/limits.js');
  const { nodeFileLayer } = await load('journal/file-layer.js');
  return {
    openDevice: (options) => JournaledDevice.open({
      name: options.name,
      directory: options.directory,
      sizeBytes: options.sizeBytes,
      volumeId: Buffer.from(options.volumeIdHex.replace(/-/g, ''), 'hex'),
      files: nodeFileLayer,
      readOnly: false,
      syncEveryWrite: false,
      segmentBytesMax: LIMITS.journalSegmentBytesMax,
      checkpointEveryBytes: LIMITS.indexCheckpointEveryBytes,
      nowUs: options.nowUs,
    }) as Device,
  };
}

/** Deterministic randomness (mulberry32): the same seed builds the same history. */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** Where a build writes: a volume the daemon created, empty. */
export interface BuildTarget {
  volumeDir: string;
  volumeName: string;
  volumeIdHex: string;
  sizeBytes: number;
  seed: number;
  log: (message: string) => void;
}

/** What a built volume reports besides its content. */
export interface BuiltVolume {
  buildMs: number;
  deviceStats: Record<string, number>;
}

/** The start of a build: seeded randomness, a pool of random payload bytes, the block count. */
function startBuild(target: BuildTarget, poolBytes: number): { random: Random; pool: Buffer; poolBlocks: number; blocks: number } {
  const random = new Random(target.seed);
  const pool = Buffer.allocUnsafe(poolBytes);
  randomFillSync(pool);
  return { random, pool, poolBlocks: pool.length / BLOCK, blocks: target.sizeBytes / BLOCK };
}

/** Opens the target's JournaledDevice; refuses a volume that already has records. */
function openEmptyDevice(modules: HindsightModules, target: BuildTarget, nowUs: () => number): Device {
  const device = modules.openDevice({ name: target.volumeName, directory: target.volumeDir, sizeBytes: target.sizeBytes, volumeIdHex: target.volumeIdHex, nowUs });
  const seqLast = device.stats().seqLast;
  if (seqLast !== 0) throw new Error(`volume ${target.volumeName} is not empty (seqLast ${seqLast})`);
  return device;
}

/** The shape of a history of 4 KiB writes (pit-bench.ts takes these as options). */
export interface PitHistoryShape {
  sizeBytes: number;
  writes: number;
  /** Mean number of writes between flushes. */
  flushEvery: number;
  hotZones: number;
  hotZoneBytes: number;
  /** Share of the writes that go to the hot zones. */
  hotFraction: number;
  /** The synthetic clock spreads the history over this long, ending about a minute ago. */
  historyHours: number;
  seed: number;
}

export interface PitBuildOptions extends PitHistoryShape, BuildTarget {}

export interface PitHistory extends BuiltVolume {
  writes: number;
  flushes: number;
  /** Offset, seq and time (µs) of every write, in seq order. */
  offsets: Float64Array;
  seqs: Uint32Array;
  times: Float64Array;
  seqFirstWrite: number;
  seqLast: number;
  timeFirstUs: number;
  timeLastUs: number;
  hotZoneStarts: number[];
  closeMs: number;
}

export async function buildPitHistory(modules: HindsightModules, options: PitBuildOptions): Promise<PitHistory> {
  const { random, pool, poolBlocks, blocks } = startBuild(options, 64 * MIB);
  const zoneBlocks = options.hotZoneBytes / BLOCK;
  const zoneCount = Math.floor(options.sizeBytes / options.hotZoneBytes);
  const hotZoneStarts: number[] = [];
  while (hotZoneStarts.length < Math.min(options.hotZones, zoneCount)) {
    const start = random.int(zoneCount) * options.hotZoneBytes;
    if (!hotZoneStarts.includes(start)) hotZoneStarts.push(start);
  }
  hotZoneStarts.sort((a, b) => a - b);
  const spanUs = options.historyHours * 3600e6;
  // One clock step per record (writes and flush markers): exponential gaps, at least 1 µs.
  const meanStepUs = spanUs / (options.writes * (1 + 1 / options.flushEvery));
  let clockUs = Math.floor(Date.now() * 1000 - spanUs - 60e6);
  const tick = () => {
    clockUs += Math.max(1, Math.round(-Math.log(1 - random.next()) * meanStepUs));
    return clockUs;
  };
  const device = openEmptyDevice(modules, options, () => clockUs);
  let seq = 0;
  const offsets = new Float64Array(options.writes);
  const seqs = new Uint32Array(options.writes);
  const times = new Float64Array(options.writes);
  const payload = Buffer.allocUnsafe(BLOCK);
  let flushes = 0;
  const started = process.hrtime.bigint();
  const progressEvery = Math.max(1, Math.floor(options.writes / 10));
  for (let i = 0; i < options.writes; i += 1) {
    let block: number;
    if (hotZoneStarts.length > 0 && random.next() < options.hotFraction) {
      block = hotZoneStarts[random.int(hotZoneStarts.length)] / BLOCK + random.int(zoneBlocks);
    } else {
      block = random.int(blocks);
    }
    const offset = block * BLOCK;
    seq += 1;
    const from = random.int(poolBlocks) * BLOCK;
    pool.copy(payload, 0, from, from + BLOCK);
    payload.writeUInt32LE(STAMP_MAGIC, 0);
    payload.writeUInt32LE(seq, 4);
    payload.writeDoubleLE(offset, 8);
    offsets[i] = offset;
    seqs[i] = seq;
    times[i] = tick();
    // The journal copies the payload into the page cache before write() returns its
    // promise, so the one buffer can be refilled for the next write.
    await device.write(offset, payload, { fua: false });
    if (random.next() < 1 / options.flushEvery) {
      tick();
      await device.flush();
      seq += 1;
      flushes += 1;
    }
    if ((i + 1) % progressEvery === 0) {
      const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
      options.log(`  history: ${i + 1} writes, ${flushes} flushes, ${elapsed.toFixed(1)} s`);
    }
  }
  tick();
  await device.flush();
  seq += 1;
  flushes += 1;
  const buildMs = Number(process.hrtime.bigint() - started) / 1e6;
  const deviceStats = device.stats();
  if (deviceStats.seqLast !== seq) throw new Error(`history builder lost count: device at seq ${deviceStats.seqLast}, expected ${seq}`);
  const closing = process.hrtime.bigint();
  await device.close();
  const closeMs = Number(process.hrtime.bigint() - closing) / 1e6;
  return {
    writes: options.writes, flushes, offsets, seqs, times, seqFirstWrite: seqs[0], seqLast: seq,
    timeFirstUs: times[0], timeLastUs: clockUs, hotZoneStarts, buildMs, closeMs, deviceStats,
  };
}

/** How many of the first `count` values (ascending) are <= `limit` (binary search). */
function countAtMost(values: Uint32Array | Float64Array, count: number, limit: number): number {
  let low = 0;
  let high = count;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (values[middle] <= limit) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** Number of writes with seq <= `seq` (seqs ascend). */
export function writesUpTo(history: PitHistory, seq: number): number {
  return countAtMost(history.seqs, history.writes, seq);
}

/** The seq a time resolves to: the last write at or before it (0 if none). */
export function seqAtTime(history: PitHistory, timeUs: number): number {
  const writes = countAtMost(history.times, history.writes, timeUs);
  return writes === 0 ? 0 : history.seqs[writes - 1];
}

/** Seq of the last write to the 4 KiB block at `offset` at point `seq` (0: never written). */
export function expectedBlockSeq(history: PitHistory, offset: number, seq: number): number {
  for (let i = writesUpTo(history, seq) - 1; i >= 0; i -= 1) if (history.offsets[i] === offset) return history.seqs[i];
  return 0;
}

/** Expected stamp seq of every 4 KiB block of [start, start + length) at point `seq`. */
export function expectedStamps(history: PitHistory, start: number, length: number, seq: number): Uint32Array {
  const out = new Uint32Array(length / BLOCK);
  const end = start + length;
  const count = writesUpTo(history, seq);
  for (let i = 0; i < count; i += 1) {
    const offset = history.offsets[i];
    if (offset >= start && offset < end) out[(offset - start) / BLOCK] = history.seqs[i];
  }
  return out;
}

export interface SeqBuildOptions extends BuildTarget {
  /** 1 MiB writes at random 1 MiB-aligned offsets in each overwrite phase. */
  phaseBigWrites: number;
  /** 4 KiB writes at random offsets in each overwrite phase. */
  phaseSmallWrites: number;
}

export interface SeqVolume extends BuiltVolume {
  /** The old point: the flush after the fill and the first overwrite phase. */
  pointSeq: number;
  seqLast: number;
  sha256Point: string;
  sha256Latest: string;
}

export async function buildSeqVolume(modules: HindsightModules, options: SeqBuildOptions): Promise<SeqVolume> {
  const { random, pool, poolBlocks, blocks } = startBuild(options, 256 * MIB);
  /** Where in the pool each block's current content comes from. */
  const source = new Float64Array(blocks).fill(-1);
  const device = openEmptyDevice(modules, options, () => Date.now() * 1000);
  const started = process.hrtime.bigint();
  const write = async (offset: number, length: number) => {
    const from = random.int(poolBlocks - length / BLOCK) * BLOCK;
    await device.write(offset, pool.subarray(from, from + length), { fua: false });
    for (let j = 0; j < length / BLOCK; j += 1) source[offset / BLOCK + j] = from + j * BLOCK;
  };
  for (let offset = 0; offset < options.sizeBytes; offset += MIB) await write(offset, Math.min(MIB, options.sizeBytes - offset));
  await device.flush();
  options.log(`  seq volume: filled ${options.sizeBytes / MIB} MiB`);
  const phase = async () => {
    const total = options.phaseBigWrites + options.phaseSmallWrites;
    let big = options.phaseBigWrites;
    for (let i = 0; i < total; i += 1) {
      if (random.next() * (total - i) < big) {
        big -= 1;
        await write(random.int(options.sizeBytes / MIB) * MIB, MIB);
      } else {
        await write(random.int(blocks) * BLOCK, BLOCK);
      }
      if (i % 256 === 255) await device.flush();
    }
    await device.flush();
  };
  await phase();
  const pointSeq = device.stats().seqLast;
  const sha256Point = imageSha256(pool, source);
  options.log(`  seq volume: old point at seq ${pointSeq}`);
  await phase();
  const sha256Latest = imageSha256(pool, source);
  const buildMs = Number(process.hrtime.bigint() - started) / 1e6;
  const deviceStats = device.stats();
  await device.close();
  return { pointSeq, seqLast: deviceStats.seqLast, sha256Point, sha256Latest, buildMs, deviceStats };
}

function imageSha256(pool: Buffer, source: Float64Array): string {
  const hash = createHash('sha256');
  const zeroes = Buffer.alloc(BLOCK);
  let runStart = -1;
  let runLength = 0;
  const flushRun = () => {
    if (runLength > 0) hash.update(pool.subarray(runStart, runStart + runLength));
    runLength = 0;
  };
  for (let block = 0; block < source.length; block += 1) {
    const from = source[block];
    if (from < 0) {
      flushRun();
      hash.update(zeroes);
    } else if (runLength > 0 && from === runStart + runLength) {
      runLength += BLOCK;
    } else {
      flushRun();
      runStart = from;
      runLength = BLOCK;
    }
  }
  flushRun();
  return hash.digest('hex');
}

/** Every regular file under a directory. */
export function treeFiles(directory: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(directory, { withFileTypes: true })) {
    const full = path.join(directory, entry.name);
    if (entry.isDirectory()) out.push(...treeFiles(full));
    else if (entry.isFile()) out.push(full);
  }
  return out;
}
