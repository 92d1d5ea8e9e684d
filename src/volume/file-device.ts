/**
 * A volume stored as one sparse data file plus a chunk map (interim storage until the CDP
 * journal lands behind the same BlockDevice interface).
 *
 * Reads and writes use synchronous positioned I/O on the page cache: a 4 KiB pread/pwrite
 * costs a few microseconds, far less than a thread-pool round trip (~30-40 µs), and keeps
 * request order trivially. Only fdatasync, which can take milliseconds, goes to the thread
 * pool. Durability is that of a disk with a write-back cache: a write is acknowledged once
 * in the OS cache; FLUSH (and FUA) resolve only after the data file is synced and then the
 * chunk map is replaced atomically. Concurrent flushes share one sync (group commit).
 *
 * Ordering that keeps flushed zeroes from coming back: the map is snapshotted before the
 * data sync and persisted after it, so a persisted "allocated" bit always has its data
 * durable, and a chunk that was zeroed (bit clear) never shows its stale bytes again.
 */
import fs from 'node:fs';
import { GroupCommit, HindsightError, LIMITS, assert, fromSystemError } from '../core/index.js';
import type { BlockDevice, BlockDeviceCapabilities, Extent, WriteOptions, ZeroOptions } from '../core/index.js';
import { ChunkMap } from './chunk-map.js';
import { readMapFile, writeMapFile } from './map-file.js';

const ZERO_BLOCK = Buffer.alloc(1024 * 1024);

export interface FileDeviceOptions {
  name: string;
  dataFile: string;
  mapFile: string;
  sizeBytes: number;
  /** Sync after every write (the paranoid mode). */
  syncEveryWrite: boolean;
  /** Refuse writes (NBD clients see a read-only export). */
  readOnly: boolean;
}

export interface FileDeviceStats {
  allocatedBytes: number;
  clientBytesWritten: number;
  writeCount: number;
}

