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
import { HindsightError, assert, isHindsightError } from '../core/index.js';
import type { BlockDevice, BlockDeviceCapabilities, Extent, WriteOptions, ZeroOptions } from '../core/index.js';
import { ExtentIndex, SEGMENT_ZERO_ALLOCATED, decodeCheckpoint, encodeCheckpoint, isZero } from '../index/index.js';
import { CheckpointMismatch, Journal, RecordFlag, RecordType, SEGMENT_HEADER_BYTES, crcSeedFor, listSegments, scanJournalAsync, scrubJournal, segmentPath } from '../journal/index.js';
import type { FileLayer, JournalPosition, JournalStats, RecoveryReport, ScannedRecord } from '../journal/index.js';

const ASYNC_READ_BYTES_MIN = 64 * 1024;

export interface JournaledDeviceOptions {
  name: string;
  /** The volume's directory: journal/ and index.ckpt live here. */
  directory: string;
  sizeBytes: number;
  volumeId: Buffer;
  files: FileLayer;
  readOnly: boolean;
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
}

export interface JournaledDeviceStats extends JournalStats {
  records: number;
  timeFirstUs: number;
  extents: number;
  indexBytes: number;
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
}

export class JournaledDevice implements BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly capabilities: BlockDeviceCapabilities = {
    readOnly: false, flush: true, fua: true, trim: true, writeZeroes: true, fastZero: true, cache: true, multiConn: true,
  };
  private index: ExtentIndex;
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

  private constructor(private readonly options: JournaledDeviceOptions, private readonly journal: Journal, index: ExtentIndex, timeFirstUs: number, readonly openReport: OpenReport, replayedFrom: JournalPosition | null) {
    this.name = options.name;
    this.sizeBytes = options.sizeBytes;
    this.index = index;
    this.timeFirstUs = timeFirstUs;
    this.capabilities.readOnly = options.readOnly;
    this.checkpointBytes = journal.stats().bytes;
    this.replayedFrom = replayedFrom;
  }

  static open(options: JournaledDeviceOptions): JournaledDevice {
    const checkpointFile = path.join(options.directory, 'index.ckpt');
    const bytes = options.files.readFile(checkpointFile);
    let index = new ExtentIndex(options.sizeBytes);
    let checkpoint: OpenReport['checkpoint'] = 'absent';
    assert(options.segmentBytesMax <= 2 ** 32 - 1, 'journal positions fit the index (u32)');
    let start = null;
    let timeFirstUs = 0;
    let clientBytesWritten = 0;
    if (bytes) {
      const loaded = decodeCheckpoint(bytes, index, options.volumeId);
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
    const apply = (record: ScannedRecord) => {
      if (timeFirstUs === 0) timeFirstUs = record.header.timeUs;
      if (record.header.type === RecordType.WRITE) clientBytesWritten += record.header.lengthBytes;
      applyRecord(index, record, options.sizeBytes);
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
      checkpoint = `ignored (${(err as Error).message}); index rebuilt from the journal`;
      opened = Journal.open(journalOptions, null, apply, start.seqLast);
    }
    const replayedFrom = checkpoint === 'loaded' && start ? start.from : null;
    const device = new JournaledDevice(options, opened.journal, index, timeFirstUs, { ...opened.report, checkpoint }, replayedFrom);
    device.clientBytesWritten = clientBytesWritten;
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
  async scrub(): Promise<void> {
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

  private reportCorruption(error: HindsightError): void {
    if (this.corruption) return;
    this.corruption = error;
    this.options.onCorruption?.(error);
  }

  setReadOnly(readOnly: boolean): void {
    this.capabilities.readOnly = readOnly;
  }

  stats(): JournaledDeviceStats {
    const journal = this.journal.stats();
    return {
      ...journal,
      records: journal.seqLast,
      timeFirstUs: this.timeFirstUs,
      extents: this.index.extentCount,
      indexBytes: this.index.memoryBytes,
      clientBytesWritten: this.clientBytesWritten,
    };
  }

  async read(offsetBytes: number, into: Buffer): Promise<void> {
    try {
      await this.readVerified(offsetBytes, into);
    } catch (err) {
      if (isHindsightError(err, 'JOURNAL_CORRUPT')) this.reportCorruption(err);
      throw err;
    }
  }

  private async readVerified(offsetBytes: number, into: Buffer): Promise<void> {
    this.assertRange(offsetBytes, into.length);
    if (this.corruption) throw this.corruption;
    // Large reads go to the thread pool so the event loop keeps receiving and replying
    // meanwhile; small ones are cheaper as a direct pread on the page cache.
    const inPool = into.length >= ASYNC_READ_BYTES_MIN;
    const pooled: Array<Promise<void>> = [];
    this.index.lookup(offsetBytes, into.length, (piece) => {
      const at = piece.startBytes - offsetBytes;
      const length = piece.endBytes - piece.startBytes;
      if (piece.segment === -1 || isZero(piece.segment)) {
        into.fill(0, at, at + length);
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

  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    this.assertWritable(offsetBytes, data.length);
    const flags = options.fua ? RecordFlag.FUA : 0;
    const record = this.journal.append(RecordType.WRITE, flags, offsetBytes, data.length, data);
    this.index.setData(offsetBytes, data.length, record.segmentIndex, record.payloadPosition);
    this.clientBytesWritten += data.length;
    await this.afterChange(record.timeUs, options.fua);
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    this.assertWritable(offsetBytes, lengthBytes);
    const record = this.journal.append(RecordType.TRIM, options.fua ? RecordFlag.FUA : 0, offsetBytes, lengthBytes, null);
    this.index.setZero(offsetBytes, lengthBytes, false);
    await this.afterChange(record.timeUs, options.fua);
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    // Zeroes are metadata here whatever NO_HOLE says, so FAST_ZERO always holds.
    this.assertWritable(offsetBytes, lengthBytes);
    const flags = (options.fua ? RecordFlag.FUA : 0) | (options.mayTrim ? 0 : RecordFlag.ALLOCATED);
    const record = this.journal.append(RecordType.ZERO, flags, offsetBytes, lengthBytes, null);
    this.index.setZero(offsetBytes, lengthBytes, !options.mayTrim);
    await this.afterChange(record.timeUs, options.fua);
  }

  /** Every change: note the volume's first time, and make it durable when asked to. */
  private async afterChange(timeUs: number, fua: boolean): Promise<void> {
    if (this.timeFirstUs === 0) this.timeFirstUs = timeUs;
    if (fua || this.options.syncEveryWrite) await this.journal.sync();
  }

  async blockStatus(offsetBytes: number, lengthBytes: number, extentsMax: number): Promise<Extent[]> {
    this.assertRange(offsetBytes, lengthBytes);
    const extents: Extent[] = [];
    this.index.lookup(offsetBytes, lengthBytes, (piece) => {
      const length = piece.endBytes - piece.startBytes;
      const data = piece.segment !== -1 && !isZero(piece.segment);
      extents.push({ lengthBytes: length, hole: !data && piece.segment !== SEGMENT_ZERO_ALLOCATED, zero: !data });
    });
    return mergeExtents(extents, extentsMax);
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.assertRange(offsetBytes, lengthBytes);
  }

  /** Durable: everything acknowledged before; a flush marker records the crash-consistent point. */
  async flush(): Promise<void> {
    if (!this.capabilities.readOnly) {
      try {
        this.journal.append(RecordType.FLUSH, 0, 0, 0, null);
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
  async fsck(rebuildIndex: boolean): Promise<FsckReport> {
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
    });
    await this.journal.sync();
    await this.options.files.writeFileAtomic(path.join(this.options.directory, 'index.ckpt'), bytes);
    this.checkpointBytes = stats.bytes;
    this.checkpointSeq = stats.seqLast;
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

/** Enters one replayed record in the index. */
export function applyRecord(index: ExtentIndex, record: ScannedRecord, sizeBytes: number): void {
  const { header } = record;
  if (header.lengthBytes === 0) return;
  if (header.offsetBytes + header.lengthBytes > sizeBytes) {
    throw new HindsightError('JOURNAL_CORRUPT', `journal record seq ${header.seq} (segment ${record.segmentIndex}, offset ${record.recordPosition}) lies beyond the volume`);
  }
  switch (header.type) {
    case RecordType.WRITE:
      index.setData(header.offsetBytes, header.lengthBytes, record.segmentIndex, record.payloadPosition);
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
export async function verifyJournal(options: Pick<JournaledDeviceOptions, 'directory' | 'files' | 'volumeId' | 'sizeBytes'>):
  Promise<{ records: number; seqLast: number; problems: FsckProblem[]; index: ExtentIndex }> {
  const directory = path.join(options.directory, 'journal');
  const index = new ExtentIndex(options.sizeBytes);
  const problems: FsckProblem[] = [];
  const segments = listSegments(options.files, directory);
  if (segments.length === 0) return { records: 0, seqLast: 0, problems, index };
  let records = 0;
  const result = await scanJournalAsync({
    directory, files: options.files, volumeId: options.volumeId, crcSeed: crcSeedFor(options.volumeId),
    from: { segmentIndex: segments[0], position: SEGMENT_HEADER_BYTES }, expectedSeq: 1,
    onRecord: (record) => {
      try {
        applyRecord(index, record, options.sizeBytes);
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
