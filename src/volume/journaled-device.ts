/**
 * A volume whose every change is journaled (CDP): the BlockDevice NBD clients use.
 *
 * Writes, zeroes and trims are appended to the journal and then entered in the extent index;
 * reads ask the index where each piece of the range lives (a journal payload or zeroes;
 * what was never written reads as zeroes).
 * FLUSH appends a flush marker and syncs the journal (group commit); FUA syncs after the
 * record. The index is checkpointed after syncs once enough journal has accumulated, and at
 * close, so start-up replays only the journal's tail.
 */
import path from 'node:path';
import pLimit from 'p-limit';
import { HindsightError, assert, isHindsightError } from '../core/index.js';
import type { BlockDevice, BlockDeviceCapabilities, Extent, WriteOptions, ZeroOptions } from '../core/index.js';
import { ExtentIndex, History, PAYLOAD_COMPRESSED, PointIndex, changesContent, SEGMENT_DROPPED, SEGMENT_ZERO_ALLOCATED, decodeCheckpoint, encodeCheckpoint, isZero } from '../index/index.js';
import type { ExtentVisit, HistoryEntry } from '../index/index.js';
import { CheckpointMismatch, Journal, PACK_ENTRY_BYTES, RECORD_HEADER_BYTES, chunkTableBytes, unpackedRecord, RecordFlag, RecordType, SEGMENT_HEADER_BYTES, crcSeedFor, decodeRecordHeader, encodeToc, isClientWrite, listSegments, payloadOffset, recordSpan, readToc, scanHeaders, scanJournalAsync, scrubJournal, segmentPath, segmentRecordsOnDisk, tocPath } from '../journal/index.js';
import type { RunPolicy } from '../journal/index.js';
import type { AppendedRecord, FileLayer, JournalPosition, JournalStats, RecordTypeValue, RecoveryReport, RecoveryStart, ScannedRecord } from '../journal/index.js';
import { compactSegment } from '../journal/compaction.js';
import { RetentionState, compactionGeneration, foldPlan } from './retention-state.js';

const ASYNC_READ_BYTES_MIN = 64 * 1024;
/** Errors that came from a base device's read. */
const fromBase = new WeakSet<Error>();
/** A fold (foldHistory) waits until it can drop at least this many records, or a quarter of the table. */
const FOLD_RECORDS_MIN = 1 << 18;
/** Regions with at least this many postings since their last snapshot get one at start-up. */
const HOT_REGION_POSTINGS = 256;

export interface JournaledDeviceOptions {
  name: string;
  /** The volume's directory: journal/ and index.ckpt live here. */
  directory: string;
  sizeBytes: number;
  volumeId: Buffer;
  files: FileLayer;
  readOnly: boolean;
  /** Store only what changed (default true): zero writes as zeroes, changed sectors only. */
  reduce?: boolean;
  syncEveryWrite: boolean;
  segmentBytesMax: number;
  checkpointEveryBytes: number;
  /**
   * After a flush followed by this long without any new record, the index is checkpointed.
   * The checkpoint proves the last flushed batch durable, so damage to it found later is
   * reported as corruption instead of being cut as a torn tail. Default 5 s; 0 disables.
   */
  idleCheckpointMs?: number;
  nowUs: () => number;
  /** Called once when damaged journal data is found (by a read, the scrub or fsck). */
  onCorruption?: (error: HindsightError) => void;
  /**
   * What lies beneath (a writable clone's point in its source volume): ranges this volume
   * never wrote read from there. Without a base they read as zeroes.
   */
  base?: BlockDevice;
  /** The volume is another site's replica: its retention state mirrors the source's (RetentionState.load). */
  replica?: boolean;
}

/** Where each piece of a range lives: the live index, or the index at a point in history. */
export interface RangeLookup {
  lookup(offsetBytes: number, lengthBytes: number, visit: (piece: ExtentVisit) => void): void;
}

export interface JournaledDeviceStats extends JournalStats {
  records: number;
  timeFirstUs: number;
  extents: number;
  indexBytes: number;
  historyBytes: number;
  clientBytesWritten: number;
}

export interface FsckProblem {
  kind: 'journal' | 'index';
  segment: string | null;
  offsetBytes: number | null;
  message: string;
}

export interface FsckReport {
  records: number;
  journalBytes: number;
  problems: FsckProblem[];
  indexRebuilt: boolean;
  /** False when clients wrote during the check: the index comparison (and a rebuild) then
   * waits for a quieter moment; the records themselves were all checked. */
  indexCompared: boolean;
}

export interface OpenReport extends RecoveryReport {
  checkpoint: 'loaded' | 'absent' | string;
  /** History records behind the checkpoint read from segment tables of contents (the rest
   * from segment headers). */
  historyFromTocs: number;
}

