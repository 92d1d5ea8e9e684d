/**
 * Model test: random writes, zeroes (with and without holes), trims and flushes against an
 * in-memory oracle; after every step a random range must read back byte for byte, block
 * status must never call data a hole, and a reopen after flush must give the same image.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { FileDevice } from '../../src/volume/index.js';
import { makeTempDir } from '../helpers/daemon.js';
import { probeAgainstOracle, randomRange } from '../helpers/device-model.js';
import { Random } from '../helpers/random.js';

const SIZE = 1024 * 1024 + 4096 * 3 + 512;

async function openDevice(dir: string, create: boolean): Promise<FileDevice> {
  const dataFile = path.join(dir, 'data.raw');
  if (create) FileDevice.createDataFile(dataFile, SIZE);
  return FileDevice.open({ name: 'model', dataFile, mapFile: path.join(dir, 'alloc.map'), sizeBytes: SIZE, syncEveryWrite: false, readOnly: false });
}


for (const seed of [1, 2, 3, 4, 5]) {
  test(`file device matches the oracle (seed ${seed})`, async (t) => {
    const dir = makeTempDir();
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const rng = new Random(seed);
    const oracle = Buffer.alloc(SIZE);
    let device = await openDevice(dir, true);
    for (let step = 0; step < 400; step += 1) {
      const { offset, length } = randomRange(rng, SIZE, 256 * 1024);
      const action = rng.int(10);
      if (action < 5) {
        const data = rng.bytes(length, rng.int(4) === 0);
        await device.write(offset, data, { fua: rng.int(20) === 0 });
        data.copy(oracle, offset);
      } else if (action < 7) {
        const mayTrim = rng.int(2) === 0;
        await device.writeZeroes(offset, length, { fua: false, mayTrim, fastOnly: false });
        oracle.fill(0, offset, offset + length);
      } else if (action < 8) {
        // TRIM leaves content unspecified; the oracle learns what the device now holds.
        await device.trim(offset, length, { fua: false });
        const after = Buffer.alloc(length);
        await device.read(offset, after);
        for (let i = 0; i < length; i += 1) assert.ok(after[i] === 0 || after[i] === oracle[offset + i], 'trim yields zero or old data');
        after.copy(oracle, offset);
      } else if (action < 9) {
        await device.flush();
      } else {
        await device.close();
        device = await openDevice(dir, false);
      }
      await probeAgainstOracle(device, oracle, rng, 256 * 1024, step);
    }
    const whole = Buffer.alloc(SIZE);
    await device.read(0, whole);
    assert.ok(whole.equals(oracle), 'final image equals the oracle');
    await device.close();
  });
}

test('zeroing without holes under FAST_ZERO is refused with NOT_SUPPORTED and changes nothing', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const device = await openDevice(dir, true);
  await device.write(0, Buffer.alloc(8192, 7), { fua: false });
  await assert.rejects(device.writeZeroes(0, 8192, { fua: false, mayTrim: false, fastOnly: true }), { code: 'NOT_SUPPORTED' });
  const got = Buffer.alloc(8192);
  await device.read(0, got);
  assert.ok(got.every((b) => b === 7));
  await device.close();
});

test('concurrent flushes share syncs and all resolve', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const device = await openDevice(dir, true);
  const flushes: Array<Promise<void>> = [];
  for (let i = 0; i < 50; i += 1) {
    await device.write(i * 4096, Buffer.alloc(4096, i + 1), { fua: false });
    flushes.push(device.flush());
  }
  await Promise.all(flushes);
  await device.close();
  const reopened = await openDevice(dir, false);
  const got = Buffer.alloc(4096);
  for (let i = 0; i < 50; i += 1) {
    await reopened.read(i * 4096, got);
    assert.ok(got.every((b) => b === i + 1), `block ${i} durable`);
  }
  await reopened.close();
});

test('a corrupt chunk map is refused with VOLUME_CORRUPT', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const device = await openDevice(dir, true);
  await device.write(0, Buffer.alloc(4096, 1), { fua: true });
  await device.close();
  const mapFile = path.join(dir, 'alloc.map');
  const bytes = fs.readFileSync(mapFile);
  bytes[bytes.length - 1] ^= 0x40;
  fs.writeFileSync(mapFile, bytes);
  await assert.rejects(openDevice(dir, false), { code: 'VOLUME_CORRUPT' });
});
