/**
 * Points in time of a real filesystem. ext4 lives on a Hindsight volume (nbdfuse turns the
 * export into a file, the loop driver turns that into a block device, as in ext4.test.ts).
 * File set A is written (nested directories, empty to multi-MiB files, a sparse file, a
 * symlink), the filesystem is synced and point T is taken twice over: a bookmark and the
 * wall-clock time (RFC 3339, ms, UTC). Then set B goes on top: new files, A files deleted,
 * modified in place, appended, truncated, renamed, a directory removed.
 *
 * Point T must then be set A exactly, byte for byte and name for name, every way it can be
 * reached: mounted read-only by time (e2fsck -fn clean, mount -o ro,noload), as a writable
 * clone by bookmark (written to, which must not touch the source's history), mounted
 * read-only again by bookmark afterwards, and restored to an image file. The raw device of
 * every read-only view and the restored image hash the same. The live volume keeps set B
 * throughout. Mounts are refused removal while a client is attached and are all gone at the end.
 *
 * Point T is taken after a plain `sync` + `blockdev --flushbufs`, without fsfreeze, while the
 * filesystem stays mounted read-write: a crash-consistent point. syncfs has written the
 * metadata to its home locations, but the superblock still says "needs recovery" (the journal
 * is live), so a read-only device can only be mounted with -o ro,noload (plain -o ro would
 * insist on replaying the journal and refuse); e2fsck -fn must still find nothing wrong. The
 * writable clone is mounted normally and so takes the journal replay into its own branch.
 *
 * Teardown is strictly the reverse of setup (umount, losetup -d, fusermount3 -u,
 * hindsight unmount, stop the daemon) and runs however the test ends.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import type { DaemonHandle } from '../helpers/daemon.js';
import { KiB, MiB, deferrals, hindsight, sha256File, waitFor } from '../helpers/interop.js';
import { attachExport, losetup } from '../helpers/block-stack.js';
import type { Defer } from '../helpers/block-stack.js';
import { run } from '../helpers/run.js';

const VOLUME = 'pit';
const VOLUME_BYTES = 256 * MiB;
const TOOLS = ['nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'dumpe2fs', 'blockdev', 'mount', 'umount', 'sync'];

function onPath(tool: string): boolean {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  return dirs.some((dir) => dir !== '' && fs.existsSync(path.join(dir, tool)));
}

function whyNotRunnable(): string | null {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root for loop devices and mount';
  if (!fs.existsSync('/dev/fuse')) return 'needs /dev/fuse for nbdfuse';
  const missing = TOOLS.filter((tool) => !onPath(tool));
  if (missing.length > 0) return `needs ${missing.join(', ')} (packages nbdfuse, fuse3, e2fsprogs, util-linux)`;
  return null;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

// ---- the expected tree: what the test wrote, kept in memory ----

type Entry = { kind: 'dir' } | { kind: 'file'; content: Buffer } | { kind: 'symlink'; target: string };
type Tree = Map<string, Entry>;

/** One sorted line per entry ("path kind size sha256" / "path -> target"): diffs name the path. */
function describe(tree: Tree): string[] {
  return [...tree].map(([relative, entry]) => {
    if (entry.kind === 'dir') return `${relative}/`;
    if (entry.kind === 'symlink') return `${relative} -> ${entry.target}`;
    return `${relative} ${entry.content.length} ${sha256(entry.content)}`;
  }).sort();
}

/** The same lines for a mounted filesystem, read from disk (lost+found is ext4's, not ours). */
async function describeMounted(root: string): Promise<string[]> {
  const lines: string[] = [];
  const walk = async (relativeDir: string) => {
    for (const dirent of fs.readdirSync(path.join(root, relativeDir), { withFileTypes: true })) {
      const relative = relativeDir === '' ? dirent.name : `${relativeDir}/${dirent.name}`;
      if (relative === 'lost+found') continue;
      const full = path.join(root, relative);
      if (dirent.isDirectory()) {
        lines.push(`${relative}/`);
        await walk(relative);
      } else if (dirent.isSymbolicLink()) {
        lines.push(`${relative} -> ${fs.readlinkSync(full)}`);
      } else if (dirent.isFile()) {
        lines.push(`${relative} ${fs.statSync(full).size} ${await sha256File(full)}`);
      } else {
        lines.push(`${relative} (unexpected file type)`);
      }
    }
  };
  await walk('');
  return lines.sort();
}

