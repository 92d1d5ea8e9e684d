/**
 * A fault-injecting, in-memory FileLayer for crash tests (model: tigerbeetle
 * src/testing/storage.zig).
 *
 * Every file (inode) has a DURABLE image — what a power loss leaves — and the list of its
 * PENDING operations (writes and truncates since its last datasync), applied on top for
 * reads: the page cache. `datasync()` makes the operations pending when it was called
 * durable, one event-loop turn later, so a test can crash while a sync is in flight.
 *
 * Directories are modelled too (unless `directories: 'durable'`): creating, removing or
 * renaming a file changes what `list`/`open` see at once, but the change is durable only
 * after `syncDirectory` of its directory (POSIX: fsync of the file does not persist its
 * directory entry). A crash keeps an in-order prefix of each directory's pending changes,
 * as journaling filesystems do. `mkdir` is durable at once (not modelled).
 * `writeFileAtomic` is what nodeFileLayer does: the new content is durable before the
 * rename (temp file + fdatasync), the rename is a pending directory change, then the
 * directory is synced — a crash in between leaves the old or the new file, whole.
 *
 * Faults, all drawn from the seed:
 * - `crash()`: power loss. Returns a new layer over what survived; per file, some pending
 *   operations reach the durable image (chosen by one of several styles, see CrashStyle),
 *   each surviving write possibly TORN (only a prefix of its bytes, cut at any byte, or only
 *   some of its 4 KiB pages). This layer is dead afterwards: every call on it or on its open
 *   files fails with EIO, so the crashed process's in-flight syncs can no longer complete.
 * - `restart()`: the process is killed, the machine keeps running: the page cache (pending
 *   operations) stays, only this layer's handles die.
 * - `injectWritevFault`: the Nth writev fails with ENOSPC (or EIO), possibly after writing
 *   a random prefix (a short write), once or until `clearFaults()` (disk full).
 * - `injectDatasyncFault`: the Nth datasync fails with EIO; like Linux (fsyncgate), the
 *   dirty pages it covered are dropped — still readable from the cache, never made durable.
 * Errors are wrapped exactly as nodeFileLayer wraps them (fromSystemError).
 */
import path from 'node:path';
import { fromSystemError } from '../../src/core/index.js';
import type { FileLayer, StorageFile } from '../../src/journal/index.js';
import { Random } from './random.js';

const PAGE_BYTES = 4096;

/**
 * How a crash picks the surviving pending operations of each file and directory:
 * lose-all (none), keep-all (every one, whole), ordered (an in-order prefix, the last one
 * maybe torn), random (each one by a coin toss, each surviving write maybe torn),
 * keep-data (every write whole, but no truncate: data written back, size changes not).
 */
export type CrashStyle = 'lose-all' | 'keep-all' | 'ordered' | 'random' | 'keep-data';
const CRASH_STYLES: CrashStyle[] = ['lose-all', 'keep-all', 'ordered', 'random', 'random', 'random', 'keep-data'];

export interface FaultFsOptions {
  seed: number;
  /** 'synced' (default): directory changes need syncDirectory; 'durable': durable at once. */
  directories?: 'synced' | 'durable';
}

export interface WritevFault {
  /** Successful writev calls before the failing one (0: the next one fails). */
  after?: number;
  errno?: 'ENOSPC' | 'EIO';
  /** Write a random prefix of the data before failing (a short write). Default true. */
  partial?: boolean;
  /** Keep failing every writev (and writeFileAtomic) until clearFaults(). */
  sticky?: boolean;
}

export interface DatasyncFault {
  /** Successful datasync calls before the failing one (0: the next one fails). */
  after?: number;
  sticky?: boolean;
}

type FileOperation = { kind: 'write'; position: number; data: Buffer } | { kind: 'truncate'; sizeBytes: number };
type DirectoryOperation = { kind: 'link'; name: string; inode: Inode } | { kind: 'unlink'; name: string } | { kind: 'rename'; name: string; to: string };

/** A growable byte image; bytes between the old end and a write past it read as zeroes. */
class Image {
  private buffer: Buffer;
  sizeBytes = 0;

  constructor(initial?: Buffer) {
    this.buffer = Buffer.alloc(Math.max(initial?.length ?? 0, 4096));
    if (initial) {
      initial.copy(this.buffer);
      this.sizeBytes = initial.length;
    }
  }

