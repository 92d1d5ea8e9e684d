/**
 * The persisted chunk map of a file-backed volume (docs/FORMAT.md, "alloc.map").
 * Written whole to a temporary file, fsynced, renamed over the old one and the directory
 * fsynced, so a crash leaves either the old map or the new one, never a mix. A CRC32 over
 * header and bitmap catches corruption on read.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { HindsightError, assert, fromSystemError } from '../core/index.js';

const MAGIC = Buffer.from('HSCHMAP1', 'latin1');
const VERSION = 1;
const HEADER_BYTES = 64;

export interface MapState {
  chunkBytes: number;
  sizeBytes: number;
  clientBytesWritten: number;
  writeCount: number;
  bits: Uint8Array;
}

export function encodeMap(state: MapState): Buffer {
  const out = Buffer.alloc(HEADER_BYTES + state.bits.length);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(VERSION, 8);
  out.writeUInt32LE(state.chunkBytes, 12);
  out.writeBigUInt64LE(BigInt(state.sizeBytes), 16);
  out.writeBigUInt64LE(BigInt(state.clientBytesWritten), 24);
  out.writeBigUInt64LE(BigInt(state.writeCount), 32);
  out.writeUInt32LE(state.bits.length, 40);
  Buffer.from(state.bits.buffer, state.bits.byteOffset, state.bits.length).copy(out, HEADER_BYTES);
  out.writeUInt32LE(zlib.crc32(out), 44);
  return out;
}

export function decodeMap(bytes: Buffer, where: string): MapState {
  const corrupt = (why: string) => new HindsightError('VOLUME_CORRUPT', `${where}: ${why}`);
  if (bytes.length < HEADER_BYTES || !bytes.subarray(0, 8).equals(MAGIC)) throw corrupt('not a chunk map (bad magic)');
  const version = bytes.readUInt32LE(8);
  if (version !== VERSION) throw corrupt(`unsupported chunk map version ${version}`);
  const bitmapBytes = bytes.readUInt32LE(40);
  if (bytes.length !== HEADER_BYTES + bitmapBytes) throw corrupt('length does not match header');
  const stored = bytes.readUInt32LE(44);
  const copy = Buffer.from(bytes);
  copy.writeUInt32LE(0, 44);
  if (zlib.crc32(copy) !== stored) throw corrupt('checksum mismatch');
  return {
    chunkBytes: bytes.readUInt32LE(12),
    sizeBytes: Number(bytes.readBigUInt64LE(16)),
    clientBytesWritten: Number(bytes.readBigUInt64LE(24)),
    writeCount: Number(bytes.readBigUInt64LE(32)),
    bits: new Uint8Array(bytes.subarray(HEADER_BYTES)),
  };
}

export async function readMapFile(file: string): Promise<MapState | null> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw fromSystemError(err, `reading ${file}`);
  }
  const state = decodeMap(bytes, file);
  assert(encodeMap(state).equals(bytes), 'chunk map re-encodes to the bytes read');
  return state;
}

export async function writeMapFile(file: string, state: MapState): Promise<void> {
  const temporary = `${file}.tmp`;
  try {
    const handle = await fs.open(temporary, 'w');
    try {
      await handle.writeFile(encodeMap(state));
      await handle.datasync();
    } finally {
      await handle.close();
    }
    await fs.rename(temporary, file);
    await syncDirectory(path.dirname(file));
  } catch (err) {
    throw fromSystemError(err, `writing ${file}`);
  }
}

export async function syncDirectory(directory: string): Promise<void> {
  const handle = await fs.open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
