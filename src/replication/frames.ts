/**
 * The replication wire format (docs/PROTOCOL.md): frames of a 16-byte header and a body.
 *
 *   u32 magic "HSRP" | u8 type | u8 flags (bit 0: body is zstd) | u16 zero
 *   u32 body bytes (as sent) | u32 CRC32C of header bytes 0..11 then the body (as sent)
 *
 * A compressed body is one zstd frame that declares its content size (at most
 * FRAME_BODY_BYTES_MAX): a frame that does not, or that inflates past it, is refused before
 * anything is allocated for it. Control frames carry JSON; RECORDS and ACK are binary.
 * The decoder is incremental and bounded: it never holds more than one frame's bytes.
 */
import { crc32c } from '@node-rs/crc32';
import { Compressor, Decompressor } from 'zstd-napi';
import { HindsightError } from '../core/index.js';

export const FRAME_MAGIC = 0x50525348; // "HSRP"
export const FRAME_HEADER_BYTES = 16;
/** A body, as sent or decompressed: the largest record (32 MiB of payload) and its table fit. */
export const FRAME_BODY_BYTES_MAX = 40 * 1024 * 1024;
export const PROTOCOL_VERSION = 1;
const COMPRESSED = 1;

export const FrameType = {
  /** Sender → receiver, first frame: who sends which volume (JSON). */
  HELLO: 1,
  /** Receiver → sender: accepted; what the receiver holds (JSON). */
  WELCOME: 2,
  /** Either way, then the connection closes: {code, message} (JSON). */
  ERROR: 3,
  /** Sender → receiver: journal records in seq order (binary). */
  RECORDS: 4,
  /** Receiver → sender: u64 seq received, u64 seq durable (binary). */
  ACK: 5,
  /** Sender → receiver: expired runs and bookmarks of the source (JSON). */
  STATE: 6,
  /** Sender → receiver: still here; where the source is (JSON). The receiver ACKs. */
  HEARTBEAT: 7,
} as const;
export type FrameTypeValue = (typeof FrameType)[keyof typeof FrameType];
const KNOWN = new Set<number>(Object.values(FrameType));

export interface Frame {
  type: FrameTypeValue;
  body: Buffer;
  /** Bytes this frame took on the wire (header included). */
  wireBytes: number;
}

let compressor: Compressor | null = null;
let decompressor: Decompressor | null = null;

/**
 * One frame's bytes. With `compress`, the body is sent as zstd (level 1) when that saves at
 * least an eighth (records already compressed by compaction, random data: sent as they are).
 */
export function encodeFrame(type: FrameTypeValue, body: Buffer, compress = false): Buffer[] {
  if (body.length > FRAME_BODY_BYTES_MAX) throw new HindsightError('PROTOCOL_ERROR', `a frame body of ${body.length} bytes exceeds ${FRAME_BODY_BYTES_MAX}`);
  let sent = body;
  let flags = 0;
  if (compress && body.length >= 512) {
    if (!compressor) {
      compressor = new Compressor();
      compressor.setParameters({ compressionLevel: 1 });
    }
    const packed = compressor.compress(body);
    if (packed.length <= body.length - body.length / 8) {
      sent = packed;
      flags = COMPRESSED;
    }
  }
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32LE(FRAME_MAGIC, 0);
  header.writeUInt8(type, 4);
  header.writeUInt8(flags, 5);
  header.writeUInt32LE(sent.length, 8);
  header.writeUInt32LE(crc32c(sent, crc32c(header.subarray(0, 12))), 12);
  return [header, sent];
}

export function jsonFrame(type: FrameTypeValue, value: unknown): Buffer[] {
  return encodeFrame(type, Buffer.from(JSON.stringify(value)));
}

export function ackFrame(seqReceived: number, seqDurable: number): Buffer[] {
  const body = Buffer.alloc(16);
  body.writeBigUInt64LE(BigInt(seqReceived), 0);
  body.writeBigUInt64LE(BigInt(seqDurable), 8);
  return encodeFrame(FrameType.ACK, body);
}

