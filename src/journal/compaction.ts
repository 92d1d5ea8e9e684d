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
import { RECORD_HEADER_BYTES, RecordType, decodeRecordHeader, encodeRecordHeader, payloadOffset, recordCrc, recordSpan, storedCrc } from './record.js';
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
  /** The new payload position of each record, in the order given. */
  payloadPositions: number[];
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
}

const SLICE_BYTES = 8 * 1024 * 1024;

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
    const payloadPositions: number[] = [];
    for (const record of records) {
      const recordPosition = record.payloadPosition - payloadOffset(record.payloadBytes);
      assert(recordPosition === at, 'the records given follow each other through the segment');
      const span = recordSpan(record.payloadBytes);
      const bytes = Buffer.allocUnsafe(span);
      if ((await source.readAsync(bytes, 0, span, recordPosition)) !== span) throw damaged(sourcePath, recordPosition, 'record cut short');
      verifyRecord(bytes, record, crcSeed, sourcePath, recordPosition);
      const newRecordPosition = written + pendingBytes;
      if (thinned.has(record.seq)) {
        assert(record.type === RecordType.WRITE, 'only WRITE records are thinned');
        const check = decodeRecordHeader(bytes);
        assert(check.ok, 'a verified record has a sound header');
        const thin = Buffer.alloc(RECORD_HEADER_BYTES);
        encodeRecordHeader(thin, { ...check.header, type: RecordType.THINNED, payloadBytes: 0, payloadSkip: 0 }, null, crcSeed);
        pending.push(thin);
        pendingBytes += thin.length;
        payloadPositions.push(newRecordPosition + payloadOffset(0));
      } else {
        pending.push(bytes);
        pendingBytes += span;
        payloadPositions.push(newRecordPosition + payloadOffset(record.payloadBytes));
      }
      at += span;
      if (pendingBytes >= (options.sliceBytes ?? SLICE_BYTES)) {
        target.writev(pending.splice(0), written);
        written += pendingBytes;
        pendingBytes = 0;
        // Throttled: rest as long as the slice took, so clients keep most of the disk.
        await new Promise((resolve) => setTimeout(resolve, Math.ceil(performance.now() - sliceStarted)));
        if (options.cancelled?.()) return abandon();
        sliceStarted = performance.now();
      }
    }
    if (at !== bytesBefore) throw damaged(sourcePath, at, `the history knows records up to offset ${at}, the segment is ${bytesBefore} bytes`);
    if (pendingBytes > 0) target.writev(pending, written);
    written += pendingBytes;
    await target.datasync();
    return { temporaryPath, payloadPositions, bytesBefore, bytesAfter: written };
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
