/**
 * Segment compaction (retention): a sealed segment written again without the payloads of
 * records that no kept point shows. Each such WRITE becomes a THINNED record — the same seq,
 * time, flags and range, a header and nothing else — so seqs stay gap-free and recovery's
 * rules stay what they are; every other record is copied byte for byte (its CRCs do not
 * depend on where it lies). Everything copied is verified first: compaction never turns
 * damaged data into data that looks sound.
 *
 * Crash safety is the caller's order (journaled-device.ts): the new file is written under a
 * temporary name and made durable; the index checkpoint and the segment's table of contents
 * (both name old positions) are removed durably; only then the rename replaces the segment,
 * and the journal directory is synced. A crash leaves the old segment or the new one, whole,
 * and a temporary file that the next open removes.
 */
import { HindsightError, assert } from '../core/index.js';
import type { FileLayer, StorageFile } from './file-layer.js';
import { RECORD_HEADER_BYTES, RecordFlag, RecordType, decodeRecordHeader, payloadOffset, recordSpan, spanOf, isCompressedWrite } from './record.js';
import type { RecordHeader } from './record.js';
import { chunkTableBytes, encodeChunkTable } from './chunk-crc.js';
import { PackBuilder, packable, standaloneRecord, unpackedRecord } from './pack.js';
import type { PackInput, RunPolicy } from './pack.js';
import { checkRecordBytes, segmentPath, segmentRecordsOnDisk } from './scanner.js';
import { compressPieces } from './compress-pool.js';
import { SEGMENT_HEADER_BYTES } from './segment.js';

export const COMPACT_SUFFIX = '.compact';

/** One record of the segment as the history knows it. */
export interface CompactionRecord {
  seq: number;
  type: number;
  payloadPosition: number;
  payloadBytes: number;
}

export interface CompactionResult {
  temporaryPath: string;
  /** Where each record's payload now is, in the order given (and its container, if compressed now). */
  moved: Array<{ payloadPosition: number; payloadBytes: number; compressed: boolean; packed: boolean }>;
  /** WRITE payloads compressed by this compaction. */
  recordsCompressed: number;
  bytesBefore: number;
  bytesAfter: number;
}

export interface CompactionOptions {
  files: FileLayer;
  directory: string;
  crcSeed: number;
  /** Bytes copied between rests (the rest lasts as long as the work did: half speed at most). */
  sliceBytes?: number;
  /** Stop early (volume closing): the temporary file is removed and null returned. */
  cancelled?: () => boolean;
  /** Compress WRITE payloads that are not yet (container.ts), where it saves 1/8 or more. */
  compress?: boolean;
  /** Work on the event loop between rests (compression is CPU): default 4 ms. */
  sliceMs?: number;
  /** Which records may share run entries (pack.ts); by default only runs made before stay runs. */
  runs?: RunPolicy;
}

const SLICE_BYTES = 8 * 1024 * 1024;
const READ_WINDOW_BYTES = 4 * 1024 * 1024;

/** A record of the source segment, verified: its header and body (views of a read window). */
interface SourceRecord extends PackInput {
  payloadPosition: number;
}

/** Records of one read window on their way through compaction (compactSegment). */
interface Batch {
  items: Array<{ found: SourceRecord; thin: boolean; piece: number }>;
  /** [offset, length] in `window` of the payloads to compress. */
  pieces: Array<[number, number]>;
  window: Buffer;
  compressed: Promise<Array<Buffer | null>> | null;
}

/** Windows whose payloads compress at once (each in a worker thread of its own). */
const COMPRESSING_WINDOWS_MAX = 2;

/**
 * Writes `segmentIndex` again as NNNNNNNN.seg.compact, with the records in `thinned`
 * reduced to THINNED records and small records packed (pack.ts). `records` lists every
 * record of the segment in seq order, as the history knows them.
 */