  write(position: number, data: Buffer): void {
    const end = position + data.length;
    if (end > this.buffer.length) {
      const grown = Buffer.alloc(Math.max(end, this.buffer.length * 2));
      this.buffer.copy(grown, 0, 0, this.sizeBytes);
      this.buffer = grown;
    }
    data.copy(this.buffer, position);
    this.sizeBytes = Math.max(this.sizeBytes, end);
  }

  truncate(sizeBytes: number): void {
    if (sizeBytes < this.sizeBytes) this.buffer.fill(0, sizeBytes, this.sizeBytes);
    else if (sizeBytes > this.buffer.length) this.write(sizeBytes, Buffer.alloc(0));
    this.sizeBytes = sizeBytes;
  }

  read(into: Buffer, intoOffset: number, length: number, position: number): number {
    const got = Math.max(0, Math.min(length, this.sizeBytes - position));
    this.buffer.copy(into, intoOffset, position, position + got);
    return got;
  }

  apply(operation: FileOperation): void {
    if (operation.kind === 'write') this.write(operation.position, operation.data);
    else this.truncate(operation.sizeBytes);
  }

  bytes(): Buffer {
    return Buffer.from(this.buffer.subarray(0, this.sizeBytes));
  }
}

class Inode {
  readonly durable: Image;
  readonly current: Image;
  pending: FileOperation[] = [];

  constructor(content?: Buffer) {
    this.durable = new Image(content);
    this.current = new Image(content);
  }

  perform(operation: FileOperation): void {
    this.current.apply(operation);
    this.pending.push(operation);
  }

  /** Makes `operations` (still pending, in order) durable. */
  persist(operations: FileOperation[]): void {
    const chosen = new Set(operations);
    for (const operation of this.pending) if (chosen.has(operation)) this.durable.apply(operation);
    this.pending = this.pending.filter((operation) => !chosen.has(operation));
  }
}

class Directory {
  readonly live = new Map<string, Inode>();
  readonly durable = new Map<string, Inode>();
  pending: DirectoryOperation[] = [];
}

/** What one boot of the machine sees: directories and the files in them. */
class MachineState {
  readonly directories = new Map<string, Directory>();
}

export class FaultFs implements FileLayer {
  readonly rng: Random;
  writevCalls = 0;
  datasyncCalls = 0;
  /** Crashes this layer's lineage went through (kept across crash() and restart()). */
  crashes = 0;
  private alive = true;
  private writevFault: (WritevFault & { at: number }) | null = null;
  private datasyncFault: (DatasyncFault & { at: number }) | null = null;

  constructor(private readonly options: FaultFsOptions, private readonly state = new MachineState()) {
    this.rng = new Random(options.seed);
  }

  // ---- faults -------------------------------------------------------------------------

  /**
   * Power loss now: a new layer over what reached the disks. This one is dead. The style
   * (random when not given) may differ for file contents and directory entries.
   */
  crash(style?: CrashStyle | { files: CrashStyle; directories: CrashStyle }): FaultFs {
    this.kill();
    const random = CRASH_STYLES[this.rng.int(CRASH_STYLES.length)];
    const chosen = typeof style === 'object' ? style.files : style ?? random;
    const chosenForDirectories = typeof style === 'object' ? style.directories : style ?? random;
    const next = new MachineState();
    const survivors = new Map<Inode, Inode>();
    const survive = (inode: Inode): Inode => {
      let copy = survivors.get(inode);
      if (!copy) {
        copy = new Inode(this.crashImage(inode, chosen));
        survivors.set(inode, copy);
      }
      return copy;
    };
    for (const [name, directory] of this.state.directories) {
      const entries = new Map(directory.durable);
      const kept = this.survivingCount(directory.pending.length, chosenForDirectories);
      for (const operation of directory.pending.slice(0, kept)) applyDirectoryOperation(entries, operation);
      const after = new Directory();
      for (const [entry, inode] of entries) {
        after.live.set(entry, survive(inode));
        after.durable.set(entry, survive(inode));
      }
      next.directories.set(name, after);
    }
    const layer = new FaultFs({ ...this.options, seed: this.rng.next() }, next);
    layer.crashes = this.crashes + 1;
    return layer;
  }