export class JournaledDevice implements BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly capabilities: BlockDeviceCapabilities = {
    readOnly: false, flush: true, fua: true, trim: true, writeZeroes: true, fastZero: true, cache: true, multiConn: true,
  };
  private index: ExtentIndex;
  /** Every record since the first: answers what any range held at any seq. */
  readonly history: History;
  private readonly liveRegion = (regionIndex: number) => this.index.region(regionIndex);
  private reduce: boolean;
  private timeFirstUs: number;
  private clientBytesWritten = 0;
  private checkpointBytes: number;
  private checkpointRunning: Promise<void> | null = null;
  /** Set once damaged journal data was found: the volume is then refused. */
  private corruption: HindsightError | null = null;
  /** Where replay at open started: records before it were verified by nobody yet. */
  private readonly replayedFrom: JournalPosition | null;
  private closed = false;
  private checkpointChain: Promise<void> = Promise.resolve();
  private idleTimer: NodeJS.Timeout | null = null;
  /** seqLast covered by the newest checkpoint written. */
  private checkpointSeq = 0;
  /** Sealed segments whose table of contents lists every record. */
  private readonly tocComplete = new Set<number>();
  /** Seqs expired since the last collapsePending (none: Infinity..0). */
  private collapseFrom = Infinity;
  private collapseTo = 0;
  /** The records of the folded or collapsed segment read back last (segmentEntries). */
  private recordsReadBack: { segment: number; seqFirst: number; seqLast: number; entries: HistoryEntry[]; usedMs: number } | null = null;
  /** Scrub, fsck and compaction read or rewrite whole segments: one at a time. */
  /** Maintenance (compaction, fold, scrub, fsck, collapse) one at a time, in order. */
  private readonly exclusive = pLimit(1);
  /** Which points retention removed, and what it reclaimed (retention.json). */
  retention!: RetentionState;
  /** Another site's replica (until promoted): its history folds only as its source allows (foldHistory). */
  private replica: boolean;
  /** A replica: how far its source said it may fold (setReplicaFoldLimit); not kept across restarts. */
  private replicaFoldLimit = 0;

  /** How far this replica's source last said it may fold (0: not said since the start). */
  get foldLimitAsReplica(): number {
    return this.replicaFoldLimit;
  }

  private constructor(private readonly options: JournaledDeviceOptions, private readonly journal: Journal, index: ExtentIndex, history: History, timeFirstUs: number, readonly openReport: OpenReport, replayedFrom: JournalPosition | null) {
    this.name = options.name;
    this.sizeBytes = options.sizeBytes;
    this.index = index;
    this.history = history;
    this.reduce = options.reduce ?? true;
    this.timeFirstUs = timeFirstUs;
    this.capabilities.readOnly = options.readOnly;
    this.checkpointBytes = journal.stats().bytes;
    this.replayedFrom = replayedFrom;
    this.replica = options.replica ?? false;
  }

  static open(options: JournaledDeviceOptions): JournaledDevice {
    const checkpointFile = path.join(options.directory, 'index.ckpt');
    const bytes = options.files.readFile(checkpointFile);
    let index = new ExtentIndex(options.sizeBytes);
    let checkpoint: OpenReport['checkpoint'] = 'absent';
    assert(options.segmentBytesMax <= 2 ** 32 - 1, 'journal positions fit the index (u32)');
    let start: RecoveryStart | null = null;
    let timeFirstUs = 0;
    let clientBytesWritten = 0;
    if (bytes) {
      const decoded = decodeCheckpoint(bytes, index, options.volumeId);
      const generation = compactionGeneration(options.files, options.directory);
      // Made before a compaction, it names journal positions that moved: not usable.
      const loaded = decoded.ok && decoded.info.compactions !== generation
        ? { ok: false as const, reason: `made before compaction ${generation} (generation ${decoded.info.compactions})` } : decoded;
      if (loaded.ok) {
        checkpoint = 'loaded';
        start = { from: { segmentIndex: loaded.info.segmentIndex, position: loaded.info.position }, seqLast: loaded.info.seqLast, timeLastUs: loaded.info.timeLastUs };
        timeFirstUs = loaded.info.timeFirstUs;
        clientBytesWritten = loaded.info.clientBytesWritten;
      } else {
        checkpoint = `ignored (${loaded.reason}); index rebuilt from the journal`;
        index = new ExtentIndex(options.sizeBytes);
      }
    }
    const journalOptions = { directory: path.join(options.directory, 'journal'), files: options.files, volumeId: options.volumeId, segmentBytesMax: options.segmentBytesMax, nowUs: options.nowUs };
    // The history, folded as it loads up to where retention last folded it (History.fold),
    // so a start needs the memory of the kept history only.
    const plan = foldPlanFor(options);
    const journalSegments = listSegments(options.files, path.join(options.directory, 'journal'));
    const lastSegment = journalSegments.length > 0 ? journalSegments[journalSegments.length - 1] : 0;
    let history = new History(options.sizeBytes);
    let loading = loadingHistory(history, plan, lastSegment);
    // Replayed records also join the history, after the part behind the checkpoint (read
    // once recovery has made the journal consistent); without a checkpoint, at once.
    const tail: HistoryEntry[] = [];
    let reverted = false;
    const apply = (record: ScannedRecord) => {
      if (timeFirstUs === 0) timeFirstUs = record.header.timeUs;
      if (isClientWrite(record.header.type, record.header.flags)) clientBytesWritten += record.header.lengthBytes;
      applyRecord(index, record, options.sizeBytes);
      if (record.header.type === RecordType.REVERT) reverted = true;
      if (start === null) loading(historyEntry(record));
      else tail.push(historyEntry(record));
    };
    let opened;
    try {
      opened = Journal.open(journalOptions, start, apply);
    } catch (err) {
      if (start === null || !(err instanceof CheckpointMismatch)) throw err;
      // The checkpoint does not fit the journal: the index is derivable, so rebuild it from
      // the whole journal — which must still reach the seq the checkpoint proved durable.
      index = new ExtentIndex(options.sizeBytes);
      timeFirstUs = 0;
      clientBytesWritten = 0;
      tail.length = 0;
      reverted = false;
      history = new History(options.sizeBytes);
      loading = loadingHistory(history, plan, lastSegment);
      checkpoint = `ignored (${(err as Error).message}); index rebuilt from the journal`;
      const durable = start.seqLast;
      start = null;
      opened = Journal.open(journalOptions, null, apply, durable);
    }
    const replayedFrom = checkpoint === 'loaded' && start ? start.from : null;
    let historyFromTocs = 0;
    let tocComplete: number[] = [];
    if (replayedFrom) {
      const scanned = scanHeaders({ directory: journalOptions.directory, files: options.files, volumeId: options.volumeId, crcSeed: crcSeedFor(options.volumeId) }, replayedFrom,
        (record) => loading(historyEntry(record), record.runCount, record.runTimeLastUs), (segmentIndex) => readToc(options.files, journalOptions.directory, options.volumeId, segmentIndex), true);
      historyFromTocs = scanned.recordsFromTocs;
      tocComplete = scanned.segmentsCovered;
    }
    for (const entry of tail) loading(entry);
    loading.finish();
    // Points retention removed: refused from the first request on (their data may be gone).
    const retention = RetentionState.load(options.files, options.directory, history, options.replica ?? false);
    // Expired points that changed nothing (flushes, thinned writes) leave the table: memory
    // follows the points kept, not the writes (History.collapseSegments). Sealed segments only
    // (see loadingHistory).
    if (opened.journal.endPosition.segmentIndex > 0) history.collapseSegments(0, opened.journal.endPosition.segmentIndex - 1);
    // A rollback among the replayed records: the live index is what the history says now.
    if (reverted) index = history.indexAt(history.seqLast);
    const device = new JournaledDevice(options, opened.journal, index, history, timeFirstUs, { ...opened.report, checkpoint, historyFromTocs }, replayedFrom);
    device.clientBytesWritten = clientBytesWritten;
    device.retention = retention;
    for (const segmentIndex of tocComplete) device.tocComplete.add(segmentIndex);
    // Busy regions start from a snapshot of now, not a replay from their first write.
    history.snapshotFromLive(device.liveRegion, 'all', HOT_REGION_POSTINGS);
    return device;
  }

  get corruptionError(): HindsightError | null {
    return this.corruption;
  }

  /**
   * Verifies, in the background, the records that the start-up replay skipped (those before
   * the index checkpoint). Reads verify what they touch anyway; this finds damage in data
   * nobody reads, so the volume is refused rather than silently rotting.
   */
  scrub(): Promise<void> {
    return this.exclusive(() => this.scrubNow());
  }

  private async scrubNow(): Promise<void> {
    if (this.replayedFrom === null) return;
    const bad = await scrubJournal({
      directory: path.join(this.options.directory, 'journal'), files: this.options.files,
      volumeId: this.options.volumeId, crcSeed: crcSeedFor(this.options.volumeId),
    }, this.replayedFrom, () => this.closed || this.corruption !== null);
    if (bad) {
      this.reportCorruption(new HindsightError('JOURNAL_CORRUPT',
        `journal ${segmentPath(path.join(this.options.directory, 'journal'), bad.segmentIndex)} is corrupt at offset ${bad.position} (${bad.reason}); the volume is not served (run hindsight fsck)`));
    }
  }

  /**
   * Completes the history's snapshots in the background (slices of ~2 ms, equal rests), so
   * the first look at an old point after a restart is as quick as later ones.
   */
  async warmHistory(): Promise<void> {
    for (;;) {
      if (this.closed || this.corruption) return;
      const started = performance.now();
      if (this.history.warm(2)) return;
      await new Promise((resolve) => setTimeout(resolve, Math.ceil(performance.now() - started)));
    }
  }

  private reportCorruption(error: HindsightError): void {
    if (this.corruption) return;
    this.corruption = error;
    this.options.onCorruption?.(error);
  }

  setReadOnly(readOnly: boolean): void {
    this.capabilities.readOnly = readOnly;
  }

  /** Failover made this replica a volume of its own: from now on its history folds too. */
  promoted(): void {
    this.replica = false;
    this.retention.replica = false;
  }

  /**
   * Turns "only what changed is stored" on or off for the writes from now on (and
   * compression of sealed segments, for compactions from now on).
   */
  setReduce(reduce: boolean): void {
    this.reduce = reduce;
  }

  /** Sealed segments get their payloads compressed (with reduction on). */
  get compresses(): boolean {
    return this.reduce;
  }

  stats(): JournaledDeviceStats {
    const journal = this.journal.stats();
    return {
      ...journal,
      records: journal.seqLast,
      timeFirstUs: this.timeFirstUs,
      extents: this.index.extentCount,
      indexBytes: this.index.memoryBytes,
      historyBytes: this.history.memoryBytes,
      clientBytesWritten: this.clientBytesWritten,
    };
  }

  async read(offsetBytes: number, into: Buffer): Promise<void> {
    this.assertRange(offsetBytes, into.length);
    await this.readAt(this.index, offsetBytes, into);
  }

  /**
   * Reads a range as `lookup` (the live index or a point in history) places it: journal
   * payloads verified chunk by chunk; never-written ranges from the base, else zeroes.
   */
  async readAt(lookup: RangeLookup, offsetBytes: number, into: Buffer): Promise<void> {
    try {
      await this.readVerified(lookup, offsetBytes, into);
    } catch (err) {
      // Damage beneath (a clone's source) is the source's to report, not this journal's.
      if (isHindsightError(err, 'JOURNAL_CORRUPT') && !fromBase.has(err)) this.reportCorruption(err);
      throw err;
    }
  }

  private async readVerified(lookup: RangeLookup, offsetBytes: number, into: Buffer): Promise<void> {
    if (this.corruption) throw this.corruption;
    // Large reads go to the thread pool so the event loop keeps receiving and replying
    // meanwhile; small ones are cheaper as a direct pread on the page cache.
    const inPool = into.length >= ASYNC_READ_BYTES_MIN;
    const pooled: Array<Promise<void>> = [];
    const base = this.options.base;
    lookup.lookup(offsetBytes, into.length, (piece) => {
      const at = piece.startBytes - offsetBytes;
      const length = piece.endBytes - piece.startBytes;
      if (piece.segment === -1 && base) {
        pooled.push(base.read(piece.startBytes, into.subarray(at, at + length)).catch((err: unknown) => {
          if (err instanceof Error) fromBase.add(err);
          throw err;
        }));
      } else if (piece.segment === -1 || isZero(piece.segment)) {
        into.fill(0, at, at + length);
      } else if (piece.segment === SEGMENT_DROPPED) {
        // Only an expired point can show reclaimed data, and those are refused before this.
        throw new HindsightError('POINT_EXPIRED', `volume ${this.name}: this point's data at offset ${piece.startBytes} was reclaimed by the retention policy`);
      } else if (inPool) {
        pooled.push(this.journal.readPayloadAsync(piece, into, at, length));
      } else {
        this.journal.readPayload(piece, into, at, length);
      }
    });
    // Wait for every pooled read, even after a failure: `into` must not be written once the
    // caller has it back (it may be recycled for another reply).
    const settled = await Promise.allSettled(pooled);
    const failed = settled.find((result) => result.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  /**
   * Only what changed is stored: a write of all-zero bytes is journaled as allocated zeroes
   * (no payload); a write over journal data stores only the span of 512-byte sectors that
   * differ from what is there (first to last changed sector; none: an UNCHANGED record, a seq
   * and a time, nothing else); anything else as a whole WRITE. The comparison is
   * synchronous, so no other write can land between it and the record.
   */
  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    this.assertWritable(offsetBytes, data.length);
    const fua = options.fua ? RecordFlag.FUA : 0;
    let record: AppendedRecord;
    const whole = { start: 0, length: data.length };
    const changed = !this.reduce ? whole : isAllZero(data) ? null : this.changedSpan(offsetBytes, data);
    if (changed === null) {
      record = this.append(RecordType.ZERO, fua | RecordFlag.ALLOCATED | RecordFlag.CLIENT_WRITE, offsetBytes, data.length, null);
      this.index.setZero(offsetBytes, data.length, true);
      this.history.snapshotFromLive(this.liveRegion, { offsetBytes, lengthBytes: data.length });
    } else if (changed.length === 0) {
      record = this.append(RecordType.UNCHANGED, fua, offsetBytes, data.length, null);
    } else {
      const payload = changed.start === 0 && changed.length === data.length ? data : data.subarray(changed.start, changed.start + changed.length);
      record = this.append(RecordType.WRITE, fua, offsetBytes, data.length, payload, changed.start);
      this.index.setData(offsetBytes + changed.start, changed.length, record.segmentIndex, record.payloadPosition);
      this.history.snapshotFromLive(this.liveRegion, { offsetBytes: offsetBytes + changed.start, lengthBytes: changed.length });
    }
    this.clientBytesWritten += data.length;
    await this.afterChange(record.timeUs, options.fua);
  }

  /**
   * The span of `data` that differs from what the range holds, in whole 512-byte sectors
   * (first changed to last changed; length 0: nothing changed). The whole write when the
   * range is not sector-aligned or not all journal data, or when storing only the span would
   * leave the range's 4 KiB blocks in too many pieces (a read needs a pread per piece):
   * fragmentation stays bounded whatever the history. Synchronous.
   */
  private changedSpan(offsetBytes: number, data: Buffer): { start: number; length: number } {
    const whole = { start: 0, length: data.length };
    if (offsetBytes % SECTOR_BYTES !== 0 || data.length % SECTOR_BYTES !== 0) return whole;
    const current = Buffer.allocUnsafe(data.length);
    let allData = true;
    let pieces = 0;
    this.index.lookup(offsetBytes, data.length, (piece) => {
      if (!allData) return;
      pieces += 1;
      if (piece.segment === -1 || isZero(piece.segment)) {
        allData = false;
        return;
      }
      this.journal.readPayload(piece, current, piece.startBytes - offsetBytes, piece.endBytes - piece.startBytes);
    });
    if (!allData) return whole;
    let first = -1;
    let last = -1;
    for (let at = 0; at < data.length; at += SECTOR_BYTES) {
      if (!data.subarray(at, at + SECTOR_BYTES).equals(current.subarray(at, at + SECTOR_BYTES))) {
        if (first === -1) first = at;
        last = at;
      }
    }
    if (first === -1) return { start: 0, length: 0 };
    const partial = first > 0 || last + SECTOR_BYTES < data.length;
    if (partial && pieces + 2 > Math.ceil(data.length / 4096) * PIECES_PER_BLOCK_MAX) return whole;
    return { start: first, length: last + SECTOR_BYTES - first };
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    this.assertWritable(offsetBytes, lengthBytes);
    const record = this.append(RecordType.TRIM, options.fua ? RecordFlag.FUA : 0, offsetBytes, lengthBytes, null);
    this.index.setZero(offsetBytes, lengthBytes, false);
    this.history.snapshotFromLive(this.liveRegion, { offsetBytes, lengthBytes });
    await this.afterChange(record.timeUs, options.fua);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    // Zeroes are metadata here whatever NO_HOLE says, so FAST_ZERO always holds.
    this.assertWritable(offsetBytes, lengthBytes);
    const flags = (options.fua ? RecordFlag.FUA : 0) | (options.mayTrim ? 0 : RecordFlag.ALLOCATED);
    const record = this.append(RecordType.ZERO, flags, offsetBytes, lengthBytes, null);
    this.index.setZero(offsetBytes, lengthBytes, !options.mayTrim);
    this.history.snapshotFromLive(this.liveRegion, { offsetBytes, lengthBytes });
    await this.afterChange(record.timeUs, options.fua);
  }

  /** Journals one record and enters it in the history. */
  private append(type: RecordTypeValue, flags: number, offsetBytes: number, lengthBytes: number, payload: Buffer | null, payloadSkip = 0): AppendedRecord {
    const record = this.journal.append(type, flags, offsetBytes, lengthBytes, payload, payloadSkip);
    const payloadBytes = payload?.length ?? 0;
    this.history.append({
      seq: record.seq, type, flags, offsetBytes, lengthBytes, timeUs: record.timeUs,
      segment: record.segmentIndex, payloadPosition: record.payloadPosition, payloadBytes, payloadSkip,
    });
    return record;
  }

  /** Every change: note the volume's first time, and make it durable when asked to. */
  private async afterChange(timeUs: number, fua: boolean): Promise<void> {
    if (this.timeFirstUs === 0) this.timeFirstUs = timeUs;
    if (fua || this.options.syncEveryWrite) await this.journal.sync();
  }

  /**
   * Rollback: the volume continues from `seq` as a new branch. A REVERT record says so in the
   * journal (made durable before this returns), so the writes after `seq` stay in history,
   * readable by seq, until retention removes them. The caller makes sure nobody writes
   * meanwhile (no clients attached).
   */
  async rollback(seq: number): Promise<{ seq: number; timeUs: number }> {
    assert(!this.capabilities.readOnly, 'rollback reaches only writable volumes');
    if (this.corruption) throw this.corruption;
    assert(seq >= 0 && seq <= this.journal.lastSeq, 'rollback target within history');
    if (seq < this.history.seqFirst && this.history.seqFirst > 1) throw new HindsightError('POINT_EXPIRED', `seq ${seq} of volume ${this.name} is older than the history kept (seq ${this.history.seqFirst} on)`);
    const record = this.append(RecordType.REVERT, 0, seq, 0, null);
    this.index = this.history.indexAt(record.seq);
    this.history.snapshotFromLive(this.liveRegion, 'all');
    await this.journal.sync();
    // Done once durable; the checkpoint only shortens the next start (a failure is not the
    // rollback's: the REVERT is replayed from the journal then).
    await this.checkpoint().catch(() => undefined);
    return { seq: record.seq, timeUs: record.timeUs };
  }

  // ---- replication -------------------------------------------------------------------

  /** The last record's seq (appended; maybe not durable yet). */
  get lastSeq(): number {
    return this.history.seqLast;
  }

  /**
   * Records from `seqFirst` on, as stored (header, chunk table, payload), each checked
   * whole — what replication sends: those of one segment, up to `seqMax` and about
   * `bytesMax` (at least one). Where they are is resolved in the calling turn, so a
   * compaction moving them meanwhile changes nothing (the old file stays open).
   */
  async recordsFrom(seqFirst: number, seqMax: number, bytesMax: number): Promise<Buffer[]> {
    if (this.corruption) throw this.corruption;
    assert(seqFirst >= 1 && seqFirst <= seqMax && seqMax <= this.history.seqLast, 'records asked for exist');
    const first = this.entryAt(seqFirst);
    // One read: records of their own follow each other; packed ones (compacted segments)
    // are read as their bodies, which follow each other within a pack, and sent as records
    // of their own (header from the history, chunk table and payload as stored).
    const packed = (first.flags & RecordFlag.PACKED) !== 0;
    const startOf = (entry: HistoryEntry) => packed ? entry.payloadPosition - chunkTableBytes(entry.payloadBytes) : entry.payloadPosition - payloadOffset(entry.payloadBytes);
    const endOf = (entry: HistoryEntry) => packed ? entry.payloadPosition + entry.payloadBytes : startOf(entry) + recordSpan(entry.payloadBytes);
    const start = startOf(first);
    const pieces: Array<{ entry: HistoryEntry; at: number; bytes: number }> = [];
    let end = start;
    for (let seq = seqFirst; seq <= seqMax; seq += 1) {
      const entry = seq === seqFirst ? first : this.entryAt(seq);
      if (entry.segment !== first.segment || ((entry.flags & RecordFlag.PACKED) !== 0) !== packed) break;
      const at = startOf(entry);
      if (at !== end || (pieces.length > 0 && endOf(entry) - start > bytesMax)) break;
      pieces.push({ entry, at: at - start, bytes: packed ? endOf(entry) - at : payloadOffset(entry.payloadBytes) + entry.payloadBytes });
      end = endOf(entry);
    }
    try {
      const span = end > start ? await this.journal.readSpan(first.segment, start, end - start) : Buffer.alloc(0);
      return pieces.map((piece, i) => {
        let bytes = span.subarray(piece.at, piece.at + piece.bytes);
        if (packed) {
          const { entry } = piece;
          const header = { type: entry.type as RecordTypeValue, flags: entry.flags, seq: entry.seq, timeUs: entry.timeUs, offsetBytes: entry.offsetBytes, lengthBytes: entry.lengthBytes, payloadBytes: entry.payloadBytes, seqDurable: 0, payloadSkip: entry.payloadSkip };
          bytes = unpackedRecord(header, bytes, crcSeedFor(this.options.volumeId));
        }
        return this.journal.checkedRecord(bytes, seqFirst + i, first.segment, start + piece.at);
      });
    } catch (err) {
      if (isHindsightError(err, 'JOURNAL_CORRUPT')) this.reportCorruption(err);
      throw err;
    }
  }

  /**
   * Appends a record the source site journaled (this volume is its replica): same seq, time
   * and payload; the index and history take it as a replay would. In the page cache when
   * this returns; `sync` makes it durable.
   */
  appendReplicated(raw: Buffer): { seq: number; timeUs: number; type: number; flags: number; lengthBytes: number } {
    if (this.corruption) throw this.corruption;
    const peek = decodeRecordHeader(raw);
    if (!peek.ok) throw new HindsightError('RECORD_INVALID', `a received journal record is malformed (${peek.reason})`);
    const { header: h } = peek;
    if (changesContent(h.type) && h.type !== RecordType.REVERT && h.offsetBytes + h.lengthBytes > this.sizeBytes) {
      throw new HindsightError('RECORD_INVALID', `a received journal record (seq ${h.seq}) lies beyond the volume's ${this.sizeBytes} bytes`);
    }
    if (h.type === RecordType.REVERT && h.offsetBytes < this.history.seqFirst - 1) {
      throw new HindsightError('RECORD_INVALID', `a received rollback (seq ${h.seq}) goes back to seq ${h.offsetBytes}, before the history this replica keeps (seq ${this.history.seqFirst})`);
    }
    const appended = this.journal.appendRecord(raw);
    const { header } = appended;
    const record: ScannedRecord = {
      header, segmentIndex: appended.segmentIndex, recordPosition: appended.payloadPosition - payloadOffset(header.payloadBytes),
      payloadPosition: appended.payloadPosition, logicalBytes: appended.logicalBytes,
    };
    applyRecord(this.index, record, this.sizeBytes);
    this.history.append(historyEntry(record));
    if (header.type === RecordType.REVERT) {
      this.index = this.history.indexAt(header.seq);
      this.history.snapshotFromLive(this.liveRegion, 'all');
    } else if (header.type === RecordType.WRITE) {
      this.history.snapshotFromLive(this.liveRegion, { offsetBytes: header.offsetBytes + (header.payloadSkip ?? 0), lengthBytes: appended.logicalBytes ?? header.payloadBytes });
    } else if (changesContent(header.type) && header.lengthBytes > 0) {
      this.history.snapshotFromLive(this.liveRegion, { offsetBytes: header.offsetBytes, lengthBytes: header.lengthBytes });
    }
    if (isClientWrite(header.type, header.flags)) this.clientBytesWritten += header.lengthBytes;
    if (this.timeFirstUs === 0) this.timeFirstUs = header.timeUs;
    this.maybeCheckpoint();
    return { seq: header.seq, timeUs: header.timeUs, type: header.type, flags: header.flags, lengthBytes: header.lengthBytes };
  }

  /** Makes every record appended so far durable (group commit). */
  async sync(): Promise<void> {
    if (this.corruption) throw this.corruption;
    await this.journal.sync();
    this.scheduleIdleCheckpoint();
  }

  async blockStatus(offsetBytes: number, lengthBytes: number, extentsMax: number): Promise<Extent[]> {
    this.assertRange(offsetBytes, lengthBytes);
    return this.blockStatusAt(this.index, offsetBytes, lengthBytes, extentsMax);
  }

  /** Allocation as `lookup` places it; never-written ranges as the base reports them. */
  async blockStatusAt(lookup: RangeLookup, offsetBytes: number, lengthBytes: number, extentsMax: number): Promise<Extent[]> {
    const pieces: Array<Extent | { baseFrom: number; baseLength: number }> = [];
    const base = this.options.base;
    lookup.lookup(offsetBytes, lengthBytes, (piece) => {
      const length = piece.endBytes - piece.startBytes;
      if (piece.segment === -1 && base) {
        pieces.push({ baseFrom: piece.startBytes, baseLength: length });
        return;
      }
      const data = piece.segment !== -1 && !isZero(piece.segment);
      pieces.push({ lengthBytes: length, hole: !data && piece.segment !== SEGMENT_ZERO_ALLOCATED, zero: !data });
    });
    const extents: Extent[] = [];
    for (const piece of pieces) {
      if (!('baseFrom' in piece)) {
        extents.push(piece);
        continue;
      }
      // The base answers at least the start of the range; fill the rest as it says.
      let at = piece.baseFrom;
      const end = piece.baseFrom + piece.baseLength;
      while (at < end && base) {
        const below = await base.blockStatus(at, end - at, extentsMax);
        for (const extent of below) {
          const length = Math.min(extent.lengthBytes, end - at);
          extents.push({ ...extent, lengthBytes: length });
          at += length;
          if (at >= end) break;
        }
        if (below.length === 0) break;
      }
      if (extents.length >= extentsMax) break;
    }
    return mergeExtents(extents, extentsMax);
  }

  /**
   * Makes every record up to `seq` durable (a no-op when it already is). Whatever names a seq
   * on disk (a bookmark, a mount) calls this first: a crash could otherwise cut that seq and
   * give it to other writes.
   */
  async syncThrough(seq: number): Promise<void> {
    if (this.journal.durableSeq < seq) await this.journal.sync();
  }

  /** The volume as it was at `seq`, for a read-only or writable view (O(1): nothing copied). */
  pointIndex(seq: number): PointIndex {
    const run = this.history.expiredRunOf(seq);
    if (run) throw new HindsightError('POINT_EXPIRED', `seq ${seq} of volume ${this.name} was removed by its retention policy (seqs ${run[0]}..${run[1]})`);
    return new PointIndex(this.history, seq);
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.assertRange(offsetBytes, lengthBytes);
  }

  /** Durable: everything acknowledged before; a flush marker records the crash-consistent point. */
  async flush(): Promise<void> {
    if (!this.capabilities.readOnly) {
      try {
        this.append(RecordType.FLUSH, 0, 0, 0, null);
      } catch (err) {
        // The marker is a convenience; the sync is the promise. A full disk must not stop
        // what was already written from becoming durable.
        if (!isHindsightError(err, 'NO_SPACE')) throw err;
      }
    }
    await this.journal.sync();
    this.maybeCheckpoint();
    this.scheduleIdleCheckpoint();
  }

  private scheduleIdleCheckpoint(): void {
    const delayMs = this.options.idleCheckpointMs ?? 5000;
    if (delayMs <= 0 || this.closed) return;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    const seqAtFlush = this.journal.lastSeq;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      // Only when idle (nothing appended since) and not already covered by a checkpoint.
      if (this.closed || this.journal.lastSeq !== seqAtFlush || this.checkpointSeq >= seqAtFlush) return;
      void this.checkpoint().catch(() => undefined);
    }, delayMs);
    this.idleTimer.unref();
  }

  /**
   * Checks every record of the journal (checksum, seq continuity, bounds) and compares the
   * index rebuilt from it with the live index; with `rebuildIndex`, replaces the live index
   * by the rebuilt one and checkpoints it. Synchronous scan: it pauses the daemon for as long
   * as reading the journal takes.
   */
  fsck(rebuildIndex: boolean): Promise<FsckReport> {
    return this.exclusive(() => this.fsckNow(rebuildIndex));
  }

  private async fsckNow(rebuildIndex: boolean): Promise<FsckReport> {
    // The scan yields every few MiB, so clients keep being served while it runs.
    const verified = await verifyJournal(this.options);
    const problems = [...verified.problems];
    const first = verified.problems[0];
    if (first) this.reportCorruption(new HindsightError('JOURNAL_CORRUPT', `fsck: journal segment ${first.segment} offset ${first.offsetBytes}: ${first.message}`));
    const reachedEnd = verified.seqLast === this.journal.lastSeq;
    if (problems.length === 0 && reachedEnd) {
      const difference = compareIndexes(this.index, verified.index, this.sizeBytes);
      if (difference !== null) problems.push({ kind: 'index', segment: null, offsetBytes: difference, message: `index differs from the journal at volume offset ${difference}` });
    }
    let indexRebuilt = false;
    if (rebuildIndex && verified.problems.length === 0 && reachedEnd) {
      this.index = verified.index;
      await this.checkpoint();
      indexRebuilt = true;
    }
    return { records: verified.records, journalBytes: this.journal.stats().bytes, problems, indexRebuilt, indexCompared: verified.problems.length === 0 && reachedEnd };
  }

  /** Writes the index checkpoint now (after syncing the journal it covers); one at a time. */
  checkpoint(): Promise<void> {
    const next = this.checkpointChain.catch(() => undefined).then(() => this.checkpointOnce());
    this.checkpointChain = next;
    return next;
  }

  private async checkpointOnce(): Promise<void> {
    const position = this.journal.endPosition;
    const stats = this.journal.stats();
    const bytes = encodeCheckpoint(this.index, {
      volumeId: this.options.volumeId, sizeBytes: this.sizeBytes, ...position,
      seqLast: stats.seqLast, timeLastUs: stats.timeLastUs, timeFirstUs: this.timeFirstUs, clientBytesWritten: this.clientBytesWritten,
      compactions: this.retention.compactions,
    });
    await this.journal.sync();
    // Derived data: a table that cannot be written means a slower start, not a failed checkpoint.
    await this.writeTocs(position.segmentIndex, stats.seqLast).catch(() => undefined);
    await this.options.files.writeFileAtomic(path.join(this.options.directory, 'index.ckpt'), bytes);
    this.checkpointBytes = stats.bytes;
    this.checkpointSeq = stats.seqLast;
  }

  /**
   * Tables of contents for the segments up to the checkpoint's: each sealed one once, the
   * active one up to `seqLast` (records the sync before this made durable).
   */
  private async writeTocs(activeIndex: number, seqLast: number): Promise<void> {
    const directory = path.join(this.options.directory, 'journal');
    for (const segmentIndex of listSegments(this.options.files, directory)) {
      if (segmentIndex > activeIndex || this.tocComplete.has(segmentIndex)) continue;
      const records = this.segmentEntries(segmentIndex, false);
      if (!records) continue;
      // A segment with runs (pack.ts) is read faster from its few small packs than from a
      // table listing each of their records.
      if (records.entries.some((entry) => (entry.flags & RecordFlag.RUN) !== 0)) {
        if (segmentIndex < activeIndex) this.tocComplete.add(segmentIndex);
        continue;
      }
      const listed = records.entries.filter((entry) => entry.seq <= seqLast);
      const positions = recordPositions(listed);
      const entries = listed.map((entry, i) => ({
        type: entry.type, flags: entry.flags, offsetBytes: entry.offsetBytes, lengthBytes: entry.lengthBytes, timeUs: entry.timeUs,
        recordPosition: positions[i], payloadBytes: entry.payloadBytes, payloadSkip: entry.payloadSkip,
        logicalBytes: (entry.flags & RecordFlag.COMPRESSED) !== 0 ? entry.logicalBytes ?? 0 : 0,
      }));
      if (entries.length === 0) continue;
      await this.options.files.writeFileAtomic(tocPath(directory, segmentIndex), encodeToc(this.options.volumeId, segmentIndex, records.seqFirst, entries));
      if (segmentIndex < activeIndex) this.tocComplete.add(segmentIndex);
    }
  }

  // ---- retention ----------------------------------------------------------------------

  /**
   * The last seq compaction may touch: records of sealed segments (never the one being
   * appended to), all durable. 0 when there is none.
   */
  sealedSeqLast(): number {
    const active = this.journal.endPosition.segmentIndex;
    const inActive = this.history.segmentRecords(active);
    const sealedLast = inActive ? inActive.seqFirst - 1 : this.history.seqLast;
    return Math.min(sealedLast, this.journal.durableSeq);
  }

  /**
   * Seals the segment being appended to (a new one starts), so everything so far can be
   * compacted; returns once that is durable. The active segment's bytes and first record's
   * time tell retention when a quiet volume's segment is worth sealing.
   */
  async seal(): Promise<void> {
    if (this.corruption) throw this.corruption;
    if (this.journal.seal()) await this.journal.sync();
  }

  activeSegment(): { bytes: number; timeFirstUs: number | null } {
    const position = this.journal.endPosition;
    const records = this.history.segmentRecords(position.segmentIndex);
    return { bytes: position.position, timeFirstUs: records ? records.timeFirstUs : null };
  }

  get durableSeq(): number {
    return this.journal.durableSeq;
  }

  /**
   * The segments compaction may rewrite, with their records in the history's table (seq
   * order; collapsed ones — expired points that changed nothing — are not among them).
   */
  sealedSegments(): Array<{ segmentIndex: number; seqFirst: number; entries: HistoryEntry[] }> {
    const active = this.journal.endPosition.segmentIndex;
    const segments = [];
    for (const segmentIndex of listSegments(this.options.files, path.join(this.options.directory, 'journal'))) {
      if (segmentIndex >= active) continue;
      const records = this.history.segmentRecords(segmentIndex);
      if (records) segments.push({ segmentIndex, ...records });
    }
    return segments;
  }

  /**
   * A segment's records in seq order: from the history, or for a folded segment (History.fold)
   * or one with records collapsed (History.collapseSegments) read back from its table of
   * contents or headers on disk (the last one is kept).
   */
  segmentEntries(segmentIndex: number, keep = true): { seqFirst: number; entries: HistoryEntry[] } | null {
    // (Bounds first: building every entry of a large segment for one record is costly.)
    const inTable = this.history.segmentBounds(segmentIndex);
    if (inTable?.complete) return this.history.segmentRecords(segmentIndex);
    // (Only sealed segments have collapsed records: their records stay as read.)
    assert(!inTable || segmentIndex < this.journal.endPosition.segmentIndex, 'the segment appended to has all its records in the history');
    const folded = inTable ?? this.history.foldedSegment(segmentIndex);
    if (!folded) return null;
    const cached = this.recordsReadBack?.segment === segmentIndex && this.recordsReadBack.seqLast === folded.seqLast;
    if (cached) this.recordsReadBack!.usedMs = Date.now();
    if (!cached) {
      const directory = path.join(this.options.directory, 'journal');
      let records;
      try {
        records = segmentRecordsOnDisk({ files: this.options.files, directory, crcSeed: crcSeedFor(this.options.volumeId) }, segmentIndex, folded.seqFirst, folded.seqLast,
          readToc(this.options.files, directory, this.options.volumeId, segmentIndex));
      } catch (err) {
        if (isHindsightError(err, 'JOURNAL_CORRUPT')) this.reportCorruption(err);
        throw err;
      }
      const loaded = { segment: segmentIndex, seqFirst: folded.seqFirst, seqLast: folded.seqLast, entries: records.map(historyEntry), usedMs: Date.now() };
      // Kept for readers going through it record by record (replication); one-off readers
      // (compaction, tables of contents) leave nothing behind.
      if (!keep) return loaded;
      this.recordsReadBack = loaded;
    }
    return { seqFirst: this.recordsReadBack!.seqFirst, entries: this.recordsReadBack!.entries };
  }

  /** One record as the history knows it, also one folded or collapsed away (read back from disk). */
  entryAt(seq: number): HistoryEntry {
    if (seq >= this.history.seqFirst && !this.history.isCollapsed(seq)) return this.history.entry(seq);
    const segment = seq >= this.history.seqFirst ? this.history.segmentOf(seq) : this.history.foldedSegmentOf(seq);
    assert(segment !== undefined, 'a folded seq lies in a folded segment');
    const records = this.segmentEntries(segment)!;
    return records.entries[seq - records.seqFirst];
  }

  /**
   * Folds the history before the oldest kept point into a base (History.fold), at a segment
   * boundary, never past `floor` nor back behind a later rollback's target; recorded in
   * retention.json so the next start folds as it loads. Returns the records folded.
   */
  foldHistory(floor = Infinity): Promise<number> {
    return this.exclusive(async () => {
      // Records of a folded segment read back for replication and unused since: let go.
      if (this.recordsReadBack && Date.now() - this.recordsReadBack.usedMs > 30_000) this.recordsReadBack = null;
      if (this.closed || this.corruption) return 0;
      // A replica folds only as far as its source says no rollback, made or to come, goes
      // back (replicaFoldLimit): one it has not received yet may go back before any seq its
      // mirrored expiry would let it fold to.
      if (this.replica) floor = Math.min(floor, this.replicaFoldLimit);
      const history = this.history;
      const starts = history.segmentStarts().map((start) => start.seqFirst).filter((seq) => seq > history.seqFirst);
      const boundaryAtOrBefore = (seq: number) => {
        let found = 0;
        for (const first of starts) if (first <= seq) found = first;
        return found;
      };
      let at = boundaryAtOrBefore(Math.min(history.oldestKept(), floor));
      for (let limited = history.foldLimit(at); at > 0 && limited !== at; limited = history.foldLimit(at)) at = boundaryAtOrBefore(limited);
      if (at <= history.seqFirst) return 0;
      const before = history.seqFirst;
      // Worth it once a quarter of the table (or a quarter million records) can go: a fold
      // walks every region's base.
      if (at - before < Math.min(FOLD_RECORDS_MIN, (history.seqLast - before + 1) / 4)) return 0;
      const known = new Set(this.retention.foldedReverts.map(([revertSeq]) => revertSeq));
      const folding: Array<[number, number]> = [];
      history.revertSeqs.forEach((revertSeq, i) => {
        if (revertSeq < at && !known.has(revertSeq)) folding.push([revertSeq, history.revertTargets[i]]);
      });
      // Clients go on meanwhile (a large volume's fold can take a second); a rollback into
      // what was to go (a pinned point) calls it off.
      if (!(await history.foldAsync(at))) return 0;
      this.retention.foldedReverts.push(...folding);
      // The reclaim analysis' verdicts are per seq - seqFirst: shifted with the fold.
      const verdicts = this.retention.verdicts;
      this.retention.verdicts = verdicts && verdicts.upTo >= at ? { ...verdicts, seen: verdicts.seen.slice(at - before) } : null;
      if (!this.retention.verdicts) this.retention.lastAnalysis = null;
      await this.retention.save();
      return at - before;
    });
  }

  /**
   * How far a replica holding the records up to `sentUpTo` may fold its history
   * (replication's STATE `foldBefore`): no rollback it has not received, made or to come,
   * goes back before it — every rollback after `sentUpTo` is taken into account
   * (History.foldLimit), later ones can only go back to kept points, and points only ever
   * expire (those it received, its own fold takes into account). 0: not at all.
   */
  foldLimitForReplicas(sentUpTo: number): number {
    const oldest = this.history.oldestKept();
    const limit = Math.min(oldest, sentUpTo + 1);
    return limit > 1 ? this.history.foldLimit(limit) : 0;
  }

  /** A replica: its source's foldLimitForReplicas (it only grows). */
  setReplicaFoldLimit(seq: number): void {
    this.replicaFoldLimit = Math.max(this.replicaFoldLimit, seq);
  }

  /**
   * Removes the points of `runs` (ascending seq runs): refused from this instant on, then
   * recorded durably in retention.json. Only durable seqs: a crash must not give an expired
   * seq to a new write.
   */
  async expirePoints(runs: Array<[number, number]>): Promise<void> {
    if (runs.length === 0) return;
    assert(runs[runs.length - 1][1] <= this.journal.durableSeq, 'only durable seqs expire');
    this.expireInHistory(runs);
    await this.retention.save();
  }

  /**
   * Expires `runs` in the history, noting the seqs newly expired for collapsePending (runs
   * may cover points expired long ago: those were collapsed then).
   */
  expireInHistory(runs: ReadonlyArray<readonly [number, number]>): void {
    const history = this.history;
    for (const [a, b] of runs) {
      let at = a;
      for (let run = history.expiredRunOf(at); run !== null && at <= b; run = history.expiredRunOf(at)) at = run[1] + 1;
      if (at > b) continue;
      this.collapseFrom = Math.min(this.collapseFrom, at);
      this.collapseTo = Math.max(this.collapseTo, b);
    }
    history.expire(runs);
  }

  /**
   * Collapses what the points expired since the last call leave without use in memory
   * (flushes, unchanged writes, thinned ones: History.collapseSegments), in the sealed
   * segments they lie in — compaction does so for the segments it rewrites, but one may
   * never be rewritten again. Kept out of a fold (which counts the table's rows while it
   * yields), and called before retention's analysis (which holds postings' indexes while it
   * yields), never during one: reclaimSpace calls it first.
   */
  collapsePending(): Promise<void> {
    return this.exclusive(async () => {
      const history = this.history;
      const first = Math.max(this.collapseFrom, history.seqFirst);
      const last = Math.min(this.collapseTo, history.seqLast);
      if (this.closed || this.corruption || first > last) return;
      const active = this.journal.endPosition.segmentIndex;
      const from = history.segmentOf(first);
      const to = Math.min(history.segmentOf(last), active - 1);
      if (from <= to) history.collapseSegments(from, to);
      // What lies in the segment appended to waits until it is sealed.
      if (history.segmentOf(last) >= active) {
        this.collapseFrom = Math.max(first, history.segmentRecords(active)?.seqFirst ?? first);
      } else {
        this.collapseFrom = Infinity;
        this.collapseTo = 0;
      }
    });
  }

  /**
   * Writes a sealed segment again without the payloads of `thinned` (WRITE records no kept
   * point shows), then puts it in place of the old one — in an order a crash at any step
   * survives (compaction.ts). Returns the bytes before and after, or null if the volume
   * closed meanwhile.
   */
  compactSegment(segmentIndex: number, thinned: ReadonlySet<number>, cancelled: () => boolean = () => false, options: { thinUnshown?: boolean; runs?: RunPolicy } = {}): Promise<{ bytesBefore: number; bytesAfter: number; recordsCompressed: number; recordsThinned: number } | null> {
    return this.exclusive(async () => {
      if (this.closed) return null;
      if (this.corruption) throw this.corruption;
      assert(segmentIndex < this.journal.endPosition.segmentIndex, 'only sealed segments are compacted');
      const records = this.segmentEntries(segmentIndex, false);
      assert(records !== null, 'a compacted segment has records');
      const folded = this.history.foldedSegment(segmentIndex);
      assert(thinned.size === 0 || !folded, 'a folded segment loses what no base shows, nothing else');
      // Runs only in folded history, and for the whole segment (noted: made once).
      const runs = folded ? options.runs : undefined;
      assert(!runs || folded!.seqLast < runs.below, 'runs are made for a folded segment wholly below their limit');
      if (folded && (options.thinUnshown || runs)) {
        // Folded: every WRITE record no base shows goes (their points are long expired).
        const shown = new Set(folded.positions);
        const all = new Set<number>();
        for (const entry of records.entries) if (entry.type === RecordType.WRITE && !shown.has(entry.payloadPosition)) all.add(entry.seq);
        thinned = all;
      }
      for (const seq of thinned) assert(this.history.expiredRunOf(seq) !== null, 'only records of expired points are thinned');
      const journalDirectory = path.join(this.options.directory, 'journal');
      let result;
      try {
        result = await compactSegment({ files: this.options.files, directory: journalDirectory, crcSeed: crcSeedFor(this.options.volumeId), cancelled: () => this.closed || cancelled(), compress: this.reduce, runs },
          segmentIndex, records.entries, thinned);
      } catch (err) {
        if (isHindsightError(err, 'JOURNAL_CORRUPT')) this.reportCorruption(err);
        throw err;
      }
      if (!result) return null;
      const compacted = result;
      // Checkpoints name journal positions: none may run between the rename and the moves.
      const install = this.checkpointChain.catch(() => undefined).then(async () => {
        if (this.closed) {
          this.options.files.remove(compacted.temporaryPath);
          return null;
        }
        // The checkpoint and the table of contents name the old positions: a new generation
        // makes any checkpoint made before unusable, and the current one goes, durably,
        // before the new segment can be there (the next open rebuilds from the journal).
        this.retention.compactions += 1;
        try {
          await this.retention.save();
        } catch (err) {
          this.retention.compactions -= 1; // not durable: checkpoints keep the old generation
          this.options.files.remove(compacted.temporaryPath); // (its space: the disk may be full)
          throw err;
        }
        this.options.files.remove(path.join(this.options.directory, 'index.ckpt'));
        await this.options.files.syncDirectory(this.options.directory);
        this.options.files.remove(tocPath(journalDirectory, segmentIndex));
        this.tocComplete.delete(segmentIndex);
        // Same turn: nothing reads between the rename and the moved positions.
        this.journal.installCompacted(segmentIndex, compacted.temporaryPath, compacted.bytesBefore - compacted.bytesAfter);
        this.history.relocateSegment(segmentIndex, records.seqFirst, compacted.moved, thinned, this.index);
        if (this.recordsReadBack?.segment === segmentIndex) this.recordsReadBack = null;
        this.retention.noteCompacted(segmentIndex, thinned.size, compacted.recordsCompressed, compacted.bytesBefore - compacted.bytesAfter, this.reduce, runs !== undefined);
        const result = { bytesBefore: compacted.bytesBefore, bytesAfter: compacted.bytesAfter, recordsCompressed: compacted.recordsCompressed, recordsThinned: thinned.size };
        try {
          await this.options.files.syncDirectory(journalDirectory);
          await this.retention.save();
          await this.checkpointOnce();
        } catch (err) {
          // The segment is compacted (a crash leaves the old copy or this one, whole): a full
          // disk now only delays retention.json and the checkpoint (written again later), and
          // must not pass for a compaction that found no room (it would be tried again).
          if (!isHindsightError(err, 'NO_SPACE')) throw err;
        }
        return result;
      });
      this.checkpointChain = install.then(() => undefined, () => undefined);
      return install;
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    await this.checkpointRunning?.catch(() => undefined);
    await this.checkpoint().catch(() => undefined);
    await this.journal.close();
  }

  private maybeCheckpoint(): void {
    if (this.checkpointRunning || this.journal.stats().bytes - this.checkpointBytes < this.options.checkpointEveryBytes) return;
    this.checkpointRunning = this.checkpoint().catch(() => undefined).finally(() => {
      this.checkpointRunning = null;
    });
  }

  private assertRange(offsetBytes: number, lengthBytes: number): void {
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && lengthBytes >= 0, 'range is non-negative');
    assert(offsetBytes + lengthBytes <= this.sizeBytes, 'range within the device (validated at the edge)');
  }

  private assertWritable(offsetBytes: number, lengthBytes: number): void {
    this.assertRange(offsetBytes, lengthBytes);
    assert(!this.capabilities.readOnly, 'writes reach only writable devices');
    if (this.corruption) throw this.corruption;
    if (lengthBytes === 0) throw new HindsightError('INVALID_ARGUMENT', 'zero-length change');
  }
}

