/**
 * Reads records back from segment files in seq order, checking each one (magic, type,
 * sizes, seq continuity, CRC). Used by recovery at start (from the index checkpoint on) and
 * by fsck (from the beginning). Stops at the first bad record and says where and why.
 */
import path from 'node:path';
import { HindsightError, assert } from '../core/index.js';
import type { FileLayer, StorageFile } from './file-layer.js';
import {
  PACK_ENTRY_BYTES, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RECORD_MAGIC, RecordFlag, RecordType, decodeRecordHeader, payloadOffset, recordCount, recordCrc, spanOf, storedCrc, isCompressedWrite } from './record.js';
import { decodePack } from './pack.js';
import type { PackedRecord } from './pack.js';
import { PAYLOAD_CHUNK_BYTES, chunkTableBytes, firstBadChunk } from './chunk-crc.js';
import type { RecordHeader } from './record.js';
import { SEGMENT_HEADER_BYTES, decodeSegmentHeader, parseSegmentFileName } from './segment.js';
import type { Toc } from './toc.js';
import { containerLogicalBytes } from './container.js';

export interface JournalPosition {
  segmentIndex: number;
  position: number;
}

export interface ScannedRecord {
  header: RecordHeader;
  segmentIndex: number;
  /** Where the record starts in its segment. */
  recordPosition: number;
  /** Where its payload starts. */
  payloadPosition: number;
  /** A compressed WRITE: the bytes its container stands for. */
  logicalBytes?: number;
  /** Only from scanHeaders with `wholeRuns`: a run of this many records (pack.ts), the last at `runTimeLastUs`. */
  runCount?: number;
  runTimeLastUs?: number;
}

export interface BadRecord extends JournalPosition {
  reason: string;
  expectedSeq: number;
  /** The journal does not continue where the scan was told to start (a stale or foreign
   * index checkpoint), as opposed to a damaged or torn record. */
  startMismatch: boolean;
}

export interface ScanResult {
  /** Where the next record goes: just past the last good one. */
  end: JournalPosition;
  seqLast: number;
  bad: BadRecord | null;
  /** Dead tails of earlier recovery cuts skipped on the way (the journal went on after them). */
  deadTails: BadRecord[];
}

export interface ScanOptions {
  directory: string;
  files: FileLayer;
  volumeId: Buffer;
  crcSeed: number;
  from: JournalPosition;
  expectedSeq: number;
  onRecord: (record: ScannedRecord) => void;
}

export function listSegments(files: FileLayer, directory: string): number[] {
  return files.list(directory).map(parseSegmentFileName).filter((index): index is number => index !== null).sort((a, b) => a - b);
}

export function segmentPath(directory: string, segmentIndex: number): string {
  return path.join(directory, `${String(segmentIndex).padStart(8, '0')}.seg`);
}

