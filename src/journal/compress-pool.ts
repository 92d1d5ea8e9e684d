/**
 * Compression off the event loop: compaction hands the payloads of each window it reads to a
 * small pool of worker threads (piscina; as many as the machine has cores, at most 4, none
 * while idle), so clients keep the event loop and several windows compress at once.
 */
import os from 'node:os';
import pLimit from 'p-limit';
import { Piscina } from 'piscina';
import type { CompressTask } from './compress-worker.js';

const THREADS = Math.max(1, Math.min(4, os.availableParallelism()));
let pool: Piscina | null = null;
/**
 * Tasks given to the pool at once, whatever the number of compactions running (one per
 * volume): those past it wait here, before their bytes are copied, so the queue (a copy of
 * up to a 4 MiB window each) stays bounded.
 */
const admitted = pLimit(THREADS * 2);

function workerFile(): string {
  // Built: compress-worker.js next to this file; from source (tests, tsx): the .ts.
  return new URL(import.meta.url.endsWith('.ts') ? './compress-worker.ts' : './compress-worker.js', import.meta.url).href;
}

/** The containers for `pieces` ([offset, length]) of `window`, in order (null: stored as it is). */
export async function compressPieces(window: Buffer, pieces: Array<[number, number]>): Promise<Array<Buffer | null>> {
  if (pieces.length === 0) return [];
  return admitted(async () => {
    pool ??= new Piscina({ filename: workerFile(), minThreads: 0, maxThreads: THREADS, idleTimeout: 10_000 });
    // Only the bytes the pieces span go to the worker (a copy: the window stays in use here).
    const start = Math.min(...pieces.map(([offset]) => offset));
    const end = Math.max(...pieces.map(([offset, length]) => offset + length));
    const task: CompressTask = { bytes: new Uint8Array(window.subarray(start, end)), pieces: pieces.map(([offset, length]) => [offset - start, length]) };
    const results = (await pool.run(task)) as Array<Uint8Array | null>;
    return results.map((result) => (result ? Buffer.from(result.buffer, result.byteOffset, result.byteLength) : null));
  });
}

/** Compression tasks with the pool, and those waiting to be given to it (tests, stats). */
export function compressionBacklog(): { inPool: number; waiting: number; inPoolMax: number } {
  return { inPool: admitted.activeCount, waiting: admitted.pendingCount, inPoolMax: THREADS * 2 };
}
