/**
 * The append-only journal of one volume: every write, zero, trim and flush as a checksummed
 * record with a gap-free seq and a time in µs (docs/FORMAT.md).
 *
 * Durability: `append` returns once the record is in the OS page cache. `sync` makes every
 * record appended before it durable (fdatasync of the active segment and of any segment
 * rolled since the last sync); concurrent callers share one sync (group commit). Each record
 * carries `seqDurable`, the highest seq synced when it was written; recovery uses it to tell a
 * torn tail left by a crash (cut) from corruption of data that was already durable (refused).
 */
import { GroupCommit, HindsightError, assert } from '../core/index.js';
import type { FileLayer, StorageFile } from './file-layer.js';
import { RECORD_HEADER_BYTES, RecordType, alignUp, crcSeedFor, encodeRecordHeader, recordSpan } from './record.js';
import type { RecordHeader, RecordTypeValue } from './record.js';
import { durableClaimAfter, listSegments, scanJournal, segmentPath } from './scanner.js';
import type { JournalPosition, ScannedRecord } from './scanner.js';
import { SEGMENT_HEADER_BYTES, encodeSegmentHeader } from './segment.js';

const PADDING = Buffer.alloc(8);
const SEGMENT_FILES_OPEN_MAX = 64;

export interface JournalOptions {
  directory: string;
  files: FileLayer;
  /** 16 bytes identifying the volume; seeds every record CRC. */
  volumeId: Buffer;
  segmentBytesMax: number;
  /** Wall clock in µs (injectable for tests). */
  nowUs: () => number;
}

export interface RecoveryStart {
  from: JournalPosition;
  seqLast: number;
  timeLastUs: number;
}

export interface RecoveryReport {
  recordsReplayed: number;
  /** Set when a torn tail was cut: where, why, and how many bytes went. */
  tornTail: { segmentIndex: number; position: number; reason: string; bytesCut: number } | null;
}

export interface AppendedRecord {
  seq: number;
  timeUs: number;
  segmentIndex: number;
  payloadPosition: number;
}

export interface JournalStats {
  segments: number;
  bytes: number;
  seqLast: number;
  timeLastUs: number;
  seqDurable: number;
}

export class Journal {
  private readonly crcSeed: number;
  private activeIndex: number;
  private activeFile: StorageFile;
  private activeSize: number;
  private seqLast: number;
  private timeLastUs: number;
  private seqDurable: number;
  private bytesBeforeActive: number;
  private segmentCount: number;
  private readonly rolledUnsynced: StorageFile[] = [];
  private readonly readFiles = new Map<number, StorageFile>();
  /** Files with reads in flight: never closed under them. */
  private readonly pinned = new Map<StorageFile, number>();
  /** Files to close as soon as their last read finishes. */
  private readonly closing = new Set<StorageFile>();
  private failure: HindsightError | null = null;
  private readonly groupCommit = new GroupCommit(() => this.syncOnce());
  private readonly headerScratch = Buffer.alloc(RECORD_HEADER_BYTES);

  private constructor(private readonly options: JournalOptions, state: { activeIndex: number; activeFile: StorageFile; activeSize: number; seqLast: number; timeLastUs: number; bytesBeforeActive: number; segmentCount: number }) {
    this.crcSeed = crcSeedFor(options.volumeId);
    this.activeIndex = state.activeIndex;
    this.activeFile = state.activeFile;
    this.activeSize = state.activeSize;
    this.seqLast = state.seqLast;
    this.timeLastUs = state.timeLastUs;
    this.seqDurable = state.seqLast;
    this.bytesBeforeActive = state.bytesBeforeActive;
    this.segmentCount = state.segmentCount;
  }

