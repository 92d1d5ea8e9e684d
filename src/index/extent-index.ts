/**
 * Where the current content of every byte range lives: an ordered map of non-overlapping
 * extents, each pointing at a journal payload (segment, position) or saying "zero".
 *
 * Off the JS heap and O(log n): the volume is cut into 4 MiB regions; each region that was
 * ever written holds its extents in one growable Uint32Array, sorted by start. An extent is
 * 24 bytes: start and end (within the region), the journal segment, the record's payload
 * position and length (reads verify the payload's chunk checksums, so they need the whole
 * record's geometry), and `delta`, where `start` falls within that payload. Lookup is a
 * binary search in one region; an update splices a few entries with copyWithin. A
 * sequential 1 MiB write is one extent, not 256. Segment 0 means "zero, deallocated";
 * ZERO_ALLOCATED means "zero, allocated".
 */
import { assert } from '../core/index.js';

export const REGION_SHIFT = 22;
export const REGION_BYTES = 2 ** REGION_SHIFT;
export const SEGMENT_ZERO = 0;
export const SEGMENT_ZERO_ALLOCATED = 0xffffffff;
/**
 * Data retention reclaimed (a thinned record). Only history snapshots of expired points can
 * hold it; reading it is refused (POINT_EXPIRED), never served.
 */
export const SEGMENT_DROPPED = 0xfffffffe;
export { PAYLOAD_COMPRESSED } from '../journal/record.js';
export const EXTENT_STRIDE = 6;
const STRIDE = EXTENT_STRIDE;

export interface ExtentVisit {
  startBytes: number;
  endBytes: number;
  /** SEGMENT_ZERO / SEGMENT_ZERO_ALLOCATED, a journal segment, or -1 for "not in the index". */
  segment: number;
  /** Data extents: where the record's payload starts, how long it is, and where in it
   * `startBytes` falls. */
  payloadPosition: number;
  payloadBytes: number;
  delta: number;
}

/** The extents of one 4 MiB region: sorted, disjoint, STRIDE numbers each. */
export class Region {
  entries: Uint32Array;
  count = 0;

  constructor(capacity = 8) {
    this.entries = new Uint32Array(capacity * STRIDE);
  }

  /** An exact-size copy (history snapshots), or a working copy with room to grow. */
  static from(entries: Uint32Array, spare = 8): Region {
    const region = new Region(entries.length / STRIDE + spare);
    region.entries.set(entries);
    region.count = entries.length / STRIDE;
    return region;
  }

  /** The live extents (a view, not a copy). */
  get used(): Uint32Array {
    return this.entries.subarray(0, this.count * STRIDE);
  }

  /** First extent whose end is after `offset` (extents are sorted and disjoint). */
  firstEndingAfter(offset: number): number {
    let low = 0;
    let high = this.count;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.entries[middle * STRIDE + 1] <= offset) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** Replaces extents [from, to) with `replacement` (flat, STRIDE per extent). */
  splice(from: number, to: number, replacement: number[]): void {
    const added = replacement.length / STRIDE;
    const newCount = this.count - (to - from) + added;
    if (newCount * STRIDE > this.entries.length) {
      const grown = new Uint32Array(Math.max(newCount, this.entries.length / STRIDE * 2) * STRIDE);
      grown.set(this.entries.subarray(0, this.count * STRIDE));
      this.entries = grown;
    }
    this.entries.copyWithin((from + added) * STRIDE, to * STRIDE, this.count * STRIDE);
    this.entries.set(replacement, from * STRIDE);
    this.count = newCount;
  }