export async function compactSegment(options: CompactionOptions, segmentIndex: number, records: readonly CompactionRecord[], thinned: ReadonlySet<number>): Promise<CompactionResult | null> {
  const { files, directory, crcSeed } = options;
  const sourcePath = segmentPath(directory, segmentIndex);
  const temporaryPath = sourcePath + COMPACT_SUFFIX;
  files.remove(temporaryPath);
  const source = files.open(sourcePath, false);
  let target: StorageFile | null = null;
  try {
    const bytesBefore = source.sizeBytes();
    target = files.open(temporaryPath, true);
    const header = Buffer.alloc(SEGMENT_HEADER_BYTES);
    readExactly(source, header, 0);
    const pending: Buffer[] = [header];
    let pendingBytes = header.length;
    let written = 0;
    let at = SEGMENT_HEADER_BYTES;
    let sliceStarted = performance.now();
    const moved: CompactionResult['moved'] = [];
    let recordsCompressed = 0;
    const pack = new PackBuilder(options.runs);
    const emit = (buffers: Buffer[], span: number) => {
      pending.push(...buffers);
      pendingBytes += span;
    };
    const emitStandalone = (record: PackInput) => {
      const standalone = standaloneRecord(record, crcSeed);
      moved.push({ payloadPosition: written + pendingBytes + payloadOffset(record.header.payloadBytes), payloadBytes: record.header.payloadBytes, compressed: isCompressed(record.header), packed: false });
      emit(standalone.buffers, standalone.span);
    };
    // A pack of one record is smaller written as the record itself.
    const flushPack = () => {
      if (pack.count === 1) {
        emitStandalone(pack.drain()[0]);
      } else if (pack.count > 1) {
        const packed = pack.headers;
        const { buffers, span, payloadPositions } = pack.take(written + pendingBytes, crcSeed);
        packed.forEach((h, i) => moved.push({ payloadPosition: payloadPositions[i], payloadBytes: h.payloadBytes, compressed: isCompressed(h), packed: true }));
        emit(buffers, span);
      }
    };
    // The segment is read in windows of READ_WINDOW_BYTES (one read per small record made
    // compacting 4 KiB writes wait on the thread pool: 21 MiB/s); a window is never reused,
    // since the records copied as they are stay views of it until written.
    let window: Buffer = Buffer.alloc(0);
    let windowStart = 0;
    let next = 0;
    // The records read from one window, in order, each with what becomes of it; the payloads
    // to compress go to worker threads a window at a time (compress-pool.ts), while the next
    // window is read and checked. Emitted in order as their compression completes.
    let batch: Batch = { items: [], pieces: [], window, compressed: null };
    const inflight: Batch[] = [];
    let waitedMs = 0;
    let stopped = false;
    const settle = async (done: Batch): Promise<void> => {
      let containers: Array<Buffer | null> = [];
      if (done.compressed) {
        const waitStart = performance.now();
        containers = await done.compressed;
        waitedMs += performance.now() - waitStart;
      }
      for (const { found, thin, piece } of done.items) {
        let out: PackInput = found;
        const container = piece >= 0 ? containers[piece] : null;
        if (thin) {
          out = { header: { ...found.header, type: RecordType.THINNED, flags: found.header.flags & ~RecordFlag.COMPRESSED, payloadBytes: 0, payloadSkip: 0 }, table: null, payload: null };
        } else if (container) {
          out = { header: { ...found.header, flags: found.header.flags | RecordFlag.COMPRESSED, payloadBytes: container.length }, table: encodeChunkTable(container, crcSeed), payload: container, logicalBytes: found.payload!.length };
          recordsCompressed += 1;
        }
        if (packable(out.header)) {
          if (!pack.add(out)) {
            flushPack();
            assert(pack.add(out), 'a packable record fits an empty pack');
          }
        } else {
          flushPack();
          emitStandalone(out);
        }
      }
      if (pendingBytes >= (options.sliceBytes ?? SLICE_BYTES) || performance.now() - sliceStarted >= (options.sliceMs ?? 4)) {
        // In the thread pool: the event loop serves clients while the batch is written.
        await target!.writevAsync(pending.splice(0), written);
        written += pendingBytes;
        pendingBytes = 0;
        // Throttled: rest as long as the slice took (reads and writes included, not the wait
        // for compression in other threads), so clients keep at least half of the disk and
        // of the event loop.
        await new Promise((resolve) => setTimeout(resolve, Math.ceil(Math.max(0, performance.now() - sliceStarted - waitedMs))));
        if (options.cancelled?.()) stopped = true;
        sliceStarted = performance.now();
        waitedMs = 0;
      }
    };
    /** The batch so far goes to compression; the oldest ones in flight are settled. */
    const submit = async (): Promise<void> => {
      while (inflight.length >= COMPRESSING_WINDOWS_MAX && !stopped) await settle(inflight.shift()!);
      if (stopped) return;
      if (batch.items.length > 0) {
        if (batch.pieces.length > 0) {
          batch.compressed = compressPieces(batch.window, batch.pieces);
          batch.compressed.catch(() => undefined); // (awaited when settled)
        }
        inflight.push(batch);
      }
      while (inflight.length > 0 && !inflight[0].compressed && !stopped) await settle(inflight.shift()!);
    };
    const newWindow = async (need: number) => {
      await submit();
      ({ window, windowStart } = await readWindow(source, at, need, bytesBefore, sourcePath));
      batch = { items: [], pieces: [], window, compressed: null };
    };
    while (at < bytesBefore && !stopped) {
      if (at + RECORD_HEADER_BYTES > windowStart + window.length) await newWindow(RECORD_HEADER_BYTES);
      const peek = decodeRecordHeader(window.subarray(at - windowStart, at - windowStart + RECORD_HEADER_BYTES));
      if (!peek.ok) throw damaged(sourcePath, at, peek.reason);
      const span = spanOf(peek.header);
      if (at + span > windowStart + window.length) await newWindow(span);
      const bytes = window.subarray(at - windowStart, at - windowStart + span);
      for (const found of verifiedRecords(bytes, at, crcSeed, sourcePath)) {
        const record = records[next];
        next += 1;
        if (!record || found.header.seq !== record.seq || found.header.type !== record.type || found.header.payloadBytes !== record.payloadBytes || found.payloadPosition !== record.payloadPosition) {
          throw damaged(sourcePath, at, `record seq ${found.header.seq} is not the one the history knows (${record ? `seq ${record.seq}` : 'none'})`);
        }
        const thin = thinned.has(record.seq);
        assert(!thin || record.type === RecordType.WRITE, 'only WRITE records are thinned');
        let piece = -1;
        if (!thin && options.compress && found.header.type === RecordType.WRITE && !isCompressed(found.header) && found.header.payloadBytes >= 1024) {
          piece = batch.pieces.length;
          batch.pieces.push([found.payload!.byteOffset - window.byteOffset, found.payload!.length]);
        }
        batch.items.push({ found, thin, piece });
      }
      at += span;
    }
    await submit();
    while (inflight.length > 0 && !stopped) await settle(inflight.shift()!);
    if (stopped) return abandon();
    if (next !== records.length) throw damaged(sourcePath, at, `the history knows ${records.length} records, the segment holds ${next}`);
    flushPack();
    if (pendingBytes > 0) await target.writevAsync(pending, written);
    written += pendingBytes;
    await target.datasync();
    return { temporaryPath, moved, recordsCompressed, bytesBefore, bytesAfter: written };
  } catch (err) {
    abandon();
    throw err;
  } finally {
    source.close();
    target?.close();
  }

  function abandon(): null {
    target?.close();
    target = null;
    files.remove(temporaryPath);
    return null;
  }
}

