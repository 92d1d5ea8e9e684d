/**
 * Journal records (docs/FORMAT.md, "Journal records"). Self-describing and checksummed:
 * a 56-byte little-endian header, the chunk table (one CRC32C per 4 KiB of payload, WRITE
 * only), the payload, then zero padding to a multiple of 8. The header's CRC32C covers the
 * header (CRC field zero) and the chunk table; the table covers the payload, chunk by chunk,
 * so a read can verify just the chunks it touches.
 */
import { crc32c } from '@node-rs/crc32';
import { assert } from '../core/index.js';
import { chunkTableBytes } from './chunk-crc.js';

/**
 * Added to an index extent's payload length when the record's payload is a compressed
 * container (container.ts): the length is then the container's (for verifying its chunks),
 * the extent's delta stays a position in the logical bytes. Payloads are at most 32 MiB, so
 * the bit is free.
 */
export const PAYLOAD_COMPRESSED = 0x80000000;

export const RECORD_MAGIC = 0x4a524853; // "SHRJ" little-endian on disk
export const RECORD_HEADER_BYTES = 56;
export const RECORD_ALIGN_BYTES = 8;
const CRC_AT = 48;

export const RecordType = {
  WRITE: 1,
  ZERO: 2,
  TRIM: 3,
  FLUSH: 4,
  BOOKMARK: 5,
  /** Rollback: the volume's content becomes what it was at seq `offsetBytes` (length 0). */
  REVERT: 6,
  /** A client write of the very bytes already there: recorded (a seq, a time), nothing stored. */
  UNCHANGED: 7,
  /**
   * A WRITE whose payload retention reclaimed: its data was overwritten before the next
   * point the policy keeps, so no kept point shows it. Header only (seq, time, range).
   */
  THINNED: 8,
  /**
   * Compacted segments only (pack.ts): records from seq on packed together, each with a short
   * entry instead of a header of its own (or a run of them sharing one: flag RUN). `offset`
   * holds the bytes after this header (entry table and bodies), `length` the count of
   * entries, `payload bytes` the count of records (0: one per entry).
   */
  PACK: 9,
} as const;
export type RecordTypeValue = (typeof RecordType)[keyof typeof RecordType];

export const RecordFlag = {
  FUA: 1 << 0,
  /** ZERO records: the client asked for allocated zeroes (NBD NO_HOLE). */
  ALLOCATED: 1 << 1,
  /** ZERO records: a client WRITE of all-zero bytes, stored as zeroes (no payload). */
  CLIENT_WRITE: 1 << 2,
  /** WRITE records: the payload is a compressed container (container.ts), written by compaction. */
  COMPRESSED: 1 << 3,
  /**
   * Never on disk: in memory, a record read from a PACK (pack.ts) — its header is an entry of
   * the pack, not at `payload position - payloadOffset`, and its body (chunk table, payload)
   * follows the previous record's without padding.
   */
  PACKED: 1 << 7,
  /**
   * A THINNED record of a run (docs/FORMAT.md, "Packed records"): one of consecutive records of folded
   * history that changed no content, packed as one entry. Its own time and range are gone: it
   * has the run's first time (the first) or last time (the others), offset and length 0.
   */
  RUN: 1 << 6,
} as const;

/** Records that stand for a client WRITE (whatever was stored for it). */
export function isClientWrite(type: number, flags: number): boolean {
  return type === RecordType.WRITE || type === RecordType.UNCHANGED || type === RecordType.THINNED || (type === RecordType.ZERO && (flags & RecordFlag.CLIENT_WRITE) !== 0);
}

/** A WRITE whose payload is a compressed container (container.ts). */
export function isCompressedWrite(type: number, flags: number): boolean {
  return type === RecordType.WRITE && (flags & RecordFlag.COMPRESSED) !== 0;
}

