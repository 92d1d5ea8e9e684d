/**
 * `hindsight restore`: writes a point of a volume to a file or block device, sparse where the
 * target allows (a file's zero ranges are left as holes; a block device gets every byte), and
 * reports the image's SHA-256. A file is written under a temporary name of its own and put in
 * place once complete and synced, so a failed restore never leaves a partial image under the
 * name asked for. Existing targets are overwritten only with `force` (without it, the image
 * is linked into place, which fails if the target appeared meanwhile); one restore at a time
 * per target.
 */
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HindsightError, fromSystemError } from '../core/index.js';
import type { BlockDevice } from '../core/index.js';
import { nodeFileLayer } from '../journal/index.js';

const CHUNK_BYTES = 8 * 1024 * 1024;
const STATUS_WINDOW_BYTES = 1024 * 1024 * 1024;
const ZEROES = Buffer.alloc(CHUNK_BYTES);

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
export async function claimRestoreTarget(target: string, sizeBytes: number, force: boolean): Promise<{ kind: 'file' | 'block-device'; release: () => void }> {
  if (!path.isAbsolute(target)) throw new HindsightError('INVALID_ARGUMENT', `restore target must be an absolute path (the daemon writes it), got "${target}"`);
  const kind = await checkTarget(target, sizeBytes, force);
  const key = path.resolve(target);
  if (restoring.has(key)) throw new HindsightError('TARGET_EXISTS', `a restore to ${target} is already running`);
  restoring.add(key);
  return { kind, release: () => restoring.delete(key) };
}

export async function restoreImage(view: BlockDevice, target: string, options: { force: boolean; onProgress?: (progress: RestoreProgress) => void; cancelled?: () => boolean; claimed?: { kind: 'file' | 'block-device'; release: () => void } }): Promise<RestoreResult> {
  const claim = options.claimed ?? await claimRestoreTarget(target, view.sizeBytes, options.force);
  try {
    return await writeImage(view, target, claim.kind, options);
  } finally {
    claim.release();
  }
}

async function writeImage(view: BlockDevice, target: string, kind: 'file' | 'block-device', options: { force: boolean; onProgress?: (progress: RestoreProgress) => void; cancelled?: () => boolean }): Promise<RestoreResult> {
  const started = process.hrtime.bigint();
  const writePath = kind === 'file' ? `${target}.hindsight-partial-${randomUUID().slice(0, 8)}` : target;
  const hash = createHash('sha256');
  let dataBytes = 0;
  let zeroBytes = 0;
  let handle;
  try {
    handle = await fs.open(writePath, kind === 'file' ? 'wx' : 'r+');
    if (kind === 'file') await handle.truncate(view.sizeBytes);
    let buffer = Buffer.allocUnsafe(CHUNK_BYTES);
    let spare = Buffer.allocUnsafe(CHUNK_BYTES);
    let pendingWrite: Promise<unknown> = Promise.resolve();
    for (let window = 0; window < view.sizeBytes; window += STATUS_WINDOW_BYTES) {
      const windowEnd = Math.min(view.sizeBytes, window + STATUS_WINDOW_BYTES);
      let at = window;
      while (at < windowEnd) {
        const extents = await view.blockStatus(at, windowEnd - at, 100_000);
        if (extents.length === 0) throw new HindsightError('INTERNAL', `no allocation status at offset ${at}`);
        for (const extent of extents) {
          const end = Math.min(windowEnd, at + extent.lengthBytes);
          for (let offset = at; offset < end; offset += CHUNK_BYTES) {
            if (options.cancelled?.()) throw new HindsightError('SHUTTING_DOWN', 'restore cancelled');
            const length = Math.min(CHUNK_BYTES, end - offset);
            if (extent.zero) {
              hash.update(ZEROES.subarray(0, length));
              zeroBytes += length;
              if (kind === 'block-device') {
                await pendingWrite;
                pendingWrite = handle.write(ZEROES, 0, length, offset);
              }
            } else {
              // Read the next chunk while the previous one is being written.
              await view.read(offset, buffer.subarray(0, length));
              await pendingWrite;
              hash.update(buffer.subarray(0, length));
              pendingWrite = handle.write(buffer, 0, length, offset);
              [buffer, spare] = [spare, buffer];
              dataBytes += length;
            }
            options.onProgress?.({ bytesDone: offset + length, bytesTotal: view.sizeBytes });
          }
          at = end;
          if (at >= windowEnd) break;
        }
      }
    }
    await pendingWrite;
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
  }
  return {
    path: target, kind, sizeBytes: view.sizeBytes, dataBytes, zeroBytes, sha256: hash.digest('hex'),
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
