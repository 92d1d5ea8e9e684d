/**
 * The volume's history: where every byte range lived at any seq, not just now.
 *
 * Two structures, both in typed arrays off the JS heap:
 * - the record table: every journal record in seq order (type, range, time, where its
 *   payload is) — 42 bytes a record; answers "which seq was the last write at time T";
 * - per 4 MiB region, its postings: the seqs of the records that touched it, ascending.
 *
 * The extents of region r at seq S are rebuilt by replaying r's postings up to S. So that
 * the cost does not grow with history, snapshots of the region's extents are kept along the
 * way, built lazily (the first time someone looks at that region) and never changed after:
 * a snapshot is taken once as many postings have been replayed since the last one as the
 * region has extents (at least SNAPSHOT_POSTINGS_MIN), so snapshots cost at most ~24 bytes
 * per posting and a lookup replays at most max(SNAPSHOT_POSTINGS_MIN, extents) postings.
 * While the volume is written, due snapshots are copies of the live index's regions
 * (snapshotFromLive): the history keeps up at the cost of a copy, not a replay; lazily built
 * ones fill in older stretches (after a restart). A REVERT record (rollback) makes every
 * region what it was at an earlier seq; a snapshot is always taken right after one, so a
 * replay never crosses a revert.
 *
 * Mounting a point is therefore O(1): a PointIndex only remembers the seq, and materialises
 * (and caches, bounded) the regions a client actually reads.
 *
 * Memory follows the points kept, not the writes: records before the oldest kept point are
 * folded into a base (fold), and inside the span, expired records that changed no content
 * (thinned writes, flushes, unchanged writes) leave the table for spans (collapseSegments):
 * rows are then found through a seq→slot map, and their entries are on disk only.
 */
import { HindsightError, assert, dropOwner, ownerPrefix, regionCache } from '../core/index.js';
import type { ByteCache } from '../core/index.js';
import { RecordFlag, RecordType, isClientWrite, storedSpan, thinnableBytes } from '../journal/record.js';
import { EXTENT_STRIDE, ExtentIndex, PAYLOAD_COMPRESSED, REGION_BYTES, Region, SEGMENT_DROPPED, SEGMENT_ZERO, SEGMENT_ZERO_ALLOCATED, lookupRegions } from './extent-index.js';
import type { ExtentVisit } from './extent-index.js';

const SNAPSHOT_POSTINGS_MIN = 64;
/** History.visibleWrites yields after this many postings. */
const VISIBLE_STEP_POSTINGS = 1024;

/** One journal record as the history keeps it. */
export interface HistoryEntry {
  seq: number;
  type: number;
  flags: number;
  /** REVERT records: the seq the volume went back to. */
  offsetBytes: number;
  lengthBytes: number;
  timeUs: number;
  segment: number;
  payloadPosition: number;
  payloadBytes: number;
  /** WRITE: where the stored payload starts within the range (the rest was unchanged). */
  payloadSkip: number;
  /** WRITE: the bytes the payload stands for (payloadBytes unless it is compressed). */
  logicalBytes?: number;
}

/** Records that change content (the others: flush markers, bookmarks). */
export function changesContent(type: number): boolean {
  return type === RecordType.WRITE || type === RecordType.ZERO || type === RecordType.TRIM || type === RecordType.REVERT;
}

class RecordTable {
  count = 0;
  type = new Uint8Array(1024);
  flags = new Uint8Array(1024);
  offset = new Float64Array(1024);
  length = new Uint32Array(1024);
  time = new Float64Array(1024);
  segment = new Uint32Array(1024);
  payloadPosition = new Uint32Array(1024);
  payloadBytes = new Uint32Array(1024);
  payloadSkip = new Uint32Array(1024);
  logical = new Uint32Array(1024);

  push(entry: HistoryEntry): void {
    if (this.count === this.type.length) this.grow();
    const i = this.count;
    this.type[i] = entry.type;
    this.flags[i] = entry.flags;
    this.offset[i] = entry.offsetBytes;
    this.length[i] = entry.lengthBytes;
    this.time[i] = entry.timeUs;
    this.segment[i] = entry.segment;
    this.payloadPosition[i] = entry.payloadPosition;
    this.payloadBytes[i] = entry.payloadBytes;
    this.payloadSkip[i] = entry.payloadSkip;
    this.logical[i] = entry.logicalBytes ?? entry.payloadBytes;
    this.count += 1;
  }

  get memoryBytes(): number {
    return this.type.length * 42;
  }

  /** Removes the first `count` records (a fold); the arrays shrink when mostly empty. */
  dropFirst(count: number): void {
    assert(count >= 0 && count <= this.count, 'drop what the table holds');
    const rest = this.count - count;
    const capacity = Math.max(1024, 2 ** Math.ceil(Math.log2(Math.max(1, rest) * 1.25)));
    this.resize(Math.min(capacity, this.type.length), count);
    this.count = rest;
  }

  /** Removes the records at `slots` (ascending, distinct): the later ones move down. */
  remove(slots: ArrayLike<number>): void {
    if (slots.length === 0) return;
    const columns = [this.type, this.flags, this.offset, this.length, this.time, this.segment, this.payloadPosition, this.payloadBytes, this.payloadSkip, this.logical];
    let to = slots[0];
    for (let k = 0; k < slots.length; k += 1) {
      const from = slots[k] + 1;
      const end = k + 1 < slots.length ? slots[k + 1] : this.count;
      if (end > from) for (const column of columns) column.copyWithin(to, from, end);
      to += end - from;
    }
    this.count = to;
    // Much emptier now: the arrays shrink to what they hold and a quarter more.
    if (this.type.length > 1024 && this.count * 1.5 < this.type.length) this.resize(Math.max(1024, Math.ceil(this.count * 1.25)), 0);
  }

  private grow(): void {
    this.resize(this.type.length * 2, 0);
  }

  /** Every column with room for `capacity` records, keeping records `from`..count-1 first. */
  private resize(capacity: number, from: number): void {
    const resized = <T extends Column>(array: T): T => resizedColumn(array, capacity, from, this.count);
    this.type = resized(this.type);
    this.flags = resized(this.flags);
    this.offset = resized(this.offset);
    this.length = resized(this.length);
    this.time = resized(this.time);
    this.segment = resized(this.segment);
    this.payloadPosition = resized(this.payloadPosition);
    this.payloadBytes = resized(this.payloadBytes);
    this.payloadSkip = resized(this.payloadSkip);
    this.logical = resized(this.logical);
  }
}

/** A stretch of records collapsed out of the table (History.collapseSegments), as it stands for them. */
interface Span {
  first: number;
  count: number;
  segment: number;
  timeFirst: number;
  timeLast: number;
  /** THINNED records among them (History.thinnedRecords counts them). */
  thinned: number;
  /** Client writes among them (THINNED, UNCHANGED) and the bytes they wrote; FLUSH records. */
  writes: number;
  bytesWritten: number;
  flushes: number;
}

type Column = Uint8Array | Uint32Array | Float64Array;

/** `array`'s elements `from..end-1` first, in an array of `capacity` (the same one, moved down, if it has that length). */
function resizedColumn<T extends Column>(array: T, capacity: number, from: number, end: number): T {
  if (capacity === array.length) {
    array.copyWithin(0, from, end);
    return array;
  }
  const next = new (array.constructor as new (length: number) => T)(capacity);
  next.set(array.subarray(from, end));
  return next;
}

function emptySpan(segment: number): Span {
  return { first: Infinity, count: 0, segment, timeFirst: Infinity, timeLast: -Infinity, thinned: 0, writes: 0, bytesWritten: 0, flushes: 0 };
}

/** Counts `other` (a span, or one record: recordAsSpan) into `span`, in any order. */
function addToSpan(span: Span, other: Span): void {
  span.first = Math.min(span.first, other.first);
  span.count += other.count;
  span.timeFirst = Math.min(span.timeFirst, other.timeFirst);
  span.timeLast = Math.max(span.timeLast, other.timeLast);
  span.thinned += other.thinned;
  span.writes += other.writes;
  span.bytesWritten += other.bytesWritten;
  span.flushes += other.flushes;
}

/** One record as a span of its own. */
function recordAsSpan(seq: number, segment: number, type: number, timeUs: number, lengthBytes: number): Span {
  const write = type === RecordType.THINNED || type === RecordType.UNCHANGED;
  return {
    first: seq, count: 1, segment, timeFirst: timeUs, timeLast: timeUs, thinned: type === RecordType.THINNED ? 1 : 0,
    writes: write ? 1 : 0, bytesWritten: write ? lengthBytes : 0, flushes: type === RecordType.FLUSH ? 1 : 0,
  };
}

/**
 * The collapsed stretches, ascending by seq, never across a segment boundary, each at least
 * two records (a span costs 60 bytes; a record's row 42, plus 8 for each posting).
 * `slot[k]`: the table slot of the first record after span k (the records before it, less
 * the collapsed ones).
 */
class Spans {
  length = 0;
  /** Records collapsed, in all spans. */
  total = 0;
  first = new Float64Array(0);
  count = new Uint32Array(0);
  segment = new Uint32Array(0);
  slot = new Float64Array(0);
  timeFirst = new Float64Array(0);
  timeLast = new Float64Array(0);
  thinned = new Uint32Array(0);
  writes = new Uint32Array(0);
  bytesWritten = new Float64Array(0);
  flushes = new Uint32Array(0);

