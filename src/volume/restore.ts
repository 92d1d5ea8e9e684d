/**
 * `hindsight restore`: writes a point of a volume to a file or block device, sparse where the
 * target allows (a file's zero ranges are left as holes; a block device gets every byte), and
 * reports the image's SHA-256. A file is written under a temporary name of its own and put in
 * place once complete and synced, so a failed restore never leaves a partial image under the
 * name asked for. Existing targets are overwritten only with `force` (without it, the image
 * is linked into place, which fails if the target appeared meanwhile); one restore at a time
 * per target.
 */
import { randomUUID } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { HindsightError, fromSystemError } from '../core/index.js';
import type { BlockDevice } from '../core/index.js';
import { nodeFileLayer } from '../journal/index.js';

const CHUNK_BYTES = 8 * 1024 * 1024;
const STATUS_WINDOW_BYTES = 1024 * 1024 * 1024;
const ZEROES = Buffer.alloc(CHUNK_BYTES);
/** Reads in flight ahead of the hashing, and writes in flight behind it. */
const PIPELINE_DEPTH = 4;

export interface RestoreProgress {
  bytesDone: number;
  bytesTotal: number;
}

export interface RestoreResult {
  path: string;
  kind: 'file' | 'block-device';
  sizeBytes: number;
  /** Bytes read from the journal and written. */
  dataBytes: number;
  /** Bytes of zeroes: holes in a file, written out on a block device. */
  zeroBytes: number;
  sha256: string;
  seconds: number;
}

/** Targets of the restores running in this process. */
const restoring = new Set<string>();

/**
 * Claims a target for one restore and checks it (absolute, a file or block device, absent
 * unless `force`). Call before starting the job, so a bad target is refused at once; the
 * claim ends when restoreImage finishes, or with the returned release.
 */
export async function claimRestoreTarget(target: string, sizeBytes: number, force: boolean, dataDir?: string): Promise<{ kind: 'file' | 'block-device'; release: () => void }> {
  if (!path.isAbsolute(target)) throw new HindsightError('INVALID_ARGUMENT', `restore target must be an absolute path (the daemon writes it), got "${target}"`);
  const kind = await checkTarget(target, sizeBytes, force);
  // One key per file whatever the path used to name it (symlinks, /dev/disk/by-id/...).
  const key = await realTarget(target);
  if (dataDir !== undefined) {
    const data = await fs.realpath(dataDir);
    if (key === data || key.startsWith(`${data}${path.sep}`)) {
      throw new HindsightError('INVALID_ARGUMENT', `refusing to restore into the daemon's data directory (${data}): it would overwrite Hindsight's own files`);
    }
  }
  if (restoring.has(key)) throw new HindsightError('TARGET_EXISTS', `a restore to ${target} is already running`);
  restoring.add(key);
  return { kind, release: () => restoring.delete(key) };
}

async function realTarget(target: string): Promise<string> {
  try {
    return await fs.realpath(target);
  } catch {
    return path.join(await fs.realpath(path.dirname(target)), path.basename(target));
  }
}

export async function restoreImage(view: BlockDevice, target: string, options: { force: boolean; onProgress?: (progress: RestoreProgress) => void; cancelled?: () => boolean; claimed?: { kind: 'file' | 'block-device'; release: () => void } }): Promise<RestoreResult> {
  const claim = options.claimed ?? await claimRestoreTarget(target, view.sizeBytes, options.force);
  try {
    return await writeImage(view, target, claim.kind, options);
  } finally {
    claim.release();
  }
}

/**
 * The hashing thread's code (plain JavaScript, evaluated: no file to find whether the daemon
 * runs compiled or from source). Pieces arrive in order as views on shared memory; each is
 * acknowledged once hashed, so its buffer can be reused.
 */
const SHA256_WORKER = `
const { createHash } = require('node:crypto');
const { parentPort } = require('node:worker_threads');
const zeroes = Buffer.alloc(${CHUNK_BYTES});
const hash = createHash('sha256');
parentPort.on('message', (message) => {
  if (message.data) hash.update(message.data);
  else if (message.zeroBytes) for (let left = message.zeroBytes; left > 0; left -= zeroes.length) hash.update(zeroes.subarray(0, Math.min(left, zeroes.length)));
  else if (message.digest) return parentPort.postMessage({ id: message.id, digest: hash.digest('hex') });
  parentPort.postMessage({ id: message.id });
});
`;

/**
 * SHA-256 of a restore's image on a thread of its own, so hashing (about 1.5 GB/s) overlaps
 * with reading, verifying and writing instead of stalling the event loop. `update` resolves
 * once the piece is hashed.
 */
