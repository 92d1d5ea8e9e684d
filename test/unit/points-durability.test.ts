/**
 * What names a seq on disk must name a durable record, and must still name it later:
 * a bookmark or mount of unflushed writes first makes them durable; a mount record whose
 * seq now holds another record (its writes were lost) is refused at start, not served; a
 * volume with a running job is not deleted from under it; running jobs are bounded.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { HindsightError } from '../../src/core/index.js';
import { JobRegistry, VolumeManager } from '../../src/volume/index.js';
import { makeTempDir } from '../helpers/daemon.js';

const MiB = 1024 * 1024;

async function open(dataDir: string): Promise<VolumeManager> {
  const manager = new VolumeManager({ dataDir, syncEveryWrite: false });
  await manager.open();
  return manager;
}

function writer(manager: VolumeManager, name: string) {
  const device = manager.device(name)!;
  return (offset: number, byte: number) => device.write(offset, Buffer.alloc(4096, byte), { fua: false });
}

test('bookmarking or mounting unflushed writes makes them durable first', async (t) => {
  const dataDir = makeTempDir();
  t.after(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const manager = await open(dataDir);
  t.after(() => manager.close());
  await manager.create('v', 16 * MiB);
  const write = writer(manager, 'v');
  await write(0, 1);
  await write(4096, 2);
  const before = await manager.info('v');
  assert.ok((before.seqDurable ?? 0) < (before.seqLast ?? 0), 'nothing flushed yet');
  assert.ok(before.storedPerWritten !== null && before.storedPerWritten > 1 && before.storedPerWritten < 1.1, `journal bytes per byte written: ${before.storedPerWritten}`);
  const bookmark = await manager.bookmarkCreate('v', 'b');
  assert.ok(((await manager.info('v')).seqDurable ?? 0) >= bookmark.seq, 'the bookmarked write is durable');
  await write(8192, 3);
  const mount = await manager.mount('v', 'latest', {});
  assert.ok(((await manager.info('v')).seqDurable ?? 0) >= mount.seq, 'the mounted write is durable');
});

test('a mount whose seq now holds another record is refused at start, with a clear error', async (t) => {
  const dataDir = makeTempDir();
  t.after(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  let manager = await open(dataDir);
  await manager.create('v', 16 * MiB);
  await writer(manager, 'v')(0, 7);
  const mount = await manager.mount('v', 'latest', { name: 'm' });
  await manager.close();
  // As if a crash had lost the record and another write had taken its seq: same seq, other time.
  const file = path.join(dataDir, 'mounts', 'm', 'mount.json');
  const record = JSON.parse(fs.readFileSync(file, 'utf8')) as { timeUs: number };
  fs.writeFileSync(file, JSON.stringify({ ...record, timeUs: record.timeUs - 1000 }));
  manager = await open(dataDir);
  t.after(() => manager.close());
  const info = manager.mountGet('m');
  assert.equal(info.state, 'failed');
  assert.equal(info.error?.code, 'POINT_NOT_FOUND');
  assert.match(info.error!.message, new RegExp(`seq ${mount.seq}`));
  assert.equal(manager.device('m'), undefined, 'not exported');
});

test('jobs are bounded and a volume with a running job is not deleted without --force', async () => {
  const jobs = new JobRegistry(2);
  let finish!: () => void;
  const gate = new Promise<void>((resolve) => { finish = resolve; });
  const started: string[] = [];
  for (let i = 0; i < 2; i += 1) {
    started.push(jobs.start('restore', 'v', async (control) => {
      while (!control.cancelled()) await Promise.race([gate, new Promise((resolve) => setTimeout(resolve, 5))]).then(() => undefined);
      throw new HindsightError('SHUTTING_DOWN', 'restore cancelled');
    }).id);
  }
  assert.throws(() => jobs.start('restore', 'w', async () => undefined), (err: unknown) => err instanceof HindsightError && err.code === 'LIMIT_REACHED');
  assert.equal(jobs.runningFor('v').length, 2);
  assert.equal(jobs.runningFor('w').length, 0);
  await jobs.cancel('v');
  finish();
  assert.equal(jobs.runningFor('v').length, 0);
  for (const id of started) assert.equal(jobs.get(id).error?.code, 'SHUTTING_DOWN');
});
