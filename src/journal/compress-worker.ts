/**
 * Compaction's compression, in a worker thread (compress-pool.ts): the containers
 * (container.ts) for pieces of one window of a segment, or null where compressing does not
 * save enough.
 */
import { encodeContainer } from './container.js';

export interface CompressTask {
  bytes: Uint8Array;
  /** [offset, length] of each payload in `bytes`. */
  pieces: Array<[number, number]>;
}

export default function compress(task: CompressTask): Array<Uint8Array | null> {
  const source = Buffer.from(task.bytes.buffer, task.bytes.byteOffset, task.bytes.byteLength);
  return task.pieces.map(([offset, length]) => encodeContainer(source.subarray(offset, offset + length)));
}
