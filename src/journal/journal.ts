/**
 * The append-only journal of one volume: every write, zero, trim and flush as a checksummed
 * record with a gap-free seq and a time in µs (docs/FORMAT.md).
 *
 * Durability: `append` returns once the record is in the OS page cache. `sync` makes every
 * record appended before it durable (fdatasync of the active segment and of any segment
 * rolled since the last sync); concurrent callers share one sync (group commit). Each record
 * carries `seqDurable`, the highest seq synced when it was written; recovery uses it to tell a
 * torn tail left by a crash (cut) from corruption of data that was already durable (refused).
 * A sync also syncs the journal directory after a segment was created or removed. Recovery
 * never claims more durable than the checkpoint and the records say: the first sync after
 * open covers every replayed record above that (written again, in case the kernel dropped
 * it) and any cut, and new records after a cut go to a fresh segment.
 */
import { GroupCommit, HindsightError, assert, dropOwner, frameCache, ownerPrefix } from '../core/index.js';
import type { FileLayer, StorageFile } from './file-layer.js';
import { PAYLOAD_COMPRESSED, RECORD_HEADER_BYTES, RecordType, crcSeedFor, encodeRecordHeader, payloadOffset, recordSpan } from './record.js';
import { PAYLOAD_CHUNK_BYTES, chunkTableBytes, encodeChunkTable, firstBadChunk } from './chunk-crc.js';
import type { RecordHeader, RecordTypeValue } from './record.js';
import { checkRecordBytes, durableClaimAfter, findContinuation, listSegments, scanJournal, segmentPath } from './scanner.js';
import type { JournalPosition, ScannedRecord } from './scanner.js';
import { SEGMENT_HEADER_BYTES, encodeSegmentHeader } from './segment.js';
import { tocPath } from './toc.js';
import { removeCompactionLeftovers } from './compaction.js';
import { FRAME_BYTES, decodeContainerIndex, decodeFrame } from './container.js';
import type { ContainerIndex } from './container.js';