export function scanJournal(options: ScanOptions): ScanResult {
  const steps = scanSteps(options);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

const SCAN_YIELD_BYTES = 4 * 1024 * 1024;

/**
 * The same scan, yielding to the event loop every few MiB so a running daemon keeps serving
 * (fsck). Records appended meanwhile are scanned too if they land before the scan gets there.
 */
export async function scanJournalAsync(options: ScanOptions): Promise<ScanResult> {
  const steps = scanSteps(options);
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** The scan as steps: it yields (nothing) every SCAN_YIELD_BYTES of records read. */
function* scanSteps(options: ScanOptions): Generator<void, ScanResult> {
  const segments = listSegments(options.files, options.directory).filter((index) => index >= options.from.segmentIndex);
  let expectedSeq = options.expectedSeq;
  let end: JournalPosition = { ...options.from };
  const deadTails: BadRecord[] = [];
  let skipBelow = -1;
  for (const segmentIndex of segments) {
    if (segmentIndex < skipBelow) continue;
    const file = options.files.open(segmentPath(options.directory, segmentIndex), false);
    try {
      const start = segmentIndex === options.from.segmentIndex ? options.from.position : SEGMENT_HEADER_BYTES;
      const result = yield* scanSegment(file, segmentIndex, start, expectedSeq, options);
      end = { segmentIndex, position: result.position };
      expectedSeq = result.expectedSeq;
      if (result.bad) {
        // A fresh segment that starts at exactly the seq expected here means the rest of this
        // one is the dead tail of an earlier recovery cut that a crash brought back.
        const continuation = result.bad.startMismatch ? null : findContinuation(options, result.bad);
        if (continuation === null) return { end, seqLast: expectedSeq - 1, bad: result.bad, deadTails };
        deadTails.push(result.bad);
        skipBelow = continuation;
      }
    } finally {
      file.close();
    }
    yield;
  }
  return { end, seqLast: expectedSeq - 1, bad: null, deadTails };
}

/**
 * The highest-numbered segment after a bad record's whose header says it starts at the seq
 * expected there (the fresh segment a recovery cut began), or null.
 */
export function findContinuation(options: Pick<ScanOptions, 'files' | 'directory' | 'volumeId'>, bad: BadRecord): number | null {
  const later = listSegments(options.files, options.directory).filter((index) => index > bad.segmentIndex).reverse();
  const header = Buffer.alloc(SEGMENT_HEADER_BYTES);
  for (const index of later) {
    const file = options.files.open(segmentPath(options.directory, index), false);
    try {
      if (file.read(header, 0, SEGMENT_HEADER_BYTES, 0) < SEGMENT_HEADER_BYTES) continue;
      const decoded = decodeSegmentHeader(header, file.path);
      if (decoded.volumeId.equals(options.volumeId) && decoded.segmentIndex === index && decoded.seqFirst === bad.expectedSeq) return index;
    } catch {
      // A damaged header is no continuation.
    } finally {
      file.close();
    }
  }
  return null;
}

function* scanSegment(file: StorageFile, segmentIndex: number, start: number, firstSeq: number, options: ScanOptions):
  Generator<void, { position: number; expectedSeq: number; bad: BadRecord | null }> {
  const size = file.sizeBytes();
  const bad = (position: number, reason: string, expectedSeq: number, startMismatch = false) => ({ position, expectedSeq, bad: { segmentIndex, position, reason, expectedSeq, startMismatch } });
  const headerBytes = Buffer.alloc(SEGMENT_HEADER_BYTES);
  if (file.read(headerBytes, 0, SEGMENT_HEADER_BYTES, 0) < SEGMENT_HEADER_BYTES) return bad(0, 'segment header truncated', firstSeq);
  try {
    const header = decodeSegmentHeader(headerBytes, file.path);
    if (!header.volumeId.equals(options.volumeId)) return bad(0, 'segment belongs to another volume', firstSeq);
    if (header.segmentIndex !== segmentIndex) return bad(0, 'segment index differs from its file name', firstSeq);
  } catch (err) {
    return bad(0, (err as HindsightError).message, firstSeq);
  }
  if (start > size) return bad(size, `index checkpoint points past the end of the segment (${start} > ${size})`, firstSeq, true);
  let position = start;
  let expectedSeq = firstSeq;
  let sinceYield = 0;
  const header = Buffer.alloc(RECORD_HEADER_BYTES);
  while (position < size) {
    const check = readRecordAt(file, position, size, header, options.crcSeed);
    if (!check.ok) return bad(position, check.reason, expectedSeq);
    if (check.header.seq !== expectedSeq) {
      const atStart = segmentIndex === options.from.segmentIndex && position === options.from.position;
      return bad(position, `seq ${check.header.seq} where ${expectedSeq} was expected`, expectedSeq, atStart);
    }
    for (const record of recordsOf(check, segmentIndex, position)) options.onRecord(record);
    expectedSeq += recordCount(check.header);
    const span = spanOf(check.header);
    position += span;
    sinceYield += span;
    if (sinceYield >= SCAN_YIELD_BYTES) {
      sinceYield = 0;
      yield;
    }
  }
  return { position, expectedSeq, bad: null };
}

/** A checked record: a PACK's header comes with the records it holds. */
type RecordCheck = { ok: true; header: RecordHeader; logicalBytes?: number; packed?: PackedRecord[] } | { ok: false; reason: string };

/** The records a checked record stands for: itself, or those of a pack (sharing its position). */
function recordsOf(check: RecordCheck & { ok: true }, segmentIndex: number, position: number): ScannedRecord[] {
  // (Built field by field: a start reads every record of a run this way, and a spread costs.)
  if (check.packed) {
    return check.packed.map((record) => ({
      header: record.header, segmentIndex, recordPosition: position, payloadPosition: record.payloadPosition, logicalBytes: record.logicalBytes,
      runCount: record.runCount, runTimeLastUs: record.runTimeLastUs,
    }));
  }
  return [{ header: check.header, segmentIndex, recordPosition: position, payloadPosition: position + payloadOffset(check.header.payloadBytes), logicalBytes: check.logicalBytes }];
}

/** A compressed WRITE's logical length from its container's first bytes, checked against its range. */
function logicalOf(header: RecordHeader, head: Buffer | null): RecordCheck {
  if (header.type !== RecordType.WRITE || (header.flags & RecordFlag.COMPRESSED) === 0) return { ok: true, header };
  const logical = head ? containerLogicalBytes(head) : null;
  if (logical === null || logical < 1 || (header.payloadSkip ?? 0) + logical > header.lengthBytes) {
    return { ok: false, reason: 'compressed payload without a sound container header' };
  }
  return { ok: true, header, logicalBytes: logical };
}

/** Reads and fully checks the record at `position` (header, payload bounds, CRC). */
export function readRecordAt(file: StorageFile, position: number, size: number, scratch: Buffer, crcSeed: number): RecordCheck {
  if (position + RECORD_HEADER_BYTES > size) return { ok: false, reason: 'record header truncated' };
  file.read(scratch, 0, RECORD_HEADER_BYTES, position);
  const decoded = decodeRecordHeader(scratch);
  if (!decoded.ok) return decoded;
  if (position + spanOf(decoded.header) > size) return { ok: false, reason: 'record payload truncated' };
  if (decoded.header.type === RecordType.PACK) {
    const body = Buffer.allocUnsafe(decoded.header.offsetBytes);
    file.read(body, 0, body.length, position + RECORD_HEADER_BYTES);
    return checkPack(scratch, decoded.header, body, position, crcSeed, true);
  }
  const payloadBytes = decoded.header.payloadBytes;
  if (payloadBytes === 0) {
    if (recordCrc(scratch, null, crcSeed) !== storedCrc(scratch)) return { ok: false, reason: 'record checksum mismatch' };
    return decoded;
  }
  const body = Buffer.allocUnsafe(payloadOffset(payloadBytes) - RECORD_HEADER_BYTES + payloadBytes);
  file.read(body, 0, body.length, position + RECORD_HEADER_BYTES);
  const table = body.subarray(0, chunkTableBytes(payloadBytes));
  if (recordCrc(scratch, table, crcSeed) !== storedCrc(scratch)) return { ok: false, reason: 'record checksum mismatch' };
  const bad = firstBadChunk(body.subarray(table.length), 0, payloadBytes, table, crcSeed);
  if (bad !== -1) return { ok: false, reason: `payload chunk ${bad} checksum mismatch` };
  return logicalOf(decoded.header, body.subarray(table.length, table.length + 8));
}

/**
 * Fully checks one record held in memory (header, sizes, CRC seeded by the volume, chunk
 * table against the payload): a record received from a peer site, or read whole.
 */
export function checkRecordBytes(bytes: Buffer, crcSeed: number, packAt?: number): RecordCheck {
  const decoded = decodeRecordHeader(bytes);
  if (!decoded.ok) return decoded;
  if (decoded.header.type === RecordType.PACK) {
    // Packs exist only in compacted segments (read with `packAt`, where the pack lies in its
    // segment): records travel one by one.
    if (packAt === undefined) return { ok: false, reason: 'a pack record where single records are expected' };
    if (bytes.length < RECORD_HEADER_BYTES + decoded.header.offsetBytes) return { ok: false, reason: 'record payload truncated' };
    return checkPack(bytes, decoded.header, bytes.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + decoded.header.offsetBytes), packAt, crcSeed, true);
  }
  const payloadBytes = decoded.header.payloadBytes;
  const end = payloadOffset(payloadBytes) + payloadBytes;
  if (bytes.length < end) return { ok: false, reason: 'record payload truncated' };
  const table = payloadBytes === 0 ? null : bytes.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + chunkTableBytes(payloadBytes));
  if (recordCrc(bytes, table, crcSeed) !== storedCrc(bytes)) return { ok: false, reason: 'record checksum mismatch' };
  if (table) {
    const payload = bytes.subarray(payloadOffset(payloadBytes), end);
    const bad = firstBadChunk(payload, 0, payloadBytes, table, crcSeed);
    if (bad !== -1) return { ok: false, reason: `payload chunk ${bad} checksum mismatch` };
    return logicalOf(decoded.header, payload.subarray(0, 8));
  }
  return decoded;
}