const ZERO_SLICE = Buffer.alloc(64 * 1024);
const SECTOR_BYTES = 512;
/** A write stores only its changed span while its range stays within this many pieces per 4 KiB block. */
const PIECES_PER_BLOCK_MAX = 5;

function isAllZero(data: Buffer): boolean {
  if (data.length === 0 || data[0] !== 0 || data[data.length - 1] !== 0) return data.length === 0;
  for (let at = 0; at < data.length; at += ZERO_SLICE.length) {
    const end = Math.min(data.length, at + ZERO_SLICE.length);
    if (!data.subarray(at, end).equals(ZERO_SLICE.subarray(0, end - at))) return false;
  }
  return true;
}

/**
 * Where each record's header is, for a table of contents: a record of its own's is before its
 * chunk table; packed records (flag PACKED) whose bodies follow each other share a pack, whose
 * header and entries come before the first body (the bodies of two packs never touch: the
 * second pack's header and entries lie between).
 */
function recordPositions(entries: readonly HistoryEntry[]): number[] {
  const positions: number[] = [];
  for (let i = 0; i < entries.length;) {
    const entry = entries[i];
    if ((entry.flags & RecordFlag.PACKED) === 0) {
      positions.push(entry.payloadPosition - payloadOffset(entry.payloadBytes));
      i += 1;
      continue;
    }
    let end = i + 1;
    let bodyEnd = entry.payloadPosition + entry.payloadBytes;
    while (end < entries.length && (entries[end].flags & RecordFlag.PACKED) !== 0 && entries[end].payloadPosition - chunkTableBytes(entries[end].payloadBytes) === bodyEnd) {
      bodyEnd = entries[end].payloadPosition + entries[end].payloadBytes;
      end += 1;
    }
    const packPosition = entry.payloadPosition - chunkTableBytes(entry.payloadBytes) - (end - i) * PACK_ENTRY_BYTES - RECORD_HEADER_BYTES;
    for (; i < end; i += 1) positions.push(packPosition);
  }
  return positions;
}

