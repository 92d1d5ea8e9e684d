/**
 * Targeted fault tests of the journaled volume on the fault-injecting file layer: disk full
 * (ENOSPC, with short writes, on a segment roll too), failed syncs (EIO: sticky, also for a
 * flush queued behind the failed sync; then a restart and a power loss), corruption of
 * durable records versus a torn tail, and crash windows found by the randomized suite, each
 * reproduced deterministically: a segment rolling during a sync, segment files whose
 * directory entry was never synced, a power loss after a process restart, and one after
 * recovery cut the journal but before the cut was durable.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, test } from 'node:test';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import { FaultFs } from '../helpers/fault-fs.js';
import { Random } from '../helpers/random.js';
import { VolumeHistory, firstDifference } from '../helpers/volume-oracle.js';

const SIZE = 1024 * 1024;
const VOLUME_ID = Buffer.from('0123456789abcdeff00dfacecafebeef', 'hex');
const DIRECTORY = '/data/volumes/faults';
const SEGMENT_HEADER_BYTES = 64;
const RECORD_HEADER_BYTES = 56;

const segmentFile = (index: number) => path.join(DIRECTORY, 'journal', `${String(index).padStart(8, '0')}.seg`);
// Header, chunk table (4 bytes per 4 KiB of payload), payload, padding to 8 (docs/FORMAT.md).
const recordSpan = (payloadBytes: number) => Math.ceil((RECORD_HEADER_BYTES + Math.ceil(payloadBytes / 4096) * 4 + payloadBytes) / 8) * 8;

function openDevice(files: FaultFs, segmentBytesMax = 256 * 1024): JournaledDevice {
  let clock = 1_700_000_000_000_000;
  return JournaledDevice.open({
    name: 'faults', directory: DIRECTORY, sizeBytes: SIZE, volumeId: VOLUME_ID, files,
    readOnly: false, syncEveryWrite: false, segmentBytesMax, checkpointEveryBytes: 1024 * 1024 * 1024,
    nowUs: () => (clock += 5), idleCheckpointMs: 0,
  });
}

async function readAll(device: JournaledDevice): Promise<Buffer> {
  const image = Buffer.alloc(SIZE);
  await device.read(0, image);
  return image;
}

/** A device and the oracle of its versions, written through together. */
class Volume {
  readonly history = new VolumeHistory(SIZE);
  acknowledged = 0;

  constructor(public device: JournaledDevice) {}

  async write(offsetBytes: number, data: Buffer, fua = false): Promise<void> {
    const done = this.device.write(offsetBytes, data, { fua });
    this.history.record({ offsetBytes, data });
    await done;
    if (fua) this.acknowledged = this.history.seqLast;
  }

  async flush(): Promise<void> {
    const done = this.device.flush();
    this.history.record(null);
    await done;
    this.acknowledged = this.history.seqLast;
  }

  async assertImageAt(seq: number, what: string): Promise<void> {
    const image = await readAll(this.device);
    const expected = this.history.imageAt(seq);
    assert.ok(image.equals(expected), `${what}: content differs from version ${seq} at byte ${firstDifference(image, expected)}`);
  }

  /** After a crash: open must succeed, keep what was acknowledged and be one whole version. */
  async recover(files: FaultFs, segmentBytesMax?: number): Promise<number> {
    this.device = openDevice(files, segmentBytesMax);
    const seq = this.device.stats().seqLast;
    assert.ok(seq >= this.acknowledged, `recovered seq ${seq} < acknowledged ${this.acknowledged}`);
    assert.ok(seq <= this.history.seqLast, `recovered seq ${seq} > appended ${this.history.seqLast}`);
    await this.assertImageAt(seq, `after recovery at seq ${seq}`);
    this.history.cut(seq);
    return seq;
  }
}