export function decodeAck(body: Buffer): { seqReceived: number; seqDurable: number } {
  if (body.length !== 16) throw new HindsightError('PROTOCOL_ERROR', `an ACK frame holds ${body.length} bytes, not 16`);
  const seqReceived = Number(body.readBigUInt64LE(0));
  const seqDurable = Number(body.readBigUInt64LE(8));
  if (!Number.isSafeInteger(seqReceived) || !Number.isSafeInteger(seqDurable) || seqDurable > seqReceived) throw new HindsightError('PROTOCOL_ERROR', 'an ACK frame names impossible seqs');
  return { seqReceived, seqDurable };
}

/** RECORDS body: u32 count, then per record u32 length and the record's bytes. */
export function recordsBody(records: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  const count = Buffer.alloc(4);
  count.writeUInt32LE(records.length, 0);
  parts.push(count);
  for (const record of records) {
    const length = Buffer.alloc(4);
    length.writeUInt32LE(record.length, 0);
    parts.push(length, record);
  }
  return Buffer.concat(parts);
}

export function decodeRecords(body: Buffer): Buffer[] {
  if (body.length < 4) throw new HindsightError('PROTOCOL_ERROR', 'a RECORDS frame is truncated');
  const count = body.readUInt32LE(0);
  const records: Buffer[] = [];
  let at = 4;
  for (let i = 0; i < count; i += 1) {
    if (at + 4 > body.length) throw new HindsightError('PROTOCOL_ERROR', 'a RECORDS frame is truncated');
    const length = body.readUInt32LE(at);
    at += 4;
    if (length < 56 || at + length > body.length) throw new HindsightError('PROTOCOL_ERROR', 'a RECORDS frame holds a record of an impossible length');
    records.push(body.subarray(at, at + length));
    at += length;
  }
  if (at !== body.length) throw new HindsightError('PROTOCOL_ERROR', 'a RECORDS frame has bytes after its records');
  return records;
}