function isCompressed(header: RecordHeader): boolean {
  return isCompressedWrite(header.type, header.flags);
}

/** A fresh window of the source from `at`: at least `need` bytes (else the segment is cut short). */
async function readWindow(source: StorageFile, at: number, need: number, size: number, sourcePath: string): Promise<{ window: Buffer; windowStart: number }> {
  const length = Math.min(Math.max(need, READ_WINDOW_BYTES), size - at);
  if (length < need) throw damaged(sourcePath, at, 'record cut short');
  const window: Buffer = Buffer.allocUnsafe(length);
  if ((await source.readAsync(window, 0, length, at)) !== length) throw damaged(sourcePath, at, 'record cut short');
  return { window, windowStart: at };
}

/**
 * The record(s) in `bytes` (one record, or a PACK and all it holds), each verified — header
 * and entry CRCs, every payload chunk, a compressed payload's container — with views of its
 * body.
 */
function verifiedRecords(bytes: Buffer, position: number, crcSeed: number, file: string): SourceRecord[] {
  const check = checkRecordBytes(bytes, crcSeed, position);
  if (!check.ok) throw damaged(file, position, check.reason);
  if (check.packed) {
    return check.packed.map((record) => {
      const at = record.payloadPosition - position;
      const tableBytes = chunkTableBytes(record.header.payloadBytes);
      const payload = record.header.payloadBytes > 0 ? bytes.subarray(at, at + record.header.payloadBytes) : null;
      return { ...record, table: payload ? bytes.subarray(at - tableBytes, at) : null, payload };
    });
  }
  const { header } = check;
  const tableBytes = chunkTableBytes(header.payloadBytes);
  const payload = header.payloadBytes > 0 ? bytes.subarray(RECORD_HEADER_BYTES + tableBytes, RECORD_HEADER_BYTES + tableBytes + header.payloadBytes) : null;
  return [{
    header, table: payload ? bytes.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + tableBytes) : null, payload,
    logicalBytes: check.logicalBytes, payloadPosition: position + payloadOffset(header.payloadBytes),
  }];
}