/**
 * How far a start may fold: as far as the volume had (retention.json) — a replica only as far
 * as it folded as a replica, as its source allowed (foldPlan).
 */
function foldPlanFor(options: Pick<JournaledDeviceOptions, 'files' | 'directory' | 'replica'>): { foldBefore: number; reverts: Array<[number, number]> } {
  return foldPlan(options.files, options.directory, options.replica ?? false);
}

/** A start folds once this many records are loaded (and once more at the end). */
const LOAD_FOLD_RECORDS = 1 << 20;

/**
 * Appends loaded records to `history`, folding it (History.fold) up to `plan.foldBefore`, at
 * segment boundaries where no rollback still to come goes back before the boundary (the
 * folded rollbacks are known beforehand; later ones never go back before the fold): whenever
 * a million records wait, and at the last such boundary once everything is loaded (`finish`).
 */
function loadingHistory(history: History, plan: { foldBefore: number; reverts: Array<[number, number]> }, lastSegment: number): ((entry: HistoryEntry, runCount?: number, runTimeLastUs?: number) => void) & { finish: () => void } {
  let segment = -1;
  let safe = 0;
  const foldToSafe = () => {
    if (safe > history.seqFirst && history.foldLimit(safe) === safe) history.fold(safe);
  };
  const load = (entry: HistoryEntry, runCount?: number, runTimeLastUs?: number) => {
    if (entry.segment !== segment) {
      const at = entry.seq;
      if (segment !== -1 && at <= plan.foldBefore && plan.reverts.every(([revertSeq, target]) => revertSeq < at || target >= at)) safe = at;
      if (history.seqLast - history.seqFirst + 1 >= LOAD_FOLD_RECORDS) foldToSafe();
      segment = entry.segment;
    }
    // THINNED records collapse as they load (History.append), but not in the last segment:
    // the one appended to goes on growing, read back from disk it would be a moving target
    // (the start collapses them once it is sealed: collapseSegments).
    // A run of thinned records read whole (pack.ts): one span, not a record each.
    if (runCount !== undefined && runCount > 1) history.appendRun(entry, runCount, runTimeLastUs!, entry.segment < lastSegment);
    else history.append(entry, entry.segment < lastSegment);
  };
  return Object.assign(load, { finish: foldToSafe });
}