export function parseJson(frame: Frame): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(frame.body.toString('utf8'));
  } catch {
    throw new HindsightError('PROTOCOL_ERROR', `a frame of type ${frame.type} does not hold JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new HindsightError('PROTOCOL_ERROR', `a frame of type ${frame.type} does not hold a JSON object`);
  return value as Record<string, unknown>;
}

/** Incremental decoder: push bytes, take whole frames. Throws PROTOCOL_ERROR on any damage. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(bytes: Buffer): Frame[] {
    this.chunks.push(bytes);
    this.buffered += bytes.length;
    const frames: Frame[] = [];
    while (this.buffered >= FRAME_HEADER_BYTES) {
      const header = this.peek(FRAME_HEADER_BYTES);
      if (header.readUInt32LE(0) !== FRAME_MAGIC) throw new HindsightError('PROTOCOL_ERROR', 'not a Hindsight replication frame (bad magic)');
      const type = header.readUInt8(4);
      const flags = header.readUInt8(5);
      const length = header.readUInt32LE(8);
      if (!KNOWN.has(type)) throw new HindsightError('PROTOCOL_ERROR', `unknown frame type ${type}`);
      if ((flags & ~COMPRESSED) !== 0 || header.readUInt16LE(6) !== 0) throw new HindsightError('PROTOCOL_ERROR', 'a frame has unknown flags');
      if (length > FRAME_BODY_BYTES_MAX) throw new HindsightError('PROTOCOL_ERROR', `a frame announces ${length} bytes (at most ${FRAME_BODY_BYTES_MAX})`);
      if (this.buffered < FRAME_HEADER_BYTES + length) break;
      const whole = this.take(FRAME_HEADER_BYTES + length);
      const sent = whole.subarray(FRAME_HEADER_BYTES);
      if (crc32c(sent, crc32c(whole.subarray(0, 12))) !== whole.readUInt32LE(12)) throw new HindsightError('PROTOCOL_ERROR', 'a frame fails its checksum');
      const body = (flags & COMPRESSED) !== 0 ? inflate(sent) : sent;
      frames.push({ type: type as FrameTypeValue, body, wireBytes: whole.length });
    }
    return frames;
  }

  /** Bytes held for a frame not complete yet. */
  get pendingBytes(): number {
    return this.buffered;
  }

  private peek(count: number): Buffer {
    if (this.chunks[0].length < count) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0].subarray(0, count);
  }

  private take(count: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const taken = all.subarray(0, count);
    const rest = all.subarray(count);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return taken;
  }
}

/**
 * A zstd body: exactly one zstd frame, declaring its content size (at most
 * FRAME_BODY_BYTES_MAX), with nothing after it — then the decompressor writes into a buffer
 * of that size and fails rather than grow. (A second frame without a declared size would make
 * it stream without bound: a bomb.)
 */
function inflate(sent: Buffer): Buffer {
  const declared = zstdContentSize(sent);
  if (declared === null || declared > FRAME_BODY_BYTES_MAX) throw new HindsightError('PROTOCOL_ERROR', 'a compressed frame does not declare a content size within the limit');
  if (zstdFrameBytes(sent) !== sent.length) throw new HindsightError('PROTOCOL_ERROR', 'a compressed frame body is not exactly one zstd frame');
  decompressor ??= new Decompressor();
  let out: Buffer;
  try {
    out = decompressor.decompress(sent);
  } catch (err) {
    throw new HindsightError('PROTOCOL_ERROR', `a compressed frame does not decompress (${(err as Error).message})`);
  }
  if (out.length !== declared) throw new HindsightError('PROTOCOL_ERROR', 'a compressed frame does not decompress to its declared size');
  return out;
}

/** Where a zstd frame's header ends (RFC 8878 3.1.1.1), or null if malformed or with a dictionary. */
function zstdHeaderBytes(bytes: Buffer): number | null {
  if (bytes.length < 6 || bytes.readUInt32LE(0) !== 0xfd2fb528) return null;
  const descriptor = bytes[4];
  if ((descriptor & 0x0b) !== 0) return null; // reserved bit, or a dictionary id
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  const fcsBytes = fcsFlag === 0 ? singleSegment : [1, 2, 4, 8][fcsFlag];
  return 5 + (singleSegment ? 0 : 1) + fcsBytes;
}

/** The bytes one zstd frame takes from the start of `bytes` (walking its blocks), or -1. */
function zstdFrameBytes(bytes: Buffer): number {
  const header = zstdHeaderBytes(bytes);
  if (header === null) return -1;
  let at = header;
  for (;;) {
    if (at + 3 > bytes.length) return -1;
    const block = bytes.readUIntLE(at, 3);
    const last = block & 1;
    const type = (block >> 1) & 3;
    const size = block >>> 3;
    if (type === 3) return -1;
    at += 3 + (type === 1 ? 1 : size);
    if (at > bytes.length) return -1;
    if (last) break;
  }
  const checksum = (bytes[4] >> 2) & 1;
  return at + 4 * checksum;
}

/** The content size a zstd frame header declares (RFC 8878 3.1.1.1), or null if none. */
function zstdContentSize(bytes: Buffer): number | null {
  if (bytes.length < 6 || bytes.readUInt32LE(0) !== 0xfd2fb528) return null;
  const descriptor = bytes[4];
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  const dictionaryBytes = [0, 1, 2, 4][descriptor & 3];
  const fcsBytes = fcsFlag === 0 ? singleSegment : [1, 2, 4, 8][fcsFlag];
  if (fcsBytes === 0) return null;
  const at = 5 + (singleSegment ? 0 : 1) + dictionaryBytes;
  if (bytes.length < at + fcsBytes) return null;
  switch (fcsBytes) {
    case 1: return bytes[at];
    case 2: return bytes.readUInt16LE(at) + 256;
    case 4: return bytes.readUInt32LE(at);
    default: {
      const value = Number(bytes.readBigUInt64LE(at));
      return Number.isSafeInteger(value) ? value : null;
    }
  }
}