/**
 * After a bad record: the highest `seqDurable` claimed by any valid record that follows it
 * (searched at every aligned position of this segment and in later segments). If a later
 * record says the bad one was already durable, the bad record is corruption, not a torn
 * tail left by a crash.
 */
export function durableClaimAfter(options: Omit<ScanOptions, 'onRecord' | 'from' | 'expectedSeq'>, bad: JournalPosition): number {
  let claimed = 0;
  const scratch = Buffer.alloc(RECORD_HEADER_BYTES);
  if (soundPackAt(options, bad, scratch)) return Infinity;
  for (const segmentIndex of listSegments(options.files, options.directory).filter((index) => index >= bad.segmentIndex)) {
    const file = options.files.open(segmentPath(options.directory, segmentIndex), false);
    try {
      const size = file.sizeBytes();
      const start = segmentIndex === bad.segmentIndex ? bad.position + RECORD_ALIGN_BYTES : SEGMENT_HEADER_BYTES;
      for (const position of magicPositions(file, start, size)) {
        const check = readRecordAt(file, position, size, scratch, options.crcSeed);
        if (check.ok) claimed = Math.max(claimed, check.header.seqDurable);
      }
    } finally {
      file.close();
    }
  }
  return claimed;
}

/**
 * Whether a PACK whose header and entry table check out lies at `at`: packs are written only
 * by compaction, whole and synced before they replace a segment, so one that fails further
 * (a payload) is damage, never a torn write — whatever follows it.
 */
