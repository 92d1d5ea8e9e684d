/**
 * Server-to-client frames. Pure functions: values in, bytes out.
 */
import {
  ChunkType, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT, Info, NBDMAGIC, OPTION_REPLY_MAGIC,
  SIMPLE_REPLY_HEADER_BYTES, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_HEADER_BYTES, STRUCTURED_REPLY_MAGIC,
} from './constants.js';

export function encodeGreeting(): Buffer {
  const out = Buffer.allocUnsafe(18);
  out.writeBigUInt64BE(NBDMAGIC, 0);
  out.writeBigUInt64BE(IHAVEOPT, 8);
  out.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return out;
}

export function encodeOptionReply(option: number, replyType: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(20 + data.length);
  out.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  out.writeUInt32BE(option, 8);
  out.writeUInt32BE(replyType >>> 0, 12);
  out.writeUInt32BE(data.length, 16);
  data.copy(out, 20);
  return out;
}

/** Reply to NBD_OPT_EXPORT_NAME: size, flags, and 124 zero bytes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const out = Buffer.alloc(noZeroes ? 10 : 134);
  out.writeBigUInt64BE(BigInt(sizeBytes), 0);
  out.writeUInt16BE(transmissionFlags, 8);
  return out;
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const out = Buffer.allocUnsafe(12);
  out.writeUInt16BE(Info.EXPORT, 0);
  out.writeBigUInt64BE(BigInt(sizeBytes), 2);
  out.writeUInt16BE(transmissionFlags, 10);
  return out;
}

export function encodeInfoString(infoType: number, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const out = Buffer.allocUnsafe(2 + bytes.length);
  out.writeUInt16BE(infoType, 0);
  bytes.copy(out, 2);
  return out;
}

export interface BlockSizes {
  minimumBytes: number;
  preferredBytes: number;
  maximumBytes: number;
}

export function encodeInfoBlockSize(sizes: BlockSizes): Buffer {
  const out = Buffer.allocUnsafe(14);
  out.writeUInt16BE(Info.BLOCK_SIZE, 0);
  out.writeUInt32BE(sizes.minimumBytes, 2);
  out.writeUInt32BE(sizes.preferredBytes, 6);
  out.writeUInt32BE(sizes.maximumBytes, 10);
  return out;
}

/** NBD_REP_SERVER payload for NBD_OPT_LIST: name length, name, description. */
export function encodeServerEntry(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descriptionBytes = Buffer.from(description, 'utf8');
  const out = Buffer.allocUnsafe(4 + nameBytes.length + descriptionBytes.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  descriptionBytes.copy(out, 4 + nameBytes.length);
  return out;
}

export function encodeMetaContext(contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const out = Buffer.allocUnsafe(4 + nameBytes.length);
  out.writeUInt32BE(contextId, 0);
  nameBytes.copy(out, 4);
  return out;
}

/** Option error replies carry a human-readable message as their data. */
export function encodeOptionError(option: number, replyType: number, message: string): Buffer {
  return encodeOptionReply(option, replyType, Buffer.from(message, 'utf8'));
}

export function writeSimpleReplyHeader(out: Buffer, at: number, cookie: bigint, error: number): void {
  out.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  out.writeUInt32BE(error, at + 4);
  out.writeBigUInt64BE(cookie, at + 8);
}

export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const out = Buffer.allocUnsafe(SIMPLE_REPLY_HEADER_BYTES);
  writeSimpleReplyHeader(out, 0, cookie, error);
  return out;
}

export interface ChunkHeader {
  cookie: bigint;
  flags: number;
  type: number;
  lengthBytes: number;
}

export function writeChunkHeader(out: Buffer, at: number, header: ChunkHeader): void {
  out.writeUInt32BE(STRUCTURED_REPLY_MAGIC, at);
  out.writeUInt16BE(header.flags, at + 4);
  out.writeUInt16BE(header.type, at + 6);
  out.writeBigUInt64BE(header.cookie, at + 8);
  out.writeUInt32BE(header.lengthBytes, at + 16);
}

export function encodeNoneChunk(cookie: bigint, flags: number): Buffer {
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES);
  writeChunkHeader(out, 0, { cookie, flags, type: ChunkType.NONE, lengthBytes: 0 });
  return out;
}

export function encodeErrorChunk(cookie: bigint, flags: number, error: number, message: string): Buffer {
  const text = Buffer.from(message, 'utf8');
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 6 + text.length);
  writeChunkHeader(out, 0, { cookie, flags, type: ChunkType.ERROR, lengthBytes: 6 + text.length });
  out.writeUInt32BE(error, 20);
  out.writeUInt16BE(text.length, 24);
  text.copy(out, 26);
  return out;
}

export function encodeHoleChunk(cookie: bigint, flags: number, offsetBytes: number, lengthBytes: number): Buffer {
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 12);
  writeChunkHeader(out, 0, { cookie, flags, type: ChunkType.OFFSET_HOLE, lengthBytes: 12 });
  out.writeBigUInt64BE(BigInt(offsetBytes), 20);
  out.writeUInt32BE(lengthBytes, 28);
  return out;
}

/** Header of an OFFSET_DATA chunk whose data follows in the same buffer (see readReplyLayout). */
export function writeDataChunkHeader(out: Buffer, at: number, cookie: bigint, flags: number, offsetBytes: number, dataBytes: number): void {
  writeChunkHeader(out, at, { cookie, flags, type: ChunkType.OFFSET_DATA, lengthBytes: 8 + dataBytes });
  out.writeBigUInt64BE(BigInt(offsetBytes), at + 20);
}

export const DATA_CHUNK_PREFIX_BYTES = STRUCTURED_REPLY_HEADER_BYTES + 8;

export interface StatusDescriptor {
  lengthBytes: number;
  flags: number;
}

export function encodeBlockStatusChunk(cookie: bigint, flags: number, contextId: number, descriptors: StatusDescriptor[]): Buffer {
  const payloadBytes = 4 + descriptors.length * 8;
  const out = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
  writeChunkHeader(out, 0, { cookie, flags, type: ChunkType.BLOCK_STATUS, lengthBytes: payloadBytes });
  out.writeUInt32BE(contextId, 20);
  let at = 24;
  for (const descriptor of descriptors) {
    out.writeUInt32BE(descriptor.lengthBytes, at);
    out.writeUInt32BE(descriptor.flags, at + 4);
    at += 8;
  }
  return out;
}
