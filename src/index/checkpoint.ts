/**
 * The persisted index (docs/FORMAT.md, "Index checkpoint"): every region's extents plus the
 * journal position and seq they cover. Written atomically after the journal is synced up to
 * that position, so replay from it is always possible; a checkpoint that fails its checks
 * is ignored and the index is rebuilt from the journal (it is derivable, never the truth).
 */
import { crc32c } from '@node-rs/crc32';
import { assert } from '../core/index.js';
import { EXTENT_STRIDE, ExtentIndex, REGION_BYTES } from './extent-index.js';

const MAGIC = Buffer.from('HSIDXCP1', 'latin1');
/** 3: the compaction generation it was made in (a checkpoint from before a compaction names old positions). */
const VERSION = 3;
const HEADER_BYTES = 128;

export interface CheckpointPosition {
  segmentIndex: number;
  position: number;
  seqLast: number;
  timeLastUs: number;
}

export interface CheckpointInfo extends CheckpointPosition {
  volumeId: Buffer;
  sizeBytes: number;
  timeFirstUs: number;
  /** WRITE payload bytes journaled up to this point (the client-written counter). */
  clientBytesWritten: number;
  /** Compactions of the journal before this checkpoint (retention.json counts them). */
  compactions: number;
}

/** Serialises the index synchronously: the caller takes it at a consistent instant. */
export function encodeCheckpoint(index: ExtentIndex, info: CheckpointInfo): Buffer {
  const regions = [...index.regionsForCheckpoint()];
  const bodyBytes = regions.reduce((sum, region) => sum + 8 + region.entries.byteLength, 0);
  const out = Buffer.alloc(HEADER_BYTES + bodyBytes);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(VERSION, 8);
  out.writeUInt32LE(REGION_BYTES, 12);
  info.volumeId.copy(out, 16, 0, 16);
  out.writeBigUInt64LE(BigInt(info.sizeBytes), 32);
  out.writeBigUInt64LE(BigInt(info.segmentIndex), 40);
  out.writeBigUInt64LE(BigInt(info.position), 48);
  out.writeBigUInt64LE(BigInt(info.seqLast), 56);
  out.writeBigUInt64LE(BigInt(info.timeLastUs), 64);
  out.writeBigUInt64LE(BigInt(info.timeFirstUs), 72);
  out.writeUInt32LE(regions.length, 80);
  out.writeBigUInt64LE(BigInt(info.clientBytesWritten), 96);
  out.writeBigUInt64LE(BigInt(info.compactions), 104);
  let at = HEADER_BYTES;
  for (const region of regions) {
    out.writeUInt32LE(region.regionIndex, at);
    out.writeUInt32LE(region.entries.length / EXTENT_STRIDE, at + 4);
    Buffer.from(region.entries.buffer, region.entries.byteOffset, region.entries.byteLength).copy(out, at + 8);
    at += 8 + region.entries.byteLength;
  }
  assert(at === out.length, 'checkpoint body fills the buffer');
  out.writeUInt32LE(crc32c(out.subarray(HEADER_BYTES)), 84);
  out.writeUInt32LE(crc32c(out.subarray(96, HEADER_BYTES)), 92);
  out.writeUInt32LE(crc32c(out.subarray(0, 88)), 88);
  return out;
}

export type CheckpointLoad = { ok: true; info: CheckpointInfo } | { ok: false; reason: string };

/** Loads a checkpoint into `index` (which must be empty); says why when it cannot. */
export function decodeCheckpoint(bytes: Buffer, index: ExtentIndex, volumeId: Buffer): CheckpointLoad {
  if (bytes.length < HEADER_BYTES || !bytes.subarray(0, 8).equals(MAGIC)) return { ok: false, reason: 'bad magic' };
  if (crc32c(bytes.subarray(0, 88)) !== bytes.readUInt32LE(88)) return { ok: false, reason: 'header checksum mismatch' };
  if (bytes.length >= HEADER_BYTES && crc32c(bytes.subarray(96, HEADER_BYTES)) !== bytes.readUInt32LE(92)) return { ok: false, reason: 'header checksum mismatch (bytes 96..127)' };
  if (bytes.readUInt32LE(8) !== VERSION || bytes.readUInt32LE(12) !== REGION_BYTES) return { ok: false, reason: 'unsupported version or region size' };
  if (!bytes.subarray(16, 32).equals(volumeId)) return { ok: false, reason: 'checkpoint belongs to another volume' };
  if (Number(bytes.readBigUInt64LE(32)) !== index.sizeBytes) return { ok: false, reason: 'checkpoint is for another volume size' };
  if (crc32c(bytes.subarray(HEADER_BYTES)) !== bytes.readUInt32LE(84)) return { ok: false, reason: 'body checksum mismatch' };
  const regionCount = bytes.readUInt32LE(80);
  let at = HEADER_BYTES;
  for (let i = 0; i < regionCount; i += 1) {
    if (at + 8 > bytes.length) return { ok: false, reason: 'truncated region table' };
    const regionIndex = bytes.readUInt32LE(at);
    const count = bytes.readUInt32LE(at + 4);
    const byteLength = count * EXTENT_STRIDE * 4;
    if (at + 8 + byteLength > bytes.length || regionIndex >= Math.ceil(index.sizeBytes / REGION_BYTES)) return { ok: false, reason: 'region out of bounds' };
    const entries = new Uint32Array(count * EXTENT_STRIDE);
    Buffer.from(entries.buffer).set(bytes.subarray(at + 8, at + 8 + byteLength));
    const invalid = invalidExtent(entries);
    if (invalid !== null) return { ok: false, reason: `region ${regionIndex}: ${invalid}` };
    index.loadRegion(regionIndex, entries);
    at += 8 + byteLength;
  }
  if (at !== bytes.length) return { ok: false, reason: 'trailing bytes' };
  return {
    ok: true,
    info: {
      volumeId: Buffer.from(bytes.subarray(16, 32)),
      sizeBytes: index.sizeBytes,
      segmentIndex: Number(bytes.readBigUInt64LE(40)),
      position: Number(bytes.readBigUInt64LE(48)),
      seqLast: Number(bytes.readBigUInt64LE(56)),
      timeLastUs: Number(bytes.readBigUInt64LE(64)),
      timeFirstUs: Number(bytes.readBigUInt64LE(72)),
      clientBytesWritten: Number(bytes.readBigUInt64LE(96)),
      compactions: Number(bytes.readBigUInt64LE(104)),
    },
  };
}

/** Checks a region's extents before they reach the index (which asserts the same facts). */
function invalidExtent(entries: Uint32Array): string | null {
  let previousEnd = 0;
  for (let at = 0; at < entries.length; at += EXTENT_STRIDE) {
    const [start, end, segment, , delta, payloadBytes] = entries.subarray(at, at + EXTENT_STRIDE);
    if (start < previousEnd || end <= start || end > REGION_BYTES) return 'extents not sorted, disjoint and inside the region';
    // (A compressed payload's delta is in its logical bytes, not its container's.)
    if (segment !== 0 && segment !== 0xffffffff && payloadBytes < 0x80000000 && delta + (end - start) > payloadBytes) return 'extent reaches past its record payload';
    previousEnd = end;
  }
  return null;
}