  /**
   * Opens the journal, replaying every record after `start` (the index checkpoint, or the
   * beginning) through `onRecord`. A torn tail is cut; corruption of durable data throws
   * JOURNAL_CORRUPT naming the segment and offset.
   */
  static open(options: JournalOptions, start: RecoveryStart | null, onRecord: (record: ScannedRecord) => void): { journal: Journal; report: RecoveryReport } {
    const { files, directory } = options;
    files.mkdir(directory);
    const crcSeed = crcSeedFor(options.volumeId);
    if (listSegments(files, directory).length === 0) {
      if (start !== null) throw new HindsightError('JOURNAL_CORRUPT', `${directory}: the index checkpoint refers to journal segments that are missing`);
      createSegment(options, 1, 1);
    }
    const from = start?.from ?? { segmentIndex: listSegments(files, directory)[0], position: SEGMENT_HEADER_BYTES };
    let replayed = 0;
    let timeLastUs = start?.timeLastUs ?? 0;
    const result = scanJournal({
      directory, files, volumeId: options.volumeId, crcSeed, from, expectedSeq: (start?.seqLast ?? 0) + 1,
      onRecord: (record) => {
        replayed += 1;
        timeLastUs = record.header.timeUs;
        onRecord(record);
      },
    });
    let tornTail: RecoveryReport['tornTail'] = null;
    if (result.bad) {
      const claimed = durableClaimAfter({ directory, files, volumeId: options.volumeId, crcSeed }, result.bad);
      if (claimed >= result.bad.expectedSeq) {
        throw new HindsightError('JOURNAL_CORRUPT',
          `journal ${segmentPath(directory, result.bad.segmentIndex)} is corrupt at offset ${result.bad.position} (${result.bad.reason}): ` +
          `seq ${result.bad.expectedSeq} had been made durable, so this is not a torn write; the volume is not served (run hindsight fsck)`);
      }
      tornTail = { ...cutTail(options, result.bad), reason: result.bad.reason };
    }
    const segments = listSegments(files, directory);
    const activeIndex = segments[segments.length - 1];
    const activeFile = files.open(segmentPath(directory, activeIndex), false);
    const activeSize = activeFile.sizeBytes();
    let bytesBeforeActive = 0;
    for (const index of segments.slice(0, -1)) {
      const file = files.open(segmentPath(directory, index), false);
      bytesBeforeActive += file.sizeBytes();
      file.close();
    }
    const journal = new Journal(options, {
      activeIndex, activeFile, activeSize, seqLast: result.seqLast, timeLastUs, bytesBeforeActive, segmentCount: segments.length,
    });
    return { journal, report: { recordsReplayed: replayed, tornTail } };
  }

  get lastSeq(): number {
    return this.seqLast;
  }

  get durableSeq(): number {
    return this.seqDurable;
  }

  /** Where the next record will go (the end of what has been replayed or appended). */
  get endPosition(): JournalPosition {
    return { segmentIndex: this.activeIndex, position: this.activeSize };
  }

  stats(): JournalStats {
    return {
      segments: this.segmentCount,
      bytes: this.bytesBeforeActive + this.activeSize,
      seqLast: this.seqLast,
      timeLastUs: this.timeLastUs,
      seqDurable: this.seqDurable,
    };
  }

  /** Appends one record (in the page cache when this returns). */
  append(type: RecordTypeValue, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | null): AppendedRecord {
    if (this.failure) throw this.failure;
    const payloadBytes = payload?.length ?? 0;
    assert(type === RecordType.WRITE ? payloadBytes === lengthBytes : payloadBytes === 0, 'payload matches record type');
    const span = recordSpan(payloadBytes);
    if (this.activeSize + span > this.options.segmentBytesMax && this.activeSize > SEGMENT_HEADER_BYTES) this.roll();
    const seq = this.seqLast + 1;
    const timeUs = Math.max(this.options.nowUs(), this.timeLastUs);
    const header: RecordHeader = { type, flags, seq, timeUs, offsetBytes, lengthBytes, payloadBytes, seqDurable: this.seqDurable };
    encodeRecordHeader(this.headerScratch, header, payload, this.crcSeed);
    const buffers: Buffer[] = [this.headerScratch];
    if (payload) buffers.push(payload);
    const padding = alignUp(payloadBytes) - payloadBytes;
    if (padding > 0) buffers.push(PADDING.subarray(0, padding));
    this.activeFile.writev(buffers, this.activeSize);
    const payloadPosition = this.activeSize + RECORD_HEADER_BYTES;
    this.activeSize += span;
    this.seqLast = seq;
    this.timeLastUs = timeUs;
    return { seq, timeUs, segmentIndex: this.activeIndex, payloadPosition };
  }

  /** Durable: every record appended before this call. Concurrent calls share syncs. */
  sync(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return this.groupCommit.request();
  }

  /** Reads `length` payload bytes at `position` of a segment into `into`. */
  read(segmentIndex: number, position: number, into: Buffer, intoOffset: number, length: number): void {
    const file = segmentIndex === this.activeIndex ? this.activeFile : this.readFile(segmentIndex);
    checkLength(file, position, length, file.read(into, intoOffset, length, position));
  }