  get memoryBytes(): number {
    return this.first.length * 60;
  }

  get(k: number): Span {
    return {
      first: this.first[k], count: this.count[k], segment: this.segment[k], timeFirst: this.timeFirst[k], timeLast: this.timeLast[k],
      thinned: this.thinned[k], writes: this.writes[k], bytesWritten: this.bytesWritten[k], flushes: this.flushes[k],
    };
  }

  end(k: number): number {
    return this.first[k] + this.count[k] - 1;
  }

  /** The last span starting at or before `seq` (-1 if none). */
  atOrBefore(seq: number): number {
    if (this.length === 0 || seq < this.first[0]) return -1;
    if (seq >= this.first[this.length - 1]) return this.length - 1;
    return countBelow(this.first, this.length, seq, true) - 1;
  }

  /** The first span whose slot is above `slot` (length if none). */
  slotAbove(slot: number): number {
    return countBelow(this.slot, this.length, slot, true);
  }

  /** Adds a span after all others, before table slot `slot`. */
  push(span: Span, slot: number): void {
    if (this.length === this.first.length) this.reserve(Math.max(16, this.length * 2));
    this.length += 1;
    this.write(this.length - 1, span, slot);
    this.total += span.count;
  }

  /** Adds a record of `seq` at the end of the last span. */
  extendLast(seq: number, timeUs: number, type: number, lengthBytes: number): void {
    this.extendLastBy(recordAsSpan(seq, this.segment[this.length - 1], type, timeUs, lengthBytes));
  }

  /** Adds the records of `other` (the seqs right after it) at the end of the last span. */
  extendLastBy(other: Span): void {
    const k = this.length - 1;
    assert(this.end(k) === other.first - 1, 'a span grows by the next seqs');
    const span = this.get(k);
    addToSpan(span, other);
    this.write(k, span, this.slot[k]);
    this.total += other.count;
  }

  /**
   * Spans `from..to-1` give way to `replacement` (ascending, between their neighbours), in
   * place; the slots from there on are worked out again from the table's first seq.
   */
  splice(from: number, to: number, replacement: readonly Span[], seqFirst: number): void {
    const length = this.length - (to - from) + replacement.length;
    if (length > this.first.length) this.reserve(Math.max(16, length * 2));
    for (const column of this.columns()) column.copyWithin(from + replacement.length, to, this.length);
    this.length = length;
    replacement.forEach((span, i) => this.write(from + i, span, 0));
    let collapsed = 0;
    for (let k = 0; k < from; k += 1) collapsed += this.count[k];
    for (let k = from; k < length; k += 1) {
      collapsed += this.count[k];
      this.slot[k] = this.first[k] + this.count[k] - seqFirst - collapsed;
    }
    this.total = collapsed;
    // Mostly empty now: the arrays shrink.
    if (this.first.length > 64 && length * 4 < this.first.length) this.reserve(Math.max(16, Math.ceil(length * 1.25)));
  }

  private columns(): Array<Float64Array | Uint32Array> {
    return [this.first, this.count, this.segment, this.slot, this.timeFirst, this.timeLast, this.thinned, this.writes, this.bytesWritten, this.flushes];
  }

  /** Every column with room for `capacity` spans (at least those there are). */
  private reserve(capacity: number): void {
    const resized = <T extends Column>(column: T): T => resizedColumn(column, capacity, 0, this.length);
    this.first = resized(this.first);
    this.count = resized(this.count);
    this.segment = resized(this.segment);
    this.slot = resized(this.slot);
    this.timeFirst = resized(this.timeFirst);
    this.timeLast = resized(this.timeLast);
    this.thinned = resized(this.thinned);
    this.writes = resized(this.writes);
    this.bytesWritten = resized(this.bytesWritten);
    this.flushes = resized(this.flushes);
  }

  private write(k: number, span: Span, slot: number): void {
    this.first[k] = span.first;
    this.count[k] = span.count;
    this.segment[k] = span.segment;
    this.slot[k] = slot;
    this.timeFirst[k] = span.timeFirst;
    this.timeLast[k] = span.timeLast;
    this.thinned[k] = span.thinned;
    this.writes[k] = span.writes;
    this.bytesWritten[k] = span.bytesWritten;
    this.flushes[k] = span.flushes;
  }
}

class RegionHistory {
  seqs = new Float64Array(4);
  count = 0;
  /** snapshots[k] holds the extents after the first snapshotAt[k] postings. */
  snapshotAt: number[] = [0];
  snapshots: Uint32Array[] = [new Uint32Array(0)];
  /** History.warm has completed the snapshots of the first `warmAt` postings. */
  warmAt = 0;

  post(seq: number): void {
    if (this.count === this.seqs.length) {
      const grown = new Float64Array(this.count * 2);
      grown.set(this.seqs);
      this.seqs = grown;
    }
    this.seqs[this.count] = seq;
    this.count += 1;
  }

  /** How many postings have seq <= `seq`. */
  postingsUpTo(seq: number): number {
    return countBelow(this.seqs, this.count, seq, true);
  }

  /**
   * Folds the first `n` postings into `base` (the region's extents after them): they and
   * the snapshots among them go; later snapshots stay. Returns the snapshot bytes freed.
   */
  fold(n: number, base: Uint32Array): number {
    const rest = this.count - n;
    const seqs = new Float64Array(Math.max(4, 2 ** Math.ceil(Math.log2(Math.max(1, rest)))));
    seqs.set(this.seqs.subarray(n, this.count));
    this.seqs = seqs;
    this.count = rest;
    let freed = -base.byteLength;
    const at: number[] = [0];
    const kept: Uint32Array[] = [base];
    for (let k = 0; k < this.snapshotAt.length; k += 1) {
      if (this.snapshotAt[k] > n) {
        at.push(this.snapshotAt[k] - n);
        kept.push(this.snapshots[k]);
      } else {
        freed += this.snapshots[k].byteLength;
      }
    }
    this.snapshotAt = at;
    this.snapshots = kept;
    this.warmAt = Math.max(0, this.warmAt - n);
    return freed;
  }

  /**
   * Removes the postings of `seqs` (ascending; records collapsed: History.collapseSegments) — each
   * replayed nothing (THINNED), so every snapshot keeps its state, now after fewer postings.
   * Snapshots closer together than a replay needs then go, except the first and those right
   * after a revert (`isRevert`). Returns the snapshot bytes freed.
   */
  remove(seqs: ArrayLike<number>, isRevert: (seq: number) => boolean): number {
    const low = this.postingsUpTo(seqs[0] - 1);
    const high = this.postingsUpTo(seqs[seqs.length - 1]);
    /** Posting indexes removed (ascending). */
    const gone: number[] = [];
    let to = low;
    for (let i = low, j = 0; i < high; i += 1) {
      while (j < seqs.length && seqs[j] < this.seqs[i]) j += 1;
      if (j < seqs.length && seqs[j] === this.seqs[i]) gone.push(i);
      else this.seqs[to++] = this.seqs[i];
    }
    if (gone.length === 0) return 0;
    this.seqs.copyWithin(to, high, this.count);
    this.count -= gone.length;
    const goneBefore = (at: number) => countBelow(gone, gone.length, at);
    this.warmAt -= goneBefore(this.warmAt);
    const at: number[] = [0];
    const kept: Uint32Array[] = [this.snapshots[0]];
    let freed = 0;
    for (let k = 1; k < this.snapshotAt.length; k += 1) {
      const was = this.snapshotAt[k];
      const now = was - goneBefore(was);
      const lastAt = at[at.length - 1];
      const gap = Math.max(SNAPSHOT_POSTINGS_MIN, kept[kept.length - 1].length / EXTENT_STRIDE);
      const afterRevert = now > 0 && isRevert(this.seqs[now - 1]);
      // Taken right after a removed posting, it shows that write (its extents dropped since):
      // not the state at the seqs between the posting before and that one, kept points among them.
      const afterRemoved = goneBefore(was) > goneBefore(was - 1);
      if (afterRemoved || now === lastAt || (now - lastAt < gap && !afterRevert)) {
        freed += this.snapshots[k].byteLength;
        continue;
      }
      at.push(now);
      kept.push(this.snapshots[k]);
    }
    this.snapshotAt = at;
    this.snapshots = kept;
    return freed;
  }

  /** The last snapshot taken after at most `postings` postings. */
  snapshotBefore(postings: number): number {
    // (The first, at 0, is always one.)
    return Math.max(0, countBelow(this.snapshotAt, this.snapshotAt.length, postings, true) - 1);
  }
}

export interface TimelineBucket {
  fromUs: number;
  toUs: number;
  writes: number;
  bytesWritten: number;
  zeroes: number;
  bytesZeroed: number;
  flushes: number;
  reverts: number;
}

/** typeOf a record collapsed out of the table: an expired point that changed no content. */
export const COLLAPSED = 0;