function historyEntry(record: ScannedRecord): HistoryEntry {
  const { header } = record;
  return {
    seq: header.seq, type: header.type, flags: header.flags, offsetBytes: header.offsetBytes, lengthBytes: header.lengthBytes,
    timeUs: header.timeUs, segment: record.segmentIndex, payloadPosition: record.payloadPosition, payloadBytes: header.payloadBytes,
    payloadSkip: header.payloadSkip ?? 0, logicalBytes: record.logicalBytes,
  };
}

/**
 * Enters one replayed record in the index. A REVERT is not applied here: whoever replays
 * one rebuilds the index from the history afterwards (History.indexAt).
 */
export function applyRecord(index: ExtentIndex, record: ScannedRecord, sizeBytes: number): void {
  const { header } = record;
  if (header.lengthBytes === 0) return;
  if (header.offsetBytes + header.lengthBytes > sizeBytes) {
    throw new HindsightError('JOURNAL_CORRUPT', `journal record seq ${header.seq} (segment ${record.segmentIndex}, offset ${record.recordPosition}) lies beyond the volume`);
  }
  switch (header.type) {
    case RecordType.WRITE:
      // Only the stored span changed (the rest of the range held these bytes already).
      if (record.logicalBytes !== undefined) {
        index.setData(header.offsetBytes + (header.payloadSkip ?? 0), record.logicalBytes, record.segmentIndex, record.payloadPosition, header.payloadBytes + PAYLOAD_COMPRESSED);
      } else {
        index.setData(header.offsetBytes + (header.payloadSkip ?? 0), header.payloadBytes, record.segmentIndex, record.payloadPosition);
      }
      break;
    case RecordType.ZERO:
      index.setZero(header.offsetBytes, header.lengthBytes, (header.flags & RecordFlag.ALLOCATED) !== 0);
      break;
    case RecordType.TRIM:
      index.setZero(header.offsetBytes, header.lengthBytes, false);
      break;
    default:
      break;
  }
}