class Writer {
  constructor(readonly root: string, readonly tree: Tree) {}

  mkdir(relative: string): void {
    const parts = relative.split('/');
    for (let i = 1; i <= parts.length; i += 1) {
      const dir = parts.slice(0, i).join('/');
      if (!this.tree.has(dir)) {
        fs.mkdirSync(path.join(this.root, dir));
        this.tree.set(dir, { kind: 'dir' });
      }
    }
  }

  write(relative: string, content: Buffer, options: { fsync?: boolean } = {}): void {
    const parent = path.posix.dirname(relative);
    if (parent !== '.') this.mkdir(parent);
    const fd = fs.openSync(path.join(this.root, relative), 'w');
    try {
      fs.writeSync(fd, content);
      if (options.fsync) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    this.tree.set(relative, { kind: 'file', content });
  }

  /** A file of sizeBytes with data only in the given extents; the rest is never written (holes). */
  writeSparse(relative: string, sizeBytes: number, extents: Array<{ offsetBytes: number; data: Buffer }>): void {
    const content = Buffer.alloc(sizeBytes);
    const fd = fs.openSync(path.join(this.root, relative), 'w');
    try {
      fs.ftruncateSync(fd, sizeBytes);
      for (const { offsetBytes, data } of extents) {
        fs.writeSync(fd, data, 0, data.length, offsetBytes);
        data.copy(content, offsetBytes);
      }
    } finally {
      fs.closeSync(fd);
    }
    this.tree.set(relative, { kind: 'file', content });
  }

  /** Overwrites bytes in place (the file is opened r+, not replaced), growing it if needed. */
  patch(relative: string, offsetBytes: number, data: Buffer): void {
    const entry = this.file(relative);
    const fd = fs.openSync(path.join(this.root, relative), 'r+');
    try {
      fs.writeSync(fd, data, 0, data.length, offsetBytes);
    } finally {
      fs.closeSync(fd);
    }
    const content = Buffer.alloc(Math.max(entry.content.length, offsetBytes + data.length));
    entry.content.copy(content);
    data.copy(content, offsetBytes);
    this.tree.set(relative, { kind: 'file', content });
  }

  truncate(relative: string, sizeBytes: number): void {
    const entry = this.file(relative);
    fs.truncateSync(path.join(this.root, relative), sizeBytes);
    this.tree.set(relative, { kind: 'file', content: Buffer.from(entry.content.subarray(0, sizeBytes)) });
  }

  symlink(relative: string, target: string): void {
    fs.symlinkSync(target, path.join(this.root, relative));
    this.tree.set(relative, { kind: 'symlink', target });
  }

  rename(from: string, to: string): void {
    const entry = this.tree.get(from);
    assert.ok(entry && entry.kind !== 'dir', `rename: ${from} is not a file`);
    fs.renameSync(path.join(this.root, from), path.join(this.root, to));
    this.tree.delete(from);
    this.tree.set(to, entry);
  }

  remove(relative: string): void {
    const entry = this.tree.get(relative);
    assert.ok(entry, `remove: ${relative} was never written`);
    fs.rmSync(path.join(this.root, relative), { recursive: true });
    for (const key of [...this.tree.keys()]) if (key === relative || key.startsWith(`${relative}/`)) this.tree.delete(key);
  }

  private file(relative: string): { kind: 'file'; content: Buffer } {
    const entry = this.tree.get(relative);
    assert.ok(entry?.kind === 'file', `${relative} is not a file in the model`);
    return entry;
  }
}

/** Set A: a few dozen files from empty to 5 MiB in nested directories, a sparse file, a symlink. */
function writeSetA(w: Writer): void {
  w.mkdir('empty-dir');
  w.mkdir('src/lib/deep/deeper/deepest');
  const fixed: Array<[string, number]> = [
    ['README.txt', 1234],
    ['empty.bin', 0],
    ['one-byte.bin', 1],
    ['docs/block-minus-one.bin', 4 * KiB - 1],
    ['docs/block.bin', 4 * KiB],
    ['docs/block-plus-one.bin', 4 * KiB + 1],
    ['docs/notes/odd.bin', 128 * KiB + 5],
    ['media/one-mib.bin', 1 * MiB],
    ['media/three-mib-odd.bin', 3 * MiB + 123],
    ['media/five-mib.bin', 5 * MiB],
    ['src/lib/deep/deeper/deepest/leaf.bin', 2 * MiB + 7],
  ];
  for (const [relative, sizeBytes] of fixed) w.write(relative, randomBytes(sizeBytes));
  const dirs = ['src', 'src/lib', 'src/lib/deep', 'src/lib/deep/deeper', 'var/log', 'var/cache', 'docs/notes'];
  for (let i = 0; i < 30; i += 1) {
    const sizeBytes = i % 7 === 0 ? randomInt(64 * KiB, 600 * KiB) : randomInt(0, 24 * KiB);
    w.write(`${dirs[i % dirs.length]}/small-${String(i).padStart(2, '0')}.dat`, randomBytes(sizeBytes));
  }
  w.writeSparse('media/sparse.img', 24 * MiB + 512, [
    { offsetBytes: 0, data: randomBytes(4 * KiB) },
    { offsetBytes: 8 * MiB + 100, data: randomBytes(64 * KiB) },
    { offsetBytes: 20 * MiB, data: randomBytes(1 * MiB) },
  ]);
  w.symlink('docs/readme-link', '../README.txt');
}

/** Set B over A: new files and a new directory; A files deleted, patched, appended, truncated, renamed. */
function writeSetB(w: Writer): void {
  for (let i = 0; i < 12; i += 1) w.write(`b-only/new-${i}.dat`, randomBytes(randomInt(0, 40 * KiB)));
  w.write('b-only/nested/two-mib.bin', randomBytes(2 * MiB));
  w.write('docs/notes/b-note.txt', randomBytes(777));
  w.write('README.txt', randomBytes(999)); // replaced (new inode, same name)
  w.remove('media/three-mib-odd.bin');
  w.remove('var/log'); // a whole directory of A
  w.remove('docs/block.bin');
  w.remove('src/small-00.dat');
  w.remove('src/lib/small-01.dat');
  w.remove('empty.bin');
  w.patch('media/five-mib.bin', 2 * MiB + 4095, randomBytes(300 * KiB)); // in place, across blocks
  w.patch('media/one-mib.bin', 1 * MiB, randomBytes(10 * KiB)); // appended
  w.patch('media/sparse.img', 12 * MiB, randomBytes(8 * KiB)); // into a hole
  w.patch('docs/block-minus-one.bin', 0, randomBytes(16)); // first bytes
  w.truncate('src/lib/deep/deeper/deepest/leaf.bin', 1 * MiB + 3);
  w.rename('docs/notes/odd.bin', 'docs/notes/odd-renamed.bin');
}

// ---- the stack: NBD export -> nbdfuse file -> loop device -> ext4 mount ----


interface Mounted {
  dir: string;
  unmount(): Promise<void>;
}

async function mountExt4(defer: Defer, dir: string, device: string, options: string | null): Promise<Mounted> {
  const mountpoint = fs.mkdtempSync(path.join(dir, 'mnt-'));
  let mounted = false;
  const unmount = async () => {
    if (!mounted) return;
    await run('umount', [mountpoint]);
    mounted = false;
  };
  defer(unmount);
  await run('mount', ['-t', 'ext4', ...(options === null ? [] : ['-o', options]), device, mountpoint]);
  mounted = true;
  return { dir: mountpoint, unmount };
}

async function assertFsckClean(target: string, what: string): Promise<void> {
  const fsck = await run('e2fsck', ['-fn', target], { allowFailure: true });
  assert.equal(fsck.code, 0, `e2fsck -fn on ${what} (${target}) exited ${fsck.code}:\n${fsck.stdout}${fsck.stderr}`);
}

// ---- the CLI ----

interface MountView { export: string; uri: string; volume: string; seq: number; time: string; writable: boolean; state: string; connections: number; cloneBytesWritten: number | null }
interface BookmarkView { name: string; seq: number; time: string }
interface RestoreView { path: string; kind: string; sizeBytes: number; dataBytes: number; zeroBytes: number; sha256: string; seq: number; time: string }

function cliFor(daemon: DaemonHandle) {
  const raw = (args: string[]) => hindsight([...args, '--api', daemon.apiUrl], { timeoutMs: 60_000 });
  const json = async <T>(args: string[]): Promise<T> => {
    const result = await raw([...args, '--json']);
    assert.equal(result.code, 0, `hindsight ${args.join(' ')} exited ${result.code}: ${result.stderr}${result.stdout}`);
    return JSON.parse(result.stdout) as T;
  };
  return { raw, json };
}

test('ext4 point in time: read-only mount by time, writable clone and restore by bookmark all show exactly set A', { timeout: 180_000 }, async (t) => {
  const reason = whyNotRunnable();
  if (reason !== null) {
    t.skip(reason);
    return;
  }
  const defer = deferrals(t);
  const dir = makeTempDir('hindsight-pit-ext4-');
  defer(() => fs.rmSync(dir, { recursive: true, force: true }));
  const daemon = await startDaemon({ volumes: [`${VOLUME}:${VOLUME_BYTES}`] });
  defer(() => fs.rmSync(daemon.dataDir, { recursive: true, force: true }));
  defer(async () => assert.equal(await daemon.stop(), 0, `daemon exit: ${daemon.stderr()}`));
  const cli = cliFor(daemon);

  /** `hindsight mount`, with a forced unmount at teardown in case the test does not get there. */
  const mountPoint = async (args: string[]): Promise<MountView> => {
    const mount = await cli.json<MountView>(['mount', VOLUME, ...args]);
    defer(() => cli.raw(['unmount', mount.export, '--force']));
    return mount;
  };
  /** `hindsight unmount` once the client is gone (the server may take a moment to notice). */
  const unmountPoint = async (name: string): Promise<void> => {
    let last = '';
    await waitFor(async () => {
      const result = await cli.raw(['unmount', name, '--json']);
      last = `${result.stderr}${result.stdout}`;
      if (result.code === 0) return true;
      assert.match(last, /VOLUME_BUSY/, `hindsight unmount ${name}`);
      return false;
    }, { what: () => `hindsight unmount ${name} (${last.trim()})`, timeoutMs: 10_000, intervalMs: 100 });
  };

  // ---- the live volume: ext4 read-write, set A, sync, point T (bookmark and time), set B ----
  const live = await attachExport(defer, dir, daemon.uri(VOLUME), VOLUME_BYTES, false);
  // No lazy inode-table or journal initialisation: nothing may write behind the test's back.
  await run('mkfs.ext4', ['-q', '-E', 'lazy_itable_init=0,lazy_journal_init=0', live.loop]);
  let liveMount = await mountExt4(defer, dir, live.loop, null);
  const tree: Tree = new Map();
  const writer = new Writer(liveMount.dir, tree);
  writeSetA(writer);
  const setA = describe(tree);
  assert.ok(setA.length >= 40, `set A has ${setA.length} entries`);

  await run('sync', ['-f', liveMount.dir]);
  await run('blockdev', ['--flushbufs', live.loop]);
  const bookmark = await cli.json<BookmarkView>(['bookmark', 'create', VOLUME, 'setA']);
  assert.equal(bookmark.name, 'setA');
  // Clear of the last write's millisecond on both sides: T is floored to the ms, records are µs.
  await sleep(5);
  const timeT = new Date().toISOString();
  await sleep(5);
  // Set B starts with an fsync'd file, a few ms after T: a coarse time resolution would catch it.
  writer.write('b-only/first.dat', randomBytes(10 * KiB), { fsync: true });
  assert.ok(bookmark.time <= timeT, `bookmark time ${bookmark.time} is after T ${timeT}`);
  writeSetB(writer);
  const setB = describe(tree);
  await run('sync', ['-f', liveMount.dir]);
  await run('blockdev', ['--flushbufs', live.loop]);
  assert.deepEqual(await describeMounted(liveMount.dir), setB, 'the live filesystem holds set B');

  const deviceHashes: Array<[string, string]> = [];

  await t.test('point T by time, read-only: e2fsck clean, ro,noload mount shows exactly set A', async () => {
    const mount = await mountPoint(['--at', timeT]);
    assert.equal(mount.writable, false);
    assert.equal(mount.volume, VOLUME);
    assert.equal(mount.export, `${VOLUME}@${mount.seq}`);
    assert.ok(mount.uri.endsWith(`/${VOLUME}%40${mount.seq}`), mount.uri);
    assert.ok(mount.seq > 0 && mount.seq <= bookmark.seq, `time T resolved to seq ${mount.seq}, the bookmark is seq ${bookmark.seq}`);
    assert.ok(mount.time <= timeT, `resolved time ${mount.time} is after T ${timeT}`);
    const point = await attachExport(defer, dir, mount.uri, VOLUME_BYTES, true);
    deviceHashes.push(['read-only mount by time', await sha256File(point.loop)]);
    const superblock = (await run('dumpe2fs', ['-h', point.loop])).stdout;
    assert.match(superblock, /^Filesystem features:.*\bneeds_recovery\b/m, 'a point taken while mounted is crash-consistent (journal live)');
    await assertFsckClean(point.loop, `point T (${timeT})`);
    const mounted = await mountExt4(defer, dir, point.loop, 'ro,noload');
    assert.deepEqual(await describeMounted(mounted.dir), setA, 'point T by time holds set A exactly');
    const sparse = fs.statSync(path.join(mounted.dir, 'media/sparse.img'));
    assert.ok(sparse.blocks * 512 < 4 * MiB, `media/sparse.img keeps its holes (${sparse.blocks * 512} bytes allocated of ${sparse.size})`);

    // The live volume, still mounted read-write next to it, keeps set B.
    assert.equal(fs.existsSync(path.join(liveMount.dir, 'b-only/nested/two-mib.bin')), true);
    assert.equal(fs.existsSync(path.join(liveMount.dir, 'media/three-mib-odd.bin')), false);
    assert.equal(fs.existsSync(path.join(mounted.dir, 'media/three-mib-odd.bin')), true);
    assert.notEqual(await sha256File(path.join(liveMount.dir, 'media/five-mib.bin')), await sha256File(path.join(mounted.dir, 'media/five-mib.bin')));

    const busy = await cli.raw(['unmount', mount.export]);
    assert.notEqual(busy.code, 0, 'unmount is refused while nbdfuse is connected');
    assert.match(busy.stderr, /VOLUME_BUSY/);
    await mounted.unmount();
    await point.detach();
    await unmountPoint(mount.export);
  });

  await t.test('point T by bookmark as a writable clone: mounts clean, takes a new file, history untouched', async () => {
    const mount = await mountPoint(['--at', 'bookmark:setA', '--writable']);
    assert.equal(mount.writable, true);
    assert.equal(mount.seq, bookmark.seq);
    assert.equal(mount.export, `${VOLUME}@${bookmark.seq}-rw`);
    const clone = await attachExport(defer, dir, mount.uri, VOLUME_BYTES, false);
    await assertFsckClean(clone.loop, 'the writable clone of point T');
    let mounted = await mountExt4(defer, dir, clone.loop, null);
    assert.deepEqual(await describeMounted(mounted.dir), setA, 'the clone starts as set A');
    const cloneFile = randomBytes(1 * MiB + 77);
    fs.mkdirSync(path.join(mounted.dir, 'clone-only'));
    fs.writeFileSync(path.join(mounted.dir, 'clone-only/written-in-clone.bin'), cloneFile);
    fs.rmSync(path.join(mounted.dir, 'media/five-mib.bin'));
    await run('sync', ['-f', mounted.dir]);
    await mounted.unmount();
    await assertFsckClean(clone.loop, 'the writable clone after writing to it');
    mounted = await mountExt4(defer, dir, clone.loop, null); // read back from the daemon, not the page cache
    assert.equal(sha256(fs.readFileSync(path.join(mounted.dir, 'clone-only/written-in-clone.bin'))), sha256(cloneFile));
    assert.equal(fs.existsSync(path.join(mounted.dir, 'media/five-mib.bin')), false);
    await mounted.unmount();
    const listed = await cli.json<{ mounts: MountView[] }>(['mounts', VOLUME]);
    const info = listed.mounts.find((m) => m.export === mount.export);
    assert.ok(info && info.writable && info.state === 'online', JSON.stringify(listed));
    assert.ok((info.cloneBytesWritten ?? 0) >= cloneFile.length, `clone journal took ${info.cloneBytesWritten} bytes`);
    await clone.detach();
    await unmountPoint(mount.export);
  });

  await t.test('point T by bookmark, read-only again after the clone: still exactly set A', async () => {
    const mount = await mountPoint(['--at', 'bookmark:setA', '--name', 'setA-again']);
    assert.equal(mount.export, 'setA-again');
    assert.equal(mount.seq, bookmark.seq);
    const point = await attachExport(defer, dir, mount.uri, VOLUME_BYTES, true);
    deviceHashes.push(['read-only mount by bookmark after the clone', await sha256File(point.loop)]);
    await assertFsckClean(point.loop, 'point T by bookmark');
    const mounted = await mountExt4(defer, dir, point.loop, 'ro,noload');
    assert.deepEqual(await describeMounted(mounted.dir), setA, 'point T by bookmark holds set A exactly (no clone file)');
    await mounted.unmount();
    await point.detach();
    await unmountPoint(mount.export);
  });

  await t.test('restore bookmark:setA to an image: sha256 as printed, e2fsck clean, loop mount shows set A', async () => {
    const image = path.join(dir, 'restored-setA.img');
    const restored = await cli.json<RestoreView>(['restore', VOLUME, '--at', 'bookmark:setA', '--to', image]);
    assert.equal(restored.seq, bookmark.seq);
    assert.equal(restored.path, image);
    assert.equal(restored.kind, 'file');
    assert.equal(restored.sizeBytes, VOLUME_BYTES);
    assert.equal(fs.statSync(image).size, VOLUME_BYTES);
    const imageHash = await sha256File(image);
    assert.equal(imageHash, restored.sha256, 'the image hashes to the sha256 restore printed');
    deviceHashes.push(['restored image', imageHash]);
    await assertFsckClean(image, 'the restored image');
    const loop = await losetup(image, true);
    defer(() => run('losetup', ['-d', loop]));
    const mounted = await mountExt4(defer, dir, loop, 'ro,noload');
    assert.deepEqual(await describeMounted(mounted.dir), setA, 'the restored image holds set A exactly');
    await mounted.unmount();
    assert.equal(await sha256File(image), imageHash, 'a read-only mount left the image as it was');
  });

  await t.test('every view of point T is the same bytes', () => {
    assert.equal(deviceHashes.length, 3, JSON.stringify(deviceHashes));
    for (const [what, hash] of deviceHashes) assert.equal(hash, deviceHashes[0][1], `${what} differs from ${deviceHashes[0][0]}`);
  });

  await t.test('the live volume still holds set B, from disk, and fsck is clean', async () => {
    await liveMount.unmount();
    await assertFsckClean(live.loop, 'the live volume');
    liveMount = await mountExt4(defer, dir, live.loop, null);
    assert.deepEqual(await describeMounted(liveMount.dir), setB, 'the live volume holds set B');
    await liveMount.unmount();
    await live.detach();
  });

  await t.test('no mounts are left', async () => {
    const { mounts } = await cli.json<{ mounts: MountView[] }>(['mounts']);
    assert.deepEqual(mounts, []);
  });
});