export class History {
  private readonly table = new RecordTable();
  /** Stretches of records collapsed out of the table (collapseSegments): not in `table`. */
  private readonly spans = new Spans();
  private readonly regions: Array<RegionHistory | undefined>;
  /** Regions with at least one posting, in the order first touched. */
  private readonly touched: number[] = [];
  private postingCount = 0;
  private snapshotBytes = 0;
  /** Regions before this one (in `touched`) are warm. */
  private warmCursor = 0;
  /** The seq of the first record in the table: the records before it are folded (fold). */
  private first = 1;
  /**
   * Segments wholly before `seqFirst`: their WRITE records the base snapshots still name
   * (the rest of their data no kept point can show), and the payload bytes of the others
   * compaction has not dropped yet.
   */
  private readonly folded = new Map<number, FoldedSegment>();
  /** The folded segments in seq order (journal order). */
  private readonly foldedOrder: number[] = [];
  /** Whether the folded records changed content (some base is not empty). */
  private foldedChanges = false;
  private foldedBytes = 0;
  /** Runs of seqs whose points retention removed (inclusive, ascending, disjoint). */
  private expiredRuns: Array<[number, number]> = [];
  /** Bumped whenever the expired runs change (replication sends them when they do). */
  expiredVersion = 0;
  /**
   * Bumped whenever journal positions change (a segment compacted): regions materialised
   * before (PointIndex caches) must be built again.
   */
  generation = 0;
  /** Records whose payload retention reclaimed. */
  thinnedRecords = 0;
  /** The seqs rollbacks went back to, and the seqs of their REVERT records (same order). */
  readonly revertTargets: number[] = [];
  readonly revertSeqs: number[] = [];

  constructor(readonly sizeBytes: number) {
    this.regions = new Array(Math.ceil(sizeBytes / REGION_BYTES));
  }

  get seqFirst(): number {
    return this.first;
  }

  get seqLast(): number {
    return this.first + this.table.count + this.spans.total - 1;
  }

  /** Records in the table (collapsed ones are not). */
  get recordCount(): number {
    return this.table.count;
  }

  /** Records collapsed out of the table (collapseSegments). */
  get collapsedCount(): number {
    return this.spans.total;
  }

  get memoryBytes(): number {
    return this.table.memoryBytes + this.spans.memoryBytes + this.postingCount * 8 + this.snapshotBytes + this.foldedBytes;
  }

  /**
   * Adds the next record (seqs must follow each other). `collapse` (a start loading the
   * journal): a THINNED record — an expired point whose data went, retention-state.ts checks
   * — joins the span before it, or makes one with a THINNED record right before it, instead
   * of taking a row.
   */
  append(entry: HistoryEntry, collapse = false): void {
    assert(entry.seq === this.seqLast + 1, 'history records arrive in seq order without gaps');
    if (collapse && entry.type === RecordType.THINNED && this.collapseOnLoad(entry)) return;
    if (entry.type === RecordType.REVERT) {
      assert(entry.offsetBytes >= this.first - 1 && entry.offsetBytes < entry.seq, 'a revert goes back to an earlier seq the history holds');
    } else if (changesContent(entry.type)) {
      const stored = entry.logicalBytes ?? entry.payloadBytes;
      assert(entry.offsetBytes + entry.lengthBytes <= this.sizeBytes && entry.payloadSkip + stored <= Math.max(entry.lengthBytes, stored), 'a change lies within the volume');
    }
    this.table.push(entry);
    if (entry.type === RecordType.THINNED) this.thinnedRecords += 1;
    if (entry.type === RecordType.REVERT) {
      this.revertTargets.push(entry.offsetBytes);
      this.revertSeqs.push(entry.seq);
    }
    if (entry.type === RecordType.REVERT) {
      for (const regionIndex of this.touched) this.post(regionIndex, entry.seq);
    } else if (changesContent(entry.type) && entry.lengthBytes > 0) {
      // A WRITE changed only its stored span.
      const start = entry.type === RecordType.WRITE ? entry.offsetBytes + entry.payloadSkip : entry.offsetBytes;
      const length = entry.type === RecordType.WRITE ? entry.logicalBytes ?? entry.payloadBytes : entry.lengthBytes;
      const first = Math.floor(start / REGION_BYTES);
      const last = Math.floor((start + length - 1) / REGION_BYTES);
      for (let regionIndex = first; regionIndex <= last; regionIndex += 1) this.post(regionIndex, entry.seq);
    }
  }

  /** A record of the table (a collapsed one is read from the journal: JournaledDevice.entryAt). */
  entry(seq: number): HistoryEntry {
    assert(seq >= this.seqFirst && seq <= this.seqLast, 'seq within history');
    const t = this.table;
    const i = this.slotOf(seq);
    assert(i !== -1, 'a collapsed record is read from the journal');
    return {
      seq, type: t.type[i], flags: t.flags[i], offsetBytes: t.offset[i], lengthBytes: t.length[i], timeUs: t.time[i],
      segment: t.segment[i], payloadPosition: t.payloadPosition[i], payloadBytes: t.payloadBytes[i], payloadSkip: t.payloadSkip[i], logicalBytes: t.logical[i],
    };
  }

  /**
   * A record's time. A collapsed record's is not kept: it is taken as spread evenly over its
   * span (exact for a span's first and last record) — an expired point's, for messages.
   */
  timeOf(seq: number): number {
    assert(seq >= this.first && seq <= this.seqLast, 'seq within history');
    const slot = this.slotOf(seq);
    if (slot !== -1) return this.table.time[slot];
    const k = this.spans.atOrBefore(seq);
    const s = this.spans;
    return s.count[k] === 1 ? s.timeFirst[k] : s.timeFirst[k] + Math.floor((s.timeLast[k] - s.timeFirst[k]) * (seq - s.first[k]) / (s.count[k] - 1));
  }

  /** A record's type; COLLAPSED for one collapsed out of the table (no content change). */
  typeOf(seq: number): number {
    const slot = this.slotOf(seq);
    return slot === -1 ? COLLAPSED : this.table.type[slot];
  }

  /** The last seq of the span holding `seq` (collapsed: expired points), or seq - 1 if it is a row. */
  collapsedThrough(seq: number): number {
    const k = this.spans.atOrBefore(seq);
    return k !== -1 && seq <= this.spans.end(k) ? this.spans.end(k) : seq - 1;
  }

  /** Whether `seq` (in the history) was collapsed out of the table: its entry is on disk only. */
  isCollapsed(seq: number): boolean {
    return seq >= this.first && seq <= this.seqLast && this.slotOf(seq) === -1;
  }

  /** The journal segment holding `seq` (in the history). */
  segmentOf(seq: number): number {
    const slot = this.slotOf(seq);
    return slot === -1 ? this.spans.segment[this.spans.atOrBefore(seq)] : this.table.segment[slot];
  }

  /** A record's payload bytes as stored (0 for a collapsed one: it has none). */
  payloadBytesOf(seq: number): number {
    const slot = this.slotOf(seq);
    return slot === -1 ? 0 : this.table.payloadBytes[slot];
  }

  /** One journal segment's seq range, and whether all its records are rows; null if none. O(log n). */
  segmentBounds(segmentIndex: number): { seqFirst: number; seqLast: number; complete: boolean } | null {
    const t = this.table;
    const s = this.spans;
    const first = countBelow(t.segment, t.count, segmentIndex);
    const end = countBelow(t.segment, t.count, segmentIndex + 1);
    const spanFirst = countBelow(s.segment, s.length, segmentIndex);
    const spanEnd = countBelow(s.segment, s.length, segmentIndex + 1);
    if (first >= end && spanFirst >= spanEnd) return null;
    return {
      seqFirst: Math.min(first < end ? this.seqOfSlot(first) : Infinity, spanFirst < spanEnd ? s.first[spanFirst] : Infinity),
      seqLast: Math.max(first < end ? this.seqOfSlot(end - 1) : 0, spanFirst < spanEnd ? s.end(spanEnd - 1) : 0),
      complete: spanFirst >= spanEnd,
    };
  }

  /**
   * One journal segment's records (seqs run through segments in order): its seq range, the
   * time of its first record, and the entries of those in the table — all of them unless
   * some were collapsed (`complete` false: the journal has the rest). Null if none.
   */
  segmentRecords(segmentIndex: number): { seqFirst: number; seqLast: number; timeFirstUs: number; complete: boolean; entries: HistoryEntry[] } | null {
    const bounds = this.segmentBounds(segmentIndex);
    if (!bounds) return null;
    const t = this.table;
    const entries: HistoryEntry[] = [];
    this.forRows(countBelow(t.segment, t.count, segmentIndex), countBelow(t.segment, t.count, segmentIndex + 1) - 1, (_slot, seq) => {
      entries.push(this.entry(seq));
    });
    // (A span's first record has its own time.)
    return { ...bounds, timeFirstUs: this.timeOf(bounds.seqFirst), entries };
  }

  /**
   * The first record that changed content, or 0 if none did; `seqFirst - 1` when records
   * before the table (folded) did.
   */
  firstChangeSeq(): number {
    if (this.first > 1 && this.foldedChanges) return this.first - 1;
    let found = 0;
    this.forRows(0, this.table.count - 1, (slot, seq) => {
      if (!changesContent(this.table.type[slot])) return true;
      found = seq;
      return false;
    });
    return found;
  }

  /** The last content change at or before `seq` (0 if none). */
  lastChangeAtOrBefore(seq: number): number {
    for (let slot = this.slotAtOrBefore(seq); slot >= 0; slot -= 1) if (changesContent(this.table.type[slot])) return this.seqOfSlot(slot);
    return 0;
  }

