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
import { firstBadChunk } from './chunk-crc.js';
import type { FileLayer, StorageFile } from './file-layer.js';
import { RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RecordFlag, RecordType, decodeRecordHeader, encodeRecordHeader, payloadOffset, recordCrc, recordSpan, storedCrc } from './record.js';
import { encodeChunkTable } from './chunk-crc.js';
import { encodeContainer } from './container.js';
import { segmentPath } from './scanner.js';
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
  moved: Array<{ payloadPosition: number; payloadBytes: number; compressed: boolean }>;
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
}

const SLICE_BYTES = 8 * 1024 * 1024;
const READ_WINDOW_BYTES = 4 * 1024 * 1024;
const PADDING = Buffer.alloc(RECORD_ALIGN_BYTES);

/**
 * Writes `segmentIndex` again as NNNNNNNN.seg.compact, with the records in `thinned`
 * reduced to THINNED headers. `records` lists every record of the segment in seq order.
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
    // The segment is read in windows of READ_WINDOW_BYTES (one read per small record made
    // compacting 4 KiB writes wait on the thread pool: 21 MiB/s); a window is never reused,
    // since the records copied as they are stay views of it until written.
    let window = Buffer.alloc(0);
    let windowStart = 0;
    for (const record of records) {
      const recordPosition = record.payloadPosition - payloadOffset(record.payloadBytes);
      assert(recordPosition === at, 'the records given follow each other through the segment');
      const span = recordSpan(record.payloadBytes);
      if (recordPosition + span > windowStart + window.length) {
        const length = Math.min(Math.max(span, READ_WINDOW_BYTES), bytesBefore - recordPosition);
        if (length < span) throw damaged(sourcePath, recordPosition, 'record cut short');
        window = Buffer.allocUnsafe(length);
        windowStart = recordPosition;
        if ((await source.readAsync(window, 0, length, recordPosition)) !== length) throw damaged(sourcePath, recordPosition, 'record cut short');
      }
      const bytes = window.subarray(recordPosition - windowStart, recordPosition - windowStart + span);
      verifyRecord(bytes, record, crcSeed, sourcePath, recordPosition);
      const newRecordPosition = written + pendingBytes;
      const check = decodeRecordHeader(bytes);
      assert(check.ok, 'a verified record has a sound header');
      const header = check.header;
      const compressed = (header.flags & RecordFlag.COMPRESSED) !== 0;
      if (thinned.has(record.seq)) {
        assert(record.type === RecordType.WRITE, 'only WRITE records are thinned');
        const thin = Buffer.alloc(RECORD_HEADER_BYTES);
        encodeRecordHeader(thin, { ...header, type: RecordType.THINNED, flags: header.flags & ~RecordFlag.COMPRESSED, payloadBytes: 0, payloadSkip: 0 }, null, crcSeed);
        pending.push(thin);
        pendingBytes += thin.length;
        moved.push({ payloadPosition: newRecordPosition + payloadOffset(0), payloadBytes: 0, compressed: false });
      } else if (options.compress && header.type === RecordType.WRITE && !compressed && header.payloadBytes >= 1024) {
        const payload = bytes.subarray(payloadOffset(header.payloadBytes), payloadOffset(header.payloadBytes) + header.payloadBytes);
        const container = encodeContainer(payload);
        if (container) {
          const table = encodeChunkTable(container, crcSeed);
          const head = Buffer.alloc(RECORD_HEADER_BYTES);
          encodeRecordHeader(head, { ...header, flags: header.flags | RecordFlag.COMPRESSED, payloadBytes: container.length }, table, crcSeed);
          const padding = recordSpan(container.length) - payloadOffset(container.length) - container.length;
          pending.push(head, table, container, PADDING.subarray(0, padding));
          pendingBytes += recordSpan(container.length);
          moved.push({ payloadPosition: newRecordPosition + payloadOffset(container.length), payloadBytes: container.length, compressed: true });
          recordsCompressed += 1;
        } else {
          pending.push(bytes);
          pendingBytes += span;
          moved.push({ payloadPosition: newRecordPosition + payloadOffset(record.payloadBytes), payloadBytes: record.payloadBytes, compressed: false });
        }
      } else {
        pending.push(bytes);
        pendingBytes += span;
        moved.push({ payloadPosition: newRecordPosition + payloadOffset(record.payloadBytes), payloadBytes: record.payloadBytes, compressed });
      }
      at += span;
      if (pendingBytes >= (options.sliceBytes ?? SLICE_BYTES) || performance.now() - sliceStarted >= (options.sliceMs ?? 4)) {
        // In the thread pool: the event loop serves clients while the batch is written.
        await target.writevAsync(pending.splice(0), written);
        written += pendingBytes;
        pendingBytes = 0;
        // Throttled: rest as long as the slice took (reads and writes included), so clients
        // keep at least half of the disk and of the event loop.
        await new Promise((resolve) => setTimeout(resolve, Math.ceil(performance.now() - sliceStarted)));
        if (options.cancelled?.()) return abandon();
        sliceStarted = performance.now();
      }
    }
    if (at !== bytesBefore) throw damaged(sourcePath, at, `the history knows records up to offset ${at}, the segment is ${bytesBefore} bytes`);
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

/** Removes compaction files a crash left behind (the segment they were made from is intact). */
export function removeCompactionLeftovers(files: FileLayer, directory: string): void {
  for (const name of files.list(directory)) if (name.endsWith(COMPACT_SUFFIX)) files.remove(`${directory}/${name}`);
}

function verifyRecord(bytes: Buffer, record: CompactionRecord, crcSeed: number, file: string, position: number): void {
  const check = decodeRecordHeader(bytes);
  if (!check.ok) throw damaged(file, position, check.reason);
  const { header } = check;
  if (header.seq !== record.seq || header.type !== record.type || header.payloadBytes !== record.payloadBytes) throw damaged(file, position, `record seq ${header.seq} is not the one the history knows (seq ${record.seq})`);
  const tableBytes = payloadOffset(header.payloadBytes) - RECORD_HEADER_BYTES;
  const table = tableBytes > 0 ? bytes.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + tableBytes) : null;
  if (recordCrc(bytes, table, crcSeed) !== storedCrc(bytes)) throw damaged(file, position, 'record checksum mismatch');
  if (table) {
    const payload = bytes.subarray(RECORD_HEADER_BYTES + tableBytes, RECORD_HEADER_BYTES + tableBytes + header.payloadBytes);
    const bad = firstBadChunk(payload, 0, header.payloadBytes, table, crcSeed);
    if (bad !== -1) throw damaged(file, position, `payload chunk ${bad} fails its checksum`);
  }
}

function readExactly(file: StorageFile, into: Buffer, position: number): void {
  if (file.read(into, 0, into.length, position) !== into.length) throw damaged(file.path, position, 'segment header cut short');
}

function damaged(file: string, position: number, why: string): HindsightError {
  return new HindsightError('JOURNAL_CORRUPT', `journal ${file} is corrupt at offset ${position} (${why}); compaction stopped, the volume is not served (run hindsight fsck)`);
}
