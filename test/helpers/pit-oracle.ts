/**
 * The oracle of point-in-time tests: a volume's content (and allocation) at any seq, with
 * rollback semantics — the image at a REVERT record is the image at its target, and the
 * records between the target and the revert stay readable at their own seqs.
 *
 * Memory-light: only the changes are kept (a write keeps its payload); an image is rebuilt
 * by replay from the nearest cached image (or from the revert that starts its branch), and
 * a few recent images are cached. Each image also carries the allocation every byte should
 * report, so block status can be checked exactly.
 */
import type { Extent } from '../../src/core/index.js';

/** Allocation of one byte, as block status should report it. */
export const Alloc = {
  /** Never written (reads as zeroes, or as the base says) / trimmed / zeroed with mayTrim. */
  HOLE: 0,
  /** Zeroed without mayTrim: reads as zeroes, allocated. */
  ZERO_ALLOCATED: 1,
  DATA: 2,
} as const;

export type PitRecord =
  | { kind: 'write'; offsetBytes: number; data: Buffer; timeUs: number }
  | { kind: 'zero'; offsetBytes: number; lengthBytes: number; allocated: boolean; timeUs: number }
  | { kind: 'trim'; offsetBytes: number; lengthBytes: number; timeUs: number }
  | { kind: 'flush'; timeUs: number }
  | { kind: 'revert'; target: number; timeUs: number };

export interface Image {
  /** Content. Shared with the cache: never modify. */
  data: Buffer;
  /** One Alloc value per byte. Shared with the cache: never modify. */
  alloc: Uint8Array;
}

export class PitOracle {
  private readonly records: PitRecord[] = [];
  /** Seqs of the REVERT records, ascending. */
  private readonly reverts: number[] = [];
  private readonly cache = new Map<number, Image>();
  /** The image at seqLast (kept up to date incrementally). */
  private live: { data: Buffer; alloc: Uint8Array };
  private readonly zeroImage: Image;
  imagesBuilt = 0;
  recordsReplayed = 0;

  /**
   * `base`: what the volume reads where it never wrote (a clone's point in its source);
   * without one, zeroes that are holes.
   */
  constructor(readonly sizeBytes: number, base?: Image, private readonly cacheMax = 6) {
    this.zeroImage = base ? { data: Buffer.from(base.data), alloc: Uint8Array.from(base.alloc) } : { data: Buffer.alloc(sizeBytes), alloc: new Uint8Array(sizeBytes) };
    this.live = { data: Buffer.from(this.zeroImage.data), alloc: Uint8Array.from(this.zeroImage.alloc) };
  }

  get seqLast(): number {
    return this.records.length;
  }

  get revertSeqs(): readonly number[] {
    return this.reverts;
  }

  record(seq: number): PitRecord {
    return this.records[seq - 1];
  }

  timeOf(seq: number): number {
    return this.records[seq - 1].timeUs;
  }

  get timeLastUs(): number {
    return this.records.length === 0 ? 0 : this.records[this.records.length - 1].timeUs;
  }

  /** A record's time as the journal stamps it: the clock, never before the previous record. */
  private stamp(clockUs: number): number {
    return Math.max(clockUs, this.timeLastUs);
  }

  write(offsetBytes: number, data: Buffer, clockUs: number): number {
    this.push({ kind: 'write', offsetBytes, data: Buffer.from(data), timeUs: this.stamp(clockUs) });
    return this.seqLast;
  }

  zero(offsetBytes: number, lengthBytes: number, allocated: boolean, clockUs: number): number {
    this.push({ kind: 'zero', offsetBytes, lengthBytes, allocated, timeUs: this.stamp(clockUs) });
    return this.seqLast;
  }

  trim(offsetBytes: number, lengthBytes: number, clockUs: number): number {
    this.push({ kind: 'trim', offsetBytes, lengthBytes, timeUs: this.stamp(clockUs) });
    return this.seqLast;
  }

  flush(clockUs: number): number {
    this.push({ kind: 'flush', timeUs: this.stamp(clockUs) });
    return this.seqLast;
  }

  revert(target: number, clockUs: number): number {
    if (!(target >= 0 && target <= this.seqLast)) throw new Error(`revert target ${target} outside 0..${this.seqLast}`);
    const image = this.imageAt(target);
    this.records.push({ kind: 'revert', target, timeUs: this.stamp(clockUs) });
    this.reverts.push(this.seqLast);
    this.live = { data: Buffer.from(image.data), alloc: Uint8Array.from(image.alloc) };
    return this.seqLast;
  }

  private push(record: PitRecord): void {
    this.records.push(record);
    applyRecord(this.live, record);
    runsOf.delete(this.live);
  }

  /** The live image (at seqLast). Never modify. */
  liveImage(): Image {
    return this.live;
  }