  /**
   * The last record at or before `timeUs` (0 if none); record times never go backwards. In a
   * span (collapsed records: expired points), by the times timeOf gives them.
   */
  lastSeqAtOrBefore(timeUs: number): number {
    const low = countBelow(this.table.time, this.table.count, timeUs, true);
    let found = low === 0 ? this.first - 1 : this.seqOfSlot(low - 1);
    // Spans right after it (before the next row) may hold later records at or before timeUs.
    for (let k = this.spans.atOrBefore(found + 1); k !== -1 && k < this.spans.length && this.spans.first[k] === found + 1; k += 1) {
      if (this.spans.timeFirst[k] > timeUs) break;
      let l = this.spans.first[k];
      let h = this.spans.end(k);
      while (l < h) {
        const m = Math.ceil((l + h) / 2);
        if (this.timeOf(m) <= timeUs) l = m;
        else h = m - 1;
      }
      found = l;
    }
    return found < this.first ? 0 : found;
  }

  /**
   * Seqs of records of `type` with time in [fromUs, toUs], oldest first, at most `limit` (the
   * newest ones with `newest`). A record right after another of the same type is skipped:
   * two flushes in a row mark one point. Expired points are left out.
   */
  seqsOfType(type: number, fromUs: number, toUs: number, limit: number, newest = false): number[] {
    const first = Math.max(this.seqFirst, this.lastSeqAtOrBefore(fromUs - 1) + 1);
    const last = this.lastSeqAtOrBefore(toUs);
    const found: number[] = [];
    if (last < first) return found;
    // Points retention removed are not offered (nor do they hide a kept one right after).
    // (Collapsed records are expired ones: only rows are looked at.)
    const kept = (seq: number) => this.expiredRunOf(seq) === null;
    const wanted = (slot: number, seq: number) => this.table.type[slot] === type && kept(seq) && (seq === this.seqFirst || this.typeOf(seq - 1) !== type || !kept(seq - 1));
    const firstSlot = this.slotAtOrBefore(first - 1) + 1;
    const lastSlot = this.slotAtOrBefore(last);
    if (newest) {
      for (let slot = lastSlot; slot >= firstSlot && found.length < limit; slot -= 1) {
        const seq = this.seqOfSlot(slot);
        if (wanted(slot, seq)) found.push(seq);
      }
      return found.reverse();
    }
    this.forRows(firstSlot, lastSlot, (slot, seq) => {
      if (wanted(slot, seq)) found.push(seq);
      return found.length < limit;
    });
    return found;
  }

  /** Activity per interval of `stepUs` from `fromUs` to `toUs`. */
  timeline(fromUs: number, toUs: number, stepUs: number): TimelineBucket[] {
    assert(stepUs > 0 && toUs >= fromUs, 'timeline range is ordered and steps forward');
    const buckets: TimelineBucket[] = [];
    for (let start = fromUs; start < toUs || buckets.length === 0; start += stepUs) {
      buckets.push({ fromUs: start, toUs: Math.min(start + stepUs, toUs), writes: 0, bytesWritten: 0, zeroes: 0, bytesZeroed: 0, flushes: 0, reverts: 0 });
    }
    const t = this.table;
    const bucketOf = (timeUs: number) => buckets[Math.min(buckets.length - 1, Math.floor((timeUs - fromUs) / stepUs))];
    // Collapsed records (spans) count where timeOf puts them: spread evenly over the span.
    // (Rounded as running totals, so that a span's records add up whatever the buckets.)
    const s = this.spans;
    for (let k = countBelow(s.timeLast, s.length, fromUs); k < s.length && s.timeFirst[k] < toUs; k += 1) {
      const span = s.get(k);
      const upTo = (records: number, total: number) => Math.round((total * records) / span.count);
      for (let at = span.first; at <= span.first + span.count - 1;) {
        const time = this.timeOf(at);
        // The records of the span with the same bucket as `at`: up to the last at or before its end.
        const bucketEnd = time < fromUs ? fromUs : fromUs + (Math.floor((time - fromUs) / stepUs) + 1) * stepUs;
        let l = at;
        let h = span.first + span.count - 1;
        while (l < h) {
          const m = Math.ceil((l + h) / 2);
          if (this.timeOf(m) < bucketEnd) l = m;
          else h = m - 1;
        }
        const n = l - at + 1;
        if (time >= fromUs && time < toUs) {
          const bucket = bucketOf(time);
          const before = at - span.first;
          bucket.writes += upTo(before + n, span.writes) - upTo(before, span.writes);
          bucket.bytesWritten += upTo(before + n, span.bytesWritten) - upTo(before, span.bytesWritten);
          bucket.flushes += upTo(before + n, span.flushes) - upTo(before, span.flushes);
        }
        at = l + 1;
        if (time >= toUs) break;
      }
    }
    for (let i = this.slotAtOrBefore(this.lastSeqAtOrBefore(fromUs - 1)) + 1; i < t.count && t.time[i] < toUs; i += 1) {
      const bucket = bucketOf(t.time[i]);
      if (isClientWrite(t.type[i], t.flags[i])) {
        // Client writes, whatever they cost to store (zeroes, unchanged bytes).
        bucket.writes += 1;
        bucket.bytesWritten += t.length[i];
        continue;
      }
      switch (t.type[i]) {
        case RecordType.ZERO:
        case RecordType.TRIM:
          bucket.zeroes += 1;
          bucket.bytesZeroed += t.length[i];
          break;
        case RecordType.FLUSH:
          bucket.flushes += 1;
          break;
        case RecordType.REVERT:
          bucket.reverts += 1;
          break;
        default:
          break;
      }
    }
    return buckets;
  }

  // ---- retention ----------------------------------------------------------------------

  /** Marks runs of points as expired (merged with those already expired). */
  expire(runs: ReadonlyArray<readonly [number, number]>): void {
    const all = [...this.expiredRuns, ...runs.map(([a, b]) => [a, b] as [number, number])].sort((x, y) => x[0] - y[0]);
    const merged: Array<[number, number]> = [];
    for (const [a, b] of all) {
      assert(a <= b && a >= 1, 'an expired run is a non-empty range of seqs');
      const last = merged[merged.length - 1];
      if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
      else merged.push([a, b]);
    }
    this.expiredRuns = merged;
    this.expiredVersion += 1;
  }

  /**
   * Replaces the expired runs (ascending, disjoint): a replica giving back what it could not
   * save, or dropping runs past its last record when it is promoted.
   */
  setExpired(runs: ReadonlyArray<readonly [number, number]>): void {
    this.expiredRuns = runs.map(([a, b]) => [a, b] as [number, number]);
    this.expiredVersion += 1;
  }

  get expired(): ReadonlyArray<readonly [number, number]> {
    return this.expiredRuns;
  }