describe('disk full (ENOSPC)', () => {
  test('a write hitting ENOSPC mid-record fails with NO_SPACE; acknowledged data stays; the device continues without reopening', async () => {
    for (let seed = 1; seed <= 25; seed += 1) {
      const rng = new Random(seed);
      let files = new FaultFs({ seed });
      const volume = new Volume(openDevice(files, 64 * 1024));
      for (let i = 0; i < 1 + rng.int(6); i += 1) await volume.write(rng.int(SIZE - 40_000), rng.bytes(1 + rng.int(40_000)));
      await volume.flush();
      const before = volume.device.stats().seqLast;
      files.injectWritevFault({ errno: 'ENOSPC', partial: true });
      await assert.rejects(volume.device.write(rng.int(SIZE - 40_000), rng.bytes(1 + rng.int(40_000)), { fua: rng.int(2) === 0 }), { code: 'NO_SPACE' });
      assert.equal(volume.device.stats().seqLast, before, `seed ${seed}: the failed write took no seq`);
      await volume.assertImageAt(before, `seed ${seed}: after ENOSPC`);
      // The fault was a one-off: the device goes on, seqs gap-free, without a reopen.
      for (let i = 0; i < 1 + rng.int(4); i += 1) await volume.write(rng.int(SIZE - 40_000), rng.bytes(1 + rng.int(40_000)));
      await volume.flush();
      assert.equal(volume.device.stats().seqLast, volume.history.seqLast);
      await volume.assertImageAt(volume.history.seqLast, `seed ${seed}: after the fault cleared`);
      await volume.write(rng.int(SIZE - 4096), rng.bytes(4096));
      files = files.crash();
      await volume.recover(files, 64 * 1024);
    }
  });

  test('a full disk fails writes, zeroes, trims, flushes and segment rolls with NO_SPACE; once space is freed everything works again', async () => {
    const files = new FaultFs({ seed: 3 });
    const volume = new Volume(openDevice(files, 64 * 1024));
    await volume.write(0, Buffer.alloc(50_000, 1));
    await volume.flush();
    files.injectWritevFault({ errno: 'ENOSPC', sticky: true });
    // 50 000 bytes more do not fit the 64 KiB segment: this one needs a new segment.
    await assert.rejects(volume.device.write(60_000, Buffer.alloc(50_000, 2), { fua: false }), { code: 'NO_SPACE' });
    await assert.rejects(volume.device.write(0, Buffer.alloc(100, 3), { fua: true }), { code: 'NO_SPACE' });
    await assert.rejects(volume.device.writeZeroes(0, 4096, { fua: false, mayTrim: false, fastOnly: false }), { code: 'NO_SPACE' });
    await assert.rejects(volume.device.trim(0, 4096, { fua: false }), { code: 'NO_SPACE' });
    // A flush still makes what was written durable; only its marker needs space.
    await volume.device.flush();
    await assert.rejects(volume.device.checkpoint(), { code: 'NO_SPACE' });
    await volume.assertImageAt(volume.history.seqLast, 'while the disk is full');
    files.clearFaults();
    await volume.write(60_000, Buffer.alloc(50_000, 4));
    await volume.write(200_000, Buffer.alloc(70_000, 5));
    await volume.flush();
    assert.ok(volume.device.stats().segments >= 3, 'segments rolled after the disk was freed');
    await volume.assertImageAt(volume.history.seqLast, 'after space was freed');
    await volume.recover(files.crash(), 64 * 1024);
  });
});