  /**
   * Maps [start, stop) (region-relative) to `value` = [segment, payloadPosition, delta,
   * payloadBytes], cutting the extents it overlaps. Returns the change in extent count.
   */
  set(start: number, stop: number, value: readonly number[]): number {
    const entries = this.entries;
    const first = this.firstEndingAfter(start);
    const replacement: number[] = [];
    let last = first;
    if (first < this.count && entries[first * STRIDE] < start) {
      // The extent straddling `start` keeps its head.
      const at = first * STRIDE;
      replacement.push(entries[at], start, entries[at + 2], entries[at + 3], entries[at + 4], entries[at + 5]);
    }
    replacement.push(start, stop, value[0], value[1], value[2], value[3]);
    while (last < this.count && entries[last * STRIDE] < stop) {
      const at = last * STRIDE;
      const lastStop = entries[at + 1];
      if (lastStop > stop) {
        // The extent straddling `stop` keeps its tail, further into its payload.
        const lastStart = entries[at];
        const tailDelta = isZero(entries[at + 2]) ? 0 : entries[at + 4] + (stop - lastStart);
        replacement.push(stop, lastStop, entries[at + 2], entries[at + 3], tailDelta, entries[at + 5]);
      }
      last += 1;
    }
    const before = this.count;
    this.splice(first, last, replacement);
    return this.count - before;
  }
}

export class ExtentIndex {
  private readonly regions: Array<Region | undefined>;
  private extentTotal = 0;

  constructor(readonly sizeBytes: number) {
    this.regions = new Array(Math.ceil(sizeBytes / REGION_BYTES));
  }

  get extentCount(): number {
    return this.extentTotal;
  }

  /** Bytes of the index's own arrays (for volume info). */
  get memoryBytes(): number {
    let bytes = 0;
    for (const region of this.regions) if (region) bytes += region.entries.byteLength;
    return bytes;
  }

  /**
   * Maps [offset, offset+length) to a whole record payload at (segment, payloadPosition);
   * `payloadField`: the payload's length (a container's plus PAYLOAD_COMPRESSED).
   */
  setData(offsetBytes: number, lengthBytes: number, segment: number, payloadPosition: number, payloadField = lengthBytes): void {
    assert(segment !== SEGMENT_ZERO && segment !== SEGMENT_ZERO_ALLOCATED, 'data extents name a real segment');
    this.set(offsetBytes, lengthBytes, segment, payloadPosition, payloadField);
  }

  setZero(offsetBytes: number, lengthBytes: number, allocated: boolean): void {
    this.set(offsetBytes, lengthBytes, allocated ? SEGMENT_ZERO_ALLOCATED : SEGMENT_ZERO, 0, 0);
  }

  /** Calls `visit` for consecutive pieces covering the range, gaps included (segment -1). */
  lookup(offsetBytes: number, lengthBytes: number, visit: (piece: ExtentVisit) => void): void {
    lookupRegions((index) => this.regions[index], offsetBytes, lengthBytes, visit);
  }

  /** The region's extents (a live view), or undefined where nothing was ever written. */
  region(regionIndex: number): Region | undefined {
    return this.regions[regionIndex];
  }

  /** Replaces a whole region (rollback installs the regions of an earlier point). */
  replaceRegion(regionIndex: number, region: Region | undefined): void {
    this.extentTotal += (region?.count ?? 0) - (this.regions[regionIndex]?.count ?? 0);
    this.regions[regionIndex] = region;
  }

  get regionCount(): number {
    return this.regions.length;
  }

  /** Serialises every region (for the checkpoint). */
  *regionsForCheckpoint(): Generator<{ regionIndex: number; entries: Uint32Array }> {
    for (let index = 0; index < this.regions.length; index += 1) {
      const region = this.regions[index];
      if (region && region.count > 0) yield { regionIndex: index, entries: region.entries.subarray(0, region.count * STRIDE) };
    }
  }

