/**
 * Room for compaction on a full disk (docs/OPERATIONS.md, "Disk full"): compaction writes a
 * segment's new copy before the old one goes, so on a full filesystem retention could not
 * free the space its expired points hold — the volume would stay full until someone made
 * room by hand. The daemon keeps `DATA/reserve`, a file of real (written, not zero) blocks as large as
 * the largest copy compaction may need (a segment), never more than 5% of the filesystem,
 * and never taking its last 5% of free space. When a compaction that frees space fails for
 * lack of it, the reserve is let go and the compaction tried again; the reserve is made
 * again later, once there is room.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fromSystemError } from '../core/index.js';

/** The reserve is never more than this share of the filesystem... */
const SHARE_OF_FILESYSTEM_MAX = 0.05;
/** ...and never takes the free space below this share of it. */
const FREE_SHARE_KEPT = 0.05;
const CHUNK_BYTES = 1024 * 1024;
/** Not zeroes: a filesystem that compresses or dedupes would hold zeroes in no space at all. */
const FILL = (() => {
  const bytes = Buffer.alloc(CHUNK_BYTES);
  let state = 0x9e3779b9;
  for (let at = 0; at < bytes.length; at += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    bytes.writeUInt32LE(state >>> 0, at);
  }
  return bytes;
})();

export class SpaceReserve {
  private growing: Promise<void> | null = null;
  /** The file being grown (release truncates it at once: its blocks free, not at close). */
  private handle: fs.promises.FileHandle | null = null;
  private releasing = false;

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

  /** Lets the reserve go (its space is free at once, even while it grows); the bytes it held. */
  release(): number {
    const bytes = this.bytes;
    if (bytes === 0) return 0;
    this.releasing = true;
    try {
      if (this.handle) fs.ftruncateSync(this.handle.fd, 0);
      fs.rmSync(this.file, { force: true });
    } catch (err) {
      throw fromSystemError(err, `removing ${this.file}`);
    }
    return bytes;
  }

  private async grow(wantBytes: number): Promise<void> {
    this.releasing = false;
    const directory = path.dirname(this.file);
    const limits = async () => {
      const stats = await fs.promises.statfs(directory);
      const total = stats.blocks * stats.bsize;
      const free = stats.bavail * stats.bsize;
      return { target: Math.min(wantBytes, total * SHARE_OF_FILESYSTEM_MAX), room: free - total * FREE_SHARE_KEPT };
    };
    let have = this.bytes;
    let { target, room } = await limits();
    if (have + CHUNK_BYTES > target || room < CHUNK_BYTES) return;
    this.handle = await fs.promises.open(this.file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    try {
      // A chunk at a time, looking again at what is free each time (clients write meanwhile).
      while (!this.releasing && have + CHUNK_BYTES <= target && room >= CHUNK_BYTES) {
        await this.handle.write(FILL, 0, CHUNK_BYTES, have);
        have += CHUNK_BYTES;
        ({ target, room } = await limits());
      }
      await this.handle.datasync();
    } catch {
      // Full after all, or let go meanwhile: what was written stays reserved (or is gone).
    } finally {
      await this.handle.close();
      this.handle = null;
    }
  }
}