describe('failed sync (EIO)', () => {
  test('a failed datasync fails the flush, and every later write and flush (sticky); acknowledged data survives a crash', async () => {
    for (let seed = 1; seed <= 10; seed += 1) {
      const files = new FaultFs({ seed });
      const volume = new Volume(openDevice(files, 64 * 1024));
      await volume.write(0, Buffer.alloc(30_000, 1));
      await volume.flush();
      await volume.write(10_000, Buffer.alloc(50_000, 2));
      files.injectDatasyncFault({});
      const flushing = volume.device.flush();
      volume.history.record(null);
      await assert.rejects(flushing, { code: 'IO_ERROR' });
      // The kernel may have dropped the pages it failed to write: nothing written from now on
      // could be promised durable, so nothing more is accepted until a restart.
      await assert.rejects(volume.device.write(0, Buffer.alloc(10, 3), { fua: false }), { code: 'IO_ERROR' });
      await assert.rejects(volume.device.writeZeroes(0, 10, { fua: false, mayTrim: true, fastOnly: false }), { code: 'IO_ERROR' });
      await assert.rejects(volume.device.trim(0, 10, { fua: false }), { code: 'IO_ERROR' });
      await assert.rejects(volume.device.flush(), { code: 'IO_ERROR' });
      await assert.rejects(volume.device.write(0, Buffer.alloc(10, 3), { fua: true }), { code: 'IO_ERROR' });
      // Reads still answer (from the page cache).
      await volume.assertImageAt(volume.history.seqLast, `seed ${seed}: reads after the failed sync`);
      await volume.recover(files.crash(), 64 * 1024);
    }
  });

  test('a flush queued behind a sync that fails fails too (it must not sync again and succeed)', async () => {
    const files = new FaultFs({ seed: 14 });
    const volume = new Volume(openDevice(files));
    await volume.write(0, Buffer.alloc(5000, 1));
    await volume.flush();
    await volume.write(8192, Buffer.alloc(5000, 2));
    files.injectDatasyncFault({});
    const first = volume.device.flush();
    volume.history.record(null);
    await volume.write(16_384, Buffer.alloc(5000, 3));
    const second = volume.device.flush();
    volume.history.record(null);
    await assert.rejects(first, { code: 'IO_ERROR' });
    await assert.rejects(second, { code: 'IO_ERROR' });
    await volume.recover(files.crash('lose-all'));
  });
});

describe('failed sync, then a restart, then power loss', () => {
  // Linux drops the dirty pages an fdatasync failed to write but keeps serving them from the
  // cache, and a sync after a restart reports success without writing them. Recovery replays
  // those records from the cache, so it must write them again before any sync claims them.
  test('records the kernel dropped after a failed sync are made durable by the first flush after a restart', async () => {
    let files = new FaultFs({ seed: 31 });
    const volume = new Volume(openDevice(files));
    await volume.write(0, Buffer.alloc(5000, 1));
    await volume.flush();
    await volume.write(8192, Buffer.alloc(5000, 2));
    files.injectDatasyncFault({});
    const flushing = volume.device.flush();
    volume.history.record(null);
    await assert.rejects(flushing, { code: 'IO_ERROR' });
    files = files.restart();
    await volume.recover(files);
    await volume.write(20_000, Buffer.alloc(5000, 3));
    await volume.flush();
    await volume.recover(files.crash('lose-all'));
  });
});