function soundPackAt(options: Pick<ScanOptions, 'files' | 'directory' | 'crcSeed'>, at: JournalPosition, scratch: Buffer): boolean {
  const file = options.files.open(segmentPath(options.directory, at.segmentIndex), false);
  try {
    if (file.read(scratch, 0, RECORD_HEADER_BYTES, at.position) < RECORD_HEADER_BYTES) return false;
    const decoded = decodeRecordHeader(scratch);
    if (!decoded.ok || decoded.header.type !== RecordType.PACK) return false;
    const entries = Buffer.alloc(decoded.header.lengthBytes * PACK_ENTRY_BYTES);
    if (file.read(entries, 0, entries.length, at.position + RECORD_HEADER_BYTES) < entries.length) return false;
    return recordCrc(scratch, entries, options.crcSeed) === storedCrc(scratch);
  } finally {
    file.close();
  }
}

const SEARCH_WINDOW_BYTES = 8 * 1024 * 1024;

/** Aligned positions in [start, size) where the record magic appears, read in big windows. */
function* magicPositions(file: StorageFile, start: number, size: number): Generator<number> {
  const magic = Buffer.alloc(4);
  magic.writeUInt32LE(RECORD_MAGIC, 0);
  const window = Buffer.allocUnsafe(SEARCH_WINDOW_BYTES);
  const first = Math.ceil(start / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
  for (let base = first; base < size; base += SEARCH_WINDOW_BYTES) {
    const got = file.read(window, 0, Math.min(SEARCH_WINDOW_BYTES, size - base), base);
    const view = window.subarray(0, got);
    for (let hit = view.indexOf(magic); hit !== -1; hit = view.indexOf(magic, hit + 1)) {
      if (hit % RECORD_ALIGN_BYTES === 0) yield base + hit;
    }
  }
}

/** The scrub works in slices of at most this long on the event loop... */
const SCRUB_SLICE_MS = 2;
/** ...then rests as long as the slice took: at most half the loop, whatever the load. */
const SCRUB_DUTY = 0.5;

/**
 * Verifies every record from the start of the journal up to `until` (records known durable,
 * so any failure is corruption) in the background: slices of ~2 ms on the event loop, each
 * followed by a rest as long, so clients and API calls wait at most a slice and the scrub
 * takes at most half the loop. Returns the first bad record, or null; stops early (null)
 * when `stopped()` says so.
 */
export async function scrubJournal(options: Omit<ScanOptions, 'onRecord' | 'from' | 'expectedSeq'>, until: JournalPosition, stopped: () => boolean): Promise<BadRecord | null> {
  const scratch = Buffer.alloc(RECORD_HEADER_BYTES);
  let expectedSeq = 1;
  let sliceStart = performance.now();
  let skipBelow = -1;
  for (const segmentIndex of listSegments(options.files, options.directory).filter((index) => index <= until.segmentIndex)) {
    if (segmentIndex < skipBelow) continue;
    const file = options.files.open(segmentPath(options.directory, segmentIndex), false);
    try {
      const size = file.sizeBytes();
      const limit = segmentIndex === until.segmentIndex ? Math.min(until.position, size) : size;
      let position = SEGMENT_HEADER_BYTES;
      while (position < limit) {
        const check = readRecordAt(file, position, size, scratch, options.crcSeed);
        const bad = (reason: string): BadRecord => ({ segmentIndex, position, reason, expectedSeq, startMismatch: false });
        const problem = !check.ok ? bad(check.reason) : check.header.seq !== expectedSeq ? bad(`seq ${check.header.seq} where ${expectedSeq} was expected`) : null;
        if (problem) {
          // The dead tail of an earlier recovery cut, when the journal goes on in a fresh segment.
          const continuation = findContinuation(options, problem);
          if (continuation === null) return problem;
          skipBelow = continuation;
          break;
        }
        assert(check.ok, 'a record without a problem checked out');
        expectedSeq += recordCount(check.header);
        position += spanOf(check.header);
        const sliceMs = performance.now() - sliceStart;
        if (sliceMs >= SCRUB_SLICE_MS) {
          await new Promise<void>((resolve) => setTimeout(resolve, Math.ceil(sliceMs * SCRUB_DUTY / (1 - SCRUB_DUTY))));
          if (stopped()) return null;
          sliceStart = performance.now();
        }
      }
    } finally {
      file.close();
    }
  }
  return null;
}

const HEADER_WINDOW_BYTES = 256 * 1024;

/** Reads a segment a window at a time, for scanning headers without their payloads. */
class HeaderWindow {
  private readonly buffer = Buffer.allocUnsafe(HEADER_WINDOW_BYTES);
  private start = 0;
  private bytes = 0;

  constructor(private readonly file: StorageFile, private readonly size: number) {}

  /** [position, position+length) of the segment, or null past its end. */
  slice(position: number, length: number): Buffer | null {
    if (position + length > this.size) return null;
    if (position < this.start || position + length > this.start + this.bytes) {
      this.start = position;
      this.bytes = this.file.read(this.buffer, 0, Math.min(HEADER_WINDOW_BYTES, this.size - position), position);
      if (position + length > this.start + this.bytes) return null;
    }
    return this.buffer.subarray(position - this.start, position - this.start + length);
  }
}

/**
 * Every record from the journal's start up to `until` (exclusive), in seq order, reading only
 * headers and chunk tables (CRC-checked; payloads are the scrub's and the reads' job), by the
 * rules recovery and the scrub follow: a bad record followed by a segment that starts at
 * exactly the seq expected there is the dead tail of an earlier cut, and is skipped. A record
 * whose seq is where a later segment starts is where such a cut may have been made: its
 * payload is checked too, so a torn one is seen as recovery saw it. Anything else wrong is
 * JOURNAL_CORRUPT. Used to rebuild the history behind the index checkpoint. With `wholeRuns`,
 * a run of records in a pack (pack.ts) comes as one record with its count (`runCount`).
 */
export function scanHeaders(options: Omit<ScanOptions, 'onRecord' | 'from' | 'expectedSeq'>, until: JournalPosition, onRecord: (record: ScannedRecord) => void,
  tocOf: (segmentIndex: number) => Toc | null = () => null, wholeRuns = false): { seqLast: number; recordsFromTocs: number; segmentsCovered: number[] } {
  let expectedSeq = 1;
  let recordsFromTocs = 0;
  /** Sealed segments whose table listed every record. */
  const segmentsCovered: number[] = [];
  const segments = listSegments(options.files, options.directory);
  const firsts = segments.map((segmentIndex) => segmentSeqFirst(options, segmentIndex));
  const scratch = Buffer.alloc(RECORD_HEADER_BYTES);
  let skipBelow = -1;
  for (let i = 0; i < segments.length && segments[i] <= until.segmentIndex; i += 1) {
    const segmentIndex = segments[i];
    if (segmentIndex < skipBelow) continue;
    const laterFirsts = new Set(firsts.slice(i + 1).filter((first): first is number => first !== null));
    const file = options.files.open(segmentPath(options.directory, segmentIndex), false);
    try {
      const size = file.sizeBytes();
      const limit = segmentIndex === until.segmentIndex ? Math.min(until.position, size) : size;
      const window = new HeaderWindow(file, size);
      let position = SEGMENT_HEADER_BYTES;
      // A table of contents saves reading the segment, if it fits: it continues the seqs,
      // stays within what is to be read, and its last record is really there as listed.
      const toc = tocOf(segmentIndex);
      if (toc && tocFits(toc, window, expectedSeq, limit, laterFirsts, options.crcSeed)) {
        for (const record of toc.records) onRecord(record);
        expectedSeq += toc.records.length;
        recordsFromTocs += toc.records.length;
        position = toc.endPosition;
        if (position === size && segmentIndex !== until.segmentIndex) segmentsCovered.push(segmentIndex);
      }
      while (position < limit) {
        let checked = checkHeader(window, position, expectedSeq, options.crcSeed, wholeRuns);
        const count = checked.ok ? recordCount(checked.header) : 1;
        if (checked.ok && (count === 1 ? laterFirsts.has(expectedSeq) : [...laterFirsts].some((first) => first >= expectedSeq && first < expectedSeq + count))) {
          checked = readRecordAt(file, position, size, scratch, options.crcSeed);
        }
        if (!checked.ok) {
          const continuation = findContinuation(options, { segmentIndex, position, reason: checked.reason, expectedSeq, startMismatch: false });
          if (continuation === null || continuation > until.segmentIndex) {
            throw new HindsightError('JOURNAL_CORRUPT', `journal ${file.path} is corrupt at offset ${position} (${checked.reason}); the volume is not served (run hindsight fsck)`);
          }
          skipBelow = continuation;
          break;
        }
        for (const record of recordsOf(checked, segmentIndex, position)) onRecord(record);
        expectedSeq += recordCount(checked.header);
        position += spanOf(checked.header);
      }
    } finally {
      file.close();
    }
  }
  return { seqLast: expectedSeq - 1, recordsFromTocs, segmentsCovered };
}

/**
 * The records `seqFirst`..`seqLast` of one sealed segment (a folded one: the history keeps
 * no table of them), from its table of contents where that fits, else from its headers.
 * Anything else than exactly those records is JOURNAL_CORRUPT.
 */
export function segmentRecordsOnDisk(options: Pick<ScanOptions, 'files' | 'directory' | 'crcSeed'>, segmentIndex: number, seqFirst: number, seqLast: number, toc: Toc | null): ScannedRecord[] {
  const file = options.files.open(segmentPath(options.directory, segmentIndex), false);
  try {
    const size = file.sizeBytes();
    const window = new HeaderWindow(file, size);
    const records: ScannedRecord[] = [];
    let position = SEGMENT_HEADER_BYTES;
    let expectedSeq = seqFirst;
    if (toc && tocFits(toc, window, seqFirst, size, new Set([seqLast + 1]), options.crcSeed)) {
      records.push(...toc.records);
      expectedSeq += toc.records.length;
      position = toc.endPosition;
    }
    while (expectedSeq <= seqLast) {
      const checked = position < size ? checkHeader(window, position, expectedSeq, options.crcSeed) : { ok: false as const, reason: 'segment ends' };
      if (!checked.ok) throw new HindsightError('JOURNAL_CORRUPT', `journal ${file.path} is corrupt at offset ${position} (${checked.reason}; seq ${expectedSeq} of ${seqFirst}..${seqLast} expected there)`);
      // (A pack may go on past seqLast: a failback's cut.)
      records.push(...recordsOf(checked, segmentIndex, position).filter((record) => record.header.seq <= seqLast));
      expectedSeq += recordCount(checked.header);
      position += spanOf(checked.header);
    }
    return records;
  } finally {
    file.close();
  }
}

/** A segment's seqFirst from its header, or null if the header cannot be read or is foreign. */
function segmentSeqFirst(options: Pick<ScanOptions, 'files' | 'directory' | 'volumeId'>, segmentIndex: number): number | null {
  const file = options.files.open(segmentPath(options.directory, segmentIndex), false);
  try {
    const header = Buffer.alloc(SEGMENT_HEADER_BYTES);
    if (file.read(header, 0, SEGMENT_HEADER_BYTES, 0) < SEGMENT_HEADER_BYTES) return null;
    const decoded = decodeSegmentHeader(header, file.path);
    return decoded.volumeId.equals(options.volumeId) && decoded.segmentIndex === segmentIndex ? decoded.seqFirst : null;
  } catch {
    return null;
  } finally {
    file.close();
  }
}

function tocFits(toc: Toc, window: HeaderWindow, expectedSeq: number, limit: number, laterFirsts: Set<number>, crcSeed: number): boolean {
  const last = toc.records[toc.records.length - 1];
  if (!last || toc.seqFirst !== expectedSeq || toc.endPosition > limit || toc.records[0].recordPosition !== SEGMENT_HEADER_BYTES) return false;
  // A possible cut point inside: read the segment itself, payloads checked there.
  for (const first of laterFirsts) if (first >= toc.seqFirst && first <= last.header.seq) return false;
  // A packed last record: its pack's header and entries, read and checked, must list it.
  let first = toc.records.length - 1;
  while (first > 0 && toc.records[first - 1].recordPosition === last.recordPosition) first -= 1;
  const actual = checkHeader(window, last.recordPosition, toc.seqFirst + first, crcSeed);
  if (!actual.ok) return false;
  const found = actual.packed ? actual.packed.find((record) => record.header.seq === last.header.seq) : { header: actual.header, payloadPosition: last.recordPosition + payloadOffset(actual.header.payloadBytes) };
  if (!found || found.payloadPosition !== last.payloadPosition || (actual.packed !== undefined) !== ((last.header.flags & RecordFlag.PACKED) !== 0)) return false;
  const a = found.header;
  const listed = last.header;
  return a.type === listed.type && a.flags === listed.flags && a.offsetBytes === listed.offsetBytes && a.lengthBytes === listed.lengthBytes &&
    a.timeUs === listed.timeUs && a.payloadBytes === listed.payloadBytes && (a.payloadSkip ?? 0) === (listed.payloadSkip ?? 0);
}

/** The header at `position` with its chunk table checked against the CRC, and its seq. */
function checkHeader(window: HeaderWindow, position: number, expectedSeq: number, crcSeed: number, wholeRuns = false): RecordCheck {
  const first = window.slice(position, RECORD_HEADER_BYTES);
  if (!first) return { ok: false, reason: 'record header truncated' };
  const decoded = decodeRecordHeader(first);
  if (!decoded.ok) return decoded;
  if (decoded.header.type === RecordType.PACK) {
    if (decoded.header.seq !== expectedSeq) return { ok: false, reason: `seq ${decoded.header.seq} where ${expectedSeq} was expected` };
    const entries = window.slice(position, RECORD_HEADER_BYTES + decoded.header.lengthBytes * PACK_ENTRY_BYTES);
    if (!entries) return { ok: false, reason: 'pack entry table truncated' };
    return checkPack(entries, decoded.header, entries.subarray(RECORD_HEADER_BYTES), position, crcSeed, false, wholeRuns);
  }
  const tableBytes = chunkTableBytes(decoded.header.payloadBytes);
  const whole = window.slice(position, RECORD_HEADER_BYTES + tableBytes);
  if (!whole) return { ok: false, reason: 'chunk table truncated' };
  const header = whole.subarray(0, RECORD_HEADER_BYTES);
  if (recordCrc(header, tableBytes > 0 ? whole.subarray(RECORD_HEADER_BYTES) : null, crcSeed) !== storedCrc(header)) return { ok: false, reason: 'record checksum mismatch' };
  if (decoded.header.seq !== expectedSeq) return { ok: false, reason: `seq ${decoded.header.seq} where ${expectedSeq} was expected` };
  // A compressed payload's logical length is in its container's first bytes: their chunk
  // is checked against the table first, so a damaged length never shapes the history.
  const compressed = isCompressedWrite(decoded.header.type, decoded.header.flags);
  if (!compressed) return decoded;
  // (Copied first: the next slice may refill the window under `whole`.)
  const chunkCrc = Buffer.from(whole.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + 4));
  const firstChunk = window.slice(position + RECORD_HEADER_BYTES + tableBytes, Math.min(PAYLOAD_CHUNK_BYTES, decoded.header.payloadBytes));
  if (!firstChunk) return { ok: false, reason: 'compressed payload truncated' };
  if (firstBadChunk(firstChunk, 0, decoded.header.payloadBytes, chunkCrc, crcSeed) !== -1) {
    return { ok: false, reason: 'payload chunk 0 checksum mismatch' };
  }
  return logicalOf(decoded.header, firstChunk.subarray(0, 8));
}

