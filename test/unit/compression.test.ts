/**
 * Compressed payloads (journal/container.ts): the container round-trips mixed frames,
 * refuses to expand random data, and its index is checked; on a real volume, compaction
 * compresses a sealed segment's compressible payloads, every read (whole, partial, across
 * frames, sync and async, after a reopen with and without checkpoint) returns the bytes
 * written, fsck is clean, and damage to a compressed payload is refused (JOURNAL_CORRUPT),
 * never served.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { LIMITS, cacheBytes, isHindsightError } from '../../src/core/index.js';
import { RecordFlag, RecordType, nodeFileLayer } from '../../src/journal/index.js';
import { FRAME_BYTES, decodeContainerIndex, decodeFrame, encodeContainer } from '../../src/journal/container.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import { reclaimSpace } from '../../src/volume/retention.js';
import { makeTempDir } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

function text(rng: Random, bytes: number): Buffer {
  const words = ['alpha ', 'beta ', 'gamma ', 'delta ', 'epsilon\n', 'zeta ', 'eta ', 'theta '];
  const out = Buffer.alloc(bytes);
  for (let at = 0; at < bytes;) at += out.write(words[rng.int(words.length)], at) || bytes;
  return out;
}

test('a container round-trips compressible and raw frames and checks its index', () => {
  const rng = new Random(3);
  // Three frames compressible, one random (kept raw), a short last one.
  const logical = Buffer.concat([text(rng, 3 * FRAME_BYTES), rng.bytes(FRAME_BYTES), text(rng, 1000)]);
  const container = encodeContainer(logical);
  assert.ok(container && container.length < logical.length * 0.7, 'it saves');
  const index = decodeContainerIndex(container, container.length, 'test');
  assert.equal(index.logicalBytes, logical.length);
  assert.deepEqual(index.raw, [false, false, false, true, false]);
  const back = Buffer.concat(index.starts.map((start, frame) => decodeFrame(index, frame, container.subarray(start, start + index.lengths[frame]), 'test')));
  assert.ok(back.equals(logical));
  assert.equal(encodeContainer(rng.bytes(256 * 1024)), null, 'random data is not expanded: stored as it is');
  const bad = Buffer.from(container);
  bad.writeUInt32LE(bad.readUInt32LE(16) + 1, 16);
  assert.throws(() => decodeContainerIndex(bad, container.length, 'test'), (err) => isHindsightError(err, 'JOURNAL_CORRUPT'));
  assert.throws(() => decodeContainerIndex(container, container.length + 1, 'test'), (err) => isHindsightError(err, 'JOURNAL_CORRUPT'));
});

test('compaction compresses a sealed segment; every read returns what was written; damage is refused', async (t) => {
  const dir = makeTempDir('hindsight-compress-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const rng = new Random(11);
  const clock = { us: 1_700_000_000_000_000 };
  const options = {
    name: 'z', directory: dir, sizeBytes: SIZE, volumeId: Buffer.from('00112233445566778899aabbccddeeff', 'hex'), files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 4 * MiB, checkpointEveryBytes: 2 * MiB, idleCheckpointMs: 0, nowUs: () => (clock.us += 7),
  };
  let device = JournaledDevice.open(options);
  const image = Buffer.alloc(SIZE);
  // Text, random and mixed writes of any size and alignment; page updates over them.
  for (let i = 0; i < 300; i += 1) {
    const length = 1 + rng.int(rng.int(4) === 0 ? 700_000 : 70_000);
    const offset = rng.int(SIZE - length);
    const data = rng.int(3) === 0 ? rng.bytes(length) : text(rng, length);
    await device.write(offset, data, { fua: false });
    data.copy(image, offset);
  }
  await device.seal();
  const before = device.stats().bytes;
  const report = await reclaimSpace(device, { sliceMs: 1 });
  assert.ok(report.recordsCompressed > 50, `payloads compressed: ${JSON.stringify(report)}`);
  assert.ok(device.stats().bytes < before * 0.8, `the journal shrank (${before} -> ${device.stats().bytes})`);
  const again = await reclaimSpace(device, { sliceMs: 1 });
  assert.equal(again.segmentsCompacted, 0, 'a compressed segment is not compacted again for nothing');

  const check = async (label: string) => {
    const whole = Buffer.alloc(SIZE);
    await device.read(0, whole);
    assert.ok(whole.equals(image), `${label}: whole volume`);
    for (let i = 0; i < 200; i += 1) {
      const length = 1 + rng.int(rng.int(3) === 0 ? 3 * FRAME_BYTES : 5000);
      const offset = rng.int(SIZE - length);
      const got = Buffer.alloc(length);
      await device.read(offset, got);
      assert.ok(got.equals(image.subarray(offset, offset + length)), `${label}: read ${offset}+${length}`);
    }
  };
  await check('after compaction');
  // A page update over compressed data compares with it (decompressing) and stores one sector.
  const page = image.subarray(MiB, MiB + 4096);
  const updated = Buffer.from(page);
  updated.set(rng.bytes(512), 1024);
  await device.write(MiB, updated, { fua: false });
  updated.copy(image, MiB);
  const entry = device.history.entry(device.history.seqLast);
  assert.equal(entry.type, RecordType.WRITE);
  assert.equal(entry.payloadBytes, 512, 'only the changed sector is stored');
  await check('after a page update');
  // Decompressed frames went into the daemon-wide cache, within its budget; closing the
  // volume takes its frames out.
  const cached = cacheBytes().frames;
  assert.ok(cached > 0 && cached <= LIMITS.frameCacheBytesMax, `frames cached: ${cached}`);
  await device.close();
  assert.equal(cacheBytes().frames, 0, 'a closed journal leaves no frames cached');
  device = JournaledDevice.open(options);
  await check('reopened');
  await device.close();
  fs.rmSync(path.join(dir, 'index.ckpt'));
  device = JournaledDevice.open(options);
  await check('reopened without checkpoint');
  const fsck = await device.fsck(false);
  assert.deepEqual(fsck.problems, []);

  // Damage inside a compressed payload: refused, not served.
  let victim = null;
  for (let seq = 1; seq <= device.history.seqLast && !victim; seq += 1) {
    const e = device.history.entry(seq);
    if (e.type === RecordType.WRITE && (e.flags & RecordFlag.COMPRESSED) !== 0 && (e.logicalBytes ?? 0) > 100_000) victim = e;
  }
  assert.ok(victim, 'a compressed record to damage');
  await device.close();
  const segment = path.join(dir, 'journal', `${String(victim.segment).padStart(8, '0')}.seg`);
  const bytes = fs.readFileSync(segment);
  bytes[victim.payloadPosition + Math.floor(victim.payloadBytes / 2)] ^= 0x40;
  fs.writeFileSync(segment, bytes);
  device = JournaledDevice.open(options);
  t.after(() => device.close().catch(() => undefined));
  const offset = victim.offsetBytes + victim.payloadSkip;
  let refused = 0;
  for (let at = offset; at < offset + (victim.logicalBytes ?? 0); at += 4096) {
    const got = Buffer.alloc(Math.min(4096, offset + (victim.logicalBytes ?? 0) - at));
    try {
      await device.read(at, got);
      // Served bytes are right (another record may cover them now, or an undamaged frame).
      assert.ok(got.equals(image.subarray(at, at + got.length)) || at < offset, `read at ${at} served wrong bytes`);
    } catch (err) {
      assert.ok(isHindsightError(err, 'JOURNAL_CORRUPT'), String(err));
      refused += 1;
    }
  }
  const damaged = await device.fsck(false);
  assert.ok(damaged.problems.length > 0, 'fsck finds the damage');
  assert.ok(refused > 0, 'reads of the damaged payload are refused');
});