describe('corruption versus torn tail', () => {
  test('a flipped byte in a durable record (later records were written after a completed sync) is JOURNAL_CORRUPT naming the segment and offset', async () => {
    // Record A at offset 64 of segment 1, then a flush (synced), then B, written after the sync:
    // B's seqDurable says A was durable.
    for (const flip of [SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 10, SEGMENT_HEADER_BYTES + 9]) {
      let files = new FaultFs({ seed: 11 });
      const volume = new Volume(openDevice(files));
      await volume.write(4096, Buffer.alloc(1000, 7));
      await volume.flush();
      await volume.write(8192, Buffer.alloc(1000, 8));
      files = files.restart();
      files.flipByte(segmentFile(1), flip);
      assert.throws(() => openDevice(files), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'JOURNAL_CORRUPT');
        assert.match(err.message, /00000001\.seg/);
        assert.match(err.message, new RegExp(`offset ${SEGMENT_HEADER_BYTES}\\b`));
        return true;
      });
    }
  });

  test('corruption in an earlier segment is refused too (the claim comes from a later segment)', async () => {
    let files = new FaultFs({ seed: 12 });
    const volume = new Volume(openDevice(files, 64 * 1024));
    await volume.write(0, Buffer.alloc(40_000, 1));
    await volume.write(40_000, Buffer.alloc(1000, 2));
    await volume.flush();
    await volume.write(100_000, Buffer.alloc(40_000, 3));
    await volume.flush();
    assert.equal(volume.device.stats().segments, 2);
    files = files.crash('lose-all');
    const secondRecord = SEGMENT_HEADER_BYTES + recordSpan(40_000);
    files.flipByte(segmentFile(1), secondRecord + RECORD_HEADER_BYTES + 500);
    assert.throws(() => openDevice(files, 64 * 1024), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'JOURNAL_CORRUPT');
      assert.match(err.message, new RegExp(`00000001\\.seg is corrupt at offset ${secondRecord}\\b`));
      return true;
    });
  });

  test('a flipped byte in the last, unsynced record is a torn tail: cut, and the journal continues', async () => {
    for (const where of ['payload', 'header']) {
      let files = new FaultFs({ seed: 13 });
      const volume = new Volume(openDevice(files));
      await volume.write(4096, Buffer.alloc(1000, 7));
      await volume.flush();
      await volume.write(8192, Buffer.alloc(1000, 8));
      const last = SEGMENT_HEADER_BYTES + recordSpan(1000) + recordSpan(0);
      files = files.restart();
      files.flipByte(segmentFile(1), last + (where === 'payload' ? RECORD_HEADER_BYTES + 999 : 20));
      const seq = await volume.recover(files);
      assert.equal(seq, 2, `${where}: the torn record is cut, the flushed ones stay`);
      assert.deepEqual({ ...volume.device.openReport.tornTail, reason: undefined, bytesCut: undefined }, { segmentIndex: 1, position: last, reason: undefined, bytesCut: undefined });
      await volume.write(0, Buffer.alloc(10, 9));
      await volume.flush();
      assert.equal(volume.device.stats().seqLast, 4, 'seqs continue after the cut');
      await volume.recover(files.crash());
    }
  });
});

describe('crash windows', () => {
  test('a segment that rolls while a sync is in flight is still synced by the next flush', async () => {
    const files = new FaultFs({ seed: 21 });
    const volume = new Volume(openDevice(files, 64 * 1024));
    await volume.write(0, Buffer.alloc(4096, 1));
    const first = volume.device.flush();
    volume.history.record(null);
    await volume.write(4096, Buffer.alloc(80_000, 2));
    await first;
    await volume.flush();
    await volume.write(0, Buffer.alloc(100, 3), true);
    await volume.recover(files.crash(), 64 * 1024);
  });

  test('records flushed into new segments survive a crash that loses every unsynced directory change', async () => {
    const files = new FaultFs({ seed: 22 });
    const volume = new Volume(openDevice(files, 64 * 1024));
    for (let i = 0; i < 4; i += 1) await volume.write(i * 50_000, Buffer.alloc(40_000, i + 1));
    await volume.flush();
    assert.equal(volume.device.stats().segments, 4);
    await volume.recover(files.crash({ files: 'lose-all', directories: 'lose-all' }), 64 * 1024);
  });

  test('a crash after a process restart: records found in the page cache are synced by the first flush, never claimed durable before', async () => {
    for (let seed = 1; seed <= 16; seed += 1) {
      let files = new FaultFs({ seed });
      const volume = new Volume(openDevice(files, 64 * 1024));
      await volume.write(0, Buffer.alloc(40_000, 1));
      await volume.write(40_000, Buffer.alloc(40_000, 2));
      files = files.restart();
      assert.equal(await volume.recover(files, 64 * 1024), 2, 'a killed process loses nothing');
      await volume.write(100_000, Buffer.alloc(1000, 3));
      if (seed % 2 === 0) await volume.flush();
      await volume.recover(files.crash(seed % 4 < 2 ? 'lose-all' : 'random'), 64 * 1024);
    }
  });

  test('a crash before a recovery cut is durable never brings back records from after the cut', async () => {
    // A, B, C, then a flush F; B is then damaged on disk while no record claims it durable:
    // recovery cuts at B. With 64 KiB segments C and F are in segment 2, which the cut
    // removes; with 256 KiB segments they follow B in segment 1, which the cut truncates.
    for (const variant of ['removal lost', 'truncation lost']) {
      const segmentBytesMax = variant === 'removal lost' ? 64 * 1024 : 256 * 1024;
      let files = new FaultFs({ seed: 24 });
      const volume = new Volume(openDevice(files, segmentBytesMax));
      await volume.write(0, Buffer.alloc(10_000, 1));
      await volume.write(20_000, Buffer.alloc(30_000, 2));
      await volume.write(60_000, Buffer.alloc(30_000, 3));
      await volume.flush();
      assert.equal(volume.device.stats().segments, variant === 'removal lost' ? 2 : 1);
      files = files.restart();
      files.flipByte(segmentFile(1), SEGMENT_HEADER_BYTES + recordSpan(10_000) + RECORD_HEADER_BYTES + 7);
      volume.acknowledged = 1;
      assert.equal(await volume.recover(files, segmentBytesMax), 1);
      // The same shapes again (B' the size of B), not flushed; then power loss where the cut
      // did not reach the disk but the new records did.
      await volume.write(20_000, Buffer.alloc(30_000, 4));
      await volume.write(60_000, Buffer.alloc(30_000, 5));
      const style = variant === 'removal lost' ? { files: 'keep-all', directories: 'lose-all' } as const : { files: 'keep-data', directories: 'keep-all' } as const;
      await volume.recover(files.crash(style), segmentBytesMax);
    }
  });
});