  /** The expired run holding `seq`, or null when its point is kept. */
  expiredRunOf(seq: number): readonly [number, number] | null {
    let low = 0;
    let high = this.expiredRuns.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.expiredRuns[middle][1] < seq) low = middle + 1;
      else high = middle;
    }
    const run = this.expiredRuns[low];
    return run && run[0] <= seq ? run : null;
  }

  /** A THINNED record (data reclaimed) whose point is not expired, or 0 — none should be. */
  thinnedNotExpired(): number {
    const s = this.spans;
    for (let k = 0; k < s.length; k += 1) {
      if (s.thinned[k] === 0) continue;
      const run = this.expiredRunOf(s.first[k]);
      if (run === null || run[1] < s.end(k)) return run === null ? s.first[k] : run[1] + 1;
    }
    let found = 0;
    this.forRows(0, this.table.count - 1, (slot, seq) => {
      if (this.table.type[slot] !== RecordType.THINNED || this.expiredRunOf(seq) !== null) return true;
      found = seq;
      return false;
    });
    return found;
  }

  /**
   * The last seq at or before `seq` whose point is kept — its state exact — or 0 if none is
   * (folded away: a base is the state at an expired point).
   */
  keptAtOrBefore(seq: number): number {
    let at = Math.min(seq, this.seqLast);
    for (let run = this.expiredRunOf(at); run !== null && at >= this.first; run = this.expiredRunOf(at)) at = run[0] - 1;
    return at >= this.first ? at : 0;
  }

  /** The oldest seq whose point is kept (0 if none). */
  oldestKept(): number {
    if (this.seqLast < this.seqFirst) return 0;
    const first = this.expiredRuns[0];
    if (!first || first[0] > this.seqFirst) return this.seqFirst;
    return first[1] + 1 <= this.seqLast ? first[1] + 1 : 0;
  }

  /**
   * Folds the records before `seqNew` — the first of a journal segment, at or before the
   * oldest kept point — into a base: each region's extents after them become its first
   * snapshot, and their postings, snapshots and table entries go. Memory then holds the
   * records of kept history only, plus per folded segment the WRITE records the base still
   * shows (`foldedSegment`). Points before `seqNew` can no longer be built (they are expired).
   */
  fold(seqNew: number): void {
    const steps = this.foldSteps(seqNew);
    while (!steps.next().done);
  }

  /**
   * The same, letting other work run while it works out what to fold (rebuilding every
   * region's base can take a second on a large volume): it yields to the event loop every
   * `sliceMs`. Records keep arriving meanwhile (only after the fold point, so nothing it
   * works out changes); the caller keeps compaction out. False if, meanwhile, a rollback
   * went back into what was to be folded (nothing changed then).
   */
  async foldAsync(seqNew: number, sliceMs = 5): Promise<boolean> {
    const steps = this.foldSteps(seqNew);
    let sliceStart = performance.now();
    for (;;) {
      const step = steps.next();
      if (step.done) return step.value;
      if (performance.now() - sliceStart >= sliceMs) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        sliceStart = performance.now();
      }
    }
  }

  /** fold as steps: it yields (nothing) between regions and segments worked out, then changes the state at once. */
  private *foldSteps(seqNew: number): Generator<void, boolean> {
    // (Up to seqLast + 1: a start folds before it appends the first record of a segment.)
    assert(seqNew > this.first && seqNew <= this.seqLast + 1, 'a fold stays within the history');
    const t = this.table;
    const s = this.spans;
    /** Rows and spans before seqNew (spans never cross a segment boundary, nor the fold's). */
    const k = this.slotAtOrBefore(seqNew - 1) + 1;
    const spansBefore = s.atOrBefore(seqNew - 1) + 1;
    assert(seqNew === this.seqLast + 1 || this.segmentOf(seqNew) !== this.segmentOf(seqNew - 1), 'a fold ends at a segment boundary');
    // A rollback after the fold replays its target: that must not be folded.
    this.revertSeqs.forEach((revertSeq, i) => assert(revertSeq < seqNew || this.revertTargets[i] >= seqNew, 'no kept rollback goes back into folded records'));
    // First everything is worked out, then the state changes (nothing below can throw
    // half-way). The base of every region with postings before seqNew: its extents after them.
    const bases: Array<{ history: RegionHistory; n: number; base: Uint32Array }> = [];
    // (Regions touched from now on hold no record before seqNew.)
    const touched = [...this.touched];
    for (const regionIndex of touched) {
      const history = this.regions[regionIndex]!;
      const n = history.postingsUpTo(seqNew - 1);
      if (n > 0) bases.push({ history, n, base: this.regionAt(regionIndex, seqNew - 1)?.used.slice() ?? new Uint32Array(0) });
      yield;
    }
    // What the bases show, by segment and payload position (a set per segment: one for the
    // whole volume could pass what a Set holds).
    const shown = new Map<number, Set<number>>();
    const note = (base: Uint32Array) => {
      for (let at = 0; at < base.length; at += EXTENT_STRIDE) {
        const segment = base[at + 2];
        if (segment === SEGMENT_ZERO || segment === SEGMENT_ZERO_ALLOCATED || segment === SEGMENT_DROPPED) continue;
        let positions = shown.get(segment);
        if (!positions) shown.set(segment, (positions = new Set()));
        positions.add(base[at + 3]);
      }
    };
    const rebased = new Set(bases.map((entry) => entry.history));
    for (const entry of bases) {
      note(entry.base);
      yield;
    }
    for (const regionIndex of touched) {
      const history = this.regions[regionIndex]!;
      if (!rebased.has(history)) note(history.snapshots[0]);
    }
    yield;
    // Segments folded earlier: records the new bases no longer show become droppable.
    const updated = new Map<number, FoldedSegment>();
    for (const [segment, folded] of this.folded) updated.set(segment, keepShown(folded, shown.get(segment)));
    // The records folded now, segment by segment.
    let thinnedFolded = 0;
    const added: number[] = [];
    for (let i = 0, c = 0; i < k || c < spansBefore;) {
      const segment = Math.min(i < k ? t.segment[i] : Infinity, c < spansBefore ? s.segment[c] : Infinity);
      const showing = shown.get(segment);
      let end = i;
      while (end < k && t.segment[end] === segment) end += 1;
      let spanEnd = c;
      while (spanEnd < spansBefore && s.segment[spanEnd] === segment) spanEnd += 1;
      const positions: number[] = [];
      const seqs: number[] = [];
      const spans: number[] = [];
      let droppableBytes = 0;
      let fixed = 0;
      for (let j = i; j < end; j += 1) {
        if (t.type[j] === RecordType.THINNED) thinnedFolded += 1;
        if (t.type[j] === RecordType.ZERO || t.type[j] === RecordType.TRIM || t.type[j] === RecordType.REVERT || t.type[j] === RecordType.BOOKMARK) fixed += 1;
        if (t.type[j] !== RecordType.WRITE) continue;
        const span = thinnableBytes(t.payloadBytes[j], t.flags[j]);
        if (showing?.has(t.payloadPosition[j])) {
          positions.push(t.payloadPosition[j]);
          seqs.push(this.seqOfSlot(j));
          spans.push(span);
        } else {
          droppableBytes += span;
        }
      }
      for (let j = c; j < spanEnd; j += 1) thinnedFolded += s.thinned[j];
      assert(!updated.has(segment), 'a segment is folded once');
      // (Rows arriving meanwhile are past seqNew: not in these segments.)
      const { seqFirst, seqLast } = this.segmentBounds(segment)!;
      updated.set(segment, {
        seqFirst, seqLast, droppableBytes, fixed, positions: Uint32Array.from(positions), seqs: Float64Array.from(seqs), spans: Uint32Array.from(spans),
      });
      added.push(segment);
      i = end;
      c = spanEnd;
      yield;
    }
    // Now the change — unless a rollback, meanwhile, went back into what was to go.
    for (let i = 0; i < this.revertSeqs.length; i += 1) if (this.revertSeqs[i] >= seqNew && this.revertTargets[i] < seqNew) return false;
    for (const { history, n, base } of bases) {
      this.snapshotBytes -= history.fold(n, base);
      this.postingCount -= n;
    }
    if (bases.length > 0) this.foldedChanges = true;
    this.folded.clear();
    for (const [segment, folded] of updated) this.folded.set(segment, folded);
    this.foldedOrder.push(...added);
    this.thinnedRecords -= thinnedFolded;
    this.foldedBytes = 0;
    for (const folded of this.folded.values()) this.foldedBytes += 64 + folded.positions.length * 16;
    t.dropFirst(k);
    s.splice(0, spansBefore, [], seqNew);
    this.first = seqNew;
    // Rollbacks folded are part of the bases now.
    while (this.revertSeqs.length > 0 && this.revertSeqs[0] < seqNew) {
      this.revertSeqs.shift();
      this.revertTargets.shift();
    }
    return true;
  }

  /**
   * The highest seq a fold may go up to (exclusive) so that no rollback at or after it goes
   * back before it: `limit` lowered below the target of any such rollback.
   */
  foldLimit(limit: number): number {
    let at = limit;
    for (let changed = true; changed;) {
      changed = false;
      this.revertSeqs.forEach((revertSeq, i) => {
        if (revertSeq >= at && this.revertTargets[i] < at) {
          at = this.revertTargets[i];
          changed = true;
        }
      });
    }
    return at;
  }

  /** The segments the table holds, each with the seq of its first record, in order. */
  segmentStarts(): Array<{ segment: number; seqFirst: number }> {
    const t = this.table;
    const s = this.spans;
    const starts = [];
    for (let i = 0, c = 0; i < t.count || c < s.length;) {
      const segment = Math.min(i < t.count ? t.segment[i] : Infinity, c < s.length ? s.segment[c] : Infinity);
      starts.push({ segment, seqFirst: Math.min(i < t.count && t.segment[i] === segment ? this.seqOfSlot(i) : Infinity, c < s.length && s.segment[c] === segment ? s.first[c] : Infinity) });
      i = countBelow(t.segment, t.count, segment, true);
      while (c < s.length && s.segment[c] <= segment) c += 1;
    }
    return starts;
  }

  /** The folded segment holding `seq` (before seqFirst), or undefined. */
  foldedSegmentOf(seq: number): number | undefined {
    let low = 0;
    let high = this.foldedOrder.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.folded.get(this.foldedOrder[middle])!.seqLast < seq) low = middle + 1;
      else high = middle;
    }
    const segment = this.foldedOrder[low];
    return segment !== undefined && this.folded.get(segment)!.seqFirst <= seq ? segment : undefined;
  }

  /** A folded segment (wholly before seqFirst), or undefined. */
  foldedSegment(segment: number): Readonly<FoldedSegment> | undefined {
    return this.folded.get(segment);
  }

  /** The folded segments, oldest first. */
  foldedSegments(): readonly number[] {
    return this.foldedOrder;
  }

  /** The record whose payload is at (segment, payloadPosition) (0 if none): seqs follow journal order. */
  seqOfPayload(segment: number, payloadPosition: number): number {
    const t = this.table;
    let low = 0;
    let high = t.count;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (t.segment[middle] < segment || (t.segment[middle] === segment && t.payloadPosition[middle] < payloadPosition)) low = middle + 1;
      else high = middle;
    }
    // (Records without payload may share the position: the WRITE is the one.)
    while (low < t.count && t.segment[low] === segment && t.payloadPosition[low] === payloadPosition) {
      if (t.type[low] === RecordType.WRITE) return this.seqOfSlot(low);
      low += 1;
    }
    const folded = this.folded.get(segment);
    if (!folded) return 0;
    const at = binarySearch(folded.positions, payloadPosition);
    return at === -1 ? 0 : folded.seqs[at];
  }

  /** Journal bytes of the records stamped at or after `timeUs` (the recent growth rate). */
  journalBytesSince(timeUs: number): number {
    let bytes = 0;
    for (let i = this.slotAtOrBefore(this.lastSeqAtOrBefore(timeUs - 1)) + 1; i < this.table.count; i += 1) bytes += storedSpan(this.table.payloadBytes[i], this.table.flags[i]);
    // Collapsed records, those at or after timeUs: a packed entry each (most spans are in
    // compacted segments; a start collapses thinned records of others, 64 bytes each).
    const s = this.spans;
    const lastBefore = s.length > 0 ? this.lastSeqAtOrBefore(timeUs - 1) : 0;
    for (let k = s.length - 1; k >= 0 && s.timeLast[k] >= timeUs; k -= 1) {
      const before = Math.max(s.first[k] - 1, Math.min(s.end(k), lastBefore));
      bytes += (s.end(k) - before) * storedSpan(0, RecordFlag.PACKED);
    }
    return bytes;
  }

  /** Whether region `regionIndex` has postings in (from, to]. */
  touchedBetween(regionIndex: number, from: number, to: number): boolean {
    const history = this.regions[regionIndex];
    return history !== undefined && history.postingsUpTo(to) > history.postingsUpTo(from);
  }

  /** Regions with history, in the order first touched. */
  touchedRegions(): readonly number[] {
    return this.touched;
  }

  /**
   * Retention's question for one region: replaying its records up to `upTo`, which WRITE
   * records are visible at some point of `kept` (ascending) or at `upTo` itself? Calls
   * `visible` for each (maybe more than once); yields every so many postings (the region is
   * the caller's to leave alone meanwhile: only appends may happen). A record never visible there was overwritten
   * before the next kept point: dropping its payload changes no kept point.
   */
  *visibleWrites(regionIndex: number, kept: ArrayLike<number>, upTo: number, visible: (seq: number) => void, fromSeq = 0): Generator<void, void> {
    const history = this.regions[regionIndex];
    if (!history) return;
    // From `fromSeq` (a kept point: its state is exact, built from the snapshots) or the start.
    // (Before seqFirst: the base, the state after the folded records.)
    const start = Math.max(fromSeq, this.first - 1);
    const region = this.regionAt(regionIndex, start) ?? new Region();
    const firstPosting = history.postingsUpTo(start);
    let previous = start;
    let changed = region.count > 0;
    /** Is a point of `kept` in [from, to)? (binary search: regions x kept points stays cheap) */
    const keptWithin = (from: number, to: number) => {
      const low = countBelow(kept, kept.length, from);
      return low < kept.length && kept[low] < to;
    };
    const mark = () => {
      const entries = region.entries;
      for (let i = 0; i < region.count; i += 1) {
        const segment = entries[i * EXTENT_STRIDE + 2];
        // A folded record's data stays while a base shows it (fold): not the caller's question.
        if (segment === SEGMENT_ZERO || segment === SEGMENT_ZERO_ALLOCATED || segment === SEGMENT_DROPPED || this.folded.has(segment)) continue;
        const seq = this.seqOfPayload(segment, entries[i * EXTENT_STRIDE + 3]);
        assert(seq !== 0, 'a data extent names a record of the history');
        visible(seq);
      }
      changed = false;
    };
    for (let i = firstPosting; i < history.count; i += 1) {
      const seq = history.seqs[i];
      if (seq > upTo) break;
      // The state so far is the one at every kept point in [previous, seq).
      if (changed && keptWithin(previous, seq)) mark();
      this.apply(region, regionIndex, seq);
      changed = true;
      previous = seq;
      // A busy region has a long history: the caller may rest between steps.
      if (i % VISIBLE_STEP_POSTINGS === VISIBLE_STEP_POSTINGS - 1) yield;
    }
    if (changed) mark();
  }

  /**
   * A segment was compacted: `moved` gives, for each of its records in seq order, where its
   * payload now is (and, for a payload compaction compressed, its container's length);
   * `thinned` the seqs whose payload went (now THINNED records). Every extent naming the
   * segment (snapshots, and the live index through `live`) follows; one naming a thinned
   * payload becomes SEGMENT_DROPPED (only snapshots of expired points can: a kept point
   * never shows a thinned record).
   */
  relocateSegment(segment: number, seqFirst: number, moved: ReadonlyArray<{ payloadPosition: number; payloadBytes: number; compressed: boolean; packed?: boolean }>, thinned: ReadonlySet<number>, live: ExtentIndex): void {
    const t = this.table;
    const oldPositions: number[] = [];
    const newPositions: number[] = [];
    const newFields: number[] = [];
    const folded = this.folded.get(segment);
    if (folded) {
      // Only the records a base shows can be named by an extent; the others are all thinned.
      assert(seqFirst === folded.seqFirst && moved.length === folded.seqLast - folded.seqFirst + 1, 'a folded segment is compacted whole');
      const positions = new Uint32Array(folded.positions.length);
      const spans = new Uint32Array(folded.positions.length);
      for (let j = 0; j < folded.positions.length; j += 1) {
        const now = moved[folded.seqs[j] - seqFirst];
        assert(!thinned.has(folded.seqs[j]), 'a record a base shows is not thinned');
        oldPositions.push(folded.positions[j]);
        newPositions.push(now.payloadPosition);
        newFields.push(now.payloadBytes + (now.compressed ? PAYLOAD_COMPRESSED : 0));
        positions[j] = now.payloadPosition;
        spans[j] = thinnableBytes(now.payloadBytes, now.packed ? RecordFlag.PACKED : 0);
      }
      this.folded.set(segment, { ...folded, positions, spans, droppableBytes: 0 });
    } else {
      for (let j = 0; j < moved.length; j += 1) {
        const i = this.slotOf(seqFirst + j);
        // (Collapsed: no extent names it, nothing in memory says where it is.)
        if (i === -1) continue;
        const now = moved[j];
        assert(t.segment[i] === segment, 'relocated records belong to the segment');
        if (t.type[i] === RecordType.WRITE) {
          oldPositions.push(t.payloadPosition[i]);
          newPositions.push(thinned.has(seqFirst + j) ? -1 : now.payloadPosition);
          newFields.push(now.payloadBytes + (now.compressed ? PAYLOAD_COMPRESSED : 0));
        }
        t.payloadPosition[i] = now.payloadPosition;
        // Where its header is now: in a pack, or its own (flags in memory only).
        t.flags[i] = now.packed ? t.flags[i] | RecordFlag.PACKED : t.flags[i] & ~RecordFlag.PACKED;
        if (thinned.has(seqFirst + j)) {
          assert(t.type[i] === RecordType.WRITE, 'only WRITE records are thinned');
          t.type[i] = RecordType.THINNED;
          t.flags[i] &= ~RecordFlag.COMPRESSED; // as compaction writes the record
          t.payloadBytes[i] = 0;
          t.payloadSkip[i] = 0;
          t.logical[i] = 0;
        } else if (t.type[i] === RecordType.WRITE) {
          assert(now.compressed || now.payloadBytes === t.payloadBytes[i], 'a payload moves whole unless compressed');
          t.payloadBytes[i] = now.payloadBytes;
          if (now.compressed) t.flags[i] |= RecordFlag.COMPRESSED;
        }
      }
    }
    const relocate = (entries: Uint32Array, count: number, isLive = false) => {
      for (let at = 0; at < count * EXTENT_STRIDE; at += EXTENT_STRIDE) {
        if (entries[at + 2] !== segment) continue;
        const found = binarySearch(oldPositions, entries[at + 3]);
        assert(found !== -1, 'an extent names a record of its segment');
        assert(!isLive || newPositions[found] !== -1, 'the live volume never shows a thinned record');
        if (newPositions[found] === -1) {
          entries[at + 2] = SEGMENT_DROPPED;
        } else {
          entries[at + 3] = newPositions[found];
          entries[at + 5] = newFields[found];
        }
      }
    };
    for (const regionIndex of this.touched) {
      for (const snapshot of this.regions[regionIndex]!.snapshots) relocate(snapshot, snapshot.length / EXTENT_STRIDE);
      const region = live.region(regionIndex);
      if (region) relocate(region.entries, region.count, true);
    }
    if (!folded) this.thinnedRecords += thinned.size;
    this.generation += 1;
    if (!folded) this.collapseSegments(segment, segment);
  }

  // ---- collapsed records --------------------------------------------------------------

  /**
   * Collapses the records of segments `fromSegment..toSegment` that no kept point needs a row for: expired points
   * that changed no content (THINNED, UNCHANGED, FLUSH, a deleted bookmark's) — each stretch
   * of two or more of them (or one next to a span) becomes a span, their rows and postings
   * go. Points in them are refused as expired anyway; their headers stay in the journal
   * (JournaledDevice.entryAt reads them back for replication).
   */
  collapseSegments(fromSegment: number, toSegment: number): void {
    const t = this.table;
    /** The spans of those segments. */
    const mineFirst = countBelow(this.spans.segment, this.spans.length, fromSegment);
    const mineEnd = countBelow(this.spans.segment, this.spans.length, toSegment + 1);
    const spans = Array.from({ length: mineEnd - mineFirst }, (_, i) => this.spans.get(mineFirst + i));
    const rowFirst = countBelow(t.segment, t.count, fromSegment);
    const rowEnd = countBelow(t.segment, t.count, toSegment + 1);
    /** The segment of the stretch being gathered (stretches never cross one's end). */
    let segment = -1;
    const merged: Span[] = [];
    /** Rows removed (ascending), and by region the seqs of the THINNED ones' postings. */
    const removed: number[] = [];
    const postings = new Map<number, number[]>();
    // Stretches of collapsible rows and spans between the rows that stay.
    let rows: Array<{ slot: number; seq: number }> = [];
    let joined: Span[] = [];
    const close = () => {
      if (joined.length > 1 || (joined.length > 0 && rows.length > 0) || rows.length >= 2) {
        const span = emptySpan(segment);
        for (const other of joined) addToSpan(span, other);
        for (const { slot, seq } of rows) {
          const type = t.type[slot];
          addToSpan(span, recordAsSpan(seq, segment, type, t.time[slot], t.length[slot]));
          removed.push(slot);
          // A THINNED row posted as the WRITE it was (somewhere in its range).
          if (type === RecordType.THINNED && t.length[slot] > 0) {
            const lastRegion = Math.floor((t.offset[slot] + t.length[slot] - 1) / REGION_BYTES);
            for (let regionIndex = Math.floor(t.offset[slot] / REGION_BYTES); regionIndex <= lastRegion; regionIndex += 1) {
              let seqs = postings.get(regionIndex);
              if (!seqs) postings.set(regionIndex, (seqs = []));
              seqs.push(seq);
            }
          }
        }
        merged.push(span);
      } else {
        merged.push(...joined);
      }
      rows = [];
      joined = [];
    };
    const enter = (at: number) => {
      if (at !== segment) close();
      segment = at;
    };
    let c = 0;
    this.forRows(rowFirst, rowEnd - 1, (slot, seq) => {
      for (; c < spans.length && spans[c].first < seq; c += 1) {
        enter(spans[c].segment);
        joined.push(spans[c]);
      }
      enter(t.segment[slot]);
      if (!changesContent(t.type[slot]) && this.expiredRunOf(seq) !== null) rows.push({ slot, seq });
      else close();
    });
    for (; c < spans.length; c += 1) {
      enter(spans[c].segment);
      joined.push(spans[c]);
    }
    close();
    if (removed.length === 0) return;
    // Postings first (a revert among them is found by its row), then rows and spans.
    for (const [regionIndex, seqs] of postings) {
      const history = this.regions[regionIndex];
      if (!history || history.count === 0) continue;
      const before = history.count;
      this.snapshotBytes -= history.remove(seqs, (seq) => this.typeOf(seq) === RecordType.REVERT);
      this.postingCount -= before - history.count;
    }
    this.table.remove(removed);
    this.spans.splice(mineFirst, mineEnd, merged, this.first);
  }

  /** A start's THINNED record: into a span if it can be (append). */
  private collapseOnLoad(entry: HistoryEntry): boolean {
    return this.collapseRunOnLoad(recordAsSpan(entry.seq, entry.segment, entry.type, entry.timeUs, entry.lengthBytes), false);
  }

  /**
   * THINNED records loading (`run`: one, or a run's, pack.ts) join the span before them, or
   * make one with the THINNED row before them, or (`alone`, two or more) one of their own.
   */
  private collapseRunOnLoad(run: Span, alone: boolean): boolean {
    const s = this.spans;
    const t = this.table;
    const k = s.length - 1;
    if (k >= 0 && s.end(k) === run.first - 1 && s.segment[k] === run.segment && s.slot[k] === t.count) {
      s.extendLastBy(run);
    } else {
      // The row before it a THINNED record of the same segment: both make a span.
      const last = t.count - 1;
      if (last >= 0 && t.type[last] === RecordType.THINNED && t.segment[last] === run.segment && !(k >= 0 && s.end(k) >= run.first - 1)) {
        s.push(recordAsSpan(run.first - 1, run.segment, RecordType.THINNED, t.time[last], t.length[last]), last);
        t.count -= 1;
        s.extendLastBy(run);
      } else if (alone) {
        s.push(run, t.count);
      } else {
        return false;
      }
    }
    this.thinnedRecords += run.count;
    return true;
  }

  /**
   * Appends a run of `count` THINNED records (pack.ts) from `entry` (the first's), the others
   * at `timeLastUs` — as one span where `collapse` (History.append), else record by record.
   */
  appendRun(entry: HistoryEntry, count: number, timeLastUs: number, collapse: boolean): void {
    assert(entry.seq === this.seqLast + 1 && entry.type === RecordType.THINNED && entry.lengthBytes === 0 && count >= 2, 'a run of thinned records follows');
    if (collapse) {
      // (As its records one by one would count: THINNED writes of no bytes.)
      this.collapseRunOnLoad({ first: entry.seq, count, segment: entry.segment, timeFirst: entry.timeUs, timeLast: timeLastUs, thinned: count, writes: count, bytesWritten: 0, flushes: 0 }, true);
      return;
    }
    for (let k = 0; k < count; k += 1) this.append({ ...entry, seq: entry.seq + k, timeUs: k === 0 ? entry.timeUs : timeLastUs }, false);
  }

  /** The table slot of `seq`, or -1 if it was collapsed. */
  private slotOf(seq: number): number {
    const s = this.spans;
    const k = s.atOrBefore(seq);
    if (k === -1) return seq - this.first;
    const end = s.first[k] + s.count[k];
    return seq < end ? -1 : s.slot[k] + (seq - end);
  }

  /** The seq of the record in table slot `slot`. */
  private seqOfSlot(slot: number): number {
    const s = this.spans;
    // The last span before the slot's record (several may end at the same slot: the last).
    const k = s.slotAbove(slot) - 1;
    return k === -1 ? this.first + slot : s.first[k] + s.count[k] + (slot - s.slot[k]);
  }

  /** The slot of the last row at or before `seq` (-1 if none). */
  private slotAtOrBefore(seq: number): number {
    if (seq < this.first) return -1;
    if (seq > this.seqLast) return this.table.count - 1;
    const slot = this.slotOf(seq);
    return slot !== -1 ? slot : this.spans.slot[this.spans.atOrBefore(seq)] - 1;
  }

  /** Calls `visit` for the rows `fromSlot..toSlot` in order with their seqs, until it returns false. */
  private forRows(fromSlot: number, toSlot: number, visit: (slot: number, seq: number) => boolean | void): void {
    if (fromSlot > toSlot) return;
    const s = this.spans;
    let k = s.slotAbove(fromSlot);
    let seq = this.seqOfSlot(fromSlot);
    for (let slot = fromSlot; slot <= toSlot; slot += 1) {
      if (slot > fromSlot) {
        seq += 1;
        for (; k < s.length && s.slot[k] === slot; k += 1) seq += s.count[k];
      }
      if (visit(slot, seq) === false) return;
    }
  }

  /** The extents of one region at `seq` (a fresh copy the caller owns), or undefined if empty. */
  regionAt(regionIndex: number, seq: number): Region | undefined {
    // Before seqFirst - 1 (the bases) nothing can be built: those records are folded.
    assert(seq >= this.first - 1, 'a region is built at a seq the history holds');
    const history = this.regions[regionIndex];
    if (!history) return undefined;
    const postings = history.postingsUpTo(seq);
    // (No postings yet: the base, which is empty unless records were folded.)
    if (postings > 0) this.buildSnapshots(regionIndex, history, postings);
    const k = history.snapshotBefore(postings);
    const region = Region.from(history.snapshots[k]);
    for (let i = history.snapshotAt[k]; i < postings; i += 1) {
      const posted = history.seqs[i];
      assert(this.typeOf(posted) !== RecordType.REVERT, 'a replay never crosses a revert (a snapshot follows each)');
      this.apply(region, regionIndex, posted);
    }
    return region.count > 0 ? region : undefined;
  }

  /** The whole volume's extents at `seq` (rollback, fsck). */
  indexAt(seq: number): ExtentIndex {
    const index = new ExtentIndex(this.sizeBytes);
    for (const regionIndex of this.touched) index.replaceRegion(regionIndex, this.regionAt(regionIndex, seq));
    return index;
  }

  private post(regionIndex: number, seq: number): void {
    let history = this.regions[regionIndex];
    if (!history) {
      this.regions[regionIndex] = history = new RegionHistory();
      this.touched.push(regionIndex);
    }
    history.post(seq);
    this.postingCount += 1;
  }

  /**
   * Takes the snapshots due within the first `postings` postings that are not taken yet,
   * from the last snapshot before that point (later ones may exist: taken from the live
   * index as writes came in).
   */
  private buildSnapshots(regionIndex: number, history: RegionHistory, postings: number, max = Infinity): number {
    let built = 0;
    for (let k = history.snapshotBefore(postings); built < max; built += 1) {
      const lastAt = history.snapshotAt[k];
      const last = history.snapshots[k];
      const nextAt = k + 1 < history.snapshotAt.length ? history.snapshotAt[k + 1] : Infinity;
      const gap = Math.max(SNAPSHOT_POSTINGS_MIN, last.length / EXTENT_STRIDE);
      // Due after `gap` postings, or right after a revert, whichever comes first.
      let boundary = -1;
      for (let i = lastAt; i < Math.min(lastAt + gap, history.count); i += 1) {
        if (this.typeOf(history.seqs[i]) === RecordType.REVERT) {
          boundary = i + 1;
          break;
        }
      }
      if (boundary === -1 && lastAt + gap <= history.count) boundary = lastAt + gap;
      if (boundary === -1 || boundary > postings || boundary >= nextAt) return built;
      const region = Region.from(last);
      for (let i = lastAt; i < boundary; i += 1) this.apply(region, regionIndex, history.seqs[i]);
      const snapshot = region.used.slice();
      // Replaying a revert may have inserted earlier snapshots meanwhile: find the place again.
      k = history.snapshotBefore(boundary) + 1;
      history.snapshotAt.splice(k, 0, boundary);
      history.snapshots.splice(k, 0, snapshot);
      this.snapshotBytes += snapshot.byteLength;
    }
    return built;
  }

  /**
   * Builds the snapshots still missing (the stretches of history from before a restart) for
   * about `budgetMs`, so that a first look at an old point does not have to replay a busy
   * region from its first write. Returns true once every region is complete.
   */
  warm(budgetMs: number): boolean {
    const deadline = performance.now() + budgetMs;
    while (this.warmCursor < this.touched.length) {
      const regionIndex = this.touched[this.warmCursor];
      const history = this.regions[regionIndex]!;
      const k = history.snapshotBefore(history.warmAt);
      const nextAt = k + 1 < history.snapshotAt.length ? history.snapshotAt[k + 1] : history.count;
      const gap = Math.max(SNAPSHOT_POSTINGS_MIN, history.snapshots[k].length / EXTENT_STRIDE);
      if (nextAt - history.snapshotAt[k] <= gap || this.buildSnapshots(regionIndex, history, nextAt - 1, 1) === 0) history.warmAt = nextAt;
      if (history.warmAt >= history.count) this.warmCursor += 1;
      if (performance.now() >= deadline) return false;
    }
    return true;
  }

  /**
   * After a record was applied to the live index too: snapshots the touched regions that are
   * due one, copying the live extents (the same content the history's replay would give), so
   * the history keeps up with the writes at the cost of a copy instead of a replay. `all`:
   * snapshot every touched region now (after a rollback, or at start-up for busy regions).
   */
  snapshotFromLive(live: (regionIndex: number) => Region | undefined, range: { offsetBytes: number; lengthBytes: number } | 'all', postingsMin = 1): void {
    const take = (regionIndex: number, force: boolean) => {
      const history = this.regions[regionIndex];
      if (!history) return;
      const lastIndex = history.snapshotAt.length - 1;
      const lastAt = history.snapshotAt[lastIndex];
      const since = history.count - lastAt;
      const gap = Math.max(SNAPSHOT_POSTINGS_MIN, history.snapshots[lastIndex].length / EXTENT_STRIDE);
      if (since === 0 || (force ? since < postingsMin : since < gap)) return;
      const snapshot = live(regionIndex)?.used.slice() ?? new Uint32Array(0);
      history.snapshotAt.push(history.count);
      history.snapshots.push(snapshot);
      this.snapshotBytes += snapshot.byteLength;
    };
    if (range === 'all') {
      for (const regionIndex of this.touched) take(regionIndex, true);
      return;
    }
    if (range.lengthBytes === 0) return;
    const first = Math.floor(range.offsetBytes / REGION_BYTES);
    const last = Math.floor((range.offsetBytes + range.lengthBytes - 1) / REGION_BYTES);
    for (let regionIndex = first; regionIndex <= last; regionIndex += 1) take(regionIndex, false);
  }

  private apply(region: Region, regionIndex: number, seq: number): void {
    const i = this.slotOf(seq);
    assert(i !== -1, 'a posting names a row');
    const t = this.table;
    const type = t.type[i];
    if (type === RecordType.REVERT) {
      const earlier = this.regionAt(regionIndex, t.offset[i]) ?? new Region();
      region.entries = earlier.entries;
      region.count = earlier.count;
      return;
    }
    // Thinned by retention: overwritten before the next kept point, so no kept point needs it.
    if (type === RecordType.THINNED) return;
    const base = regionIndex * REGION_BYTES;
    const write = type === RecordType.WRITE;
    const offset = write ? t.offset[i] + t.payloadSkip[i] : t.offset[i];
    const start = Math.max(offset, base);
    const stop = Math.min(offset + (write ? t.logical[i] : t.length[i]), base + REGION_BYTES);
    if (write) {
      const compressed = (t.flags[i] & RecordFlag.COMPRESSED) !== 0;
      region.set(start - base, stop - base, [t.segment[i], t.payloadPosition[i], start - offset, t.payloadBytes[i] + (compressed ? PAYLOAD_COMPRESSED : 0)]);
    } else {
      const allocated = type === RecordType.ZERO && (t.flags[i] & RecordFlag.ALLOCATED) !== 0;
      region.set(start - base, stop - base, [allocated ? SEGMENT_ZERO_ALLOCATED : SEGMENT_ZERO, 0, 0, 0]);
    }
  }
}

