/**
 * Segment tables of contents (`journal/NNNNNNNN.toc`, docs/FORMAT.md): the headers of a
 * segment's records, 40 bytes each, so that start-up rebuilds the history by reading a few
 * MiB instead of every segment. Derived data: written atomically when the index is
 * checkpointed (a failure only means a slower start), for records the checkpoint's sync made durable — so never for records a
 * recovery could cut — and checked on load (magic, volume, segment, CRC, seq continuity, the
 * last record really being there); a missing or bad table only means scanning that segment.
 */
import { crc32c } from '@node-rs/crc32';
import { assert } from '../core/index.js';
import path from 'node:path';
import type { FileLayer } from './file-layer.js';
import { PACK_ENTRY_BYTES, PACK_RECORDS_MAX, RECORD_HEADER_BYTES, RecordFlag, RecordType, alignUp, payloadOffset, recordSpan, isCompressedWrite } from './record.js';
import { chunkTableBytes } from './chunk-crc.js';
import type { RecordTypeValue } from './record.js';
import type { ScannedRecord } from './scanner.js';

const TOC_MAGIC = Buffer.from('HSJTOC01', 'ascii');
/**
 * 2: entries carry the payload skip (version 1 tables, without it, are ignored). 3: packed
 * records (flag PACKED, the pack's position; version 2 tables are ignored).
 */
const TOC_VERSION = 3;
export const TOC_HEADER_BYTES = 64;
export const TOC_ENTRY_BYTES = 40;
const KNOWN_TYPES = new Set<number>(Object.values(RecordType));

export interface TocEntry {
  type: number;
  flags: number;
  offsetBytes: number;
  lengthBytes: number;
  timeUs: number;
  /** Where its header is: a packed record's (flag PACKED) is its pack's. */
  recordPosition: number;
  payloadBytes: number;
  payloadSkip: number;
  /** A compressed WRITE: the bytes its container stands for (0 otherwise). */
  logicalBytes: number;
}

export interface Toc {
  seqFirst: number;
  /** Just past the last record listed. */
  endPosition: number;
  records: ScannedRecord[];
}

export function tocPath(directory: string, segmentIndex: number): string {
  return path.join(directory, `${String(segmentIndex).padStart(8, '0')}.toc`);
}

/**
 * Where each listed record's payload is, and where the records end — or null if they do not
 * follow each other from the first: a record of its own spans its header, chunk table,
 * payload and padding; the records listed with flag PACKED and one position make one pack
 * (its header, their entries, their bodies back to back, padding).
 */
function tocGeometry(entries: ReadonlyArray<{ flags: number; recordPosition: number; payloadBytes: number }>): { payloadPositions: number[]; endPosition: number } | null {
  const payloadPositions: number[] = [];
  let expected = entries.length > 0 ? entries[0].recordPosition : 0;
  for (let i = 0; i < entries.length;) {
    const { recordPosition } = entries[i];
    if (recordPosition !== expected) return null;
    if ((entries[i].flags & RecordFlag.PACKED) === 0) {
      payloadPositions.push(recordPosition + payloadOffset(entries[i].payloadBytes));
      expected = recordPosition + recordSpan(entries[i].payloadBytes);
      i += 1;
      continue;
    }
    let end = i;
    while (end < entries.length && (entries[end].flags & RecordFlag.PACKED) !== 0 && entries[end].recordPosition === recordPosition) end += 1;
    if (end - i > PACK_RECORDS_MAX) return null;
    let cursor = recordPosition + RECORD_HEADER_BYTES + (end - i) * PACK_ENTRY_BYTES;
    for (; i < end; i += 1) {
      cursor += chunkTableBytes(entries[i].payloadBytes);
      payloadPositions.push(cursor);
      cursor += entries[i].payloadBytes;
    }
    expected = alignUp(cursor);
  }
  return { payloadPositions, endPosition: expected };
}