class Sha256Thread {
  private readonly worker: Worker;
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (digest?: string) => void; reject: (err: Error) => void }>();
  private failure: Error | null = null;

  constructor() {
    this.worker = new Worker(SHA256_WORKER, { eval: true });
    this.worker.on('message', (message: { id: number; digest?: string }) => {
      const waiter = this.waiting.get(message.id);
      this.waiting.delete(message.id);
      waiter?.resolve(message.digest);
    });
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => this.fail(new Error(`the hashing thread exited (${code})`)));
  }

  /** `data` must be a view on shared memory, left untouched until this resolves. */
  update(data: Uint8Array): Promise<void> {
    return this.send({ data }).then(() => undefined);
  }

  updateZeroes(zeroBytes: number): Promise<void> {
    return this.send({ zeroBytes }).then(() => undefined);
  }

  async digest(): Promise<string> {
    return (await this.send({ digest: true })) as string;
  }

  async close(): Promise<void> {
    this.worker.removeAllListeners('exit');
    await this.worker.terminate();
  }

  private send(message: object): Promise<string | undefined> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, ...message });
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const waiter of this.waiting.values()) waiter.reject(err);
    this.waiting.clear();
  }
}

/** One piece of the image: data to read from the point, or zeroes. */
interface Piece {
  offset: number;
  length: number;
  zero: boolean;
}

/** The image as pieces of at most CHUNK_BYTES, in order, from the point's allocation status. */
async function* pieces(view: BlockDevice): AsyncGenerator<Piece> {
  for (let window = 0; window < view.sizeBytes; window += STATUS_WINDOW_BYTES) {
    const windowEnd = Math.min(view.sizeBytes, window + STATUS_WINDOW_BYTES);
    let at = window;
    while (at < windowEnd) {
      const extents = await view.blockStatus(at, windowEnd - at, 100_000);
      if (extents.length === 0) throw new HindsightError('INTERNAL', `no allocation status at offset ${at}`);
      for (const extent of extents) {
        const end = Math.min(windowEnd, at + extent.lengthBytes);
        for (let offset = at; offset < end; offset += CHUNK_BYTES) yield { offset, length: Math.min(CHUNK_BYTES, end - offset), zero: extent.zero };
        at = end;
        if (at >= windowEnd) break;
      }
    }
  }
}