  /**
   * The same in the thread pool. Safe to overlap with appends: journal bytes at a position
   * never change once written. The file stays open until the read is done.
   */
  async readAsync(segmentIndex: number, position: number, into: Buffer, intoOffset: number, length: number): Promise<void> {
    const file = segmentIndex === this.activeIndex ? this.activeFile : this.readFile(segmentIndex);
    this.pinned.set(file, (this.pinned.get(file) ?? 0) + 1);
    try {
      checkLength(file, position, length, await file.readAsync(into, intoOffset, length, position));
    } finally {
      const left = (this.pinned.get(file) ?? 1) - 1;
      if (left === 0) {
        this.pinned.delete(file);
        if (this.closing.delete(file)) file.close();
      }
      else this.pinned.set(file, left);
    }
  }

  async close(): Promise<void> {
    await this.sync().catch(() => undefined);
    this.activeFile.close();
    for (const file of this.readFiles.values()) file.close();
    this.readFiles.clear();
  }

  private async syncOnce(): Promise<void> {
    const target = this.seqLast;
    if (target === this.seqDurable && this.rolledUnsynced.length === 0) return;
    const files = [...this.rolledUnsynced.splice(0), this.activeFile];
    try {
      for (const file of files) await file.datasync();
    } catch (err) {
      this.failure ??= new HindsightError('IO_ERROR', `journal sync failed; the volume refuses writes until the daemon restarts: ${(err as Error).message}`, { cause: err });
      throw this.failure;
    } finally {
      // Rolled segments were only kept open for this sync; reads reopen them on demand.
      for (const file of files) if (file !== this.activeFile) this.closeWhenIdle(file);
    }
    this.seqDurable = Math.max(this.seqDurable, target);
  }

  private roll(): void {
    const next = this.activeIndex + 1;
    createSegment(this.options, next, this.seqLast + 1);
    this.rolledUnsynced.push(this.activeFile);
    this.bytesBeforeActive += this.activeSize;
    this.activeIndex = next;
    this.activeFile = this.options.files.open(segmentPath(this.options.directory, next), false);
    this.activeSize = SEGMENT_HEADER_BYTES;
    this.segmentCount += 1;
  }

  private closeWhenIdle(file: StorageFile): void {
    if (this.pinned.has(file)) this.closing.add(file);
    else file.close();
  }

  private readFile(segmentIndex: number): StorageFile {
    let file = this.readFiles.get(segmentIndex);
    if (file) {
      this.readFiles.delete(segmentIndex);
      this.readFiles.set(segmentIndex, file);
      return file;
    }
    if (this.readFiles.size >= SEGMENT_FILES_OPEN_MAX) {
      const [oldestIndex, oldest] = this.readFiles.entries().next().value as [number, StorageFile];
      this.readFiles.delete(oldestIndex);
      this.closeWhenIdle(oldest);
    }
    file = this.options.files.open(segmentPath(this.options.directory, segmentIndex), false);
    this.readFiles.set(segmentIndex, file);
    return file;
  }
}

function checkLength(file: StorageFile, position: number, expected: number, got: number): void {
  if (got !== expected) {
    throw new HindsightError('JOURNAL_CORRUPT', `journal ${file.path}: expected ${expected} bytes at offset ${position}, found ${got}`);
  }
}


function createSegment(options: JournalOptions, segmentIndex: number, seqFirst: number): void {
  const file = options.files.open(segmentPath(options.directory, segmentIndex), true);
  try {
    file.writev([encodeSegmentHeader({ volumeId: options.volumeId, segmentIndex, seqFirst, createdUs: options.nowUs() })], 0);
  } finally {
    file.close();
  }
}

/** Cuts the journal at a torn record: truncates that segment, removes any later ones. */
function cutTail(options: JournalOptions, at: JournalPosition): { segmentIndex: number; position: number; bytesCut: number } {
  let bytesCut = 0;
  for (const index of listSegments(options.files, options.directory)) {
    if (index < at.segmentIndex) continue;
    const file = options.files.open(segmentPath(options.directory, index), false);
    const size = file.sizeBytes();
    if (index === at.segmentIndex && at.position >= SEGMENT_HEADER_BYTES) {
      bytesCut += size - at.position;
      file.truncate(at.position);
      file.close();
    } else {
      bytesCut += size;
      file.close();
      options.files.remove(segmentPath(options.directory, index));
    }
  }
  if (listSegments(options.files, options.directory).length === 0) createSegment(options, at.segmentIndex, 1);
  return { segmentIndex: at.segmentIndex, position: at.position, bytesCut };
}
