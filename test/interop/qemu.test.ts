/**
 * QEMU's own block layer against the daemon: qemu-img (info, convert both ways, compare,
 * check, map) and qemu-io (write/read with patterns, write-zeroes, discard, flush, FUA).
 * These are the clients a hypervisor uses, so a mismatch here is a mismatch for every VM.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { TestContext } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import type { DaemonHandle } from '../helpers/daemon.js';
import { KiB, MiB, deferrals, nbdMap, patternBytes, typeAt, writeSparseImage } from '../helpers/interop.js';
import type { ImageRegion } from '../helpers/interop.js';
import { run } from '../helpers/run.js';

const VOLUME_BYTES = 64 * MiB;

let daemon: DaemonHandle;

before(async () => {
  daemon = await startDaemon({ volumes: ['info0:64M', 'conv0:64M', 'out0:64M', 'io0:64M', 'odd0:1000K'] });
});

after(async () => {
  const code = await daemon?.stop();
  if (daemon) fs.rmSync(daemon.dataDir, { recursive: true, force: true });
  assert.equal(code, 0, `daemon exited with ${code}: ${daemon?.stderr()}`);
});

function tempDir(t: TestContext): string {
  const dir = makeTempDir('hindsight-qemu-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Data where a guest would put it, unaligned edges included, with holes between. */
function imageRegions(): ImageRegion[] {
  return [
    { offsetBytes: 0, data: patternBytes(64 * KiB, 1) },
    { offsetBytes: MiB + 512, data: patternBytes(100 * KiB, 2) },
    { offsetBytes: 10 * MiB, data: patternBytes(4 * KiB, 3) },
    { offsetBytes: 20 * MiB, data: Buffer.alloc(MiB) }, // allocated in the file, but zeroes
    { offsetBytes: 32 * MiB - 3 * KiB, data: patternBytes(8 * KiB, 4) },
    { offsetBytes: VOLUME_BYTES - 8 * KiB, data: patternBytes(8 * KiB, 5) },
  ];
}

function makeImage(dir: string): string {
  const image = path.join(dir, 'source.raw');
  writeSparseImage(image, VOLUME_BYTES, imageRegions());
  return image;
}

async function qemuIo(uri: string, commands: string[], allowFailure = false) {
  const args = ['-f', 'raw', '-t', 'writeback'];
  for (const command of commands) args.push('-c', command);
  args.push(uri);
  return run('qemu-io', args, { allowFailure });
}

test('qemu-img info reports the volume as a raw disk of the right virtual size', async () => {
  const { stdout } = await run('qemu-img', ['info', '--output=json', daemon.uri('info0')]);
  const info = JSON.parse(stdout) as { 'virtual-size': number; format: string };
  assert.equal(info['virtual-size'], VOLUME_BYTES);
  assert.equal(info.format, 'raw');
  const odd = JSON.parse((await run('qemu-img', ['info', '--output=json', daemon.uri('odd0')])).stdout) as { 'virtual-size': number };
  assert.equal(odd['virtual-size'], 1000 * KiB, 'a size that is not a power of two is reported exactly');
});

test('qemu-img convert writes a sparse patterned image into the volume; compare finds them identical', async (t) => {
  const dir = tempDir(t);
  const image = makeImage(dir);
  const uri = daemon.uri('conv0');
  // Stale data where the image has holes: convert must overwrite it with zeroes.
  await qemuIo(uri, ['write -P 0x5a 40M 1M', 'write -P 0x5a 63M 4k']);

  await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, uri]);

  const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, uri], { allowFailure: true });
  assert.equal(same.code, 0, `compare: ${same.stdout}${same.stderr}`);
  assert.match(same.stdout, /Images are identical/);

  // Block status agrees with the content: the tail region is data, a hole in the image reads as zero.
  const map = await nbdMap(uri);
  assert.equal(typeAt(map, VOLUME_BYTES - 1), 0, 'last written sector is data');
  assert.equal(typeAt(map, 10 * MiB), 0, 'patterned 4 KiB region is data');

  // The comparison can fail: one changed byte in a hole is found at its exact offset.
  await qemuIo(uri, ['write -P 0x01 33M 1']);
  const differs = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, uri], { allowFailure: true });
  assert.equal(differs.code, 1, `compare should report a difference: ${differs.stdout}${differs.stderr}`);
  assert.match(differs.stdout, new RegExp(`Content mismatch at offset ${33 * MiB}!`));
});

test('qemu-img convert copies the volume out to qcow2; the copy is identical and sparse', async (t) => {
  const dir = tempDir(t);
  const image = makeImage(dir);
  const uri = daemon.uri('out0');
  await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, uri]);
  const qcow2 = path.join(dir, 'copy.qcow2');

  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', uri, qcow2]);

  for (const [left, leftFormat] of [[uri, 'raw'], [image, 'raw']] as const) {
    const compared = await run('qemu-img', ['compare', '-f', leftFormat, '-F', 'qcow2', left, qcow2], { allowFailure: true });
    assert.equal(compared.code, 0, `compare ${left}: ${compared.stdout}${compared.stderr}`);
    assert.match(compared.stdout, /Images are identical/);
  }
  await run('qemu-img', ['check', qcow2]);
  const info = JSON.parse((await run('qemu-img', ['info', '--output=json', qcow2])).stdout) as { 'virtual-size': number };
  assert.equal(info['virtual-size'], VOLUME_BYTES);
  const qcowMap = JSON.parse((await run('qemu-img', ['map', '--output=json', qcow2])).stdout) as Array<{ length: number; data: boolean }>;
  const allocated = qcowMap.filter((extent) => extent.data).reduce((sum, extent) => sum + extent.length, 0);
  assert.ok(allocated > 0 && allocated <= 2 * MiB, `qcow2 copy should hold only the written regions, holds ${allocated} bytes`);
});

