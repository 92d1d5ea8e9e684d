/**
 * The few file operations the journal and index use, behind an interface so tests can put a
 * fault-injecting layer underneath (torn writes, lost unsynced writes, short writes, ENOSPC).
 * Data calls are synchronous positioned I/O on the page cache (large reads also have thread-pool
 * variants); syncs are asynchronous.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fromSystemError } from '../core/index.js';

export interface StorageFile {
  readonly path: string;
  sizeBytes(): number;
  /** Writes all of `buffers` at `position` (throws on error, e.g. ENOSPC). */
  writev(buffers: Buffer[], position: number): void;
  /** The same in the thread pool: for large writes off the event loop (compaction). */
  writevAsync(buffers: Buffer[], position: number): Promise<void>;
  /** Reads up to `length` bytes; returns how many were read (fewer only at end of file). */
  read(into: Buffer, intoOffset: number, length: number, position: number): number;
  /** The same in the thread pool: for large reads, so the event loop keeps serving. */
  readAsync(into: Buffer, intoOffset: number, length: number, position: number): Promise<number>;
  /** Consecutive bytes from `position` into several buffers, in one call; returns bytes read. */
  readv(buffers: Buffer[], position: number): number;
  readvAsync(buffers: Buffer[], position: number): Promise<number>;
  datasync(): Promise<void>;
  truncate(sizeBytes: number): void;
  close(): void;
}

export interface FileLayer {
  open(file: string, create: boolean): StorageFile;
  list(directory: string): string[];
  exists(file: string): boolean;
  remove(file: string): void;
  mkdir(directory: string): void;
  readFile(file: string): Buffer | null;
  /** Replaces `file` atomically and durably: temp file, sync, rename, directory sync. */
  writeFileAtomic(file: string, data: Buffer): Promise<void>;
  /** Atomically replaces `to` by `from` (same directory); durable after syncDirectory. */
  rename(from: string, to: string): void;
  syncDirectory(directory: string): Promise<void>;
}

class NodeFile implements StorageFile {
  constructor(readonly path: string, private fd: number) {}

  sizeBytes(): number {
    return fs.fstatSync(this.fd).size;
  }

  writev(buffers: Buffer[], position: number): void {
    let remaining = buffers.filter((buffer) => buffer.length > 0);
    let at = position;
    try {
      while (remaining.length > 0) {
        const written = fs.writevSync(this.fd, remaining, at);
        at += written;
        remaining = unwritten(remaining, written);
      }
    } catch (err) {
      throw fromSystemError(err, `writing ${this.path}`);
    }
  }

  async writevAsync(buffers: Buffer[], position: number): Promise<void> {
    let remaining = buffers.filter((buffer) => buffer.length > 0);
    let at = position;
    while (remaining.length > 0) {
      const written = await new Promise<number>((resolve, reject) => fs.writev(this.fd, remaining, at, (err, bytes) => (err ? reject(fromSystemError(err, `writing ${this.path}`)) : resolve(bytes))));
      at += written;
      remaining = unwritten(remaining, written);
    }
  }

  read(into: Buffer, intoOffset: number, length: number, position: number): number {
    let done = 0;
    try {
      while (done < length) {
        const got = fs.readSync(this.fd, into, intoOffset + done, length - done, position + done);
        if (got === 0) break;
        done += got;
      }
    } catch (err) {
      throw fromSystemError(err, `reading ${this.path}`);
    }
    return done;
  }

  readv(buffers: Buffer[], position: number): number {
    try {
      const total = buffers.reduce((sum, buffer) => sum + buffer.length, 0);
      const got = fs.readvSync(this.fd, buffers, position);
      return got === total ? got : readRest(this, buffers, position, got);
    } catch (err) {
      throw fromSystemError(err, `reading ${this.path}`);
    }
  }

  async readvAsync(buffers: Buffer[], position: number): Promise<number> {
    const total = buffers.reduce((sum, buffer) => sum + buffer.length, 0);
    const got = await new Promise<number>((resolve, reject) => fs.readv(this.fd, buffers, position, (err, bytes) => (err ? reject(fromSystemError(err, `reading ${this.path}`)) : resolve(bytes))));
    return got === total ? got : readRest(this, buffers, position, got);
  }

  async readAsync(into: Buffer, intoOffset: number, length: number, position: number): Promise<number> {
    let done = 0;
    while (done < length) {
      const got = await new Promise<number>((resolve, reject) => fs.read(this.fd, into, intoOffset + done, length - done, position + done, (err, bytes) => (err ? reject(fromSystemError(err, `reading ${this.path}`)) : resolve(bytes))));
      if (got === 0) break;
      done += got;
    }
    return done;
  }

  datasync(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(fromSystemError(err, `syncing ${this.path}`)) : resolve())));
  }

  truncate(sizeBytes: number): void {
    fs.ftruncateSync(this.fd, sizeBytes);
  }

  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

/** After a short readv (rare: end of file or a signal), the rest one buffer at a time. */
function readRest(file: StorageFile, buffers: Buffer[], position: number, done: number): number {
  let skipped = 0;
  let total = done;
  for (const buffer of buffers) {
    const start = Math.max(0, done - skipped);
    if (start < buffer.length) {
      const got = file.read(buffer, start, buffer.length - start, position + skipped + start);
      total += got;
      if (got < buffer.length - start) return total;
    }
    skipped += buffer.length;
  }
  return total;
}

export const nodeFileLayer: FileLayer = {
  open(file, create) {
    try {
      return new NodeFile(file, fs.openSync(file, create ? 'wx+' : 'r+'));
    } catch (err) {
      throw fromSystemError(err, `opening ${file}`);
    }
  },
  list(directory) {
    return fs.existsSync(directory) ? fs.readdirSync(directory).sort() : [];
  },
  exists: (file) => fs.existsSync(file),
  remove: (file) => fs.rmSync(file, { force: true }),
  mkdir: (directory) => {
    fs.mkdirSync(directory, { recursive: true });
  },
  readFile(file) {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw fromSystemError(err, `reading ${file}`);
    }
  },
  async writeFileAtomic(file, data) {
    const temporary = `${file}.tmp`;
    try {
      const handle = await fs.promises.open(temporary, 'w');
      try {
        await handle.writeFile(data);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      await fs.promises.rename(temporary, file);
      await nodeFileLayer.syncDirectory(path.dirname(file));
    } catch (err) {
      throw fromSystemError(err, `writing ${file}`);
    }
  },
  rename(from, to) {
    try {
      fs.renameSync(from, to);
    } catch (err) {
      throw fromSystemError(err, `renaming ${from}`);
    }
  },
  async syncDirectory(directory) {
    const handle = await fs.promises.open(directory, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  },
};

/** What is left of `buffers` after a short write of `written` bytes. */
function unwritten(buffers: Buffer[], written: number): Buffer[] {
  const rest: Buffer[] = [];
  let skip = written;
  for (const buffer of buffers) {
    if (skip >= buffer.length) {
      skip -= buffer.length;
    } else {
      rest.push(buffer.subarray(skip));
      skip = 0;
    }
  }
  return rest;
}
