/**
 * `hindsight restore --to /dev/loopN`: a point written to a real block device. Every byte is
 * written (zeroes too: a device keeps whatever it held before), the SHA-256 printed is the
 * device's content over the volume's size, an existing device needs --force, and a device
 * smaller than the volume is refused without being touched.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import { MiB, deferrals, hindsight } from '../helpers/interop.js';
import { run } from '../helpers/run.js';

const VOLUME_BYTES = 16 * MiB;

function skipReason(): string | null {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root for loop devices';
  if (!fs.existsSync('/sbin/losetup') && !fs.existsSync('/usr/sbin/losetup')) return 'needs losetup (util-linux)';
  return null;
}

async function attachLoop(file: string): Promise<string> {
  const { stdout } = await run('losetup', ['-f', '--show', file]);
  return stdout.trim();
}

function sha256Prefix(file: string, bytes: number): string {
  const fd = fs.openSync(file, 'r');
  try {
    const data = Buffer.alloc(bytes);
    assert.equal(fs.readSync(fd, data, 0, bytes, 0), bytes);
    return createHash('sha256').update(data).digest('hex');
  } finally {
    fs.closeSync(fd);
  }
}

test('restore to a block device writes every byte, needs --force, and refuses a device too small', { skip: skipReason() ?? false }, async (t) => {
  const defer = deferrals(t);
  const dir = makeTempDir('hindsight-restore-device-');
  defer(() => fs.rmSync(dir, { recursive: true, force: true }));
  const daemon = await startDaemon({ volumes: [`dev:${VOLUME_BYTES}`] });
  defer(() => daemon.stop());
  const api = ['--api', daemon.apiUrl];
  // The point: 1 MiB of 0x5a at 2 MiB, the rest never written (zeroes).
  await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x5a ${2 * MiB} ${1 * MiB}`, '-c', 'flush', daemon.uri('dev')]);
  const expected = Buffer.alloc(VOLUME_BYTES);
  expected.fill(0x5a, 2 * MiB, 3 * MiB);

  // A device full of 0xff, larger than the volume: the zeroes must really be written.
  const backing = path.join(dir, 'device.img');
  fs.writeFileSync(backing, Buffer.alloc(VOLUME_BYTES + 4 * MiB, 0xff));
  const device = await attachLoop(backing);
  defer(() => run('losetup', ['-d', device], { allowFailure: true }));

  const refused = await hindsight(['restore', 'dev', '--at', 'latest', '--to', device, '--json', ...api]);
  assert.notEqual(refused.code, 0);
  assert.equal(JSON.parse(refused.stdout).error.code, 'TARGET_EXISTS');
  assert.equal(sha256Prefix(device, VOLUME_BYTES), createHash('sha256').update(Buffer.alloc(VOLUME_BYTES, 0xff)).digest('hex'), 'a refused restore leaves the device alone');

  const restored = await hindsight(['restore', 'dev', '--at', 'latest', '--to', device, '--force', '--json', ...api]);
  assert.equal(restored.code, 0, restored.stderr);
  const result = JSON.parse(restored.stdout) as { kind: string; sha256: string; dataBytes: number; zeroBytes: number; path: string };
  assert.equal(result.kind, 'block-device');
  assert.equal(result.path, device);
  assert.equal(result.dataBytes, 1 * MiB);
  assert.equal(result.zeroBytes, VOLUME_BYTES - 1 * MiB);
  const expectedSha = createHash('sha256').update(expected).digest('hex');
  assert.equal(result.sha256, expectedSha, 'reported sha256 is the image\'s');
  assert.equal(sha256Prefix(device, VOLUME_BYTES), expectedSha, 'the device holds the image, zeroes included');
  const tail = Buffer.alloc(4 * MiB);
  const fd = fs.openSync(device, 'r');
  fs.readSync(fd, tail, 0, tail.length, VOLUME_BYTES);
  fs.closeSync(fd);
  assert.ok(tail.every((byte) => byte === 0xff), 'bytes past the volume\'s size are left alone');

  // Too small: refused before anything is written.
  const small = path.join(dir, 'small.img');
  fs.writeFileSync(small, Buffer.alloc(VOLUME_BYTES / 2, 0xee));
  const smallDevice = await attachLoop(small);
  defer(() => run('losetup', ['-d', smallDevice], { allowFailure: true }));
  const tooSmall = await hindsight(['restore', 'dev', '--at', 'latest', '--to', smallDevice, '--force', '--json', ...api]);
  assert.notEqual(tooSmall.code, 0);
  const error = JSON.parse(tooSmall.stdout).error as { code: string; message: string };
  assert.equal(error.code, 'INVALID_ARGUMENT');
  assert.match(error.message, /less than the volume/);
  assert.ok(Buffer.from(fs.readFileSync(small)).every((byte) => byte === 0xee), 'the small device is untouched');
});