function mergeExtents(extents: Extent[], extentsMax: number): Extent[] {
  const merged: Extent[] = [];
  for (const extent of extents) {
    const last = merged[merged.length - 1];
    if (last && last.hole === extent.hole && last.zero === extent.zero) last.lengthBytes += extent.lengthBytes;
    else if (merged.length < extentsMax) merged.push({ ...extent });
    else break;
  }
  return merged;
}

/** Scans a volume's whole journal without opening it for service (fsck, failed volumes). */
export async function verifyJournal(options: Pick<JournaledDeviceOptions, 'directory' | 'files' | 'volumeId' | 'sizeBytes' | 'replica'>):
  Promise<{ records: number; seqLast: number; problems: FsckProblem[]; index: ExtentIndex }> {
  const directory = path.join(options.directory, 'journal');
  let index = new ExtentIndex(options.sizeBytes);
  // (Folded as a start folds it: a check must not need more memory than the volume.)
  const history = new History(options.sizeBytes);
  const segments = listSegments(options.files, directory);
  const load = loadingHistory(history, foldPlanFor(options), segments.length > 0 ? segments[segments.length - 1] : 0);
  let reverted = false;
  const problems: FsckProblem[] = [];
  if (segments.length === 0) return { records: 0, seqLast: 0, problems, index };
  let records = 0;
  const result = await scanJournalAsync({
    directory, files: options.files, volumeId: options.volumeId, crcSeed: crcSeedFor(options.volumeId),
    from: { segmentIndex: segments[0], position: SEGMENT_HEADER_BYTES }, expectedSeq: 1,
    onRecord: (record) => {
      try {
        applyRecord(index, record, options.sizeBytes);
        load(historyEntry(record));
        reverted ||= record.header.type === RecordType.REVERT;
        records += 1;
      } catch (err) {
        problems.push({ kind: 'journal', segment: path.basename(segmentPath(directory, record.segmentIndex)), offsetBytes: record.recordPosition, message: (err as Error).message });
      }
    },
  });
  if (result.bad) {
    problems.push({
      kind: 'journal',
      segment: path.basename(segmentPath(directory, result.bad.segmentIndex)),
      offsetBytes: result.bad.position,
      message: `${result.bad.reason} (expected seq ${result.bad.expectedSeq})`,
    });
  }
  load.finish();
  if (reverted && problems.length === 0) index = history.indexAt(history.seqLast);
  return { records, seqLast: result.seqLast, problems, index };
}

/** The first volume offset where two indexes disagree, or null. */
function compareIndexes(live: ExtentIndex, rebuilt: ExtentIndex, sizeBytes: number): number | null {
  const pieces: string[] = [];
  live.lookup(0, sizeBytes, (p) => pieces.push(`${p.startBytes}:${p.endBytes}:${p.segment}:${p.payloadPosition}:${p.delta}:${p.payloadBytes}`));
  let at = 0;
  let difference: number | null = null;
  rebuilt.lookup(0, sizeBytes, (p) => {
    if (difference === null && pieces[at] !== `${p.startBytes}:${p.endBytes}:${p.segment}:${p.payloadPosition}:${p.delta}:${p.payloadBytes}`) difference = p.startBytes;
    at += 1;
  });
  if (difference === null && at !== pieces.length) difference = 0;
  return difference;
}
