/**
 * Retention through the HTTP API (fastify.inject) on real volumes with small journal
 * segments: policies set at create and with PATCH (bad ones refused with a code, changing
 * nothing), `POST /volumes/NAME/thin` expiring points and reclaiming space, expired points
 * refused everywhere a point is taken (410 POINT_EXPIRED), bookmarks and mounts keeping
 * theirs byte for byte, --max-size removing the oldest points ahead of the policy with a
 * warning state, and all of it still true after the volumes are opened again.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { buildApi } from '../../src/api/index.js';
import { JobRegistry, VolumeManager } from '../../src/volume/index.js';
import type { VolumeInfo } from '../../src/volume/index.js';
import { makeTempDir } from '../helpers/daemon.js';
import { startInProcess } from '../helpers/in-process.js';
import type { InProcessServer } from '../helpers/in-process.js';
import { Random } from '../helpers/random.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let server: InProcessServer;
let api: ReturnType<typeof buildApi>;

function apiFor(volumes: VolumeManager) {
  return buildApi({
    volumes, nbd: server.nbd, jobs: new JobRegistry(), version: 'test', startedAt: new Date(), dataDir: server.dataDir,
    ports: () => ({ nbd: { host: '127.0.0.1', port: server.port } }), log: pino({ level: 'silent' }),
  });
}

async function call(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, payload?: object) {
  const response = await api.inject({ method, url: `/api/v1${url}`, ...(payload === undefined ? {} : { payload }) });
  return { status: response.statusCode, body: response.json() as Record<string, unknown> };
}

async function info(name: string): Promise<VolumeInfo> {
  const response = await call('GET', `/volumes/${name}`);
  assert.equal(response.status, 200);
  return response.body as unknown as VolumeInfo;
}

before(async () => {
  server = await startInProcess([], { segmentBytesMax: 256 * 1024 });
  api = apiFor(server.volumes);
});

after(async () => {
  await api.close();
  await server.close();
});

test('bad policies and sizes are refused with a code and change nothing', async () => {
  for (const keep of ['', 'all', '1m:7d,all:24h', 'all:24h,1h:7d,1m:30d', '1m:1m', 'all:24h,7m:7d,1h:30d', 'all:24x', 'all:forever,1d:1y']) {
    const response = await call('POST', '/volumes', { name: 'bad', size: '8M', keep });
    assert.equal(response.status, 400, `keep ${JSON.stringify(keep)}: ${JSON.stringify(response.body)}`);
    assert.equal(response.body.code, keep === '' ? 'INVALID_ARGUMENT' : 'RETENTION_INVALID', `keep ${JSON.stringify(keep)}`);
  }
  const small = await call('POST', '/volumes', { name: 'bad', size: '8M', maxSize: '4K' });
  assert.deepEqual([small.status, small.body.code], [400, 'INVALID_SIZE']);
  assert.equal((await call('GET', '/volumes/bad')).status, 404, 'nothing was created');
  const created = await call('POST', '/volumes', { name: 'plain', size: '8M' });
  assert.equal(created.status, 201);
  const plain = created.body as unknown as VolumeInfo;
  assert.equal(plain.retention.keep, 'all:24h,1m:7d,1h:30d,1d:1y', 'the default policy is shown');
  assert.equal(plain.retention.maxSizeBytes, null);
  const refused = await call('PATCH', '/volumes/plain', { keep: 'all:1h,1m:30m' });
  assert.deepEqual([refused.status, refused.body.code], [400, 'RETENTION_INVALID']);
  assert.equal((await info('plain')).retention.keep, 'all:24h,1m:7d,1h:30d,1d:1y', 'a refused change changes nothing');
});

test('thinning expires what the policy drops, keeps bookmarks and mounts exact, and reclaims space', async () => {
  const created = await call('POST', '/volumes', { name: 'db', size: SIZE, keep: 'all:2s,1s:1h' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const device = server.volumes.device('db')!;
  const rng = new Random(7);
  // About 3 s of page updates over 1 MiB: each second keeps one point, the rest is overwritten.
  const images: Array<{ seq: number; image: Buffer }> = [];
  const image = Buffer.alloc(SIZE);
  const started = Date.now();
  let bookmarked = 0;
  while (Date.now() - started < 3000) {
    const offset = rng.int(256) * 4096;
    const data = rng.bytes(64 * 1024);
    const length = Math.min(data.length, SIZE - offset);
    await device.write(offset, data.subarray(0, length), { fua: false });
    data.copy(image, offset, 0, length);
    const seq = server.volumes.get('db').device!.history.seqLast;
    if (images.length < 400 && rng.int(8) === 0) images.push({ seq, image: Buffer.from(image) });
    if (bookmarked === 0 && Date.now() - started > 500) {
      const bookmark = await call('POST', '/volumes/db/bookmarks', { name: 'before-upgrade' });
      assert.equal(bookmark.status, 201, JSON.stringify(bookmark.body));
      bookmarked = bookmark.body.seq as number;
      images.push({ seq: bookmarked, image: Buffer.from(image) });
    }
    await pause(1);
  }
  await device.flush();
  const mount = await call('POST', '/mounts', { volume: 'db', at: `seq:${images[1].seq}` });
  assert.equal(mount.status, 201, JSON.stringify(mount.body));
  await pause(2100); // every write is now older than the `all` window
  const before = await info('db');
  const run = await call('POST', '/volumes/db/thin');
  assert.equal(run.status, 200, JSON.stringify(run.body));
  assert.ok((run.body.pointsExpired as number) > 100, `points expired: ${JSON.stringify(run.body)}`);
  assert.ok((run.body.bytesReclaimed as number) > 2 * MiB, `space reclaimed: ${JSON.stringify(run.body)}`);
  const afterRun = await info('db');
  assert.equal(afterRun.journalBytes, before.journalBytes - (run.body.bytesReclaimed as number), 'the journal shrank by what was reclaimed');
  assert.equal(afterRun.retention.pointsExpired, run.body.pointsExpired);
  assert.equal(afterRun.retention.bytesReclaimed, run.body.bytesReclaimed);
  assert.equal(afterRun.retention.state, 'ok');
  assert.ok(afterRun.oldestPoint !== null && afterRun.oldestPointSeq !== null);

  const history = server.volumes.get('db').device!.history;
  let checkedKept = 0;
  let checkedExpired = 0;
  for (const { seq, image: expected } of images) {
    if (history.expiredRunOf(seq)) {
      for (const [url, body] of [['/volumes/db/resolve', { at: `seq:${seq}` }], ['/mounts', { volume: 'db', at: `seq:${seq}` }], ['/volumes/db/bookmarks', { name: `b${seq}`, at: `seq:${seq}` }]] as const) {
        const refused = url === '/volumes/db/resolve' ? await call('GET', `${url}?at=seq:${seq}`) : await call('POST', url, body);
        assert.deepEqual([refused.status, refused.body.code], [410, 'POINT_EXPIRED'], `${url} at expired seq ${seq}: ${JSON.stringify(refused.body)}`);
        assert.match(String(refused.body.message), /retention policy/);
      }
      checkedExpired += 1;
      continue;
    }
    const got = Buffer.alloc(SIZE);
    await server.volumes.view('db', seq).read(0, got);
    assert.ok(got.equals(expected), `kept point seq ${seq} reads as it was`);
    checkedKept += 1;
  }
  assert.equal(history.expiredRunOf(bookmarked), null, 'the bookmark keeps its point');
  assert.equal(history.expiredRunOf(images[1].seq), null, 'the mount keeps its point');
  assert.ok(checkedExpired > 10 && checkedKept >= 2, `checked ${checkedKept} kept and ${checkedExpired} expired points`);
  const mounted = Buffer.alloc(SIZE);
  await server.volumes.device(mount.body.export as string)!.read(0, mounted);
  assert.ok(mounted.equals(images[1].image), 'the mount reads its point after thinning');
  // A time inside the thinned stretch resolves to the kept point at or before it.
  const middle = new Date(started + 1500).toISOString();
  const resolved = await call('GET', `/volumes/db/resolve?at=${encodeURIComponent(middle)}`);
  assert.equal(resolved.status, 200, JSON.stringify(resolved.body));
  assert.equal(history.expiredRunOf(resolved.body.seq as number), null, 'a time resolves to a kept point');
  assert.ok(Date.parse(resolved.body.time as string) <= Date.parse(middle), 'at or before the time asked');
});

test('flush points listed are kept points only', async () => {
  const points = await call('GET', '/volumes/db/points?limit=10000');
  assert.equal(points.status, 200, JSON.stringify(points.body));
  const history = server.volumes.get('db').device!.history;
  const listed = (points.body.flushPoints as Array<{ seq: number }> | undefined) ?? (points.body.points as Array<{ seq: number }>);
  assert.ok(Array.isArray(listed) && listed.length > 0, `flush points are listed: ${JSON.stringify(points.body).slice(0, 200)}`);
  for (const point of listed) assert.equal(history.expiredRunOf(point.seq), null, `listed flush point seq ${point.seq} is kept`);
});

test('--max-size removes the oldest points ahead of the policy, with a warning, never silently', async () => {
  const before = await info('db');
  assert.ok(before.journalBytes > MiB, `journal ${before.journalBytes} bytes`);
  const patched = await call('PATCH', '/volumes/db', { maxSize: '1M' });
  assert.equal(patched.status, 200, JSON.stringify(patched.body));
  const run = await call('POST', '/volumes/db/thin');
  assert.equal(run.status, 200);
  assert.ok((run.body.pointsForced as number) > 0, `points removed ahead of the policy: ${JSON.stringify(run.body)}`);
  const after = await info('db');
  assert.equal(after.retention.state, 'warning');
  assert.ok(after.retention.lastForced && after.retention.lastForced.pointsExpired > 0, JSON.stringify(after.retention));
  assert.ok(after.retention.warnings.some((warning) => /ahead of the policy/.test(warning)), JSON.stringify(after.retention.warnings));
  assert.equal(after.retention.pointsExpired, before.retention.pointsExpired + (run.body.pointsExpired as number) + (run.body.pointsForced as number), 'the forced points are counted as expired');
  const bookmarks = await call('GET', '/volumes/db/bookmarks');
  const bookmark = (bookmarks.body.bookmarks as Array<{ seq: number }>)[0];
  assert.equal(server.volumes.get('db').device!.history.expiredRunOf(bookmark.seq), null, 'bookmarks are kept even over the cap');
  const removed = await call('PATCH', '/volumes/db', { maxSize: null });
  assert.equal((removed.body as unknown as VolumeInfo).retention.maxSizeBytes, null, 'the cap can be removed');
});

test('--max-size removes nothing when that would free nothing (all data live)', async () => {
  const created = await call('POST', '/volumes', { name: 'live', size: SIZE, keep: 'all:1s,1s:1h', maxSize: '1M' });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const device = server.volumes.device('live')!;
  const rng = new Random(9);
  // 3 MiB of writes that never overwrite each other: every byte is live.
  for (let i = 0; i < 48; i += 1) {
    await device.write(i * 64 * 1024, rng.bytes(64 * 1024), { fua: false });
    if (i % 8 === 7) await pause(150);
  }
  await device.flush();
  await pause(1100);
  const run = await call('POST', '/volumes/live/thin');
  assert.equal(run.status, 200, JSON.stringify(run.body));
  assert.equal(run.body.pointsForced, 0, `no point removed ahead of the policy for nothing: ${JSON.stringify(run.body)}`);
  const after = await info('live');
  assert.equal(after.retention.state, 'warning', 'over the cap: a warning');
  assert.ok(after.retention.warnings.some((warning) => /exceeds --max-size/.test(warning)), JSON.stringify(after.retention.warnings));
});

test('a stored policy that does not parse turns retention off for that volume, with a warning; nothing crashes', async (t) => {
  const dataDir = makeTempDir('hindsight-odd-policy-');
  t.after(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const first = new VolumeManager({ dataDir, syncEveryWrite: false, retentionIntervalMs: 0 });
  await first.open();
  await first.create('odd', 8 * MiB);
  await first.close();
  const file = `${dataDir}/volumes/odd/volume.json`;
  const record = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(file, JSON.stringify({ ...record, retention: { keep: 'every:tuesday' } }));
  const manager = new VolumeManager({ dataDir, syncEveryWrite: false, retentionIntervalMs: 20 });
  await manager.open();
  try {
    manager.startRetention();
    await pause(150); // several background runs: an unhandled rejection would end the test run
    const odd = await manager.info('odd');
    assert.equal(odd.state, 'online', 'the volume is served');
    assert.equal(odd.retention.state, 'warning');
    assert.ok(odd.retention.warnings.some((warning) => /retention is off/.test(warning)), JSON.stringify(odd.retention.warnings));
    await assert.rejects(manager.thin('odd'), { code: 'RETENTION_INVALID' });
  } finally {
    await manager.close();
  }
});

test('expired points stay expired after the volumes are opened again', async () => {
  const history = server.volumes.get('db').device!.history;
  const expired = history.expired.map(([a, b]) => [a, b]);
  const thinned = server.volumes.get('db').device!.retention.recordsThinned;
  assert.ok(expired.length > 0 && thinned > 0);
  await server.volumes.close();
  const reopened = new VolumeManager({ dataDir: server.dataDir, syncEveryWrite: false, retentionIntervalMs: 0, segmentBytesMax: 256 * 1024 });
  await reopened.open();
  try {
    const device = reopened.get('db').device!;
    assert.deepEqual(device.history.expired.map(([a, b]) => [a, b]), expired, 'the same points are expired');
    assert.equal(device.retention.recordsThinned, thinned);
    const [a] = expired[expired.length - 1];
    assert.throws(() => reopened.resolve('db', `seq:${a}`), { code: 'POINT_EXPIRED' });
    const fsck = await reopened.fsck('db', false);
    assert.deepEqual(fsck.problems, []);
  } finally {
    await reopened.close();
    server.volumes = await reopenForClose();
  }
});

/** The shared server's manager was closed above: a fresh one so `after` can close it. */
async function reopenForClose(): Promise<VolumeManager> {
  const manager = new VolumeManager({ dataDir: server.dataDir, syncEveryWrite: false, retentionIntervalMs: 0 });
  await manager.open();
  return manager;
}

test('a wall clock set far forward pauses background expiry until volume thin confirms it', async (t) => {
  const dataDir = makeTempDir('hindsight-clock-');
  t.after(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const manager = new VolumeManager({ dataDir, syncEveryWrite: false, retentionIntervalMs: 0 });
  await manager.open();
  t.after(() => manager.close());
  await manager.create('c', 8 * MiB, { keep: 'all:1h,1m:1d' });
  const device = manager.device('c')!;
  for (let i = 0; i < 20; i += 1) await device.write(i * 4096, Buffer.alloc(4096, i + 1), { fua: false });
  await device.flush();
  const realNow = Date.now.bind(Date);
  t.mock.method(Date, 'now', () => realNow() + 365 * 86_400_000);
  const background = (manager as unknown as { retention: { run(name: string, onDemand: boolean): Promise<unknown> } }).retention;
  await assert.rejects(background.run('c', false), /wall clock jumped/);
  assert.equal(manager.get('c').device!.history.expired.length, 0, 'nothing expired on a clock a year ahead');
  const confirmed = await manager.thin('c');
  assert.ok((confirmed as { pointsExpired: number }).pointsExpired > 0, 'volume thin takes the clock as it is');
});
