/**
 * Reads of compressed payloads that wait in the thread pool while the world moves: a file
 * layer holds their reads back while (a) other clients' small reads evict the frames they
 * found cached, (b) a compaction installs a new copy of their segment (new positions), and
 * (c) that compaction moves another compressed record onto their old payload position (so a
 * late cache insert under the old key would serve the wrong record). Every read must return
 * the bytes written, and no corruption may be reported.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { test } from 'node:test';
import { nodeFileLayer } from '../../src/journal/index.js';
import type { FileLayer, StorageFile } from '../../src/journal/index.js';
import { encodeContainer } from '../../src/journal/container.js';
import { payloadOffset, recordSpan } from '../../src/journal/record.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import { reclaimSpace } from '../../src/volume/retention.js';
import { makeTempDir } from '../helpers/daemon.js';

const MiB = 1024 * 1024;

function text(bytes: number, seed: number): Buffer {
  const words = ['alpha ', 'beta ', 'gamma ', 'delta ', 'epsilon\n', 'zeta ', 'eta ', 'theta '];
  const out = Buffer.alloc(bytes);
  let state = seed;
  for (let at = 0; at < bytes;) {
    state = (state * 1103515245 + 12345) & 0x7fffffff;
    at += out.write(words[(state >> 8) % 8], at) || bytes;
  }
  return out;
}

/** Holds back asynchronous segment reads while armed, until released. */
class Gate {
  armed = false;
  held = 0;
  private waiting: Array<() => void> = [];

  release(): void {
    for (const resume of this.waiting.splice(0)) resume();
  }

  async hold(file: string): Promise<void> {
    if (!this.armed || !file.endsWith('.seg')) return;
    this.held += 1;
    await new Promise<void>((resume) => this.waiting.push(resume));
  }

  files(): FileLayer {
    const wrap = (file: StorageFile): StorageFile => ({
      path: file.path,
      sizeBytes: () => file.sizeBytes(),
      writev: (buffers, position) => file.writev(buffers, position),
      writevAsync: (buffers, position) => file.writevAsync(buffers, position),
      read: (into, intoOffset, length, position) => file.read(into, intoOffset, length, position),
      readv: (buffers, position) => file.readv(buffers, position),
      readAsync: async (into, intoOffset, length, position) => {
        await this.hold(file.path);
        return file.readAsync(into, intoOffset, length, position);
      },
      readvAsync: async (buffers, position) => {
        await this.hold(file.path);
        return file.readvAsync(buffers, position);
      },
      datasync: () => file.datasync(),
      truncate: (sizeBytes) => file.truncate(sizeBytes),
      close: () => file.close(),
    });
    return { ...nodeFileLayer, open: (file, create) => wrap(nodeFileLayer.open(file, create)) };
  }
}