const PADDING = Buffer.alloc(8);
/** A container's header and index for the largest payload (32 MiB: 512 frames). */
const CONTAINER_INDEX_BYTES_MAX = 16 + 4 * 512;
const CONTAINER_INDEXES_MAX = 4096;
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
  /**
   * Segments replayed at open that may hold records not yet durable (a process restart
   * finds them in the page cache): the first sync makes them durable too.
   */
  private readonly unsyncedAtOpen: number[];
  /** A segment was created or removed since the journal directory was last synced. */
  private directoryDirty = true;
  private readonly readFiles = new Map<number, StorageFile>();
  /** Files with reads in flight: never closed under them. */
  private readonly pinned = new Map<StorageFile, number>();
  /** Files to close as soon as their last read finishes. */
  private readonly closing = new Set<StorageFile>();
  private failure: HindsightError | null = null;
  private closed = false;
  private readonly groupCommit = new GroupCommit(() => this.syncOnce());
  /** Compressed payloads: parsed container indexes and decompressed frames, recently used. */
  private readonly containerIndexes = new Map<string, ContainerIndex>();
  /** This journal's key prefix in the daemon-wide frame cache (core/caches.ts). */
  private readonly frameOwner = ownerPrefix('journal');
  /** Bumped when a compaction moves positions: cache keys of earlier epochs mean nothing. */
  private epoch = 0;
  private readonly headerScratch = Buffer.alloc(RECORD_HEADER_BYTES);

  private constructor(private readonly options: JournalOptions, state: { activeIndex: number; activeFile: StorageFile; activeSize: number; seqLast: number; seqDurable: number; unsyncedAtOpen: number[]; timeLastUs: number; bytesBeforeActive: number; segmentCount: number }) {
    this.crcSeed = crcSeedFor(options.volumeId);
    this.activeIndex = state.activeIndex;
    this.activeFile = state.activeFile;
    this.activeSize = state.activeSize;
    this.seqLast = state.seqLast;
    this.timeLastUs = state.timeLastUs;
    this.seqDurable = state.seqDurable;
    this.unsyncedAtOpen = state.unsyncedAtOpen;
    this.bytesBeforeActive = state.bytesBeforeActive;
    this.segmentCount = state.segmentCount;
  }

  /**
   * Opens the journal, replaying every record after `start` (the index checkpoint, or the
   * beginning) through `onRecord`. A torn tail is cut; corruption of durable data throws
   * JOURNAL_CORRUPT naming the segment and offset.
   */
  static open(options: JournalOptions, start: RecoveryStart | null, onRecord: (record: ScannedRecord) => void, durableFloor = 0): { journal: Journal; report: RecoveryReport } {
    const { files, directory } = options;
    files.mkdir(directory);
    removeCompactionLeftovers(files, directory);
    const crcSeed = crcSeedFor(options.volumeId);
    // Every seq up to here is proven durable (a checkpoint is written only after a sync):
    // damage at or below it is corruption, never a torn tail to cut.
    const floor = Math.max(durableFloor, start?.seqLast ?? 0);
    if (listSegments(files, directory).length === 0) {
      if (start !== null) throw new CheckpointMismatch(`${directory}: the index checkpoint refers to journal segments that are missing`);
      if (floor > 0) throw new HindsightError('JOURNAL_CORRUPT', `${directory}: the journal is missing, but seq ${floor} had been made durable`);
      createSegment(options, 1, 1);
    }
    if (start !== null && !listSegments(files, directory).includes(start.from.segmentIndex)) {
      throw new CheckpointMismatch(`${directory}: the index checkpoint refers to journal segment ${start.from.segmentIndex}, which is missing`);
    }
    const from = start?.from ?? { segmentIndex: listSegments(files, directory)[0], position: SEGMENT_HEADER_BYTES };
    let replayed = 0;
    let timeLastUs = start?.timeLastUs ?? 0;
    const claims = new DurableClaims(start?.seqLast ?? 0);
    const scanFrom = (position: JournalPosition, expectedSeq: number) => scanJournal({
      directory, files, volumeId: options.volumeId, crcSeed, from: position, expectedSeq,
      onRecord: (record) => {
        replayed += 1;
        timeLastUs = record.header.timeUs;
        claims.note(record);
        onRecord(record);
      },
    });
    const result = scanFrom(from, (start?.seqLast ?? 0) + 1);
    let tornTail: RecoveryReport['tornTail'] = null;
    /** The lowest segment a cut changed: the first sync must cover it. */
    let cutFrom = Infinity;
    // Dead tails of earlier cuts that a crash brought back (the journal went on in a fresh
    // segment): dropped now, made durable by the first sync.
    for (const dead of result.deadTails) {
      const continuation = findContinuation({ files, directory, volumeId: options.volumeId }, dead);
      assert(continuation !== null, 'a dead tail has its continuation');
      const bytesCut = removeFrom(options, dead, continuation);
      cutFrom = Math.min(cutFrom, dead.segmentIndex);
      tornTail ??= { segmentIndex: dead.segmentIndex, position: dead.position, reason: `dead tail of an earlier cut (${dead.reason})`, bytesCut };
    }
    if (result.bad?.startMismatch && start !== null) {
      // The checkpoint is stale or foreign. The caller replays the whole journal instead,
      // keeping the checkpoint's seq as a floor of what must be there.
      throw new CheckpointMismatch(`the index checkpoint does not match the journal (${result.bad.reason})`);
    }
    if (result.bad) {
      const beforeStart = start !== null && result.bad.segmentIndex === start.from.segmentIndex && result.bad.position < start.from.position;
      const claimed = beforeStart ? Infinity : Math.max(floor, durableClaimAfter({ directory, files, volumeId: options.volumeId, crcSeed }, result.bad));
      if (claimed >= result.bad.expectedSeq) {
        throw new HindsightError('JOURNAL_CORRUPT',
          `journal ${segmentPath(directory, result.bad.segmentIndex)} is corrupt at offset ${result.bad.position} (${result.bad.reason}): ` +
          `seq ${result.bad.expectedSeq} had been made durable, so this is not a torn write; the volume is not served (run hindsight fsck)`);
      }
      const segmentIndexMax = Math.max(...listSegments(files, directory));
      const bytesCut = removeFrom(options, result.bad, Infinity);
      cutFrom = Math.min(cutFrom, result.bad.segmentIndex);
      tornTail = { segmentIndex: result.bad.segmentIndex, position: result.bad.position, reason: result.bad.reason, bytesCut };
      // Until the cut is durable a crash may bring back what it truncated or removed; new
      // records go to a fresh segment past all of those, so stale records can never pass
      // for their continuation (they would not follow the cut point in seq order).
      createSegment(options, segmentIndexMax + 1, result.seqLast + 1);
    }
    if (result.seqLast < floor) {
      throw new HindsightError('JOURNAL_CORRUPT', `journal ${directory} ends at seq ${result.seqLast}, but seq ${floor} had been made durable: segments are missing or damaged; the volume is not served (run hindsight fsck)`);
    }
    // Replayed records not known durable may be only in the page cache (the process
    // restarted, the machine did not) — even pages the kernel dropped after a failed
    // fdatasync yet still serves. Written again, so the first sync really persists them; no
    // record claims them durable before that.
    const tail = claims.tailStart;
    if (tail) rewriteRecords(options, tail, result.end);
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
    const syncFrom = Math.min(tail?.segmentIndex ?? Infinity, cutFrom);
    const unsyncedAtOpen = segments.filter((index) => index >= syncFrom && index !== activeIndex);
    const journal = new Journal(options, {
      activeIndex, activeFile, activeSize, seqLast: result.seqLast, seqDurable: Math.min(claims.seqDurable, result.seqLast), unsyncedAtOpen, timeLastUs, bytesBeforeActive, segmentCount: segments.length,
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
  append(type: RecordTypeValue, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | null, payloadSkip = 0): AppendedRecord {
    if (this.failure) throw this.failure;
    const payloadBytes = payload?.length ?? 0;
    assert(type === RecordType.WRITE ? payloadBytes > 0 && payloadSkip + payloadBytes <= lengthBytes : payloadBytes === 0 && payloadSkip === 0, 'payload matches record type');
    const seq = this.seqLast + 1;
    const timeUs = Math.max(this.options.nowUs(), this.timeLastUs);
    const header: RecordHeader = { type, flags, seq, timeUs, offsetBytes, lengthBytes, payloadBytes, seqDurable: this.seqDurable, payloadSkip };
    const table = payload && payloadBytes > 0 ? encodeChunkTable(payload, this.crcSeed) : null;
    return this.writeRecord(header, table, table ? [table, payload as Buffer] : []);
  }

  /**
   * Appends a record another site journaled (replication): the same seq (the next one here),
   * time, range and payload, checked whole against the volume's CRC seed first — the sites
   * share the volume id, so the source's CRCs hold here. Only `seqDurable` is this journal's
   * own (recovery trusts it), so the header CRC is computed again. In the page cache when
   * this returns, like `append`.
   */
  appendRecord(raw: Buffer): AppendedRecord & { header: RecordHeader; logicalBytes?: number } {
    if (this.failure) throw this.failure;
    const check = checkRecordBytes(raw, this.crcSeed);
    if (!check.ok) throw new HindsightError('RECORD_INVALID', `a received journal record fails its checks (${check.reason})`);
    const header = { ...check.header, seqDurable: this.seqDurable };
    if (header.seq !== this.seqLast + 1) throw new HindsightError('RECORD_INVALID', `a received journal record has seq ${header.seq} where ${this.seqLast + 1} comes next`);
    if (header.timeUs < this.timeLastUs) throw new HindsightError('RECORD_INVALID', `a received journal record (seq ${header.seq}) goes back in time`);
    const payloadBytes = header.payloadBytes;
    const bodyEnd = payloadOffset(payloadBytes) + payloadBytes;
    const table = payloadBytes > 0 ? raw.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + chunkTableBytes(payloadBytes)) : null;
    const appended = this.writeRecord(header, table, bodyEnd > RECORD_HEADER_BYTES ? [raw.subarray(RECORD_HEADER_BYTES, bodyEnd)] : []);
    return { ...appended, header, logicalBytes: check.logicalBytes };
  }

  /**
   * `length` bytes of segment `segmentIndex` from `position`, read in the thread pool from
   * the file that holds them now — resolved in the calling turn, so a compaction installing
   * a new copy meanwhile does not matter (the old file stays open until this finishes).
   */
  async readSpan(segmentIndex: number, position: number, length: number): Promise<Buffer> {
    this.assertOpen();
    const file = segmentIndex === this.activeIndex ? this.activeFile : this.readFile(segmentIndex);
    this.pin(file);
    try {
      const bytes = Buffer.allocUnsafe(length);
      checkLength(file, position, length, await file.readAsync(bytes, 0, length, position));
      return bytes;
    } finally {
      this.unpin(file);
    }
  }

  /** `bytes` if they are a sound record of seq `seq` of this volume; JOURNAL_CORRUPT naming where they were read otherwise. */
  checkedRecord(bytes: Buffer, seq: number, segmentIndex: number, position: number): Buffer {
    const check = checkRecordBytes(bytes, this.crcSeed);
    if (check.ok && check.header.seq === seq) return bytes;
    const why = check.ok ? `seq ${check.header.seq} where ${seq} was expected` : check.reason;
    throw new HindsightError('JOURNAL_CORRUPT', `journal ${segmentPath(this.options.directory, segmentIndex)}: the record at offset ${position} fails its checks (${why}); it is not served nor sent (run hindsight fsck)`);
  }

  /**
   * Writes one record at the end of the active segment (a new segment first if it would not
   * fit): the header (its CRC over `table` too), `body` (chunk table and payload), padding.
   * A failed write is cut off again; the record counts once written.
   */
  private writeRecord(header: RecordHeader, table: Buffer | null, body: Buffer[]): AppendedRecord {
    const span = recordSpan(header.payloadBytes);
    if (this.activeSize + span > this.options.segmentBytesMax && this.activeSize > SEGMENT_HEADER_BYTES) this.roll();
    encodeRecordHeader(this.headerScratch, header, table, this.crcSeed);
    const bodyEnd = payloadOffset(header.payloadBytes) + header.payloadBytes;
    const buffers = [this.headerScratch, ...body];
    if (span > bodyEnd) buffers.push(PADDING.subarray(0, span - bodyEnd));
    try {
      this.activeFile.writev(buffers, this.activeSize);
    } catch (err) {
      this.discardPartialRecord();
      throw err;
    }
    const payloadPosition = this.activeSize + payloadOffset(header.payloadBytes);
    this.activeSize += span;
    this.seqLast = header.seq;
    this.timeLastUs = header.timeUs;
    return { seq: header.seq, timeUs: header.timeUs, segmentIndex: this.activeIndex, payloadPosition };
  }

  /**
   * Puts a compacted copy of a sealed segment in its place (compaction.ts): the rename is
   * atomic; the caller syncs the directory. Reads already running keep the old file (open
   * until they finish); reads from now on get the new one.
   */
  installCompacted(segmentIndex: number, temporaryPath: string, bytesReclaimed: number): void {
    assert(segmentIndex < this.activeIndex, 'only sealed segments are compacted');
    this.options.files.rename(temporaryPath, segmentPath(this.options.directory, segmentIndex));
    const old = this.readFiles.get(segmentIndex);
    if (old) {
      this.readFiles.delete(segmentIndex);
      this.closeWhenIdle(old);
    }
    this.bytesBeforeActive -= bytesReclaimed;
    this.directoryDirty = true;
    // Keys name positions in the old file.
    this.epoch += 1;
    this.containerIndexes.clear();
    dropOwner(frameCache, this.frameOwner);
  }

  /**
   * Starts a new segment now (if the active one holds records), so the records so far can be
   * compacted (compressed, thinned); durable once the next sync returns.
   */
  seal(): boolean {
    if (this.failure) throw this.failure;
    if (this.activeSize <= SEGMENT_HEADER_BYTES) return false;
    this.roll();
    return true;
  }

  /** Durable: every record appended before this call. Concurrent calls share syncs. */
  sync(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return this.groupCommit.request();
  }

  /**
   * Reads `length` bytes of a WRITE record's payload, starting `delta` bytes into it, into
   * `into` at `intoOffset` — verified: every 4 KiB payload chunk touched is read whole and
   * checked against the record's chunk table, so damaged data is reported, never returned.
   */
  readPayload(piece: PayloadPiece, into: Buffer, intoOffset: number, length: number): void {
    this.assertOpen();
    if (piece.payloadBytes >= PAYLOAD_COMPRESSED) {
      this.readCompressed(piece, into, intoOffset, length);
      return;
    }
    const file = piece.segment === this.activeIndex ? this.activeFile : this.readFile(piece.segment);
    const plan = planRead(piece, length);
    const { table, data, buffers } = readBuffers(plan, into, intoOffset, length);
    if (buffers) {
      checkLength(file, plan.tablePosition, plan.spanBytes, file.readv(buffers, plan.tablePosition));
    } else {
      checkLength(file, plan.tablePosition, plan.tableBytes, file.read(table, 0, plan.tableBytes, plan.tablePosition));
      checkLength(file, plan.dataPosition, plan.dataBytes, file.read(data, 0, plan.dataBytes, plan.dataPosition));
    }
    this.verify(file, piece, plan, data, table);
    if (!plan.direct) data.copy(into, intoOffset, plan.skip, plan.skip + length);
  }

  /**
   * The same in the thread pool (the checksums still run here). Safe to overlap with
   * appends: journal bytes never change once written. The file stays open until done.
   */
  async readPayloadAsync(piece: PayloadPiece, into: Buffer, intoOffset: number, length: number): Promise<void> {
    this.assertOpen();
    if (piece.payloadBytes >= PAYLOAD_COMPRESSED) {
      await this.readCompressedAsync(piece, into, intoOffset, length);
      return;
    }
    const file = piece.segment === this.activeIndex ? this.activeFile : this.readFile(piece.segment);
    this.pin(file);
    try {
      await this.readFromAsync(file, piece, into, intoOffset, length);
    } finally {
      this.unpin(file);
    }
  }

  /** A verified read of a (physical) payload range from `file`, which the caller keeps open. */
  private async readFromAsync(file: StorageFile, piece: PayloadPiece, into: Buffer, intoOffset: number, length: number): Promise<void> {
    const plan = planRead(piece, length);
    const { table, data, buffers } = readBuffers(plan, into, intoOffset, length);
    if (buffers) {
      checkLength(file, plan.tablePosition, plan.spanBytes, await file.readvAsync(buffers, plan.tablePosition));
    } else {
      // Both reads must finish before anything throws: `data` may be the caller's buffer,
      // which goes back to a pool as soon as this rejects.
      const [tableRead, dataRead] = await Promise.allSettled([
        file.readAsync(table, 0, plan.tableBytes, plan.tablePosition),
        file.readAsync(data, 0, plan.dataBytes, plan.dataPosition),
      ]);
      if (tableRead.status === 'rejected') throw tableRead.reason;
      if (dataRead.status === 'rejected') throw dataRead.reason;
      checkLength(file, plan.tablePosition, plan.tableBytes, tableRead.value);
      checkLength(file, plan.dataPosition, plan.dataBytes, dataRead.value);
    }
    this.verify(file, piece, plan, data, table);
    if (!plan.direct) data.copy(into, intoOffset, plan.skip, plan.skip + length);
  }

  private pin(file: StorageFile): void {
    this.pinned.set(file, (this.pinned.get(file) ?? 0) + 1);
  }

  private unpin(file: StorageFile): void {
    const left = (this.pinned.get(file) ?? 1) - 1;
    if (left === 0) {
      this.pinned.delete(file);
      if (this.closing.delete(file)) file.close();
    } else {
      this.pinned.set(file, left);
    }
  }

  /**
   * A compressed payload (container.ts): the container's index, then each 64 KiB frame the
   * range touches — container bytes verified by their chunk CRCs like any payload — then
   * decompressed (recently used frames are cached: sequential small reads decompress a frame
   * once). Synchronous: nothing can move the payload meanwhile.
   */
  private readCompressed(piece: PayloadPiece, into: Buffer, intoOffset: number, length: number): void {
    const physical = { ...piece, payloadBytes: piece.payloadBytes - PAYLOAD_COMPRESSED, delta: 0 };
    const key = `${piece.segment}:${piece.payloadPosition}`;
    let index = this.containerIndexes.get(key);
    if (!index) {
      const head = Buffer.allocUnsafe(Math.min(physical.payloadBytes, CONTAINER_INDEX_BYTES_MAX));
      this.readPayload(physical, head, 0, head.length);
      index = decodeContainerIndex(head, physical.payloadBytes, this.where(piece));
      this.rememberIndex(key, index);
    }
    const found = index;
    this.copyFrames(piece, found, into, intoOffset, length, new Map(), (frame) => {
      const stored = Buffer.allocUnsafe(found.lengths[frame]);
      this.readPayload({ ...physical, delta: found.starts[frame] }, stored, 0, stored.length);
      return stored;
    }, this.epoch);
  }

  /**
   * The same with the reads in the thread pool. Every read goes to the one file resolved
   * (and kept open) at the start, and cached frames are taken at the start: a compaction
   * installing a new segment meanwhile (new positions, caches cleared) changes nothing for
   * this read, and nothing it learnt goes into the caches once the epoch has moved on.
   */
  private async readCompressedAsync(piece: PayloadPiece, into: Buffer, intoOffset: number, length: number): Promise<void> {
    const epoch = this.epoch;
    const file = piece.segment === this.activeIndex ? this.activeFile : this.readFile(piece.segment);
    const physical = { ...piece, payloadBytes: piece.payloadBytes - PAYLOAD_COMPRESSED, delta: 0 };
    const key = `${piece.segment}:${piece.payloadPosition}`;
    let index = this.containerIndexes.get(key);
    const first = Math.floor(piece.delta / FRAME_BYTES);
    const last = Math.floor((piece.delta + length - 1) / FRAME_BYTES);
    const cached = new Map<number, Buffer>();
    for (let frame = first; frame <= last; frame += 1) {
      const hit = frameCache.get(`${this.frameOwner}${key}:${frame}`);
      if (hit) cached.set(frame, hit);
    }
    this.pin(file);
    try {
      if (!index) {
        const head = Buffer.allocUnsafe(Math.min(physical.payloadBytes, CONTAINER_INDEX_BYTES_MAX));
        await this.readFromAsync(file, physical, head, 0, head.length);
        index = decodeContainerIndex(head, physical.payloadBytes, this.where(piece));
        if (this.epoch === epoch) this.rememberIndex(key, index);
      }
      const found = index;
      const stored = new Map<number, Buffer>();
      await Promise.all(Array.from({ length: last - first + 1 }, async (_, i) => {
        const frame = first + i;
        if (cached.has(frame)) return;
        const bytes = Buffer.allocUnsafe(found.lengths[frame]);
        await this.readFromAsync(file, { ...physical, delta: found.starts[frame] }, bytes, 0, bytes.length);
        stored.set(frame, bytes);
      }));
      this.copyFrames(piece, found, into, intoOffset, length, cached, (frame) => stored.get(frame)!, epoch);
    } finally {
      this.unpin(file);
    }
  }

  /**
   * Copies the logical bytes of the frames the range touches: from `cached` (decompressed
   * frames taken earlier), else decompressed from `storedFrame`. New frames are cached only
   * while the epoch is still `epoch` (positions have not moved).
   */
  private copyFrames(piece: PayloadPiece, index: ContainerIndex, into: Buffer, intoOffset: number, length: number, cached: Map<number, Buffer>, storedFrame: (frame: number) => Buffer, epoch: number): void {
    if (!(piece.delta + length <= index.logicalBytes && length > 0)) {
      throw new HindsightError('JOURNAL_CORRUPT', `${this.where(piece)}: a read of ${length} bytes at ${piece.delta} goes past the ${index.logicalBytes} bytes the container holds`);
    }
    const key = `${piece.segment}:${piece.payloadPosition}`;
    let at = piece.delta;
    let out = intoOffset;
    const end = piece.delta + length;
    while (at < end) {
      const frame = Math.floor(at / FRAME_BYTES);
      const frameKey = `${this.frameOwner}${key}:${frame}`;
      let logical = cached.get(frame) ?? (epoch === this.epoch ? frameCache.get(frameKey) : undefined);
      if (!logical) {
        logical = decodeFrame(index, frame, storedFrame(frame), this.where(piece));
        if (epoch === this.epoch) frameCache.set(frameKey, logical);
      } else if (epoch === this.epoch) {
        frameCache.get(frameKey); // most recently used
      }
      const from = at - frame * FRAME_BYTES;
      const count = Math.min(logical.length - from, end - at);
      logical.copy(into, out, from, from + count);
      at += count;
      out += count;
    }
  }

  private rememberIndex(key: string, index: ContainerIndex): void {
    this.containerIndexes.set(key, index);
    if (this.containerIndexes.size > CONTAINER_INDEXES_MAX) this.containerIndexes.delete(this.containerIndexes.keys().next().value as string);
  }

  private where(piece: PayloadPiece): string {
    return `journal ${segmentPath(this.options.directory, piece.segment)} record payload at ${piece.payloadPosition}`;
  }

  private verify(file: StorageFile, piece: PayloadPiece, plan: ReadPlan, data: Buffer, table: Buffer): void {
    const bad = firstBadChunk(data, plan.firstChunk, piece.payloadBytes, table, this.crcSeed);
    if (bad === -1) return;
    throw new HindsightError('JOURNAL_CORRUPT', `journal ${file.path}: payload chunk ${bad} of the record payload at offset ${piece.payloadPosition} fails its checksum; the data is not served (run hindsight fsck)`);
  }

  /** Reads after close (a view or job outliving its volume) are refused, never reopen files. */
  private assertOpen(): void {
    if (this.closed) throw new HindsightError('SHUTTING_DOWN', `journal ${this.options.directory} is closed (its volume was deleted or the daemon is stopping)`);
  }

  async close(): Promise<void> {
    await this.sync().catch(() => undefined);
    this.closed = true;
    dropOwner(frameCache, this.frameOwner);
    this.containerIndexes.clear();
    // Reads still running (a client cut off at shutdown) keep their file until they finish.
    this.closeWhenIdle(this.activeFile);
    for (const file of this.readFiles.values()) this.closeWhenIdle(file);
    this.readFiles.clear();
  }

  private async syncOnce(): Promise<void> {
    // A sync queued behind one that failed must fail too: the kernel may have dropped the
    // pages that one could not write, and a second fdatasync would report success.
    if (this.failure) throw this.failure;
    const target = this.seqLast;
    if (target === this.seqDurable && this.rolledUnsynced.length === 0 && !this.directoryDirty) return;
    const reopen = this.unsyncedAtOpen.splice(0);
    const files = [...this.rolledUnsynced.splice(0), this.activeFile];
    const syncDirectory = this.directoryDirty;
    this.directoryDirty = false;
    try {
      for (const index of reopen) files.unshift(this.options.files.open(segmentPath(this.options.directory, index), false));
      for (const file of files) await file.datasync();
      // A new segment's directory entry is durable only once its directory is synced.
      if (syncDirectory) await this.options.files.syncDirectory(this.options.directory);
    } catch (err) {
      this.failure ??= new HindsightError('IO_ERROR', `journal sync failed; the volume refuses writes until the daemon restarts: ${(err as Error).message}`, { cause: err });
      throw this.failure;
    } finally {
      // Rolled segments were only kept open for this sync; reads reopen them on demand. One
      // that rolled while this sync ran is still active or queued for the next sync.
      for (const file of files) if (file !== this.activeFile && !this.rolledUnsynced.includes(file)) this.closeWhenIdle(file);
    }
    this.seqDurable = Math.max(this.seqDurable, target);
  }

  private roll(): void {
    const next = this.activeIndex + 1;
    createSegment(this.options, next, this.seqLast + 1);
    this.directoryDirty = true;
    // Open first: if that fails, nothing below has changed and the next append retries.
    const nextFile = this.options.files.open(segmentPath(this.options.directory, next), false);
    this.rolledUnsynced.push(this.activeFile);
    this.bytesBeforeActive += this.activeSize;
    this.activeIndex = next;
    this.activeFile = nextFile;
    this.activeSize = SEGMENT_HEADER_BYTES;
    this.segmentCount += 1;
  }

  /**
   * After a failed append (disk full): part of the record may be in the file past the end.
   * Removed, or a later roll would leave it in the middle of the journal, where the next
   * open takes it for corruption (or cuts the acknowledged records after it).
   */
  private discardPartialRecord(): void {
    try {
      this.activeFile.truncate(this.activeSize);
    } catch (err) {
      this.failure ??= new HindsightError('IO_ERROR', `journal ${this.activeFile.path}: cannot remove a partly written record; the volume refuses writes until the daemon restarts`, { cause: err });
    }
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

/** The index checkpoint does not fit the journal: replay the whole journal instead. */
export class CheckpointMismatch extends HindsightError {
  constructor(message: string) {
    super('JOURNAL_CORRUPT', message);
  }
}

/** Where a piece of a record payload lives: the index's view of it. */
export interface PayloadPiece {
  segment: number;
  payloadPosition: number;
  payloadBytes: number;
  /** Offset of the piece's first byte within the payload. */
  delta: number;
}

interface ReadPlan {
  firstChunk: number;
  tablePosition: number;
  tableBytes: number;
  dataPosition: number;
  dataBytes: number;
  /** Bytes of the aligned data before the piece. */
  skip: number;
  /** The piece is exactly whole chunks: read straight into the caller's buffer. */
  direct: boolean;
  /** Table slice, the bytes between it and the data, and the data: read in one readv. */
  spanBytes: number;
}

/** Bytes between table slice and data worth reading (and dropping) to save a second read. */
const READ_GAP_BYTES_MAX = 64 * 1024;

/**
 * The table slice and the chunk data, read together in one readv (one syscall, one pool
 * trip) when little lies between them; `buffers` is null when two reads are cheaper.
 */
function readBuffers(plan: ReadPlan, into: Buffer, intoOffset: number, length: number): { table: Buffer; data: Buffer; buffers: Buffer[] | null } {
  const table = Buffer.allocUnsafe(plan.tableBytes);
  const data = plan.direct ? into.subarray(intoOffset, intoOffset + length) : Buffer.allocUnsafe(plan.dataBytes);
  const gapBytes = plan.dataPosition - plan.tablePosition - plan.tableBytes;
  if (gapBytes > READ_GAP_BYTES_MAX) return { table, data, buffers: null };
  return { table, data, buffers: gapBytes > 0 ? [table, Buffer.allocUnsafe(gapBytes), data] : [table, data] };
}

function planRead(piece: PayloadPiece, length: number): ReadPlan {
  assert(piece.delta + length <= piece.payloadBytes && length > 0, 'read within the record payload');
  const firstChunk = Math.floor(piece.delta / PAYLOAD_CHUNK_BYTES);
  const endChunk = Math.ceil((piece.delta + length) / PAYLOAD_CHUNK_BYTES);
  const dataStart = firstChunk * PAYLOAD_CHUNK_BYTES;
  const dataEnd = Math.min(endChunk * PAYLOAD_CHUNK_BYTES, piece.payloadBytes);
  const tableStart = piece.payloadPosition - chunkTableBytes(piece.payloadBytes);
  return {
    firstChunk,
    tablePosition: tableStart + firstChunk * 4,
    tableBytes: (endChunk - firstChunk) * 4,
    dataPosition: piece.payloadPosition + dataStart,
    dataBytes: dataEnd - dataStart,
    skip: piece.delta - dataStart,
    direct: piece.delta === dataStart && length === dataEnd - dataStart,
    spanBytes: piece.payloadPosition + dataEnd - (tableStart + firstChunk * 4),
  };
}

function checkLength(file: StorageFile, position: number, expected: number, got: number): void {
  if (got !== expected) {
    throw new HindsightError('JOURNAL_CORRUPT', `journal ${file.path}: expected ${expected} bytes at offset ${position}, found ${got}`);
  }
}

/**
 * Follows recovery's replay to find the records not known durable: those above the highest
 * seq that the checkpoint (written after a sync) or any replayed record says was synced.
 */
class DurableClaims {
  // Exact: one entry per replayed record above what is known durable (compacted as the
  // known-durable seq advances). A sampled variant (rewriting from an earlier, durable
  // position) was tried and failed a crash soak (seed 1201129); memory stays O(unsynced
  // records) until that is understood.
  private readonly seqs: number[] = [];
  private readonly positions: JournalPosition[] = [];
  private head = 0;

  constructor(public seqDurable: number) {}

  note(record: ScannedRecord): void {
    this.seqDurable = Math.max(this.seqDurable, record.header.seqDurable);
    this.seqs.push(record.header.seq);
    this.positions.push({ segmentIndex: record.segmentIndex, position: record.recordPosition });
    while (this.head < this.seqs.length && this.seqs[this.head] <= this.seqDurable) this.head += 1;
    if (this.head > 4096 && this.head * 2 > this.seqs.length) {
      this.seqs.splice(0, this.head);
      this.positions.splice(0, this.head);
      this.head = 0;
    }
  }

  /** Where the first record not known durable starts, or null. */
  get tailStart(): JournalPosition | null {
    return this.head < this.seqs.length ? this.positions[this.head] : null;
  }
}

const REWRITE_CHUNK_BYTES = 8 * 1024 * 1024;

/**
 * Writes the journal's bytes from `from` to `end` again, in place (they are unchanged), with
 * the header of every segment whose records are all rewritten: it may have been dropped
 * with them.
 */
function rewriteRecords(options: JournalOptions, from: JournalPosition, end: JournalPosition): void {
  const chunk = Buffer.allocUnsafe(REWRITE_CHUNK_BYTES);
  for (const index of listSegments(options.files, options.directory)) {
    if (index < from.segmentIndex || index > end.segmentIndex) continue;
    const file = options.files.open(segmentPath(options.directory, index), false);
    try {
      const stop = index === end.segmentIndex ? end.position : file.sizeBytes();
      const first = index === from.segmentIndex && from.position > SEGMENT_HEADER_BYTES ? from.position : 0;
      for (let at = first; at < stop; at += REWRITE_CHUNK_BYTES) {
        const length = Math.min(REWRITE_CHUNK_BYTES, stop - at);
        checkLength(file, at, length, file.read(chunk, 0, length, at));
        file.writev([chunk.subarray(0, length)], at);
      }
    } finally {
      file.close();
    }
  }
}

function createSegment(options: JournalOptions, segmentIndex: number, seqFirst: number): void {
  const file = options.files.open(segmentPath(options.directory, segmentIndex), true);
  try {
    file.writev([encodeSegmentHeader({ volumeId: options.volumeId, segmentIndex, seqFirst, createdUs: options.nowUs() })], 0);
  } catch (err) {
    // Disk full: leave no half-made segment behind, or the next roll could not create it.
    file.close();
    options.files.remove(segmentPath(options.directory, segmentIndex));
    throw err;
  }
  file.close();
}

/**
 * Drops the journal from `at` on: truncates that segment there (or removes it when `at` is
 * its header) and removes the later segments below `before`. Returns the bytes dropped.
 * Used for a torn tail (before = Infinity) and for the dead tail of an earlier cut (before =
 * the segment the journal continues in).
 */
function removeFrom(options: JournalOptions, at: JournalPosition, before: number): number {
  let bytes = 0;
  for (const index of listSegments(options.files, options.directory)) {
    if (index < at.segmentIndex || index >= before) continue;
    const file = options.files.open(segmentPath(options.directory, index), false);
    const truncate = index === at.segmentIndex && at.position >= SEGMENT_HEADER_BYTES;
    try {
      const size = file.sizeBytes();
      bytes += truncate ? size - at.position : size;
      if (truncate) file.truncate(at.position);
    } finally {
      file.close();
    }
    if (!truncate) options.files.remove(segmentPath(options.directory, index));
    // Its table of contents no longer fits (the checks on load would refuse it anyway).
    options.files.remove(tocPath(options.directory, index));
  }
  return bytes;
}
