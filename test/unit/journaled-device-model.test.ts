/**
 * Model test of the journaled volume: random writes, zeroes, trims and flushes of random
 * sizes and alignments against an in-memory oracle; after every step a random range reads
 * back byte for byte; reopening (with and without a checkpoint, across segment rolls) gives
 * the same image; block status never calls data a hole.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { nodeFileLayer } from '../../src/journal/index.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import { makeTempDir } from '../helpers/daemon.js';
import { probeAgainstOracle, randomRange } from '../helpers/device-model.js';
import { Random } from '../helpers/random.js';

const SIZE = 3 * 1024 * 1024 + 4096 * 5 + 512;
const VOLUME_ID = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

function open(dir: string, clock: { us: number }): JournaledDevice {
  return JournaledDevice.open({
    name: 'model', directory: dir, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 512 * 1024, checkpointEveryBytes: 256 * 1024,
    nowUs: () => (clock.us += 7),
  });
}


for (const seed of [21, 22, 23, 24, 25, 26]) {
  test(`journaled device matches the oracle (seed ${seed})`, async (t) => {
    const dir = makeTempDir();
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const rng = new Random(seed);
    const clock = { us: 1_700_000_000_000_000 };
    const oracle = Buffer.alloc(SIZE);
    let device = open(dir, clock);
    let seqExpected = 0;
    for (let step = 0; step < 500; step += 1) {
      const { offset, length } = randomRange(rng, SIZE, 300 * 1024);
      const action = rng.int(20);
      if (action < 10) {
        const data = rng.bytes(length, rng.int(4) === 0);
        await device.write(offset, data, { fua: rng.int(15) === 0 });
        data.copy(oracle, offset);
        seqExpected += 1;
      } else if (action < 13) {
        await device.writeZeroes(offset, length, { fua: false, mayTrim: rng.int(2) === 0, fastOnly: rng.int(2) === 0 });
        oracle.fill(0, offset, offset + length);
        seqExpected += 1;
      } else if (action < 15) {
        await device.trim(offset, length, { fua: false });
        oracle.fill(0, offset, offset + length);
        seqExpected += 1;
      } else if (action < 17) {
        await device.flush();
        seqExpected += 1;
      } else if (action < 18) {
        await device.checkpoint();
      } else if (action < 19) {
        await device.close();
        device = open(dir, clock);
      } else {
        // Reopen without the checkpoint: the index is rebuilt from the journal alone.
        await device.close();
        fs.rmSync(path.join(dir, 'index.ckpt'), { force: true });
        device = open(dir, clock);
        assert.equal(device.openReport.checkpoint, 'absent');
      }
      assert.equal(device.stats().seqLast, seqExpected, `step ${step}: seq is gap-free`);
      await probeAgainstOracle(device, oracle, rng, 300 * 1024, step);
    }
    assert.ok(device.stats().segments > 1, 'segments rolled');
    const whole = Buffer.alloc(SIZE);
    await device.read(0, whole);
    assert.ok(whole.equals(oracle), 'final image equals the oracle');
    const report = await device.fsck(false);
    assert.deepEqual(report.problems, []);
    await device.close();
  });
}

test('segment rolls, syncs and reads of old segments leak no file descriptors', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_700_000_000_000_000 };
  const device = open(dir, clock);
  const fds = () => fs.readdirSync('/proc/self/fd').length;
  const before = fds();
  for (let i = 0; i < 400; i += 1) {
    // Different bytes each time: an identical rewrite would store nothing.
    const block = Buffer.alloc(64 * 1024, (i % 250) + 1);
    await device.write((i * block.length) % (SIZE - block.length), block, { fua: false });
    if (i % 10 === 0) await device.flush();
    const back = Buffer.alloc(128 * 1024);
    await device.read((i * 4096) % (SIZE - back.length), back);
  }
  await device.flush();
  assert.ok(device.stats().segments > 40, `many segments (${device.stats().segments})`);
  assert.ok(fds() - before <= 70, `descriptors bounded: ${fds() - before} more than before`);
  await device.close();
  assert.ok(fds() <= before + 1, 'close releases every descriptor');
});

test('damaged journal data is never served: the read fails and the volume is refused', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_700_000_000_000_000 };
  let device = open(dir, clock);
  for (let i = 0; i < 8; i += 1) await device.write(i * 65536, Buffer.alloc(65536, i + 1), { fua: false });
  await device.close();
  // Damage the payload of the fourth record (behind the checkpoint: start-up replay skips it).
  const segment = path.join(dir, 'journal', '00000001.seg');
  const bytes = fs.readFileSync(segment);
  const span = Math.ceil((56 + 16 * 4 + 65536) / 8) * 8;
  bytes[64 + 3 * span + 56 + 64 + 1000] ^= 0x5a;
  fs.writeFileSync(segment, bytes);
  const reported: string[] = [];
  device = JournaledDevice.open({
    name: 'model', directory: dir, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 512 * 1024, checkpointEveryBytes: 256 * 1024,
    nowUs: () => (clock.us += 7), onCorruption: (error) => reported.push(error.message),
  });
  assert.equal(device.openReport.checkpoint, 'loaded');
  const good = Buffer.alloc(4096);
  await device.read(0, good);
  assert.ok(good.every((b) => b === 1), 'undamaged data reads back');
  await assert.rejects(device.read(3 * 65536, Buffer.alloc(4096)), { code: 'JOURNAL_CORRUPT' });
  assert.equal(reported.length, 1);
  assert.match(reported[0], /00000001\.seg/);
  await assert.rejects(device.read(0, good), { code: 'JOURNAL_CORRUPT' }, 'a refused volume serves nothing');
  await assert.rejects(device.write(0, Buffer.alloc(512), { fua: false }), { code: 'JOURNAL_CORRUPT' });
  await device.close();
});

test('an idle volume after a flush gets a checkpoint: damage to its last batch is then corruption, not a torn tail', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_700_000_000_000_000 };
  const options = {
    name: 'model', directory: dir, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 512 * 1024, checkpointEveryBytes: 1024 * 1024 * 1024,
    nowUs: () => (clock.us += 7), idleCheckpointMs: 20,
  };
  const device = JournaledDevice.open(options);
  await device.write(0, Buffer.alloc(8192, 9), { fua: false });
  await device.flush();
  const checkpoint = path.join(dir, 'index.ckpt');
  // Bounded poll: the idle timer has no event of its own to await.
  for (let i = 0; i < 200 && !fs.existsSync(checkpoint); i += 1) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.ok(fs.existsSync(checkpoint), 'idle checkpoint written');
  // Simulate a crash (no clean close), then damage the flushed write's payload.
  const segment = path.join(dir, 'journal', '00000001.seg');
  const bytes = fs.readFileSync(segment);
  bytes[64 + 56 + 8 + 100] ^= 0x01;
  fs.writeFileSync(segment, bytes);
  const reopened = JournaledDevice.open({ ...options, idleCheckpointMs: 0 });
  assert.equal(reopened.stats().seqLast, 2, 'nothing was cut');
  await assert.rejects(reopened.read(0, Buffer.alloc(4096)), { code: 'JOURNAL_CORRUPT' });
  await reopened.close();
  await device.close();
});

test('fsck yields while it scans: writes go on meanwhile, and no false problem is reported', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_700_000_000_000_000 };
  const device = open(dir, clock);
  const block = Buffer.alloc(256 * 1024, 3);
  for (let i = 0; i < 48; i += 1) await device.write((i * block.length) % (SIZE - block.length), block, { fua: false });
  let writesDuringCheck = 0;
  let checking = true;
  const checked = device.fsck(false).finally(() => { checking = false; });
  while (checking) {
    await device.write(4096, Buffer.alloc(4096, 7), { fua: false });
    writesDuringCheck += 1;
    await new Promise((resolve) => setImmediate(resolve));
  }
  const report = await checked;
  assert.ok(writesDuringCheck > 1, `writes were served during the check (${writesDuringCheck})`);
  assert.deepEqual(report.problems, []);
  assert.equal(report.indexCompared, false, 'the index comparison waits for a quiet moment');
  const quiet = await device.fsck(false);
  assert.deepEqual(quiet.problems, []);
  assert.equal(quiet.indexCompared, true);
  await device.close();
});
