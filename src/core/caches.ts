/**
 * The daemon's memory caches, each with one byte budget for every volume and mount
 * together (LIMITS), so that memory does not grow with the number of volumes: with a budget
 * per volume, 8 busy volumes held 8 × 16 MiB of decompressed frames (the soak, BENCHMARKS.md)
 * and 256 mounts could have held 4 GiB of regions.
 *
 * Keys start with their owner's prefix (`ownerPrefix()`), so an owner that closed, or whose
 * journal positions a compaction moved, drops exactly its own entries (`dropOwner`); a view
 * of an old point puts the history's generation in its keys instead (regions are many).
 */
import { LRUCache } from 'lru-cache';
import { LIMITS } from './limits.js';

export type ByteCache<V extends object> = LRUCache<string, V>;

function byteCache<V extends object>(maxSize: number, sizeOf: (value: V) => number): ByteCache<V> {
  // Every entry counts at least 64 bytes (the key and the entry itself).
  return new LRUCache<string, V>({ maxSize, sizeCalculation: (value) => Math.max(64, sizeOf(value)) });
}

/** Decompressed 64 KiB frames of compressed journal payloads (journal.ts). */
export const frameCache: ByteCache<Buffer> = byteCache(LIMITS.frameCacheBytesMax, (frame) => frame.length);

/** Regions of old points materialised from history, for mounts and restores (history.ts). */
export const regionCache: ByteCache<{ region: { entries: Uint32Array } | undefined }> = byteCache(LIMITS.regionCacheBytesMax, (held) => 64 + (held.region?.entries.byteLength ?? 0));

let owners = 0;

/** A key prefix unique to one owner for the daemon's life. */
export function ownerPrefix(kind: string): string {
  owners += 1;
  return `${kind}${owners}:`;
}

/** Removes every entry whose key starts with `prefix`. */
export function dropOwner<V extends object>(cache: ByteCache<V>, prefix: string): void {
  for (const key of [...cache.keys()]) if (key.startsWith(prefix)) cache.delete(key);
}

/** Bytes each cache holds now (status, soak). */
export function cacheBytes(): { frames: number; regions: number } {
  return { frames: frameCache.calculatedSize, regions: regionCache.calculatedSize };
}