export interface RecordHeader {
  type: RecordTypeValue;
  flags: number;
  seq: number;
  timeUs: number;
  offsetBytes: number;
  lengthBytes: number;
  payloadBytes: number;
  /** Highest seq known durable (synced) when this record was written. */
  seqDurable: number;
  /**
   * WRITE: where the payload starts within [offset, offset+length). Only the changed span of
   * a client write is stored; the bytes around it were already there (0 for a whole write).
   */
  payloadSkip?: number;
}

const KNOWN_TYPES = new Set<number>(Object.values(RecordType));

/** Total bytes a record occupies in a segment, padding included. */
export function recordSpan(payloadBytes: number): number {
  return alignUp(payloadOffset(payloadBytes) + payloadBytes);
}

/** Bytes the record whose header this is occupies (a PACK: all the records it holds). */
export function spanOf(header: RecordHeader): number {
  return header.type === RecordType.PACK ? alignUp(RECORD_HEADER_BYTES + header.offsetBytes) : recordSpan(header.payloadBytes);
}

/** The body of a record: its chunk table and payload. */
export function bodyBytes(payloadBytes: number): number {
  return chunkTableBytes(payloadBytes) + payloadBytes;
}

/** Journal bytes a record takes, as the history knows it (flags: PACKED or not), padding included. */
export function storedSpan(payloadBytes: number, flags: number): number {
  return (flags & RecordFlag.PACKED) !== 0 ? PACK_ENTRY_BYTES + bodyBytes(payloadBytes) : recordSpan(payloadBytes);
}

/** Journal bytes a WRITE record would free if thinned (what stays: its header or entry). */
export function thinnableBytes(payloadBytes: number, flags: number): number {
  return (flags & RecordFlag.PACKED) !== 0 ? bodyBytes(payloadBytes) : recordSpan(payloadBytes) - RECORD_HEADER_BYTES;
}

/** The most records a PACK holds, and the most bytes after its header (pack.ts). */
export const PACK_RECORDS_MAX = 4096;
export const PACK_BYTES_MAX = 4 * 1024 * 1024;

/** Where the payload starts within its record: after the header and the chunk table. */
export function payloadOffset(payloadBytes: number): number {
  return RECORD_HEADER_BYTES + chunkTableBytes(payloadBytes);
}