  /** The process dies, the machine does not: pending writes stay in the page cache. */
  restart(): FaultFs {
    this.kill();
    const layer = new FaultFs({ ...this.options, seed: this.rng.next() }, this.state);
    layer.crashes = this.crashes;
    return layer;
  }

  injectWritevFault(fault: WritevFault): void {
    this.writevFault = { ...fault, at: this.writevCalls + (fault.after ?? 0) };
  }

  injectDatasyncFault(fault: DatasyncFault): void {
    this.datasyncFault = { ...fault, at: this.datasyncCalls + (fault.after ?? 0) };
  }

  clearFaults(): void {
    this.writevFault = null;
    this.datasyncFault = null;
  }

  // ---- inspection (tests) -------------------------------------------------------------

  /** The file as reads see it (page cache included). */
  contents(file: string): Buffer {
    return this.inodeOf(file).current.bytes();
  }

  /** Pending (unsynced) operations of a file. */
  pendingOperations(file: string): number {
    return this.inodeOf(file).pending.length;
  }

  /**
   * Damage: flips bits of one byte wherever it is — in the cache, on the disk and in the
   * pending writes that would bring it there.
   */
  flipByte(file: string, position: number, mask = 0x20): void {
    const inode = this.inodeOf(file);
    assertState(position < inode.current.sizeBytes, `${file} has a byte at ${position}`);
    for (const image of [inode.durable, inode.current]) {
      const byte = Buffer.alloc(1);
      if (image.read(byte, 0, 1, position) === 0) continue;
      byte[0] ^= mask;
      image.write(position, byte);
    }
    for (const operation of inode.pending) {
      if (operation.kind !== 'write') continue;
      const at = position - operation.position;
      if (at >= 0 && at < operation.data.length) operation.data[at] ^= mask;
    }
  }

  // ---- FileLayer ----------------------------------------------------------------------

  open(file: string, create: boolean): StorageFile {
    this.checkAlive('opening', file);
    const directory = this.state.directories.get(path.dirname(file));
    const name = path.basename(file);
    if (!directory) throw fromSystemError(systemError('ENOENT', 'open', file), `opening ${file}`);
    let inode = directory.live.get(name);
    if (create) {
      if (inode) throw fromSystemError(systemError('EEXIST', 'open', file), `opening ${file}`);
      inode = new Inode();
      this.changeDirectory(directory, { kind: 'link', name, inode });
    } else if (!inode) {
      throw fromSystemError(systemError('ENOENT', 'open', file), `opening ${file}`);
    }
    return new FaultFile(this, file, inode);
  }

  list(directory: string): string[] {
    this.checkAlive('listing', directory);
    return [...(this.state.directories.get(path.normalize(directory))?.live.keys() ?? [])].sort();
  }

  exists(file: string): boolean {
    this.checkAlive('checking', file);
    return this.state.directories.has(path.normalize(file)) || this.state.directories.get(path.dirname(file))?.live.has(path.basename(file)) === true;
  }

  remove(file: string): void {
    this.checkAlive('removing', file);
    const directory = this.state.directories.get(path.dirname(file));
    if (directory?.live.has(path.basename(file))) this.changeDirectory(directory, { kind: 'unlink', name: path.basename(file) });
  }

  rename(from: string, to: string): void {
    this.checkAlive('renaming', from);
    const directory = this.state.directories.get(path.dirname(from));
    assertState(path.dirname(from) === path.dirname(to), 'renames stay within one directory');
    if (!directory?.live.has(path.basename(from))) throw fromSystemError(systemError('ENOENT', 'rename', from), `renaming ${from}`);
    this.changeDirectory(directory, { kind: 'rename', name: path.basename(from), to: path.basename(to) });
  }

  mkdir(directory: string): void {
    this.checkAlive('creating', directory);
    for (let at = path.normalize(directory); !this.state.directories.has(at); at = path.dirname(at)) {
      this.state.directories.set(at, new Directory());
    }
  }

  readFile(file: string): Buffer | null {
    this.checkAlive('reading', file);
    return this.state.directories.get(path.dirname(file))?.live.get(path.basename(file))?.current.bytes() ?? null;
  }