/**
 * The volume as it was at one seq: regions are materialised from the history when first
 * looked at and kept in a bounded cache (least recently used out first).
 */
export class PointIndex {
  /** This view's key prefix in the daemon-wide region cache (core/caches.ts). */
  private readonly owner = ownerPrefix('point');

  /** `cache`: the daemon-wide one; tests pass a small one. */
  constructor(private readonly history: History, readonly seq: number, private readonly cache: ByteCache<{ region: { entries: Uint32Array } | undefined }> = regionCache) {
    if (seq < history.seqFirst || seq > history.seqLast) {
      throw new HindsightError('POINT_NOT_FOUND', `seq ${seq} is not in this volume's history (${history.seqFirst}..${history.seqLast})`);
    }
  }

  lookup(offsetBytes: number, lengthBytes: number, visit: (piece: ExtentVisit) => void): void {
    lookupRegions((regionIndex) => this.region(regionIndex), offsetBytes, lengthBytes, visit);
  }

  /** Frees what this view cached (its mount is gone). */
  close(): void {
    dropOwner(this.cache, this.owner);
  }

  private region(regionIndex: number): Region | undefined {
    // Folded away under this view (History.fold): refused, never built from the wrong state.
    if (this.seq < this.history.seqFirst) {
      throw new HindsightError('POINT_EXPIRED', `seq ${this.seq} is no longer in this volume's history (it keeps seqs ${this.history.seqFirst}..${this.history.seqLast})`);
    }
    // Keys name the history's generation: after a compaction moved journal positions, regions
    // cached before are not found any more (and age out) — no walk of the whole cache.
    const key = `${this.owner}${this.history.generation}:${regionIndex}`;
    const hit = this.cache.get(key);
    if (hit) return hit.region as Region | undefined;
    const region = this.history.regionAt(regionIndex, this.seq);
    this.cache.set(key, { region });
    return region;
  }
}