export function encodeToc(volumeId: Buffer, segmentIndex: number, seqFirst: number, entries: TocEntry[]): Buffer {
  const bytes = Buffer.alloc(TOC_HEADER_BYTES + entries.length * TOC_ENTRY_BYTES);
  const geometry = tocGeometry(entries);
  assert(geometry !== null, 'the records listed follow each other');
  const endPosition = entries.length > 0 ? geometry.endPosition : 0;
  TOC_MAGIC.copy(bytes, 0);
  bytes.writeUInt32LE(TOC_VERSION, 8);
  bytes.writeUInt32LE(TOC_ENTRY_BYTES, 12);
  volumeId.copy(bytes, 16);
  bytes.writeBigUInt64LE(BigInt(segmentIndex), 32);
  bytes.writeBigUInt64LE(BigInt(seqFirst), 40);
  bytes.writeBigUInt64LE(BigInt(endPosition), 48);
  bytes.writeUInt32LE(entries.length, 56);
  entries.forEach((entry, i) => {
    const at = TOC_HEADER_BYTES + i * TOC_ENTRY_BYTES;
    bytes.writeUInt8(entry.type, at);
    bytes.writeUInt8(entry.flags, at + 1);
    bytes.writeUInt32LE(entry.lengthBytes, at + 4);
    bytes.writeBigUInt64LE(BigInt(entry.offsetBytes), at + 8);
    bytes.writeBigUInt64LE(BigInt(entry.timeUs), at + 16);
    bytes.writeUInt32LE(entry.recordPosition, at + 24);
    bytes.writeUInt32LE(entry.payloadBytes, at + 28);
    bytes.writeUInt32LE(entry.payloadSkip, at + 32);
    bytes.writeUInt32LE(entry.logicalBytes, at + 36);
  });
  bytes.writeUInt32LE(crc32c(bytes), 60);
  return bytes;
}

/** The table, or null when it is not a sound table of this volume's segment. */
export function decodeToc(bytes: Buffer, volumeId: Buffer, segmentIndex: number): Toc | null {
  if (bytes.length < TOC_HEADER_BYTES || !bytes.subarray(0, 8).equals(TOC_MAGIC)) return null;
  if (bytes.readUInt32LE(8) !== TOC_VERSION || bytes.readUInt32LE(12) !== TOC_ENTRY_BYTES) return null;
  const count = bytes.readUInt32LE(56);
  if (bytes.length !== TOC_HEADER_BYTES + count * TOC_ENTRY_BYTES) return null;
  const stored = bytes.readUInt32LE(60);
  const check = Buffer.from(bytes);
  check.writeUInt32LE(0, 60);
  if (crc32c(check) !== stored) return null;
  if (!bytes.subarray(16, 32).equals(volumeId) || Number(bytes.readBigUInt64LE(32)) !== segmentIndex) return null;
  const seqFirst = Number(bytes.readBigUInt64LE(40));
  const endPosition = Number(bytes.readBigUInt64LE(48));
  const records: ScannedRecord[] = [];
  for (let i = 0; i < count; i += 1) {
    const at = TOC_HEADER_BYTES + i * TOC_ENTRY_BYTES;
    const type = bytes.readUInt8(at);
    const flags = bytes.readUInt8(at + 1);
    const payloadBytes = bytes.readUInt32LE(at + 28);
    const logical = bytes.readUInt32LE(at + 36);
    const compressed = isCompressedWrite(type, flags);
    if (!KNOWN_TYPES.has(type) || type === RecordType.PACK || (flags & RecordFlag.RUN) !== 0 || compressed !== (logical > 0)) return null;
    records.push({
      header: {
        type: type as RecordTypeValue, flags, seq: seqFirst + i, timeUs: Number(bytes.readBigUInt64LE(at + 16)),
        offsetBytes: Number(bytes.readBigUInt64LE(at + 8)), lengthBytes: bytes.readUInt32LE(at + 4), payloadBytes, seqDurable: 0,
        payloadSkip: bytes.readUInt32LE(at + 32),
      },
      segmentIndex, recordPosition: bytes.readUInt32LE(at + 24), payloadPosition: 0, logicalBytes: compressed ? logical : undefined,
    });
  }
  const geometry = tocGeometry(records.map((record) => ({ flags: record.header.flags, recordPosition: record.recordPosition, payloadBytes: record.header.payloadBytes })));
  if (geometry === null || (count > 0 && geometry.endPosition !== endPosition)) return null;
  records.forEach((record, i) => (record.payloadPosition = geometry.payloadPositions[i]));
  return { seqFirst, endPosition, records };
}

export function readToc(files: FileLayer, directory: string, volumeId: Buffer, segmentIndex: number): Toc | null {
  let bytes: Buffer | null;
  try {
    bytes = files.readFile(tocPath(directory, segmentIndex));
  } catch {
    return null;
  }
  return bytes ? decodeToc(bytes, volumeId, segmentIndex) : null;
}
