/**
 * Only what changed is stored: a rewrite of identical bytes costs a record and no payload,
 * a write of zeroes is stored as allocated zeroes, anything else as a WRITE. Every one keeps
 * its seq and time (points in time stay exact, the timeline counts client writes), reads stay
 * exact, FUA still means durable, and a reopen counts the client's bytes the same.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { RecordType, nodeFileLayer } from '../../src/journal/index.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import { makeTempDir } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';

const SIZE = 16 * 1024 * 1024;
const MiB = 1024 * 1024;
const VOLUME_ID = Buffer.from('feedfacefeedfacefeedfacefeedface', 'hex');

function open(dir: string, clock: { us: number }): JournaledDevice {
  return JournaledDevice.open({
    name: 'reduce', directory: dir, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 64 * MiB, checkpointEveryBytes: 1 << 30,
    nowUs: () => (clock.us += 10), idleCheckpointMs: 0,
  });
}

test('identical rewrites and zero writes store no payload; reads, points, timeline and counts stay exact', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_900_000_000_000_000 };
  const rng = new Random(5);
  let device = open(dir, clock);
  const data = rng.bytes(1 * MiB, false);
  await device.write(2 * MiB, data, { fua: false });
  const afterFirst = device.stats().bytes;
  assert.ok(afterFirst > 1 * MiB, 'the first write stores its payload');

  // The same bytes again, FUA: a record, no payload, durable.
  await device.write(2 * MiB, Buffer.from(data), { fua: true });
  const rewrite = device.history.entry(device.history.seqLast);
  assert.equal(rewrite.type, RecordType.UNCHANGED);
  assert.ok(device.stats().bytes - afterFirst <= 128, `an identical rewrite costs a small record (${device.stats().bytes - afterFirst} bytes)`);
  assert.ok(device.stats().seqDurable >= rewrite.seq, 'FUA on an unchanged write is still durable');

  // Part of it again, one byte different: stored as a WRITE.
  const changed = Buffer.from(data.subarray(0, 64 * 1024));
  changed[4095] ^= 1;
  await device.write(2 * MiB, changed, { fua: false });
  assert.equal(device.history.entry(device.history.seqLast).type, RecordType.WRITE);

  // Zeroes written over data and over nothing: allocated zeroes, no payload.
  const beforeZero = device.stats().bytes;
  await device.write(2 * MiB + 128 * 1024, Buffer.alloc(256 * 1024), { fua: false });
  await device.write(8 * MiB, Buffer.alloc(64 * 1024), { fua: false });
  assert.ok(device.stats().bytes - beforeZero <= 256, 'zero writes store no payload');
  const zeroEntry = device.history.entry(device.history.seqLast);
  assert.equal(zeroEntry.type, RecordType.ZERO);
  const status = await device.blockStatus(8 * MiB, 64 * 1024, 16);
  assert.deepEqual(status, [{ lengthBytes: 64 * 1024, hole: false, zero: true }], 'a written zero range is allocated and reads as zeroes');

  // A range only partly written before (hole + data): stored as a WRITE even if the data matches.
  const straddle = Buffer.concat([data.subarray(data.length - 4096), rng.bytes(4096, false)]);
  await device.write(3 * MiB - 4096, straddle, { fua: false });
  assert.equal(device.history.entry(device.history.seqLast).type, RecordType.WRITE);

  // The image and every point agree with what was written.
  const expected = Buffer.alloc(SIZE);
  data.copy(expected, 2 * MiB);
  changed.copy(expected, 2 * MiB);
  expected.fill(0, 2 * MiB + 128 * 1024, 2 * MiB + 384 * 1024);
  straddle.copy(expected, 3 * MiB - 4096);
  const image = Buffer.alloc(SIZE);
  await device.read(0, image);
  assert.ok(image.equals(expected), 'the live image is exact');
  const atRewrite = Buffer.alloc(SIZE);
  await device.readAt(device.pointIndex(rewrite.seq), 0, atRewrite);
  const expectedAtRewrite = Buffer.alloc(SIZE);
  data.copy(expectedAtRewrite, 2 * MiB);
  assert.ok(atRewrite.equals(expectedAtRewrite), 'the point at the unchanged write is exact');

  // The timeline counts client writes however they were stored; reopening counts the same bytes.
  const written = 1 * MiB * 2 + 64 * 1024 + 256 * 1024 + 64 * 1024 + 8192;
  const timeline = device.history.timeline(device.history.timeOf(1), device.history.timeOf(device.history.seqLast) + 1, 1_000_000_000);
  assert.equal(timeline[0].writes, 6);
  assert.equal(timeline[0].bytesWritten, written);
  assert.equal(device.stats().clientBytesWritten, written);
  await device.close();
  fs.rmSync(path.join(dir, 'index.ckpt'));
  device = open(dir, clock);
  assert.equal(device.stats().clientBytesWritten, written, 'replay counts every client write');
  const reopened = Buffer.alloc(SIZE);
  await device.read(0, reopened);
  assert.ok(reopened.equals(expected));
  await device.close();
});

test('a page update stores only its changed sectors; pieces per block stay bounded; every point stays exact', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_900_000_000_000_000 };
  const rng = new Random(9);
  const device = open(dir, clock);
  const expected = rng.bytes(1 * MiB, false);
  await device.write(0, Buffer.from(expected), { fua: false });
  const images: Array<{ seq: number; image: Buffer }> = [];
  let trimmed = 0;
  let whole = 0;
  // Page updates that change one or two sectors, many times over the same few pages.
  for (let i = 0; i < 300; i += 1) {
    const page = rng.int(8) * 4096;
    const update = Buffer.from(expected.subarray(page, page + 4096));
    for (let n = 1 + rng.int(2); n > 0; n -= 1) rng.bytes(512, false).copy(update, rng.int(8) * 512);
    const before = device.stats().bytes;
    await device.write(page, update, { fua: false });
    update.copy(expected, page);
    const entry = device.history.entry(device.history.seqLast);
    if (entry.type === RecordType.WRITE && entry.payloadBytes < 4096) trimmed += 1;
    if (entry.type === RecordType.WRITE && entry.payloadBytes === 4096) whole += 1;
    if (entry.type === RecordType.WRITE && entry.payloadBytes === 512) assert.ok(device.stats().bytes - before <= 640, 'one changed sector costs about a sector');
    const pieces: number[] = [];
    device.pointIndex(device.history.seqLast).lookup(page, 4096, (piece) => pieces.push(piece.endBytes - piece.startBytes));
    assert.ok(pieces.length <= 5, `a 4 KiB block stays in at most 5 pieces (${pieces.length})`);
    if (i % 50 === 0) images.push({ seq: device.history.seqLast, image: Buffer.from(expected.subarray(0, 64 * 1024)) });
  }
  const live = Buffer.alloc(1 * MiB);
  await device.read(0, live);
  assert.ok(live.equals(expected), 'the live image is exact');
  for (const { seq, image } of images) {
    const atPoint = Buffer.alloc(64 * 1024);
    await device.readAt(device.pointIndex(seq), 0, atPoint);
    assert.ok(atPoint.equals(image), `the point at seq ${seq} is exact`);
  }
  // Most updates store only their changed span; some store the whole page (a block at its
  // piece limit goes back to one piece).
  assert.ok(trimmed > 150, `most updates stored only the changed sectors (${trimmed} of 300)`);
  assert.ok(whole > 0, `the piece bound made some updates store the whole page (${whole})`);
  await device.close();
  // Reopened (index from the checkpoint, history from the journal): the same.
  const reopened = open(dir, clock);
  const again = Buffer.alloc(1 * MiB);
  await reopened.read(0, again);
  assert.ok(again.equals(expected));
  const report = await reopened.fsck(false);
  assert.deepEqual(report.problems, []);
  await reopened.close();
});

test('with reduction off every write is stored whole; turning it back on stores only what changed again', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_900_000_000_000_000 };
  const device = JournaledDevice.open({
    name: 'plain', directory: dir, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer, reduce: false,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 64 * MiB, checkpointEveryBytes: 1 << 30, nowUs: () => (clock.us += 10), idleCheckpointMs: 0,
  });
  const data = new Random(3).bytes(64 * 1024, false);
  await device.write(0, data, { fua: false });
  for (const again of [Buffer.from(data), Buffer.alloc(64 * 1024)]) {
    const before = device.stats().bytes;
    await device.write(0, again, { fua: false });
    const entry = device.history.entry(device.history.seqLast);
    assert.equal(entry.type, RecordType.WRITE, 'stored as a WRITE');
    assert.equal(entry.payloadBytes, 64 * 1024, 'whole');
    assert.ok(device.stats().bytes - before > 64 * 1024);
  }
  device.setReduce(true);
  await device.write(0, Buffer.alloc(64 * 1024), { fua: false });
  assert.equal(device.history.entry(device.history.seqLast).type, RecordType.ZERO, 'zero bytes: stored as zeroes again');
  await device.write(0, Buffer.from(data), { fua: false });
  await device.write(0, Buffer.from(data), { fua: false });
  assert.equal(device.history.entry(device.history.seqLast).type, RecordType.UNCHANGED, 'an identical rewrite: unchanged again');
  await device.close();
});