/** How many of the first `count` of `sorted` (ascending) are below `value` (`orEqual`: at most it). */
function countBelow(sorted: ArrayLike<number>, count: number, value: number, orEqual = false): number {
  let low = 0;
  let high = count;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle] < value || (orEqual && sorted[middle] === value)) low = middle + 1;
    else high = middle;
  }
  return low;
}

function binarySearch(sorted: ArrayLike<number>, value: number): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (sorted[middle] < value) low = middle + 1;
    else high = middle;
  }
  return low < sorted.length && sorted[low] === value ? low : -1;
}

/** A segment wholly folded (History.fold): what its records still mean to the history. */
export interface FoldedSegment {
  seqFirst: number;
  seqLast: number;
  /** The WRITE records a region's base shows (payload position ascending): never dropped. */
  positions: Uint32Array;
  seqs: Float64Array;
  /** The bytes dropping each would free (its record less the THINNED header that stays). */
  spans: Uint32Array;
  /** The same for the other WRITE records, together: compaction may drop them. */
  droppableBytes: number;
  /**
   * Rows that are not WRITE records and no run takes (ZERO, TRIM, REVERT, BOOKMARK): with the
   * WRITE records a base shows, what no run may take (pack.ts); the others may share run
   * entries (records collapsed into spans are counted among those).
   */
  fixed: number;
}

/** Records of a folded segment that runs may take (pack.ts): all but those that changed content and still count. */
export function runnableRecords(folded: FoldedSegment): number {
  return folded.seqLast - folded.seqFirst + 1 - folded.positions.length - folded.fixed;
}

/** A folded segment's list without the records no base shows any more (their bytes droppable now). */
function keepShown(folded: FoldedSegment, shown: ReadonlySet<number> | undefined): FoldedSegment {
  const keep: number[] = [];
  let droppableBytes = folded.droppableBytes;
  for (let j = 0; j < folded.positions.length; j += 1) {
    if (shown?.has(folded.positions[j])) keep.push(j);
    else droppableBytes += folded.spans[j];
  }
  if (keep.length === folded.positions.length) return folded;
  return {
    seqFirst: folded.seqFirst, seqLast: folded.seqLast, droppableBytes, fixed: folded.fixed,
    positions: Uint32Array.from(keep, (j) => folded.positions[j]), seqs: Float64Array.from(keep, (j) => folded.seqs[j]), spans: Uint32Array.from(keep, (j) => folded.spans[j]),
  };
}
