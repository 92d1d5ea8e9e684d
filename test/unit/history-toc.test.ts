/**
 * Segment tables of contents: a reopened volume rebuilds its history from them (not from the
 * segments), and a damaged, stale or foreign table is ignored — the history is the same
 * either way, record for record.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { nodeFileLayer } from '../../src/journal/index.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import { makeTempDir } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';

const SIZE = 8 * 1024 * 1024;
const VOLUME_ID = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');

function open(dir: string, clock: { us: number }): JournaledDevice {
  return JournaledDevice.open({
    name: 'toc', directory: dir, sizeBytes: SIZE, volumeId: VOLUME_ID, files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 256 * 1024, checkpointEveryBytes: 1 << 30,
    nowUs: () => (clock.us += 3), idleCheckpointMs: 0,
  });
}

function historyOf(device: JournaledDevice): string[] {
  const entries: string[] = [];
  for (let seq = 1; seq <= device.history.seqLast; seq += 1) entries.push(JSON.stringify(device.history.entry(seq)));
  return entries;
}

test('history comes back from tables of contents, and the same without them or with bad ones', async (t) => {
  const dir = makeTempDir();
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const clock = { us: 1_800_000_000_000_000 };
  const rng = new Random(7);
  let device = open(dir, clock);
  for (let i = 0; i < 400; i += 1) {
    const offset = rng.int(SIZE / 4096 - 4) * 4096;
    if (i % 7 === 0) await device.flush();
    else if (i % 11 === 0) await device.writeZeroes(offset, 8192, { fua: false, mayTrim: true, fastOnly: false });
    else if (i % 5 === 0) {
      // A page update: one sector changed, so only it is stored (payload skip > 0).
      const page = Buffer.alloc(8192);
      await device.read(offset, page);
      page.set(rng.bytes(512, false), 512 * (1 + rng.int(14)));
      await device.write(offset, page, { fua: false });
    } else await device.write(offset, rng.bytes(4096 * (1 + rng.int(3)), false), { fua: false });
  }
  let skipped = 0;
  for (let seq = 1; seq <= device.history.seqLast; seq += 1) if (device.history.entry(seq).payloadSkip > 0) skipped += 1;
  assert.ok(skipped >= 3, `page updates stored only their changed sector (${skipped})`);
  await device.checkpoint();
  // Records after the checkpoint: replayed from the journal, not from tables.
  for (let i = 0; i < 20; i += 1) await device.write(rng.int(SIZE / 4096) * 4096, rng.bytes(4096, false), { fua: false });
  const expected = historyOf(device);
  await device.flush();
  const expectedAfterFlush = historyOf(device);
  assert.equal(expectedAfterFlush.length, expected.length + 1);
  // Close checkpoints again; drop that checkpoint's effect by reopening twice.
  await device.close();
  const journal = path.join(dir, 'journal');
  const tocs = fs.readdirSync(journal).filter((name) => name.endsWith('.toc')).sort();
  assert.ok(tocs.length >= 3, `tables written for several segments (${tocs.join(', ')})`);

  device = open(dir, clock);
  assert.equal(device.openReport.checkpoint, 'loaded');
  assert.ok(device.openReport.historyFromTocs > 300, `history read from tables (${device.openReport.historyFromTocs})`);
  assert.deepEqual(historyOf(device), expectedAfterFlush);
  const fromTocsBefore = device.openReport.historyFromTocs;
  await device.close();

  // A damaged table, a stale one (another segment's) and a missing one: ignored, same history.
  const damaged = path.join(journal, tocs[0]);
  const bytes = fs.readFileSync(damaged);
  bytes[100] ^= 0x40;
  fs.writeFileSync(damaged, bytes);
  fs.copyFileSync(path.join(journal, tocs[1]), path.join(journal, tocs[2]));
  fs.rmSync(path.join(journal, tocs[tocs.length - 1]));
  device = open(dir, clock);
  // Three tables unusable: their segments' records (a few dozen each) were read from the segments.
  assert.ok(device.openReport.historyFromTocs <= fromTocsBefore - 30, `bad tables were not used (${device.openReport.historyFromTocs} of ${fromTocsBefore})`);
  assert.deepEqual(historyOf(device), expectedAfterFlush);
  // Completing the snapshots in the background changes no point's content.
  const seqs = [1, 50, 133, 250, device.history.seqLast - 1];
  const before = await Promise.all(seqs.map(async (seq) => {
    const image = Buffer.alloc(SIZE);
    await device.readAt(device.pointIndex(seq), 0, image);
    return image;
  }));
  let slices = 0;
  while (!device.history.warm(0)) slices += 1;
  assert.ok(slices > 0, 'warming took several slices');
  for (const [i, seq] of seqs.entries()) {
    const image = Buffer.alloc(SIZE);
    await device.readAt(device.pointIndex(seq), 0, image);
    assert.ok(image.equals(before[i]), `seq ${seq} reads the same after warming`);
  }
  // Points still read right after all that: compare a few with the live content path.
  const point = device.pointIndex(device.history.seqLast);
  const live = Buffer.alloc(SIZE);
  const atPoint = Buffer.alloc(SIZE);
  await device.read(0, live);
  await device.readAt(point, 0, atPoint);
  assert.ok(live.equals(atPoint), 'the latest point equals the live volume');
  await device.close();
});