  async writeFileAtomic(file: string, data: Buffer): Promise<void> {
    this.checkAlive('writing', file);
    if (this.writevFault?.sticky && this.writevCalls >= this.writevFault.at) {
      throw fromSystemError(systemError(this.writevFault.errno ?? 'ENOSPC', 'write', `${file}.tmp`), `writing ${file}`);
    }
    const directory = this.state.directories.get(path.dirname(file));
    if (!directory) throw fromSystemError(systemError('ENOENT', 'open', `${file}.tmp`), `writing ${file}`);
    await nextTurn();
    this.checkAlive('writing', file);
    // Temp file written and synced: its content is durable before the rename.
    this.changeDirectory(directory, { kind: 'link', name: path.basename(file), inode: new Inode(data) });
    await this.syncDirectory(path.dirname(file));
  }

  async syncDirectory(directoryPath: string): Promise<void> {
    this.checkAlive('syncing', directoryPath);
    const directory = this.state.directories.get(path.normalize(directoryPath));
    if (!directory) throw systemError('ENOENT', 'open', directoryPath);
    const count = directory.pending.length;
    await nextTurn();
    this.checkAlive('syncing', directoryPath);
    for (const operation of directory.pending.splice(0, count)) applyDirectoryOperation(directory.durable, operation);
  }

  // ---- internals used by FaultFile ----------------------------------------------------

  /** Throws (as the OS would) when this layer is dead or a writev fault is due. */
  beforeWritev(file: string, data: Buffer): { fail: NodeJS.ErrnoException; prefixBytes: number } | null {
    this.checkAlive('writing', file);
    this.writevCalls += 1;
    const fault = this.writevFault;
    if (!fault || this.writevCalls <= fault.at) return null;
    if (!fault.sticky) this.writevFault = null;
    const prefixBytes = fault.partial === false || data.length === 0 ? 0 : this.rng.int(data.length);
    return { fail: systemError(fault.errno ?? 'ENOSPC', 'write', file), prefixBytes };
  }

  beforeDatasync(file: string): boolean {
    this.checkAlive('syncing', file);
    this.datasyncCalls += 1;
    const fault = this.datasyncFault;
    if (!fault || this.datasyncCalls <= fault.at) return false;
    if (!fault.sticky) this.datasyncFault = null;
    return true;
  }

  checkAlive(what: string, file: string): void {
    if (!this.alive) throw fromSystemError(systemError('EIO', what, file), `${what} ${file} (this layer crashed)`);
  }

  private kill(): void {
    assertState(this.alive, 'the layer is alive');
    this.alive = false;
  }

  private changeDirectory(directory: Directory, operation: DirectoryOperation): void {
    applyDirectoryOperation(directory.live, operation);
    if (this.options.directories === 'durable') applyDirectoryOperation(directory.durable, operation);
    else directory.pending.push(operation);
  }

  private inodeOf(file: string): Inode {
    const inode = this.state.directories.get(path.dirname(file))?.live.get(path.basename(file));
    assertState(inode !== undefined, `${file} exists`);
    return inode;
  }

  private survivingCount(pending: number, style: CrashStyle): number {
    if (style === 'lose-all') return 0;
    if (style === 'keep-all' || style === 'keep-data') return pending;
    return this.rng.int(pending + 1);
  }

  /** The durable image of `inode` after a crash of the given style. */
  private crashImage(inode: Inode, style: CrashStyle): Buffer {
    const image = new Image(inode.durable.bytes());
    const pending = inode.pending;
    const kept = style === 'random' ? pending.length : this.survivingCount(pending.length, style);
    for (let i = 0; i < kept; i += 1) {
      const operation = pending[i];
      if (style === 'random' && this.rng.int(2) === 0) continue;
      if (style === 'keep-data' && operation.kind === 'truncate') continue;
      const mayTear = style === 'random' ? this.rng.int(3) === 0 : style === 'ordered' && i === kept - 1 && this.rng.int(2) === 0;
      if (operation.kind === 'write' && mayTear) this.tear(image, operation);
      else image.apply(operation);
    }
    return image.bytes();
  }

