/**
 * Every queue, buffer, request and frame has a named limit here, and the relations between
 * them are checked once at start-up (checkLimits). Change a number here, nowhere else.
 */
import { assert } from './assert.js';

export const LIMITS = {
  /** Largest READ/WRITE/CACHE payload one NBD request may carry (advertised as max block). */
  nbdRequestBytesMax: 32 * 1024 * 1024,
  /** Preferred I/O size advertised to NBD clients. */
  nbdPreferredBlockBytes: 4096,
  /** Requests being executed at once on one NBD connection; reading pauses beyond this. */
  nbdInflightPerConnectionMax: 64,
  /** Requests running across every connection: past it, sessions stop taking new ones. */
  nbdInflightTotalMax: 1024,
  /** Bytes of replies queued on one socket before we stop reading that client's requests. */
  nbdReplyQueueBytesMax: 64 * 1024 * 1024,
  /** Longest string (export name, context query) the NBD spec allows. */
  nbdStringBytesMax: 4096,
  /** Largest option payload accepted during the handshake. */
  nbdOptionBytesMax: 64 * 1024,
  /** Options a client may send before it must pick an export. */
  nbdOptionsPerHandshakeMax: 256,
  /** Meta-context queries in one LIST/SET_META_CONTEXT. */
  nbdMetaContextQueriesMax: 64,
  /** A client must finish the handshake within this time. */
  nbdHandshakeTimeoutMs: 10_000,
  /** After we end a connection, the peer has this long to close its side before it is cut. */
  nbdCloseLingerMs: 5_000,
  /** A client that reads none of its replies for this long is cut off (it may be gone). */
  nbdWriteStallMs: 60_000,
  /** Concurrent NBD connections the server accepts. */
  nbdConnectionsMax: 512,
  /** Block-status descriptors returned for one request. */
  nbdBlockStatusExtentsMax: 128 * 1024,
  /** A journal segment is closed and a new one started past this size (< 4 GiB: u32 positions). */
  journalSegmentBytesMax: 1024 * 1024 * 1024,
  /** The index is checkpointed after this much new journal, bounding replay at start. */
  indexCheckpointEveryBytes: 256 * 1024 * 1024,
  /** Largest volume that can be created (2^50 = 1 PiB keeps every offset exact in a double). */
  volumeSizeBytesMax: 2 ** 50,
  /** Longest volume name. */
  volumeNameLengthMax: 64,
  /** Long jobs (restores) running at once; more are refused (LIMIT_REACHED). */
  jobsRunningMax: 4,
  /** Mounts (read-only points and writable clones) the daemon serves at once. */
  mountsMax: 256,
  /** Idle READ reply / WRITE payload buffers kept for reuse (nbd/buffer-pool.ts). */
  nbdBufferPoolBytesMax: 128 * 1024 * 1024,
  /** Decompressed journal frames cached, for every volume together. */
  frameCacheBytesMax: 64 * 1024 * 1024,
  /** Regions of old points cached (mounts, restores), for every mount together. */
  regionCacheBytesMax: 128 * 1024 * 1024,
  /** Largest JSON body the HTTP API accepts. */
  apiBodyBytesMax: 1024 * 1024,
} as const;

export function checkLimits(): void {
  assert(LIMITS.nbdRequestBytesMax % LIMITS.nbdPreferredBlockBytes === 0, 'max request is a multiple of preferred block');
  assert(LIMITS.nbdOptionBytesMax >= LIMITS.nbdStringBytesMax * 2 + 64, 'an option fits its strings');
  assert(LIMITS.nbdReplyQueueBytesMax >= LIMITS.nbdRequestBytesMax * 2, 'reply queue holds two max replies');
  assert(LIMITS.volumeSizeBytesMax <= Number.MAX_SAFE_INTEGER, 'volume offsets fit a double exactly');
  assert(LIMITS.nbdRequestBytesMax < 2 ** 32, 'request length fits u32');
  assert(LIMITS.journalSegmentBytesMax < 2 ** 32 && LIMITS.journalSegmentBytesMax > LIMITS.nbdRequestBytesMax * 2, 'a segment holds the largest record; positions fit u32');
}
