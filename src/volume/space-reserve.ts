/**
 * Room for compaction on a full disk (docs/OPERATIONS.md, "Disk full"): compaction writes a
 * segment's new copy before the old one goes, so on a full filesystem retention could not
 * free the space its expired points hold — the volume would stay full until someone made
 * room by hand. The daemon keeps `DATA/reserve`, a file of real (written) blocks as large as
 * the largest copy compaction may need (a segment), never more than 5% of the filesystem,
 * and never taking its last 5% of free space. When a compaction that frees space fails for
 * lack of it, the reserve is let go and the compaction tried again; the reserve is made
 * again later, once there is room.
 */
import fs from 'node:fs';
import { fromSystemError } from '../core/index.js';

/** The reserve is never more than this share of the filesystem... */
const SHARE_OF_FILESYSTEM_MAX = 0.05;
/** ...and never takes the free space below this share of it. */
const FREE_SHARE_KEPT = 0.05;
const CHUNK_BYTES = 1024 * 1024;
const ZEROES = Buffer.alloc(CHUNK_BYTES);

export class SpaceReserve {
  private growing: Promise<void> | null = null;

  constructor(readonly file: string) {}

  /** Bytes the reserve holds now. */
  get bytes(): number {
    try {
      return fs.statSync(this.file).size;
    } catch {
      return 0;
    }
  }

  /**
   * Grows the reserve towards `wantBytes` (as far as the limits above let it): written
   * blocks, made durable. A full filesystem only means a smaller reserve, for now.
   */
  ensure(wantBytes: number): Promise<void> {
    this.growing ??= this.grow(wantBytes).finally(() => {
      this.growing = null;
    });
    return this.growing;
  }

  /** Lets the reserve go (its space is free at once); the bytes it held. */
  release(): number {
    const bytes = this.bytes;
    if (bytes === 0) return 0;
    try {
      fs.rmSync(this.file, { force: true });
    } catch (err) {
      throw fromSystemError(err, `removing ${this.file}`);
    }
    return bytes;
  }

  private async grow(wantBytes: number): Promise<void> {
    const directory = this.file.slice(0, this.file.lastIndexOf('/')) || '.';
    const stats = await fs.promises.statfs(directory);
    const total = stats.blocks * stats.bsize;
    const free = stats.bavail * stats.bsize;
    const have = this.bytes;
    const target = Math.floor(Math.min(wantBytes, total * SHARE_OF_FILESYSTEM_MAX) / CHUNK_BYTES) * CHUNK_BYTES;
    const room = Math.floor(Math.max(0, free - total * FREE_SHARE_KEPT) / CHUNK_BYTES) * CHUNK_BYTES;
    const end = Math.min(target, have + room);
    if (end <= have) return;
    const handle = await fs.promises.open(this.file, 'a+');
    try {
      for (let at = have; at < end; at += CHUNK_BYTES) await handle.write(ZEROES, 0, Math.min(CHUNK_BYTES, end - at), at);
      await handle.datasync();
    } catch {
      // Full after all (someone else wrote meanwhile): what was written stays reserved.
    } finally {
      await handle.close();
    }
  }
}
