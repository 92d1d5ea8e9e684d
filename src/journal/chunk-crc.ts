/**
 * Per-chunk checksums of a WRITE record's payload (docs/FORMAT.md, "Chunk table"): one
 * CRC32C per 4 KiB of payload, stored between the record header and the payload. They let
 * every read verify exactly the chunks it touches — a 4 KiB read of a 1 MiB record checks
 * 4 KiB, not 1 MiB — so nothing corrupt is ever served, whenever it was damaged.
 */
import { crc32c } from '@node-rs/crc32';

export const PAYLOAD_CHUNK_BYTES = 4096;

export function chunkCount(payloadBytes: number): number {
  return Math.ceil(payloadBytes / PAYLOAD_CHUNK_BYTES);
}

export function chunkTableBytes(payloadBytes: number): number {
  return chunkCount(payloadBytes) * 4;
}

export function encodeChunkTable(payload: Buffer, crcSeed: number): Buffer {
  const count = chunkCount(payload.length);
  const table = Buffer.allocUnsafe(count * 4);
  for (let chunk = 0; chunk < count; chunk += 1) {
    const start = chunk * PAYLOAD_CHUNK_BYTES;
    table.writeUInt32LE(crc32c(payload.subarray(start, Math.min(payload.length, start + PAYLOAD_CHUNK_BYTES)), crcSeed), chunk * 4);
  }
  return table;
}

/**
 * Checks `data`, which holds whole chunks starting at chunk `firstChunk` of a payload of
 * `payloadBytes`, against `table` (the entries for those chunks). Returns the index of the
 * first bad chunk, or -1.
 */
export function firstBadChunk(data: Buffer, firstChunk: number, payloadBytes: number, table: Buffer, crcSeed: number): number {
  const count = table.length / 4;
  for (let i = 0; i < count; i += 1) {
    const chunk = firstChunk + i;
    const start = i * PAYLOAD_CHUNK_BYTES;
    const length = Math.min(PAYLOAD_CHUNK_BYTES, payloadBytes - chunk * PAYLOAD_CHUNK_BYTES);
    if (crc32c(data.subarray(start, start + length), crcSeed) !== table.readUInt32LE(i * 4)) return chunk;
  }
  return -1;
}
