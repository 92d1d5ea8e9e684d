/**
 * Which fixed-size chunks of a volume hold data. A clear bit means the chunk reads as zeroes
 * whatever its bytes in the data file say, so zeroing and trimming whole chunks are metadata
 * operations, and BLOCK_STATUS can report holes exactly.
 */
import { assert } from '../core/index.js';

export interface ChunkRun {
  firstChunk: number;
  chunkCount: number;
  allocated: boolean;
}

export class ChunkMap {
  readonly chunkCount: number;
  readonly bits: Uint8Array;
  private setCount = 0;

  constructor(chunkCount: number, bits?: Uint8Array) {
    this.chunkCount = chunkCount;
    this.bits = bits ?? new Uint8Array(Math.ceil(chunkCount / 8));
    assert(this.bits.length === Math.ceil(chunkCount / 8), 'bitmap length matches chunk count');
    if (bits) this.setCount = countBits(bits);
  }

  get allocatedChunks(): number {
    return this.setCount;
  }

  isSet(chunk: number): boolean {
    return (this.bits[chunk >>> 3] & (1 << (chunk & 7))) !== 0;
  }

  set(chunk: number): void {
    const mask = 1 << (chunk & 7);
    const index = chunk >>> 3;
    if ((this.bits[index] & mask) === 0) {
      this.bits[index] |= mask;
      this.setCount += 1;
    }
  }

  /** Returns whether any bit changed. */
  setRange(firstChunk: number, chunkCount: number): boolean {
    const before = this.setCount;
    for (let chunk = firstChunk; chunk < firstChunk + chunkCount; chunk += 1) this.set(chunk);
    return this.setCount !== before;
  }

  /** Returns whether any bit changed. */
  clearRange(firstChunk: number, chunkCount: number): boolean {
    const before = this.setCount;
    for (let chunk = firstChunk; chunk < firstChunk + chunkCount; chunk += 1) {
      const mask = 1 << (chunk & 7);
      const index = chunk >>> 3;
      if ((this.bits[index] & mask) !== 0) {
        this.bits[index] &= ~mask;
        this.setCount -= 1;
      }
    }
    return this.setCount !== before;
  }

  /** Length of the run of chunks with the same state as `firstChunk`, at most `limit`. */
  runLength(firstChunk: number, limit: number): number {
    const state = this.isSet(firstChunk);
    const whole = state ? 0xff : 0x00;
    const end = Math.min(this.chunkCount, firstChunk + limit);
    let chunk = firstChunk + 1;
    while (chunk < end) {
      if ((chunk & 7) === 0 && chunk + 8 <= end && this.bits[chunk >>> 3] === whole) {
        chunk += 8;
        continue;
      }
      if (this.isSet(chunk) !== state) break;
      chunk += 1;
    }
    return chunk - firstChunk;
  }

  snapshot(): Uint8Array {
    return this.bits.slice();
  }
}

function countBits(bits: Uint8Array): number {
  let count = 0;
  for (const byte of bits) {
    let value = byte;
    while (value !== 0) {
      value &= value - 1;
      count += 1;
    }
  }
  return count;
}