function openDevice(t: { after(fn: () => unknown): void }, gate: Gate, sizeBytes: number): { device: JournaledDevice; corruption: () => Error | null } {
  const dir = makeTempDir('hindsight-zrace-');
  const clock = { us: 1_700_000_000_000_000 };
  let corruption: Error | null = null;
  const device = JournaledDevice.open({
    name: 'z', directory: dir, sizeBytes, volumeId: Buffer.from('00112233445566778899aabbccddeeff', 'hex'), files: gate.files(),
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 4 * MiB, checkpointEveryBytes: 64 * MiB, idleCheckpointMs: 0, nowUs: () => (clock.us += 7),
    onCorruption: (error) => { corruption = error; },
  });
  t.after(async () => {
    await device.close().catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { device, corruption: () => corruption };
}

test('a waiting read keeps the frames it found cached, whatever other reads evict meanwhile', async (t) => {
  const gate = new Gate();
  const { device, corruption } = openDevice(t, gate, 64 * MiB);
  const image = Buffer.alloc(64 * MiB);
  for (let i = 0; i < 24; i += 1) {
    const data = text(MiB, i + 1);
    await device.write(i * MiB, data, { fua: false });
    data.copy(image, i * MiB);
  }
  await device.seal();
  assert.ok((await reclaimSpace(device, { sliceMs: 1 })).recordsCompressed > 0);
  await device.read(0, Buffer.alloc(4096)); // frame 0 of the first record cached
  const big = Buffer.alloc(128 * 1024);
  gate.armed = true;
  const reading = device.read(0, big);
  gate.armed = false;
  assert.ok(gate.held > 0, 'the read waits');
  for (let at = MiB; at < 24 * MiB; at += 64 * 1024) await device.read(at, Buffer.alloc(4096)); // 16+ MiB of frames: the cache turns over
  gate.release();
  await reading;
  assert.ok(big.equals(image.subarray(0, big.length)));
  assert.equal(corruption(), null);
});

test('a waiting read finishes on the file it started on while a compaction installs a new one', async (t) => {
  const gate = new Gate();
  const { device, corruption } = openDevice(t, gate, 16 * MiB);
  await device.write(4 * MiB, randomBytes(512 * 1024), { fua: false }); // overwritten below: thinned later
  const a = text(MiB, 1);
  await device.write(0, a, { fua: false });
  await device.write(4 * MiB, text(512 * 1024, 8), { fua: false });
  await device.seal();
  await reclaimSpace(device, { sliceMs: 1 });
  await device.syncThrough(device.history.seqLast);
  await device.expirePoints([[1, 2]]);
  const big = Buffer.alloc(256 * 1024);
  gate.armed = true;
  const reading = device.read(0, big);
  gate.armed = false;
  assert.ok(gate.held > 0, 'the read waits');
  const second = await reclaimSpace(device, { sliceMs: 1, reclaimShareMin: 0 });
  assert.equal(second.recordsThinned, 1, 'the segment was compacted again meanwhile');
  gate.release();
  await reading;
  assert.ok(big.equals(a.subarray(0, big.length)));
  assert.equal(corruption(), null);
});

test('what a waiting read decodes is not cached under a key a compaction gave to another record', async (t) => {
  const gate = new Gate();
  const a = text(MiB, 1);
  const b = text(MiB, 2);
  // A thinned record T before A and B, sized so that B lands exactly on A's old position.
  const need = recordSpan(encodeContainer(a)!.length) + payloadOffset(encodeContainer(b)!.length) - payloadOffset(encodeContainer(a)!.length);
  let thinBytes = 1024;
  while (recordSpan(thinBytes) - 56 < need) thinBytes += 8;
  if (recordSpan(thinBytes) - 56 !== need) {
    t.skip('no exact fit for this data');
    return;
  }
  const { device, corruption } = openDevice(t, gate, 16 * MiB);
  await device.write(8 * MiB, randomBytes(thinBytes), { fua: false });
  await device.write(0, a, { fua: false });
  await device.write(MiB, b, { fua: false });
  await device.write(8 * MiB, randomBytes(thinBytes), { fua: false });
  await device.seal();
  await reclaimSpace(device, { sliceMs: 1 });
  await device.read(200 * 1024, Buffer.alloc(4096)); // A's container index cached
  await device.syncThrough(device.history.seqLast);
  await device.expirePoints([[1, 3]]);
  const big = Buffer.alloc(128 * 1024);
  gate.armed = true;
  const reading = device.read(0, big);
  gate.armed = false;
  assert.ok(gate.held > 0, 'the read waits');
  await reclaimSpace(device, { sliceMs: 1, reclaimShareMin: 0 });
  gate.release();
  await reading;
  assert.ok(big.equals(a.subarray(0, big.length)), 'the waiting read returns A');
  const got = Buffer.alloc(4096);
  await device.read(MiB, got);
  assert.ok(got.equals(b.subarray(0, 4096)), 'B reads as B, not as A');
  assert.equal(corruption(), null);
});

test('compression tasks from many compactions at once: the pool holds a bounded few, the rest wait uncopied, every result is right', async () => {
  const { compressPieces, compressionBacklog } = await import('../../src/journal/compress-pool.js');
  const text = Buffer.from('select value from table where key = 42 order by page;\n'.repeat(20_000));
  const windows = Array.from({ length: 40 }, (_, i) => Buffer.concat([Buffer.from(`window ${i}\n`), text]));
  let most = 0;
  const running = windows.map((window) => compressPieces(window, [[0, 65536], [65536, 65536]]));
  const watch = setInterval(() => {
    most = Math.max(most, compressionBacklog().inPool);
  }, 1);
  most = Math.max(most, compressionBacklog().inPool);
  assert.ok(compressionBacklog().waiting > 0, 'the tasks past the bound wait');
  const results = await Promise.all(running);
  clearInterval(watch);
  assert.ok(most <= compressionBacklog().inPoolMax, `at most ${compressionBacklog().inPoolMax} tasks with the pool (${most})`);
  results.forEach((containers, i) => {
    containers.forEach((container, j) => {
      // (The worker encodes as this thread would: the same container, byte for byte.)
      assert.ok(container?.equals(encodeContainer(windows[i].subarray(j * 65536, (j + 1) * 65536))!), `window ${i} piece ${j} is its own container`);
    });
  });
});
