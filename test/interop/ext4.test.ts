/**
 * A real filesystem on the volume: nbdfuse turns the export into a file, the kernel's loop
 * driver (direct I/O, so the page cache cannot hide lost writes) turns the file into a block
 * device, and ext4 + e2fsck judge the result. This is the closest thing to a guest OS here.
 *
 * Teardown is strictly the reverse of setup (umount, losetup -d, fusermount3 -u, stop the
 * daemon) and runs however the test ends, so a failure never leaves a mount behind.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import { KiB, MiB, dataBytes, deferrals, nbdMap } from '../helpers/interop.js';
import { attachExport } from '../helpers/block-stack.js';
import { run } from '../helpers/run.js';

const VOLUME_BYTES = 256 * MiB;

function whyNotRunnable(): string | null {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root for loop devices and mount';
  if (!fs.existsSync('/dev/fuse')) return 'needs /dev/fuse for nbdfuse';
  return null;
}

interface WrittenFile {
  relative: string;
  sha256: string;
  sizeBytes: number;
}

function writeFiles(root: string): WrittenFile[] {
  const sizes = [0, 1, 511, 4 * KiB, 4 * KiB + 1, 100 * KiB, 1 * MiB + 17, 8 * MiB, 3 * MiB];
  const files: WrittenFile[] = [];
  sizes.forEach((sizeBytes, index) => {
    const relative = path.join(index % 2 === 0 ? 'even' : path.join('odd', 'deeper'), `file-${index}.bin`);
    const content = randomBytes(sizeBytes);
    fs.mkdirSync(path.dirname(path.join(root, relative)), { recursive: true });
    fs.writeFileSync(path.join(root, relative), content);
    files.push({ relative, sizeBytes, sha256: createHash('sha256').update(content).digest('hex') });
  });
  return files;
}

function verifyFiles(root: string, files: WrittenFile[]): void {
  for (const file of files) {
    const content = fs.readFileSync(path.join(root, file.relative));
    assert.equal(content.length, file.sizeBytes, `${file.relative} size`);
    assert.equal(createHash('sha256').update(content).digest('hex'), file.sha256, `${file.relative} content`);
  }
}

test('ext4 over loop over nbdfuse: mkfs, write, e2fsck clean, remount and verify every file', async (t) => {
  const reason = whyNotRunnable();
  if (reason !== null) {
    t.skip(reason);
    return;
  }
  const defer = deferrals(t);
  const dir = makeTempDir('hindsight-ext4-');
  defer(() => fs.rmSync(dir, { recursive: true, force: true }));
  const daemon = await startDaemon({ volumes: [`ext4:${VOLUME_BYTES}`] });
  defer(() => fs.rmSync(daemon.dataDir, { recursive: true, force: true }));
  defer(async () => assert.equal(await daemon.stop(), 0, `daemon exit: ${daemon.stderr()}`));

  // nbdfuse presents the export as a file; a loop device on top (helpers/block-stack.ts).
  const { loop } = await attachExport(defer, dir, daemon.uri('ext4'), VOLUME_BYTES, false);

  const mountpoint = path.join(dir, 'mnt');
  fs.mkdirSync(mountpoint);
  let mounted = false;
  defer(async () => { if (mounted) await run('umount', [mountpoint]); });
  const mount = async () => { await run('mount', ['-t', 'ext4', loop, mountpoint]); mounted = true; };
  const umount = async () => { await run('umount', [mountpoint]); mounted = false; };

  await run('mkfs.ext4', ['-q', loop]);
  await mount();
  const files = writeFiles(mountpoint);
  await run('sync', ['-f', mountpoint]);
  await umount();

  const fsck = await run('e2fsck', ['-fn', loop], { allowFailure: true });
  assert.equal(fsck.code, 0, `e2fsck -fn found problems:\n${fsck.stdout}${fsck.stderr}`);

  await mount();
  verifyFiles(mountpoint, files);
  await umount();

  // The bytes went through the daemon, not just into a cache along the way.
  const written = files.reduce((sum, file) => sum + file.sizeBytes, 0);
  const stored = dataBytes(await nbdMap(daemon.uri('ext4')));
  assert.ok(stored >= written, `volume holds ${stored} data bytes, files alone are ${written}`);
});