async function writeImage(view: BlockDevice, target: string, kind: 'file' | 'block-device', options: { force: boolean; onProgress?: (progress: RestoreProgress) => void; cancelled?: () => boolean }): Promise<RestoreResult> {
  const started = process.hrtime.bigint();
  const writePath = kind === 'file' ? `${target}.hindsight-partial-${randomUUID().slice(0, 8)}` : target;
  const hash = new Sha256Thread();
  let sha256 = '';
  let dataBytes = 0;
  let zeroBytes = 0;
  let handle;
  try {
    // A block device is opened exclusively: the kernel refuses (EBUSY) one that is mounted
    // or otherwise claimed.
    handle = await fs.open(writePath, kind === 'file' ? 'wx' : fsConstants.O_RDWR | fsConstants.O_EXCL);
    if (kind === 'file') await handle.truncate(view.sizeBytes);
    const file = handle;
    // A pipeline: up to PIPELINE_DEPTH reads ahead (thread pool) while earlier pieces are
    // hashed, in order (here), and written (thread pool). A buffer is reused once its write
    // is done.
    const free: Buffer[] = Array.from({ length: PIPELINE_DEPTH * 2 }, () => Buffer.from(new SharedArrayBuffer(CHUNK_BYTES)));
    const reading: Array<{ piece: Piece; buffer: Buffer | null; read: Promise<void> }> = [];
    const writing = new Set<Promise<void>>();
    const source = pieces(view);
    let exhausted = false;
    const settleWrites = async () => {
      // Every write must finish before the buffers go or the file closes, failure or not.
      await Promise.allSettled([...writing]);
    };
    try {
      for (;;) {
        while (!exhausted && reading.length < PIPELINE_DEPTH && free.length > 0) {
          const next = await source.next();
          if (next.done) {
            exhausted = true;
            break;
          }
          const piece = next.value;
          const buffer = piece.zero ? null : free.pop()!;
          const read = buffer ? view.read(piece.offset, buffer.subarray(0, piece.length)) : Promise.resolve();
          // Failures surface when the piece's turn comes; until then they are not unhandled.
          read.catch(() => undefined);
          reading.push({ piece, buffer, read });
        }
        const head = reading.shift();
        if (!head) break;
        if (options.cancelled?.()) throw new HindsightError('SHUTTING_DOWN', 'restore cancelled');
        await head.read;
        const { piece, buffer } = head;
        let write: Promise<unknown> | null = null;
        if (buffer) {
          // Hashed (on its thread) and written at once; the buffer is free when both are done.
          const hashed = hash.update(buffer.subarray(0, piece.length));
          write = Promise.all([hashed, file.write(buffer, 0, piece.length, piece.offset)]);
          dataBytes += piece.length;
        } else {
          const hashed = hash.updateZeroes(piece.length);
          write = kind === 'block-device' ? Promise.all([hashed, file.write(ZEROES, 0, piece.length, piece.offset)]) : hashed;
          zeroBytes += piece.length;
        }
        if (write) {
          const tracked: Promise<void> = write.then(() => {
            writing.delete(tracked);
            if (buffer) free.push(buffer);
          });
          tracked.catch(() => undefined);
          writing.add(tracked);
          if (writing.size >= PIPELINE_DEPTH) await Promise.race(writing);
        }
        options.onProgress?.({ bytesDone: piece.offset + piece.length, bytesTotal: view.sizeBytes });
      }
      await Promise.all([...writing]);
      sha256 = await hash.digest();
    } finally {
      await Promise.allSettled(reading.map((entry) => entry.read));
      await settleWrites();
    }
    await handle.datasync();
    await handle.close();
    handle = undefined;
    if (kind === 'file') {
      if (options.force) {
        await fs.rename(writePath, target);
      } else {
        try {
          await fs.link(writePath, target);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new HindsightError('TARGET_EXISTS', `${target} appeared while restoring; pass --force to overwrite it`);
          throw err;
        }
        await fs.rm(writePath);
      }
      await nodeFileLayer.syncDirectory(path.dirname(target));
    }
  } catch (err) {
    await handle?.close().catch(() => undefined);
    if (kind === 'file') await fs.rm(writePath, { force: true });
    throw fromSystemError(err, `restoring to ${target}`);
  } finally {
    await hash.close();
  }
  return {
    path: target, kind, sizeBytes: view.sizeBytes, dataBytes, zeroBytes, sha256,
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
  };
}

async function checkTarget(target: string, sizeBytes: number, force: boolean): Promise<'file' | 'block-device'> {
  let stats;
  try {
    stats = await fs.stat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `checking ${target}`);
    try {
      await fs.access(path.dirname(target));
    } catch (accessErr) {
      throw new HindsightError('INVALID_ARGUMENT', `cannot restore to ${target}: its directory does not exist or is not accessible`, { cause: accessErr });
    }
    return 'file';
  }
  if (stats.isDirectory()) throw new HindsightError('INVALID_ARGUMENT', `restore target ${target} is a directory; name the image file`);
  if (!stats.isFile() && !stats.isBlockDevice()) throw new HindsightError('INVALID_ARGUMENT', `restore target ${target} is neither a regular file nor a block device`);
  if (!force) throw new HindsightError('TARGET_EXISTS', `${target} exists; pass --force to overwrite it`);
  if (stats.isBlockDevice()) {
    try {
      await (await fs.open(target, fsConstants.O_RDONLY | fsConstants.O_EXCL)).close();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EBUSY') throw new HindsightError('INVALID_ARGUMENT', `block device ${target} is in use (mounted, or held by another program); release it first`);
      throw fromSystemError(err, `opening ${target}`);
    }
    const deviceBytes = await blockDeviceSize(target);
    if (deviceBytes < sizeBytes) throw new HindsightError('INVALID_ARGUMENT', `block device ${target} holds ${deviceBytes} bytes, less than the volume's ${sizeBytes}`);
    return 'block-device';
  }
  return 'file';
}

/** A block device's size: seek to its end (stat reports 0 for devices). */
async function blockDeviceSize(device: string): Promise<number> {
  const handle = await fs.open(device, 'r');
  try {
    // Binary search for the last readable byte: no ioctl from JavaScript, and reads at or
    // past the end return 0 bytes.
    const probe = Buffer.alloc(1);
    let low = 0;
    let high = 2 ** 50;
    while (low < high) {
      const middle = Math.floor((low + high + 1) / 2);
      const { bytesRead } = await handle.read(probe, 0, 1, middle - 1);
      if (bytesRead === 1) low = middle;
      else high = middle - 1;
    }
    return low;
  } finally {
    await handle.close();
  }
}
