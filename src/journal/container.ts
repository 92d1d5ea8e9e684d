/**
 * Compressed WRITE payloads (docs/FORMAT.md, "Compressed payloads"). Compaction stores the
 * payload of a WRITE record (flag COMPRESSED) as a container: the logical bytes cut into
 * 64 KiB frames, each compressed with zstd (level 1) or kept raw when that does not save:
 *
 *   u32 magic "HSZ1" | u32 logical bytes | u32 frame bytes (65536) | u32 frame count
 *   frame count × u32 stored length (bit 31: stored raw)
 *   the frames, back to back
 *
 * The container is the record's payload: its chunk table (one CRC32C per 4 KiB) covers it
 * like any payload, so a read verifies the container bytes it touches before decompressing,
 * and a 4 KiB read decompresses one 64 KiB frame, not the whole record.
 */
import { Compressor, Decompressor } from 'zstd-napi';
import { HindsightError } from '../core/index.js';

export const CONTAINER_MAGIC = 0x315a5348; // "HSZ1"
export const FRAME_BYTES = 64 * 1024;
const HEADER_BYTES = 16;
const RAW = 0x80000000;

export interface ContainerIndex {
  logicalBytes: number;
  frameCount: number;
  /** Where each frame starts in the container, and its stored length; raw or compressed. */
  starts: number[];
  lengths: number[];
  raw: boolean[];
  /** Bytes of header and index: where the first frame starts. */
  indexBytes: number;
}

let compressor: Compressor | null = null;
let decompressor: Decompressor | null = null;

/** Bytes of the container's header and index for `logicalBytes`. */
export function containerIndexBytes(logicalBytes: number): number {
  return HEADER_BYTES + 4 * Math.ceil(logicalBytes / FRAME_BYTES);
}

/**
 * The container for `logical`, or null when it would not save at least `minSavedShare` of
 * the bytes (random data: stored as it is).
 */
export function encodeContainer(logical: Buffer, minSavedShare = 1 / 8): Buffer | null {
  if (!compressor) {
    compressor = new Compressor();
    compressor.setParameters({ compressionLevel: 1 });
  }
  const frameCount = Math.ceil(logical.length / FRAME_BYTES);
  const parts: Buffer[] = [];
  const index = Buffer.alloc(containerIndexBytes(logical.length));
  index.writeUInt32LE(CONTAINER_MAGIC, 0);
  index.writeUInt32LE(logical.length, 4);
  index.writeUInt32LE(FRAME_BYTES, 8);
  index.writeUInt32LE(frameCount, 12);
  let total = index.length;
  for (let frame = 0; frame < frameCount; frame += 1) {
    const bytes = logical.subarray(frame * FRAME_BYTES, Math.min(logical.length, (frame + 1) * FRAME_BYTES));
    const packed = compressor.compress(bytes);
    const raw = packed.length >= bytes.length;
    const stored = raw ? bytes : packed;
    index.writeUInt32LE(stored.length + (raw ? RAW : 0), HEADER_BYTES + frame * 4);
    parts.push(stored);
    total += stored.length;
  }
  if (total > logical.length * (1 - minSavedShare)) return null;
  return Buffer.concat([index, ...parts], total);
}

/** The logical length from the container's first 8 bytes (null: not a container). */
export function containerLogicalBytes(head: Buffer): number | null {
  if (head.length < 8 || head.readUInt32LE(0) !== CONTAINER_MAGIC) return null;
  return head.readUInt32LE(4);
}

/** Parses header and index (`bytes` holds at least containerIndexBytes); throws if unsound. */
export function decodeContainerIndex(bytes: Buffer, containerBytes: number, where: string): ContainerIndex {
  const bad = (why: string) => new HindsightError('JOURNAL_CORRUPT', `${where}: compressed payload ${why}; the data is not served (run hindsight fsck)`);
  if (bytes.length < HEADER_BYTES || bytes.readUInt32LE(0) !== CONTAINER_MAGIC) throw bad('has no container header');
  const logicalBytes = bytes.readUInt32LE(4);
  const frameCount = bytes.readUInt32LE(12);
  if (bytes.readUInt32LE(8) !== FRAME_BYTES || frameCount !== Math.ceil(logicalBytes / FRAME_BYTES)) throw bad('has an unsound header');
  const indexBytes = containerIndexBytes(logicalBytes);
  if (bytes.length < indexBytes) throw bad('index cut short');
  const starts: number[] = [];
  const lengths: number[] = [];
  const raw: boolean[] = [];
  let at = indexBytes;
  for (let frame = 0; frame < frameCount; frame += 1) {
    const entry = bytes.readUInt32LE(HEADER_BYTES + frame * 4);
    const length = entry % RAW;
    const isRaw = entry >= RAW;
    const logical = Math.min(FRAME_BYTES, logicalBytes - frame * FRAME_BYTES);
    if (length === 0 || (isRaw && length !== logical) || length > logical) throw bad(`frame ${frame} has an unsound length`);
    starts.push(at);
    lengths.push(length);
    raw.push(isRaw);
    at += length;
  }
  if (at !== containerBytes) throw bad('frames do not fill the container');
  return { logicalBytes, frameCount, starts, lengths, raw, indexBytes };
}

/** One frame's logical bytes from its stored bytes. */
export function decodeFrame(index: ContainerIndex, frame: number, stored: Buffer, where: string): Buffer {
  if (index.raw[frame]) return stored;
  decompressor ??= new Decompressor();
  const expected = Math.min(FRAME_BYTES, index.logicalBytes - frame * FRAME_BYTES);
  let out: Buffer;
  try {
    out = decompressor.decompress(stored);
  } catch (err) {
    throw new HindsightError('JOURNAL_CORRUPT', `${where}: frame ${frame} does not decompress (${(err as Error).message}); the data is not served (run hindsight fsck)`);
  }
  if (out.length !== expected) throw new HindsightError('JOURNAL_CORRUPT', `${where}: frame ${frame} decompresses to ${out.length} bytes, not ${expected}; the data is not served`);
  return out;
}