test('qemu-io: patterned write/read, write-zeroes, discard, flush, unaligned and FUA writes', async () => {
  const uri = daemon.uri('io0');
  const { stdout, code } = await qemuIo(uri, [
    'write -P 0xab 4k 64k',
    'read -P 0xab 4k 64k',
    'write -P 0xee 128k 64k',
    'write -z 128k 64k',
    'read -P 0 128k 64k',
    'write -P 0xcd 256k 64k',
    'discard 256k 64k',
    'read -P 0 256k 64k',
    'flush',
    'write -f -P 0xef 1M 8k',
    'read -P 0xef 1M 8k',
    'write -P 0x11 2097153 1000',
    'read -P 0x11 2097153 1000',
    'read -P 0 2097152 1',
    'read -P 0 2098153 3095',
    'write -P 0x77 3M 64k',
    'write -z -u 3M 64k',
    'read -P 0 3M 64k',
    'read -P 0xab 4k 64k',
  ]);
  assert.equal(code, 0);
  assert.doesNotMatch(stdout, /Pattern verification failed|error|failed/i, stdout);
  const expected = [
    'wrote 65536/65536 bytes at offset 4096',
    'read 65536/65536 bytes at offset 4096',
    'wrote 65536/65536 bytes at offset 131072',
    'read 65536/65536 bytes at offset 131072',
    'discard 65536/65536 bytes at offset 262144',
    'read 65536/65536 bytes at offset 262144',
    'wrote 8192/8192 bytes at offset 1048576',
    'read 8192/8192 bytes at offset 1048576',
    'wrote 1000/1000 bytes at offset 2097153',
    'read 1000/1000 bytes at offset 2097153',
    'read 1/1 bytes at offset 2097152',
    'read 3095/3095 bytes at offset 2098153',
    'read 65536/65536 bytes at offset 3145728',
  ];
  for (const line of expected) assert.ok(stdout.includes(line), `missing "${line}" in:\n${stdout}`);
  assert.equal((stdout.match(/^wrote /gm) ?? []).length, 8, 'every write acknowledged');
  assert.equal((stdout.match(/^read /gm) ?? []).length, 9, 'every read acknowledged');

  // A fresh process sees the same content (nothing lived only in qemu-io's cache).
  const again = await qemuIo(uri, ['read -P 0xab 4k 64k', 'read -P 0xef 1M 8k', 'read -P 0 256k 64k']);
  assert.doesNotMatch(again.stdout, /Pattern verification failed/);

  // The discarded range is a hole again; the written one is data.
  const map = await nbdMap(uri);
  assert.equal(typeAt(map, 4 * KiB), 0);
  assert.equal(typeAt(map, 256 * KiB) ?? -1, 3, 'discarded whole chunks read as hole,zero');
  assert.equal(typeAt(map, 3 * MiB) ?? -1, 3, 'write -z -u (may unmap) leaves a hole');

  // read -P really verifies: a wrong pattern fails, naming the offset.
  const wrong = await qemuIo(uri, ['read -P 0xab 128k 4k'], true);
  assert.notEqual(wrong.code, 0);
  assert.match(wrong.stdout, /Pattern verification failed at offset 131072/);
});

test('qemu-io: a FUA write survives the daemon being killed before any flush', async (t) => {
  const defer = deferrals(t);
  const dataDir = makeTempDir('hindsight-qemu-fua-');
  defer(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const first = await startDaemon({ dataDir, volumes: ['fua0:16M'] });
  defer(() => first.kill());
  // Interactive and writeback: qemu-io's default writethrough mode, and its flush on exit,
  // would make the data durable with or without FUA; here only FUA can.
  const io = spawn('qemu-io', ['-f', 'raw', '-t', 'writeback', first.uri('fua0')], { stdio: ['pipe', 'pipe', 'pipe'] });
  defer(() => io.kill('SIGKILL'));
  let output = '';
  await new Promise<void>((resolve, reject) => {
    io.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('wrote 12288/12288 bytes at offset 4096')) resolve();
    });
    io.once('exit', (code) => reject(new Error(`qemu-io exited (${code}) before the write completed: ${output}`)));
    io.stdin.write('write -f -P 0x3c 4k 12k\n');
  });

  await first.kill(); // SIGKILL while the client is still connected: no flush, no orderly close

  const second = await startDaemon({ dataDir });
  defer(async () => assert.equal(await second.stop(), 0));
  const read = await qemuIo(second.uri('fua0'), ['read -P 0x3c 4k 12k', 'read -P 0 0 4k'], true);
  assert.equal(read.code, 0, `FUA data lost after SIGKILL:\n${read.stdout}${read.stderr}`);
  assert.doesNotMatch(read.stdout, /Pattern verification failed/);
});