export function alignUp(bytes: number): number {
  return Math.ceil(bytes / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
}

/** Writes the header (CRC included) into `out` at 0. */
/** `table` is the payload's chunk table (encodeChunkTable), null without payload. */
export function encodeRecordHeader(out: Buffer, header: RecordHeader, table: Buffer | null, crcSeed: number): void {
  assert(out.length >= RECORD_HEADER_BYTES, 'header buffer is large enough');
  assert(KNOWN_TYPES.has(header.type), 'record type is known');
  // (A PACK's CRC covers its entry table where a WRITE's covers its chunk table.)
  const tableBytes = header.type === RecordType.PACK ? header.lengthBytes * PACK_ENTRY_BYTES : chunkTableBytes(header.payloadBytes);
  assert((table?.length ?? 0) === tableBytes, 'chunk table matches the payload');
  out.writeUInt32LE(RECORD_MAGIC, 0);
  out.writeUInt8(header.type, 4);
  out.writeUInt8(header.flags, 5);
  out.writeUInt16LE(0, 6);
  writeU64(out, 8, header.seq);
  writeU64(out, 16, header.timeUs);
  writeU64(out, 24, header.offsetBytes);
  out.writeUInt32LE(header.lengthBytes, 32);
  out.writeUInt32LE(header.payloadBytes, 36);
  writeU64(out, 40, header.seqDurable);
  out.writeUInt32LE(0, CRC_AT);
  out.writeUInt32LE(header.payloadSkip ?? 0, 52);
  out.writeUInt32LE(recordCrc(out.subarray(0, RECORD_HEADER_BYTES), table, crcSeed), CRC_AT);
}

/**
 * The CRC is seeded with the volume's identity (crcSeedFor), so a record copied from another
 * journal — say, a Hindsight journal stored inside a guest disk — never validates here.
 */
export function recordCrc(header: Buffer, table: Buffer | null, crcSeed: number): number {
  const zeroed = Buffer.from(header.subarray(0, RECORD_HEADER_BYTES));
  zeroed.writeUInt32LE(0, CRC_AT);
  const headerCrc = crc32c(zeroed, crcSeed);
  return table && table.length > 0 ? crc32c(table, headerCrc) : headerCrc;
}

export type HeaderCheck = { ok: true; header: RecordHeader } | { ok: false; reason: string };

/** Structural check of a header (magic, type, sizes); the CRC needs the payload too. */
export function decodeRecordHeader(bytes: Buffer): HeaderCheck {
  if (bytes.length < RECORD_HEADER_BYTES) return { ok: false, reason: 'truncated header' };
  if (bytes.readUInt32LE(0) !== RECORD_MAGIC) return { ok: false, reason: 'bad record magic' };
  const type = bytes.readUInt8(4);
  if (!KNOWN_TYPES.has(type)) return { ok: false, reason: `unknown record type ${type}` };
  const header: RecordHeader = {
    type: type as RecordTypeValue,
    flags: bytes.readUInt8(5),
    seq: readU64(bytes, 8),
    timeUs: readU64(bytes, 16),
    offsetBytes: readU64(bytes, 24),
    lengthBytes: bytes.readUInt32LE(32),
    payloadBytes: bytes.readUInt32LE(36),
    seqDurable: readU64(bytes, 40),
    payloadSkip: bytes.readUInt32LE(52),
  };
  if (type === RecordType.PACK) {
    const count = header.lengthBytes;
    const sound = header.flags === 0 && (header.payloadBytes === 0 || header.payloadBytes >= count) && header.payloadSkip === 0 && count >= 1 && count <= PACK_RECORDS_MAX &&
      header.offsetBytes >= count * PACK_ENTRY_BYTES && header.offsetBytes <= PACK_BYTES_MAX;
    return sound ? { ok: true, header } : { ok: false, reason: 'pack record with unsound sizes' };
  }
  const why = unfit(header);
  return why === null ? { ok: true, header } : { ok: false, reason: why };
}

/** How many seqs the record whose header this is stands for (a PACK: all it holds). */
export function recordCount(header: RecordHeader): number {
  return header.type === RecordType.PACK ? header.payloadBytes || header.lengthBytes : 1;
}

/** Bytes of one entry in a PACK's table (pack.ts). */
export const PACK_ENTRY_BYTES = 28;

/** Why a (non-PACK) record's sizes do not fit its type, or null when they do. */
export function unfit(header: RecordHeader): string | null {
  const skip = header.payloadSkip ?? 0;
  const fits = header.type === RecordType.WRITE
    ? header.payloadBytes > 0 && skip + header.payloadBytes <= header.lengthBytes
    : header.payloadBytes === 0 && skip === 0;
  if (!fits) return 'payload length does not fit the record type';
  if ((header.flags & RecordFlag.RUN) !== 0 && (header.type !== RecordType.THINNED || header.offsetBytes !== 0 || header.lengthBytes !== 0)) {
    return 'a record of a run is thinned and has no range';
  }
  if (header.type === RecordType.REVERT && (header.lengthBytes !== 0 || header.offsetBytes >= header.seq)) {
    return 'revert record does not go back to an earlier seq';
  }
  return null;
}

export function crcSeedFor(volumeId: Buffer): number {
  return crc32c(volumeId);
}

export function storedCrc(header: Buffer): number {
  return header.readUInt32LE(CRC_AT);
}

/** u64 fields hold values below 2^53 (asserted on write, checked on read). */
function writeU64(out: Buffer, at: number, value: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, 'u64 field is a safe integer');
  out.writeUInt32LE(value % 0x100000000, at);
  out.writeUInt32LE(Math.floor(value / 0x100000000), at + 4);
}

function readU64(bytes: Buffer, at: number): number {
  return bytes.readUInt32LE(at + 4) * 0x100000000 + bytes.readUInt32LE(at);
}