  /** Restores one region from a checkpoint (entries already validated by the caller). */
  loadRegion(regionIndex: number, entries: Uint32Array): void {
    assert(regionIndex < this.regions.length && entries.length % STRIDE === 0, 'checkpoint region fits the volume');
    const region = new Region(Math.max(8, entries.length / STRIDE));
    region.entries.set(entries);
    region.count = entries.length / STRIDE;
    let previousEnd = 0;
    for (let i = 0; i < region.count; i += 1) {
      const start = region.entries[i * STRIDE];
      const stop = region.entries[i * STRIDE + 1];
      assert(start >= previousEnd && stop > start && stop <= REGION_BYTES, 'checkpoint extents are sorted and disjoint');
      previousEnd = stop;
    }
    this.extentTotal += region.count - (this.regions[regionIndex]?.count ?? 0);
    this.regions[regionIndex] = region;
  }

  private set(offsetBytes: number, lengthBytes: number, segment: number, payloadPosition: number, payloadBytes: number): void {
    assert(lengthBytes > 0 && offsetBytes + lengthBytes <= this.sizeBytes, 'extent within the volume');
    assert(payloadPosition <= 0xffffffff && payloadBytes <= 0xffffffff, 'journal positions fit 32 bits');
    const end = offsetBytes + lengthBytes;
    let at = offsetBytes;
    while (at < end) {
      const regionIndex = Math.floor(at / REGION_BYTES);
      const base = regionIndex * REGION_BYTES;
      const pieceEnd = Math.min(end, base + REGION_BYTES);
      const delta = isZero(segment) ? 0 : at - offsetBytes;
      let region = this.regions[regionIndex];
      if (!region) this.regions[regionIndex] = region = new Region();
      this.extentTotal += region.set(at - base, pieceEnd - base, [segment, payloadPosition, delta, payloadBytes]);
      at = pieceEnd;
    }
  }
}

export function isZero(segment: number): boolean {
  return segment === SEGMENT_ZERO || segment === SEGMENT_ZERO_ALLOCATED;
}

/**
 * Calls `visit` for consecutive pieces covering the range, gaps included (segment -1), over
 * any source of regions: the live index, or a point in history (history.ts).
 */
export function lookupRegions(regionAt: (regionIndex: number) => Region | undefined, offsetBytes: number, lengthBytes: number, visit: (piece: ExtentVisit) => void): void {
  const end = offsetBytes + lengthBytes;
  let at = offsetBytes;
  while (at < end) {
    const regionIndex = Math.floor(at / REGION_BYTES);
    const regionBase = regionIndex * REGION_BYTES;
    const regionEnd = Math.min(end, regionBase + REGION_BYTES);
    const region = regionAt(regionIndex);
    if (!region || region.count === 0) {
      visit({ startBytes: at, endBytes: regionEnd, segment: -1, payloadPosition: 0, payloadBytes: 0, delta: 0 });
      at = regionEnd;
      continue;
    }
    at = lookupInRegion(region, regionBase, at, regionEnd, visit);
  }
}

function lookupInRegion(region: Region, base: number, from: number, to: number, visit: (piece: ExtentVisit) => void): number {
  const entries = region.entries;
  let at = from;
  for (let i = region.firstEndingAfter(at - base); i < region.count && at < to; i += 1) {
    const start = base + entries[i * STRIDE];
    const stop = base + entries[i * STRIDE + 1];
    if (start >= to) break;
    if (start > at) {
      visit({ startBytes: at, endBytes: start, segment: -1, payloadPosition: 0, payloadBytes: 0, delta: 0 });
      at = start;
    }
    const pieceEnd = Math.min(stop, to);
    const segment = entries[i * STRIDE + 2];
    const zero = isZero(segment);
    visit({
      startBytes: at, endBytes: pieceEnd, segment,
      payloadPosition: zero ? 0 : entries[i * STRIDE + 3],
      payloadBytes: zero ? 0 : entries[i * STRIDE + 5],
      delta: zero ? 0 : entries[i * STRIDE + 4] + (at - start),
    });
    at = pieceEnd;
  }
  if (at < to) visit({ startBytes: at, endBytes: to, segment: -1, payloadPosition: 0, payloadBytes: 0, delta: 0 });
  return to;
}
