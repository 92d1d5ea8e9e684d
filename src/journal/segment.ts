/** Segment files: a 64-byte header (docs/FORMAT.md, "Journal segments") then records. */
import { crc32c } from '@node-rs/crc32';
import { HindsightError } from '../core/index.js';

export const SEGMENT_MAGIC = Buffer.from('HSJSEG01', 'latin1');
export const SEGMENT_FORMAT_VERSION = 1;
export const SEGMENT_HEADER_BYTES = 64;

export interface SegmentHeader {
  volumeId: Buffer;
  segmentIndex: number;
  seqFirst: number;
  createdUs: number;
}

export function segmentFileName(segmentIndex: number): string {
  return `${String(segmentIndex).padStart(8, '0')}.seg`;
}

export function parseSegmentFileName(name: string): number | null {
  const match = /^(\d{8})\.seg$/.exec(name);
  return match ? Number(match[1]) : null;
}

export function encodeSegmentHeader(header: SegmentHeader): Buffer {
  const out = Buffer.alloc(SEGMENT_HEADER_BYTES);
  SEGMENT_MAGIC.copy(out, 0);
  out.writeUInt32LE(SEGMENT_FORMAT_VERSION, 8);
  out.writeUInt32LE(SEGMENT_HEADER_BYTES, 12);
  header.volumeId.copy(out, 16, 0, 16);
  out.writeBigUInt64LE(BigInt(header.segmentIndex), 32);
  out.writeBigUInt64LE(BigInt(header.seqFirst), 40);
  out.writeBigUInt64LE(BigInt(header.createdUs), 48);
  out.writeUInt32LE(crc32c(out.subarray(0, 60)), 60);
  return out;
}

export function decodeSegmentHeader(bytes: Buffer, where: string): SegmentHeader {
  const corrupt = (why: string) => new HindsightError('JOURNAL_CORRUPT', `${where}: segment header ${why}`);
  if (bytes.length < SEGMENT_HEADER_BYTES) throw corrupt('is truncated');
  if (!bytes.subarray(0, 8).equals(SEGMENT_MAGIC)) throw corrupt('has a bad magic');
  if (crc32c(bytes.subarray(0, 60)) !== bytes.readUInt32LE(60)) throw corrupt('fails its checksum');
  const version = bytes.readUInt32LE(8);
  if (version !== SEGMENT_FORMAT_VERSION) throw corrupt(`has unsupported format version ${version}`);
  return {
    volumeId: Buffer.from(bytes.subarray(16, 32)),
    segmentIndex: Number(bytes.readBigUInt64LE(32)),
    seqFirst: Number(bytes.readBigUInt64LE(40)),
    createdUs: Number(bytes.readBigUInt64LE(48)),
  };
}