  /** The image at `seq` (0: before any record). Never modify. */
  imageAt(seq: number): Image {
    if (!(seq >= 0 && seq <= this.seqLast)) throw new Error(`seq ${seq} outside 0..${this.seqLast}`);
    if (seq === this.seqLast) return this.live;
    if (seq === 0) return this.zeroImage;
    const hit = this.cache.get(seq);
    if (hit) {
      this.cache.delete(seq);
      this.cache.set(seq, hit);
      return hit;
    }
    const revert = this.lastRevertAtOrBefore(seq);
    // Replay starts at the nearest cached image of the same branch, else at the revert.
    let from = -1;
    for (const cached of this.cache.keys()) if (cached >= revert && cached < seq && cached > from) from = cached;
    let start: Image;
    if (from >= 0) {
      start = this.cache.get(from)!;
    } else if (revert > 0) {
      from = revert;
      start = this.imageAt((this.records[revert - 1] as { target: number }).target);
    } else {
      from = 0;
      start = this.zeroImage;
    }
    const image = { data: Buffer.from(start.data), alloc: Uint8Array.from(start.alloc) };
    for (let at = from + 1; at <= seq; at += 1) {
      const record = this.records[at - 1];
      if (record.kind === 'revert') throw new Error(`oracle: replay ${from + 1}..${seq} crosses revert ${at}`);
      applyRecord(image, record);
      this.recordsReplayed += 1;
    }
    this.imagesBuilt += 1;
    this.cache.set(seq, image);
    while (this.cache.size > this.cacheMax) this.cache.delete(this.cache.keys().next().value as number);
    return image;
  }

  /** The last revert at or before `seq` (0 if none). */
  lastRevertAtOrBefore(seq: number): number {
    let low = 0;
    let high = this.reverts.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.reverts[middle] <= seq) low = middle + 1;
      else high = middle;
    }
    return low === 0 ? 0 : this.reverts[low - 1];
  }

  /** The last record whose time is <= `timeUs` (0 if none). */
  seqAtTime(timeUs: number): number {
    let low = 0;
    let high = this.records.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.records[middle].timeUs <= timeUs) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** Seqs that are no longer on the live branch: those a later revert went back over. */
  abandonedSeqs(): number[] {
    const abandoned = new Set<number>();
    for (const revert of this.reverts) {
      const target = (this.records[revert - 1] as { target: number }).target;
      for (let seq = target + 1; seq < revert; seq += 1) abandoned.add(seq);
    }
    return [...abandoned].sort((a, b) => a - b);
  }
}

function applyRecord(image: { data: Buffer; alloc: Uint8Array }, record: PitRecord): void {
  switch (record.kind) {
    case 'write':
      record.data.copy(image.data, record.offsetBytes);
      // Only what changed is stored: all-zero bytes become allocated zeroes.
      image.alloc.fill(record.data.every((byte) => byte === 0) ? Alloc.ZERO_ALLOCATED : Alloc.DATA, record.offsetBytes, record.offsetBytes + record.data.length);
      break;
    case 'zero':
      image.data.fill(0, record.offsetBytes, record.offsetBytes + record.lengthBytes);
      image.alloc.fill(record.allocated ? Alloc.ZERO_ALLOCATED : Alloc.HOLE, record.offsetBytes, record.offsetBytes + record.lengthBytes);
      break;
    case 'trim':
      image.data.fill(0, record.offsetBytes, record.offsetBytes + record.lengthBytes);
      image.alloc.fill(Alloc.HOLE, record.offsetBytes, record.offsetBytes + record.lengthBytes);
      break;
    case 'flush':
      break;
    case 'revert':
      throw new Error('oracle: a revert is not applied in place');
  }
}

/** Runs of equal allocation over a whole image (computed once per image). */
const runsOf = new WeakMap<Image, { starts: number[]; allocs: number[] }>();

function allocRuns(image: Image): { starts: number[]; allocs: number[] } {
  const known = runsOf.get(image);
  if (known) return known;
  const alloc = image.alloc;
  const words = alloc.byteOffset % 4 === 0 ? new Uint32Array(alloc.buffer, alloc.byteOffset, alloc.length >>> 2) : null;
  const starts: number[] = [];
  const allocs: number[] = [];
  let at = 0;
  while (at < alloc.length) {
    const value = alloc[at];
    const repeated = (value * 0x01010101) >>> 0;
    starts.push(at);
    allocs.push(value);
    at += 1;
    for (;;) {
      if (words && (at & 3) === 0) {
        while ((at >>> 2) < words.length && words[at >>> 2] === repeated) at += 4;
      }
      if (at < alloc.length && alloc[at] === value) at += 1;
      else break;
    }
  }
  const runs = { starts, allocs };
  runsOf.set(image, runs);
  return runs;
}

/** The extents block status should report for [offset, offset+length) of `image`. */
export function expectedExtents(image: Image, offsetBytes: number, lengthBytes: number): Extent[] {
  const { starts, allocs } = allocRuns(image);
  const end = offsetBytes + lengthBytes;
  let low = 0;
  let high = starts.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >>> 1;
    if (starts[middle] <= offsetBytes) low = middle;
    else high = middle - 1;
  }
  const extents: Extent[] = [];
  for (let i = low; i < starts.length && starts[i] < end; i += 1) {
    const from = Math.max(starts[i], offsetBytes);
    const to = Math.min(i + 1 < starts.length ? starts[i + 1] : image.alloc.length, end);
    extents.push({ lengthBytes: to - from, hole: allocs[i] === Alloc.HOLE, zero: allocs[i] !== Alloc.DATA });
  }
  return extents;
}

const ZEROES = Buffer.alloc(1024 * 1024);

/** The first non-zero byte of `bytes`, or -1. */
export function firstNonZero(bytes: Uint8Array): number {
  for (let at = 0; at < bytes.length; at += ZEROES.length) {
    const piece = bytes.subarray(at, Math.min(bytes.length, at + ZEROES.length));
    if (Buffer.compare(piece, ZEROES.subarray(0, piece.length)) === 0) continue;
    for (let i = 0; i < piece.length; i += 1) if (piece[i] !== 0) return at + i;
  }
  return -1;
}

/** The first offset where two buffers differ, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.compare(a, b) === 0) return -1;
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i += 1) if (a[i] !== b[i]) return i;
  return length;
}