/**
 * A PACK (pack.ts): its CRC over the header and entry table, its entries; with `whole` (the
 * body holds everything after the header), every packed payload against its chunk table and
 * a compressed one's container against its entry's logical bytes.
 */
function checkPack(headerBytes: Buffer, header: RecordHeader, body: Buffer, position: number, crcSeed: number, whole: boolean, wholeRuns = false): RecordCheck {
  const entries = body.subarray(0, header.lengthBytes * PACK_ENTRY_BYTES);
  if (recordCrc(headerBytes, entries, crcSeed) !== storedCrc(headerBytes)) return { ok: false, reason: 'record checksum mismatch' };
  const decoded = decodePack(header, Buffer.from(entries), position, wholeRuns && !whole);
  if (!decoded.ok) return decoded;
  if (whole) {
    const base = position + RECORD_HEADER_BYTES;
    for (const record of decoded.records) {
      const { payloadBytes } = record.header;
      if (payloadBytes === 0) continue;
      const at = record.payloadPosition - base;
      const table = body.subarray(at - chunkTableBytes(payloadBytes), at);
      const payload = body.subarray(at, at + payloadBytes);
      const bad = firstBadChunk(payload, 0, payloadBytes, table, crcSeed);
      if (bad !== -1) return { ok: false, reason: `payload chunk ${bad} of packed seq ${record.header.seq} checksum mismatch` };
      if (record.logicalBytes !== undefined && containerLogicalBytes(payload.subarray(0, 8)) !== record.logicalBytes) {
        return { ok: false, reason: `packed seq ${record.header.seq}: its container does not match its entry` };
      }
    }
  }
  return { ok: true, header, packed: decoded.records };
}