/** Removes compaction files a crash left behind (the segment they were made from is intact). */
export function removeCompactionLeftovers(files: FileLayer, directory: string): void {
  for (const name of files.list(directory)) if (name.endsWith(COMPACT_SUFFIX)) files.remove(`${directory}/${name}`);
}

function readExactly(file: StorageFile, into: Buffer, position: number): void {
  if (file.read(into, 0, into.length, position) !== into.length) throw damaged(file.path, position, 'segment header cut short');
}

function damaged(file: string, position: number, why: string): HindsightError {
  return new HindsightError('JOURNAL_CORRUPT', `journal ${file} is corrupt at offset ${position} (${why}); compaction stopped, the volume is not served (run hindsight fsck)`);
}

/**
 * Segment `segmentIndex` (whose first record is `seqFirst`) copied to `toPath` up to and
 * including record `seqLast` (a failback's last common record), made durable: the bytes as
 * they are, except a pack holding records after `seqLast` — its records up to `seqLast` are
 * written as records of their own, each checked, and the rest of the pack left out.
 */
export async function copySegmentPrefix(options: Pick<CompactionOptions, 'files' | 'directory' | 'crcSeed'>, segmentIndex: number, seqFirst: number, seqLast: number, toPath: string): Promise<void> {
  const { files, crcSeed } = options;
  const records = segmentRecordsOnDisk(options, segmentIndex, seqFirst, seqLast, null);
  const last = records[records.length - 1];
  assert(last !== undefined && last.header.seq === seqLast, 'the segment holds the last record copied');
  const packed = (last.header.flags & RecordFlag.PACKED) !== 0;
  const copyEnd = packed ? last.recordPosition : last.recordPosition + recordSpan(last.header.payloadBytes);
  const source = files.open(segmentPath(options.directory, segmentIndex), false);
  const target = files.open(toPath, true);
  try {
    const buffer = Buffer.allocUnsafe(READ_WINDOW_BYTES);
    for (let at = 0; at < copyEnd;) {
      const length = Math.min(buffer.length, copyEnd - at);
      if ((await source.readAsync(buffer, 0, length, at)) !== length) throw damaged(source.path, at, 'segment cut short');
      await target.writevAsync([buffer.subarray(0, length)], at);
      at += length;
    }
    let at = copyEnd;
    for (const record of packed ? records.filter((r) => r.recordPosition === last.recordPosition) : []) {
      // (A packed record's seqDurable is its pack's, which may name seqs past the cut.)
      const header = { ...record.header, seqDurable: Math.min(record.header.seqDurable, seqLast) };
      const tableBytes = chunkTableBytes(header.payloadBytes);
      const body = Buffer.allocUnsafe(tableBytes + header.payloadBytes);
      if ((await source.readAsync(body, 0, body.length, record.payloadPosition - tableBytes)) !== body.length) throw damaged(source.path, record.payloadPosition, 'record cut short');
      const bytes = unpackedRecord(header, body, crcSeed);
      const check = checkRecordBytes(bytes, crcSeed);
      if (!check.ok) throw damaged(source.path, record.payloadPosition, `packed seq ${header.seq}: ${check.reason}`);
      await target.writevAsync([bytes], at);
      at += bytes.length;
    }
    await target.datasync();
  } finally {
    source.close();
    target.close();
  }
}