export class FileDevice implements BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly capabilities: BlockDeviceCapabilities = {
    readOnly: false, flush: true, fua: true, trim: true, writeZeroes: true, fastZero: true, cache: true, multiConn: true,
  };
  private readonly chunkBytes = LIMITS.volumeChunkBytes;
  private readonly map: ChunkMap;
  private fd: number;
  private clientBytesWritten: number;
  private writeCount: number;
  private mapDirty = false;
  /** Set when a sync failed: the kernel may have dropped dirty pages, so nothing written
   * since can be promised durable. Every later write and flush fails until reopened. */
  private failure: HindsightError | null = null;
  private readonly groupCommit = new GroupCommit(() => this.syncOnce());

  private constructor(private readonly options: FileDeviceOptions, fd: number, map: ChunkMap, counters: { clientBytesWritten: number; writeCount: number }) {
    this.name = options.name;
    this.sizeBytes = options.sizeBytes;
    this.fd = fd;
    this.map = map;
    this.clientBytesWritten = counters.clientBytesWritten;
    this.writeCount = counters.writeCount;
    this.capabilities.readOnly = options.readOnly;
  }

  /** New connections see the new mode at once; requests already validated still finish. */
  setReadOnly(readOnly: boolean): void {
    this.capabilities.readOnly = readOnly;
  }

  static async open(options: FileDeviceOptions): Promise<FileDevice> {
    const chunkCount = Math.ceil(options.sizeBytes / LIMITS.volumeChunkBytes);
    const state = await readMapFile(options.mapFile);
    if (state && (state.chunkBytes !== LIMITS.volumeChunkBytes || state.sizeBytes !== options.sizeBytes)) {
      throw new HindsightError('VOLUME_CORRUPT', `${options.mapFile}: chunk map is for a different geometry`);
    }
    let fd: number;
    try {
      fd = fs.openSync(options.dataFile, 'r+');
      const stat = fs.fstatSync(fd);
      if (stat.size !== options.sizeBytes) {
        fs.closeSync(fd);
        throw new HindsightError('VOLUME_CORRUPT', `${options.dataFile}: size ${stat.size} differs from volume size ${options.sizeBytes}`);
      }
    } catch (err) {
      throw fromSystemError(err, `opening ${options.dataFile}`);
    }
    const map = new ChunkMap(chunkCount, state?.bits);
    return new FileDevice(options, fd, map, { clientBytesWritten: state?.clientBytesWritten ?? 0, writeCount: state?.writeCount ?? 0 });
  }

  /** Creates the sparse data file for a new volume. */
  static createDataFile(dataFile: string, sizeBytes: number): void {
    const fd = fs.openSync(dataFile, 'wx');
    try {
      fs.ftruncateSync(fd, sizeBytes);
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  stats(): FileDeviceStats {
    return {
      allocatedBytes: this.map.allocatedChunks * this.chunkBytes,
      clientBytesWritten: this.clientBytesWritten,
      writeCount: this.writeCount,
    };
  }

  async read(offsetBytes: number, into: Buffer): Promise<void> {
    this.assertRange(offsetBytes, into.length);
    let done = 0;
    while (done < into.length) {
      const position = offsetBytes + done;
      const chunk = Math.floor(position / this.chunkBytes);
      const runChunks = this.map.runLength(chunk, Math.ceil((into.length - done) / this.chunkBytes) + 1);
      const runEnd = Math.min(offsetBytes + into.length, (chunk + runChunks) * this.chunkBytes);
      const count = runEnd - position;
      if (this.map.isSet(chunk)) this.preadFully(into, done, count, position);
      else into.fill(0, done, done + count);
      done += count;
    }
  }

  async write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void> {
    this.assertWritable(offsetBytes, data.length);
    const endBytes = offsetBytes + data.length;
    this.zeroFillEdge(offsetBytes, offsetBytes, endBytes);
    this.zeroFillEdge(endBytes, offsetBytes, endBytes);
    this.pwriteFully(data, offsetBytes);
    const first = Math.floor(offsetBytes / this.chunkBytes);
    const last = Math.floor((endBytes - 1) / this.chunkBytes);
    if (this.map.setRange(first, last - first + 1)) this.mapDirty = true;
    this.clientBytesWritten += data.length;
    this.writeCount += 1;
    if (options.fua || this.options.syncEveryWrite) await this.flush();
  }

  async trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void> {
    this.assertWritable(offsetBytes, lengthBytes);
    // TRIM is advisory: only whole chunks are dropped; partial ones keep their bytes.
    this.clearWholeChunks(offsetBytes, lengthBytes);
    if (options.fua || this.options.syncEveryWrite) await this.flush();
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void> {
    this.assertWritable(offsetBytes, lengthBytes);
    if (!options.mayTrim) {
      if (options.fastOnly) throw new HindsightError('NOT_SUPPORTED', 'zeroing without holes is not fast on this volume');
      await this.allocateZeroes(offsetBytes, lengthBytes);
    } else {
      const { firstWhole, endWhole } = this.clearWholeChunks(offsetBytes, lengthBytes);
      this.writeZeroBytes(offsetBytes, Math.min(firstWhole, offsetBytes + lengthBytes) - offsetBytes);
      if (endWhole > firstWhole) this.writeZeroBytes(endWhole, offsetBytes + lengthBytes - endWhole);
    }
    if (options.fua || this.options.syncEveryWrite) await this.flush();
  }

  async blockStatus(offsetBytes: number, lengthBytes: number, extentsMax: number): Promise<Extent[]> {
    this.assertRange(offsetBytes, lengthBytes);
    const extents: Extent[] = [];
    let position = offsetBytes;
    const end = offsetBytes + lengthBytes;
    while (position < end && extents.length < extentsMax) {
      const chunk = Math.floor(position / this.chunkBytes);
      const runChunks = this.map.runLength(chunk, Math.ceil((end - position) / this.chunkBytes) + 1);
      const runEnd = Math.min(end, (chunk + runChunks) * this.chunkBytes);
      const allocated = this.map.isSet(chunk);
      extents.push({ lengthBytes: runEnd - position, hole: !allocated, zero: !allocated });
      position = runEnd;
    }
    return extents;
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    // Reads already come from the OS page cache; nothing to prefetch into.
    this.assertRange(offsetBytes, lengthBytes);
  }

  /** Durable: every write completed before this call, then the chunk map. Group commit. */
  flush(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return this.groupCommit.request();
  }

  async close(): Promise<void> {
    if (this.fd < 0) return;
    await this.flush();
    fs.closeSync(this.fd);
    this.fd = -1;
  }

  private async syncOnce(): Promise<void> {
    // A sync queued behind a failed one must fail too: the kernel may have dropped the pages.
    if (this.failure) throw this.failure;
    const mapDirty = this.mapDirty;
    this.mapDirty = false;
    const snapshot = mapDirty ? this.map.snapshot() : null;
    const counters = { clientBytesWritten: this.clientBytesWritten, writeCount: this.writeCount };
    try {
      await new Promise<void>((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
      if (snapshot) {
        await writeMapFile(this.options.mapFile, {
          chunkBytes: this.chunkBytes, sizeBytes: this.sizeBytes, bits: snapshot, ...counters,
        });
      }
    } catch (err) {
      if (mapDirty) this.mapDirty = true;
      const error = fromSystemError(err, `flushing volume ${this.name}`);
      this.failure ??= new HindsightError(error.code === 'NO_SPACE' ? 'NO_SPACE' : 'IO_ERROR', `${error.message}; volume ${this.name} refuses writes until the daemon restarts`, { cause: err });
      throw error;
    }
  }

  /** Before a partial write to an unallocated chunk, the rest of that chunk must read as zero. */
  private zeroFillEdge(edge: number, writeStart: number, writeEnd: number): void {
    const chunk = Math.floor(Math.min(edge, this.sizeBytes - 1) / this.chunkBytes);
    if (this.map.isSet(chunk)) return;
    const chunkStart = chunk * this.chunkBytes;
    const chunkEnd = Math.min(chunkStart + this.chunkBytes, this.sizeBytes);
    if (writeStart > chunkStart && writeStart < chunkEnd) this.pwriteFully(ZERO_BLOCK.subarray(0, writeStart - chunkStart), chunkStart);
    if (writeEnd > chunkStart && writeEnd < chunkEnd) this.pwriteFully(ZERO_BLOCK.subarray(0, chunkEnd - writeEnd), writeEnd);
  }

  /** Clears the chunks wholly inside the range; returns the byte range they cover. */
  private clearWholeChunks(offsetBytes: number, lengthBytes: number): { firstWhole: number; endWhole: number } {
    const end = offsetBytes + lengthBytes;
    const firstChunk = Math.ceil(offsetBytes / this.chunkBytes);
    const endChunk = end === this.sizeBytes ? this.map.chunkCount : Math.floor(end / this.chunkBytes);
    if (endChunk <= firstChunk) return { firstWhole: end, endWhole: end };
    if (this.map.clearRange(firstChunk, endChunk - firstChunk)) this.mapDirty = true;
    return { firstWhole: firstChunk * this.chunkBytes, endWhole: Math.min(endChunk * this.chunkBytes, end) };
  }

  /** Writes literal zeroes into the allocated chunks of a range (at most two partial chunks). */
  private writeZeroBytes(offsetBytes: number, lengthBytes: number): void {
    let position = offsetBytes;
    const end = offsetBytes + lengthBytes;
    while (position < end) {
      const chunk = Math.floor(position / this.chunkBytes);
      const pieceEnd = Math.min(end, (chunk + 1) * this.chunkBytes);
      if (this.map.isSet(chunk)) this.pwriteFully(ZERO_BLOCK.subarray(0, pieceEnd - position), position);
      position = pieceEnd;
    }
  }

  /**
   * NO_HOLE zeroing: real zeroes, allocated. Done in 1 MiB pieces that yield to the event
   * loop between them, so a multi-gigabyte request cannot stall the other clients.
   */
  private async allocateZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    const end = offsetBytes + lengthBytes;
    this.zeroFillEdge(offsetBytes, offsetBytes, end);
    this.zeroFillEdge(end, offsetBytes, end);
    for (let position = offsetBytes; position < end;) {
      const pieceEnd = Math.min(end, position + ZERO_BLOCK.length);
      this.pwriteFully(ZERO_BLOCK.subarray(0, pieceEnd - position), position);
      const first = Math.floor(position / this.chunkBytes);
      const last = Math.floor((pieceEnd - 1) / this.chunkBytes);
      if (this.map.setRange(first, last - first + 1)) this.mapDirty = true;
      position = pieceEnd;
      if (position < end) await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  private preadFully(into: Buffer, at: number, count: number, position: number): void {
    let done = 0;
    while (done < count) {
      const got = this.io(() => fs.readSync(this.fd, into, at + done, count - done, position + done), 'reading');
      assert(got > 0, 'data file is as long as the volume');
      done += got;
    }
  }

  private pwriteFully(data: Buffer, position: number): void {
    let done = 0;
    while (done < data.length) {
      done += this.io(() => fs.writeSync(this.fd, data, done, data.length - done, position + done), 'writing');
    }
  }

  private io(call: () => number, what: string): number {
    try {
      return call();
    } catch (err) {
      throw fromSystemError(err, `${what} volume ${this.name}`);
    }
  }

  private assertRange(offsetBytes: number, lengthBytes: number): void {
    assert(this.fd >= 0, 'device is open');
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && lengthBytes >= 0, 'range is non-negative');
    assert(offsetBytes + lengthBytes <= this.sizeBytes, 'range within the device (validated at the edge)');
  }

  private assertWritable(offsetBytes: number, lengthBytes: number): void {
    this.assertRange(offsetBytes, lengthBytes);
    assert(!this.capabilities.readOnly, 'writes reach only writable devices');
    if (this.failure) throw this.failure;
  }
}