test('a long unflushed tail (thousands of records) left by a process restart is made durable by the first flush', async () => {
  const files = new FaultFs({ seed: 41 });
  const device = openDevice(files, 64 * 1024);
  const image = Buffer.alloc(SIZE);
  for (let i = 0; i < 3000; i += 1) {
    const data = Buffer.alloc(100, (i % 250) + 1);
    const offset = (i * 337) % (SIZE - 100);
    await device.write(offset, data, { fua: false });
    data.copy(image, offset);
  }
  // The process dies; the page cache keeps everything, nothing was ever synced.
  const restarted = files.restart();
  const reopened = openDevice(restarted, 64 * 1024);
  assert.ok((await readAll(reopened)).equals(image), 'replayed from the page cache');
  await reopened.flush();
  // Now a power loss: only what the first flush made durable survives.
  const crashed = restarted.crash('lose-all');
  const recovered = openDevice(crashed, 64 * 1024);
  assert.ok((await readAll(recovered)).equals(image), 'the first flush after the restart made the whole tail durable');
  assert.equal(recovered.stats().seqLast, 3001, 'every record and the flush marker survive');
});

test('a crash that undoes a recovery cut: the dead tail comes back, the journal goes on in the fresh segment', async () => {
  for (let seed = 1; seed <= 30; seed += 1) {
    const files = new FaultFs({ seed: 500 + seed });
    const device = openDevice(files, 64 * 1024);
    const image = Buffer.alloc(SIZE);
    const write = async (target: JournaledDevice, at: number, fill: number, length: number) => {
      const data = Buffer.alloc(length, fill);
      await target.write(at, data, { fua: false });
      return data;
    };
    (await write(device, 0, 1, 5000)).copy(image, 0);
    await device.flush();
    // Unsynced records that the crash tears: they become the tail recovery cuts.
    await write(device, 8192, 2, 3000);
    await write(device, 16384, 3, 3000);
    const torn = files.crash('random');
    const reopened = openDevice(torn, 64 * 1024);
    const afterCut = await readAll(reopened);
    // New acknowledged, flushed writes go to the fresh segment.
    (await write(reopened, 40000, 4, 2000)).copy(afterCut, 40000);
    await reopened.flush();
    // A crash that loses the (unsynced) truncate of the cut but keeps the flushed data.
    const again = torn.crash('keep-data');
    const recovered = openDevice(again, 64 * 1024);
    assert.ok((await readAll(recovered)).equals(afterCut), `seed ${seed}: flushed writes after the cut survive, the dead tail stays dead`);
    await write(recovered, 50000, 5, 100);
    await recovered.flush();
    const report = await recovered.fsck(false);
    assert.deepEqual(report.problems, [], `seed ${seed}: fsck is clean`);
  }
});