  /** Writes part of a write: a prefix cut at any byte, or some of the 4 KiB pages it touches. */
  private tear(image: Image, write: { position: number; data: Buffer }): void {
    const { position, data } = write;
    if (data.length === 0) return;
    if (this.rng.int(2) === 0) {
      image.write(position, data.subarray(0, this.rng.int(data.length)));
      return;
    }
    for (let at = position; at < position + data.length;) {
      const pageEnd = Math.min(position + data.length, (Math.floor(at / PAGE_BYTES) + 1) * PAGE_BYTES);
      if (this.rng.int(2) === 0) image.write(at, data.subarray(at - position, pageEnd - position));
      at = pageEnd;
    }
  }
}

class FaultFile implements StorageFile {
  private closed = false;

  constructor(private readonly layer: FaultFs, readonly path: string, private readonly inode: Inode) {}

  sizeBytes(): number {
    this.check('stat');
    return this.inode.current.sizeBytes;
  }

  writev(buffers: Buffer[], position: number): void {
    this.check('writing');
    const data = Buffer.concat(buffers);
    const fault = this.layer.beforeWritev(this.path, data);
    if (fault) {
      if (fault.prefixBytes > 0) this.inode.perform({ kind: 'write', position, data: Buffer.from(data.subarray(0, fault.prefixBytes)) });
      throw fromSystemError(fault.fail, `writing ${this.path}`);
    }
    if (data.length > 0) this.inode.perform({ kind: 'write', position, data });
  }

  async writevAsync(buffers: Buffer[], position: number): Promise<void> {
    this.writev(buffers, position);
  }

  read(into: Buffer, intoOffset: number, length: number, position: number): number {
    this.check('reading');
    return this.inode.current.read(into, intoOffset, length, position);
  }

  async readAsync(into: Buffer, intoOffset: number, length: number, position: number): Promise<number> {
    return this.read(into, intoOffset, length, position);
  }

  readv(buffers: Buffer[], position: number): number {
    let total = 0;
    for (const buffer of buffers) {
      const got = this.read(buffer, 0, buffer.length, position + total);
      total += got;
      if (got < buffer.length) break;
    }
    return total;
  }

  async readvAsync(buffers: Buffer[], position: number): Promise<number> {
    return this.readv(buffers, position);
  }

  async datasync(): Promise<void> {
    this.check('syncing');
    const fail = this.layer.beforeDatasync(this.path);
    const covered = [...this.inode.pending];
    await nextTurn();
    this.layer.checkAlive('syncing', this.path);
    if (fail) {
      // fsyncgate: the kernel drops the dirty pages it failed to write; reads still see them.
      this.inode.pending = this.inode.pending.filter((operation) => !covered.includes(operation));
      throw fromSystemError(systemError('EIO', 'fdatasync', this.path), `syncing ${this.path}`);
    }
    this.inode.persist(covered);
  }

  truncate(sizeBytes: number): void {
    this.check('truncating');
    this.inode.perform({ kind: 'truncate', sizeBytes });
  }

  close(): void {
    this.closed = true;
  }

  private check(what: string): void {
    this.layer.checkAlive(what, this.path);
    if (this.closed) throw fromSystemError(systemError('EBADF', what, this.path), `${what} ${this.path}`);
  }
}

function applyDirectoryOperation(entries: Map<string, Inode>, operation: DirectoryOperation): void {
  if (operation.kind === 'link') {
    entries.set(operation.name, operation.inode);
  } else if (operation.kind === 'rename') {
    // Atomic, as rename(2): the old name's inode replaces the new name's, or nothing happens.
    const inode = entries.get(operation.name);
    if (inode) {
      entries.set(operation.to, inode);
      entries.delete(operation.name);
    }
  } else {
    entries.delete(operation.name);
  }
}

const ERRNO = { ENOENT: -2, EIO: -5, EBADF: -9, EEXIST: -17, ENOSPC: -28 } as const;

/** An error shaped like the ones node:fs throws. */
function systemError(code: keyof typeof ERRNO, syscall: string, file: string): NodeJS.ErrnoException {
  const error = new Error(`${code}: injected fault, ${syscall} '${file}'`) as NodeJS.ErrnoException;
  error.code = code;
  error.errno = ERRNO[code];
  error.syscall = syscall;
  error.path = file;
  return error;
}

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function assertState(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`fault-fs: expected ${what}`);
}
