/**
 * Disk full, with data retention may drop (issue 5): on a small tmpfs, writes fill the disk
 * until one fails with NO_SPACE, while half of every sealed segment is data no kept point
 * will show. Retention then needs room for compaction's copies: the daemon's space reserve
 * (DATA/reserve) is let go, compaction frees what expired, the reserve is made again, and
 * the volume takes writes again — no restart, no hand-made room, every byte right.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { isHindsightError } from '../../src/core/index.js';
import { VolumeManager } from '../../src/volume/index.js';
import { makeTempDir } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const SEGMENT_BYTES = 2 * MiB;
const BLOCK = 256 * 1024;

const skip = typeof process.getuid === 'function' && process.getuid() !== 0 ? 'needs root to mount a small tmpfs' : false;

test('a full disk: the space reserve lets compaction free what expired, and writes go on', { skip, timeout: 120_000 }, async (t) => {
  const mountPoint = makeTempDir('hindsight-reserve-');
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', mountPoint]);
  t.after(() => {
    execFileSync('umount', [mountPoint]);
    fs.rmSync(mountPoint, { recursive: true, force: true });
  });
  const dataDir = path.join(mountPoint, 'data');
  const volumes = new VolumeManager({ dataDir, syncEveryWrite: false, retentionIntervalMs: 0, segmentBytesMax: SEGMENT_BYTES });
  const events: string[] = [];
  volumes.onRetentionEvent = (_name, _level, message) => events.push(message);
  await volumes.open();
  try {
    await volumes.create('v', SIZE, { keep: 'all:1s' });
    const device = volumes.device('v')!;
    const image = Buffer.alloc(SIZE);
    const rng = new Random(17);
    const write = async (offset: number) => {
      const data = rng.bytes(BLOCK);
      await device.write(offset, data, { fua: true });
      data.copy(image, offset);
    };
    // A few segments, then a retention run: the reserve is made (a segment's worth).
    for (let i = 0; i < 24; i += 1) await write(i * BLOCK);
    await volumes.thin('v');
    assert.equal(volumes.reserveBytes, SEGMENT_BYTES, 'the reserve holds a segment\'s worth');

    // Until the disk is full: each new block of lasting data, then one of a 1 MiB stretch
    // rewritten over and over (all but its last versions will not be shown): every sealed
    // segment is half data to keep, so compacting one needs room for half a segment.
    let kept = 24;
    let full = false;
    for (let i = 0; !full; i += 1) {
      try {
        if (i % 2 === 0) {
          assert.ok(kept < 48 * 4, 'the disk fills before the volume');
          await write(kept * BLOCK);
          kept += 1;
        } else {
          await write(48 * MiB + rng.int(4) * BLOCK);
        }
      } catch (err) {
        assert.ok(isHindsightError(err, 'NO_SPACE'), `disk full is NO_SPACE (${String(err)})`);
        full = true;
      }
    }
    await assert.rejects(write(60 * MiB), (err) => isHindsightError(err, 'NO_SPACE'), 'the disk stays full');

    // The points expire; retention needs room for its copies, and the reserve gives it.
    await new Promise((resolve) => setTimeout(resolve, 1200));
    const run = await volumes.thin('v');
    assert.ok(run.bytesReclaimed > 8 * MiB, `retention freed space on a full disk (${JSON.stringify(run)})`);
    assert.ok(events.some((message) => message.includes('space reserve was let go')), `the reserve was let go, and said so: ${JSON.stringify(events)}`);
    assert.equal(volumes.reserveBytes, SEGMENT_BYTES, 'the reserve is made again');
    for (let i = 0; i < 16; i += 1) await write(52 * MiB + i * BLOCK);
    const back = Buffer.alloc(SIZE);
    await device.read(0, back);
    assert.ok(back.equals(image), 'every acknowledged byte reads back');
    assert.deepEqual((await volumes.fsck('v', false)).problems, [], 'the journal checks out');
  } finally {
    await volumes.close();
  }
});
