/**
 * The point-in-time part of the HTTP API through fastify.inject(): body and query validation
 * at the edge, every point/mount/bookmark/job error code with its HTTP status
 * (src/api/http-status.ts), the restore job lifecycle, timeline step parsing, mounts and
 * rollback, and errors that are {code, message} only, never a stack trace.
 *
 * History is written in-process through the volume's BlockDevice; an oracle keeps the image
 * after each step, and a time taken after a step (and before the next) names that image.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { buildApi, httpStatus } from '../../src/api/index.js';
import type { ErrorCode } from '../../src/core/index.js';
import { JobRegistry } from '../../src/volume/index.js';
import { makeTempDir } from '../helpers/daemon.js';
import { startInProcess } from '../helpers/in-process.js';
import type { InProcessServer } from '../helpers/in-process.js';
import { RawClient } from '../helpers/raw-client.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const SIZE = 16 * MiB;

let server: InProcessServer;
let api: ReturnType<typeof buildApi>;
let jobs: JobRegistry;
let scratch: string;

interface Step {
  image: Buffer;
  seqLast: number;
  time: string;
}
let t0 = '';
let steps: Step[] = [];

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Every error answer seen, checked for shape in the last test. */
const errorBodies: Array<{ what: string; body: string }> = [];

async function call(method: 'GET' | 'POST' | 'DELETE' | 'PATCH', url: string, payload?: object | string) {
  const body = typeof payload === 'string' ? { payload, headers: { 'content-type': 'application/json' } } : payload === undefined ? {} : { payload };
  const response = await api.inject({ method, url: `/api/v1${url}`, ...body });
  if (response.statusCode >= 400) errorBodies.push({ what: `${method} ${url}`, body: response.body });
  return response;
}

/** An error answer: the status the code maps to, {code, message} and nothing else. */
async function expectError(method: 'GET' | 'POST' | 'DELETE', url: string, payload: object | string | undefined, code: ErrorCode, status: number): Promise<string> {
  const response = await call(method, url, payload);
  const what = `${method} ${url} ${JSON.stringify(payload) ?? ''}`;
  assert.equal(httpStatus(code), status, `${code} maps to ${status} in http-status.ts`);
  const body = response.json() as { code: string; message: string };
  assert.equal(body.code, code, `${what}: ${response.body}`);
  assert.equal(response.statusCode, status, `${what}: ${response.body}`);
  assert.deepEqual(Object.keys(body).sort(), ['code', 'message'], `${what}: ${response.body}`);
  assert.ok(body.message.length > 0);
  return body.message;
}

async function seqLast(volume: string): Promise<number> {
  return (await call('GET', `/volumes/${volume}`)).json().seqLast as number;
}

/** Writes (pattern, offset, length) through the volume's device, then flushes. */
async function write(volume: string, image: Buffer | null, writes: Array<[number, number, number]>): Promise<void> {
  const device = server.volumes.device(volume);
  assert.ok(device, `${volume} is online`);
  for (const [pattern, offset, length] of writes) {
    await device.write(offset, Buffer.alloc(length, pattern), { fua: false });
    image?.fill(pattern, offset, offset + length);
  }
  await device.flush();
}

async function writeSteps(volume: string, plan: Array<Array<[number, number, number]>>, image = Buffer.alloc(SIZE)): Promise<Step[]> {
  const out: Step[] = [];
  for (const writes of plan) {
    await pause(3);
    await write(volume, image, writes);
    await pause(3);
    out.push({ image: Buffer.from(image), seqLast: await seqLast(volume), time: new Date().toISOString() });
    await pause(3);
  }
  return out;
}

/** Reads a whole export (volume or mount) in-process. */
async function readAll(exportName: string): Promise<Buffer> {
  const device = server.volumes.device(exportName);
  assert.ok(device, `${exportName} is exported`);
  const out = Buffer.alloc(device.sizeBytes);
  for (let offset = 0; offset < out.length; offset += 4 * MiB) await device.read(offset, out.subarray(offset, offset + 4 * MiB));
  return out;
}

async function waitJob(id: string): Promise<{ state: string; result: any; error: { code: string; message: string } | null; bytesDone: number; bytesTotal: number }> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const response = await call('GET', `/jobs/${id}`);
    assert.equal(response.statusCode, 200, response.body);
    const job = response.json();
    if (job.state !== 'running') return job;
    assert.ok(Date.now() < deadline, `job ${id} still running`);
    await pause(10);
  }
}

before(async () => {
  server = await startInProcess([{ name: 'hist', sizeBytes: SIZE }, { name: 'empty', sizeBytes: SIZE }]);
  jobs = new JobRegistry();
  api = buildApi({
    volumes: server.volumes, nbd: server.nbd, jobs, version: 'test', startedAt: new Date(), dataDir: server.dataDir,
    ports: () => ({ nbd: { host: '127.0.0.1', port: server.port } }), log: pino({ level: 'silent' }),
  });
  scratch = makeTempDir('hindsight-history-api-');
  await pause(3);
  t0 = new Date().toISOString();
  steps = await writeSteps('hist', [
    [[0x11, 0, 64 * KiB]],
    [[0x22, 1 * MiB, 64 * KiB], [0x33, 32 * KiB, 4 * KiB]],
    [[0x44, 0, 4 * KiB], [0x55, 8 * MiB, 128 * KiB]],
  ]);
});

after(async () => {
  await jobs.stop();
  await api.close();
  await server.close();
  fs.rmSync(scratch, { recursive: true, force: true });
});

test('unknown fields, missing or malformed fields and too-long points are 400 INVALID_ARGUMENT, and create nothing', async () => {
  const bad: Array<['GET' | 'POST' | 'DELETE', string, object | string | undefined]> = [
    ['POST', '/mounts', { volume: 'hist', at: 'latest', extra: true }],
    ['POST', '/mounts', { volume: 'hist' }],
    ['POST', '/mounts', { at: 'latest' }],
    ['POST', '/mounts', { volume: 'hist', at: '' }],
    ['POST', '/mounts', { volume: 'hist', at: 'x'.repeat(257) }],
    ['POST', '/mounts', { volume: 'hist', at: `seq:${'1'.repeat(300)}` }],
    ['POST', '/mounts', { volume: 'hist', at: 'latest', writable: 'yes' }],
    ['POST', '/mounts', '{not json'],
    ['POST', '/volumes/hist/bookmarks', { name: 'b', at: 'latest', note: 'x' }],
    ['POST', '/volumes/hist/bookmarks', {}],
    ['POST', '/volumes/hist/bookmarks', { name: 'b', at: 'x'.repeat(257) }],
    ['POST', '/volumes/hist/rollback', {}],
    ['POST', '/volumes/hist/rollback', { at: 'latest', force: true, please: true }],
    ['POST', '/volumes/hist/rollback', { at: 'x'.repeat(257) }],
    ['POST', '/volumes/hist/restore', { at: 'latest' }],
    ['POST', '/volumes/hist/restore', { to: path.join(scratch, 'never.img') }],
    ['POST', '/volumes/hist/restore', { at: 'latest', to: '' }],
    ['POST', '/volumes/hist/restore', { at: 'latest', to: `/${'x'.repeat(4096)}` }],
    ['POST', '/volumes/hist/restore', { at: 'latest', to: path.join(scratch, 'never.img'), overwrite: true }],
    ['GET', '/volumes/hist/resolve', undefined],
    ['GET', `/volumes/hist/resolve?at=${'x'.repeat(257)}`, undefined],
    ['GET', '/volumes/hist/resolve?at=latest&extra=1', undefined],
    ['GET', '/volumes/hist/points?limit=0', undefined],
    ['GET', '/volumes/hist/points?limit=abc', undefined],
    ['GET', '/volumes/hist/points?limit=10001', undefined],
    ['GET', '/volumes/hist/timeline?bucket=1s', undefined],
    ['GET', `/volumes/hist/timeline?step=${'1'.repeat(32)}s`, undefined],
    ['GET', '/mounts?volume=hist&all=1', undefined],
    ['DELETE', '/mounts/hist@1?force=maybe', undefined],
    ['GET', `/jobs/${'a'.repeat(65)}`, undefined],
  ];
  for (const [method, url, payload] of bad) await expectError(method, url, payload, 'INVALID_ARGUMENT', 400);
  const missingAt = (await call('POST', '/mounts', { volume: 'hist' })).json();
  assert.match(missingAt.message, /\bat\b/, 'the message names the missing field');
  const unknown = (await call('POST', '/mounts', { volume: 'hist', at: 'latest', extra: true })).json();
  assert.match(unknown.message, /additional|extra/i, unknown.message);

  assert.deepEqual((await call('GET', '/mounts')).json(), { mounts: [] });
  assert.deepEqual((await call('GET', '/volumes/hist/bookmarks')).json().bookmarks, []);
  assert.deepEqual(jobs.list(), [], 'no job was started');
  assert.deepEqual(fs.readdirSync(scratch), []);
  assert.equal(await seqLast('hist'), steps[2].seqLast);
});

test('each point, mount, bookmark and job error has its own code and HTTP status', async () => {
  const [s1, s2] = steps;
  const last = steps[2].seqLast;
  const never = path.join(scratch, 'never.img');
  // POINT_INVALID → 400, on every route that takes a point.
  for (const at of ['yesterday', '2026-13-01T00:00:00Z', '2026-11-25T10:15:03', 'seq:0', 'seq:-1', '-1.5h', 'bookmark:../x', 'x'.repeat(256)]) {
    await expectError('POST', '/mounts', { volume: 'hist', at }, 'POINT_INVALID', 400);
  }
  await expectError('GET', '/volumes/hist/resolve?at=yesterday', undefined, 'POINT_INVALID', 400);
  await expectError('POST', '/volumes/hist/bookmarks', { name: 'x', at: 'yesterday' }, 'POINT_INVALID', 400);
  await expectError('POST', '/volumes/hist/rollback', { at: 'yesterday' }, 'POINT_INVALID', 400);
  await expectError('POST', '/volumes/hist/restore', { at: 'yesterday', to: never }, 'POINT_INVALID', 400);
  await expectError('GET', '/volumes/hist/timeline?from=yesterday', undefined, 'POINT_INVALID', 400);
  await expectError('GET', '/volumes/hist/points?to=yesterday', undefined, 'POINT_INVALID', 400);
  // --from/--to take any point (a bookmark or seq stands for its record's time): an unknown bookmark is its own error.
  await expectError('GET', '/volumes/hist/points?from=bookmark:nope', undefined, 'BOOKMARK_NOT_FOUND', 404);

  // POINT_BEFORE_HISTORY → 422: before the first write, or a volume with none.
  const before = await expectError('POST', '/mounts', { volume: 'hist', at: t0 }, 'POINT_BEFORE_HISTORY', 422);
  assert.match(before, /before the first write/);
  await expectError('POST', '/mounts', { volume: 'hist', at: '-1h', writable: true }, 'POINT_BEFORE_HISTORY', 422);
  await expectError('POST', '/mounts', { volume: 'empty', at: 'latest' }, 'POINT_BEFORE_HISTORY', 422);
  await expectError('GET', `/volumes/hist/resolve?at=${encodeURIComponent(t0)}`, undefined, 'POINT_BEFORE_HISTORY', 422);
  await expectError('POST', '/volumes/hist/restore', { at: t0, to: never }, 'POINT_BEFORE_HISTORY', 422);
  await expectError('POST', '/volumes/hist/rollback', { at: t0 }, 'POINT_BEFORE_HISTORY', 422);
  await expectError('POST', '/volumes/empty/bookmarks', { name: 'x' }, 'POINT_BEFORE_HISTORY', 422);

  // POINT_NOT_FOUND → 404: a seq beyond the last record.
  const beyond = await expectError('POST', '/mounts', { volume: 'hist', at: `seq:${last + 1}` }, 'POINT_NOT_FOUND', 404);
  assert.match(beyond, new RegExp(`seq ${last}\\b`), 'the message names the last seq');
  await expectError('GET', `/volumes/hist/resolve?at=seq:${last + 1}`, undefined, 'POINT_NOT_FOUND', 404);
  await expectError('POST', '/volumes/hist/restore', { at: 'seq:99999999', to: never }, 'POINT_NOT_FOUND', 404);

  // BOOKMARK_NOT_FOUND → 404, BOOKMARK_EXISTS → 409, INVALID_NAME → 400.
  await expectError('POST', '/mounts', { volume: 'hist', at: 'bookmark:nope' }, 'BOOKMARK_NOT_FOUND', 404);
  await expectError('DELETE', '/volumes/hist/bookmarks/nope', undefined, 'BOOKMARK_NOT_FOUND', 404);
  const created = await call('POST', '/volumes/hist/bookmarks', { name: 'first', at: s1.time });
  assert.equal(created.statusCode, 201, created.body);
  assert.equal(created.json().seq, (await call('GET', `/volumes/hist/resolve?at=${encodeURIComponent(s1.time)}`)).json().seq);
  await expectError('POST', '/volumes/hist/bookmarks', { name: 'first', at: s2.time }, 'BOOKMARK_EXISTS', 409);
  await expectError('POST', '/volumes/hist/bookmarks', { name: 'bad/name' }, 'INVALID_NAME', 400);
  await expectError('POST', '/volumes/hist/bookmarks', { name: 'x'.repeat(65) }, 'INVALID_NAME', 400);

  // MOUNT_NOT_FOUND → 404, MOUNT_EXISTS → 409, INVALID_NAME → 400.
  await expectError('GET', '/mounts/nope', undefined, 'MOUNT_NOT_FOUND', 404);
  await expectError('DELETE', '/mounts/nope', undefined, 'MOUNT_NOT_FOUND', 404);
  await expectError('GET', `/mounts/${encodeURIComponent('../x')}`, undefined, 'INVALID_NAME', 400);
  const mounted = await call('POST', '/mounts', { volume: 'hist', at: 'bookmark:first', name: 'taken' });
  assert.equal(mounted.statusCode, 201, mounted.body);
  await expectError('POST', '/mounts', { volume: 'hist', at: s2.time, name: 'taken' }, 'MOUNT_EXISTS', 409);
  await expectError('POST', '/mounts', { volume: 'hist', at: 'bookmark:first', name: 'taken', writable: true }, 'MOUNT_EXISTS', 409);
  await expectError('POST', '/mounts', { volume: 'hist', at: 'latest', name: 'empty' }, 'MOUNT_EXISTS', 409);
  for (const name of ['../x', '.hidden', 'a/b', '', 'x'.repeat(200)]) {
    await expectError('POST', '/mounts', { volume: 'hist', at: 'latest', name }, 'INVALID_NAME', 400);
  }
  // Two requests for one name at once: one mount, one MOUNT_EXISTS.
  const raced = await Promise.all([s1.time, s2.time].map((at) => call('POST', '/mounts', { volume: 'hist', at, name: 'raced' })));
  assert.deepEqual(raced.map((r) => r.statusCode).sort(), [201, 409]);

  // VOLUME_NOT_FOUND → 404 on every route that names a volume.
  for (const [method, url, payload] of [
    ['POST', '/mounts', { volume: 'nope', at: 'latest' }],
    ['GET', '/mounts?volume=nope', undefined],
    ['GET', '/volumes/nope/resolve?at=latest', undefined],
    ['GET', '/volumes/nope/bookmarks', undefined],
    ['POST', '/volumes/nope/bookmarks', { name: 'x' }],
    ['POST', '/volumes/nope/rollback', { at: 'latest' }],
    ['POST', '/volumes/nope/restore', { at: 'latest', to: never }],
    ['GET', '/volumes/nope/timeline', undefined],
    ['GET', '/volumes/nope/points', undefined],
  ] as Array<['GET' | 'POST', string, object | undefined]>) {
    await expectError(method, url, payload, 'VOLUME_NOT_FOUND', 404);
  }
  await expectError('POST', '/mounts', { volume: '../x', at: 'latest' }, 'INVALID_NAME', 400);

  // JOB_NOT_FOUND → 404.
  await expectError('GET', '/jobs/00000000-0000-0000-0000-000000000000', undefined, 'JOB_NOT_FOUND', 404);
  await expectError('GET', '/jobs/nope', undefined, 'JOB_NOT_FOUND', 404);

  // Nothing was created by any refusal.
  assert.deepEqual((await call('GET', '/mounts')).json().mounts.map((m: { name: string }) => m.name).sort(), ['raced', 'taken']);
  assert.deepEqual((await call('GET', '/volumes/hist/bookmarks')).json().bookmarks.map((b: { name: string }) => b.name), ['first']);
  assert.deepEqual(fs.readdirSync(path.join(server.dataDir, 'mounts')).sort(), ['raced', 'taken']);
  assert.equal(await seqLast('hist'), last);
  assert.deepEqual(fs.readdirSync(scratch), []);
  for (const name of ['raced', 'taken']) assert.equal((await call('DELETE', `/mounts/${name}`)).statusCode, 200);
  assert.equal((await call('DELETE', '/volumes/hist/bookmarks/first')).statusCode, 200);
});

test('resolve, mounts and bookmarks answer with the resolved seq and time; mounts show the image at the point', async () => {
  for (const [i, step] of steps.entries()) {
    const resolved = (await call('GET', `/volumes/hist/resolve?at=${encodeURIComponent(step.time)}`)).json();
    assert.equal(resolved.volume, 'hist');
    assert.ok(resolved.seq > (steps[i - 1]?.seqLast ?? 0) && resolved.seq <= step.seqLast, `step ${i + 1}: seq ${resolved.seq}`);
    assert.ok(resolved.time <= step.time);
    const response = await call('POST', '/mounts', { volume: 'hist', at: step.time });
    assert.equal(response.statusCode, 201, response.body);
    const mount = response.json();
    assert.equal(mount.name, `hist@${resolved.seq}`);
    assert.equal(mount.export, mount.name);
    assert.equal(mount.uri, `nbd://127.0.0.1:${server.port}/hist%40${resolved.seq}`);
    assert.equal(mount.seq, resolved.seq);
    assert.equal(mount.time, resolved.time);
    assert.equal(mount.connections, 0);
    assert.equal(typeof mount.mountMs, 'number');
    assert.ok((await readAll(mount.name)).equals(step.image), `step ${i + 1}: mount content`);
    const again = await call('POST', '/mounts', { volume: 'hist', at: `seq:${resolved.seq}` });
    assert.equal(again.json().createdAt, mount.createdAt, 'the same read-only point mounted twice is the same mount');
    assert.deepEqual((await call('GET', `/mounts/${encodeURIComponent(mount.name)}`)).json().seq, resolved.seq);
  }
  assert.equal((await call('GET', '/mounts?volume=hist')).json().mounts.length, 3);
  assert.deepEqual((await call('GET', '/mounts?volume=empty')).json(), { mounts: [] });

  // A writable clone: its writes are its own.
  const clone = (await call('POST', '/mounts', { volume: 'hist', at: steps[1].time, writable: true })).json();
  assert.equal(clone.writable, true);
  assert.match(clone.name, /^hist@\d+-rw$/);
  const cloneDevice = server.volumes.device(clone.name)!;
  await cloneDevice.write(2 * MiB, Buffer.alloc(4 * KiB, 0x66), { fua: false });
  await cloneDevice.flush();
  const expected = Buffer.from(steps[1].image).fill(0x66, 2 * MiB, 2 * MiB + 4 * KiB);
  assert.ok((await readAll(clone.name)).equals(expected));
  assert.ok((await readAll('hist')).equals(steps[2].image), 'the source is untouched');
  assert.equal((await call('GET', `/mounts/${encodeURIComponent(clone.name)}`)).json().cloneBytesWritten, 4 * KiB);
  const readOnly = server.volumes.device(`hist@${clone.seq}`)!;
  await assert.rejects(readOnly.write(0, Buffer.alloc(512), { fua: false }), { code: 'READ_ONLY' });

  // Unmount: gone, answered with what it was.
  for (const mount of (await call('GET', '/mounts')).json().mounts as Array<{ name: string }>) {
    const deleted = await call('DELETE', `/mounts/${encodeURIComponent(mount.name)}`);
    assert.equal(deleted.statusCode, 200, deleted.body);
    assert.equal(deleted.json().unmounted, true);
    assert.equal(deleted.json().name, mount.name);
    assert.equal(server.volumes.device(mount.name), undefined);
  }
  assert.deepEqual(fs.readdirSync(path.join(server.dataDir, 'mounts')), []);
});

test('a connected client makes unmount and rollback VOLUME_BUSY (409) unless forced; a read-only volume cannot roll back', async () => {
  await call('POST', '/volumes', { name: 'rb', size: SIZE });
  const [r1, r2] = await writeSteps('rb', [[[0xa1, 0, 64 * KiB]], [[0xa2, 0, 4 * KiB], [0xa3, 4 * MiB, 4 * KiB]]]);
  const mount = (await call('POST', '/mounts', { volume: 'rb', at: r1.time, name: 'rb-held' })).json();

  const mountClient = await RawClient.open(server.port, 'rb-held');
  assert.match(await expectError('DELETE', '/mounts/rb-held', undefined, 'VOLUME_BUSY', 409), /--force/);
  const forcedUnmount = await call('DELETE', '/mounts/rb-held?force=true');
  assert.equal(forcedUnmount.statusCode, 200);
  assert.equal(forcedUnmount.json().disconnectedClients, 1);
  await mountClient.closed;
  assert.equal(mount.seq, (await call('GET', `/volumes/rb/resolve?at=${encodeURIComponent(r1.time)}`)).json().seq);

  const client = await RawClient.open(server.port, 'rb');
  const busy = await expectError('POST', '/volumes/rb/rollback', { at: r1.time }, 'VOLUME_BUSY', 409);
  assert.match(busy, /connected NBD client/);
  assert.equal(await seqLast('rb'), r2.seqLast, 'a refused rollback records nothing');
  const rolled = await call('POST', '/volumes/rb/rollback', { at: r1.time, force: true });
  assert.equal(rolled.statusCode, 200, rolled.body);
  assert.deepEqual(rolled.json(), {
    volume: 'rb', seq: mount.seq, time: mount.time, revertSeq: r2.seqLast + 1, revertTime: rolled.json().revertTime,
    abandoned: { seqFirst: mount.seq + 1, seqLast: r2.seqLast }, disconnectedClients: 1,
  });
  await client.closed;
  assert.ok((await readAll('rb')).equals(r1.image), 'the live volume is the point');
  const abandoned = (await call('POST', '/mounts', { volume: 'rb', at: `seq:${r2.seqLast}` })).json();
  assert.ok((await readAll(abandoned.name)).equals(r2.image), 'the abandoned writes stay mountable by seq');
  await pause(3);
  const afterRollback = new Date().toISOString();
  assert.equal((await call('GET', `/volumes/rb/resolve?at=${encodeURIComponent(afterRollback)}`)).json().seq, r2.seqLast + 1);
  const timeline = (await call('GET', '/volumes/rb/timeline')).json();
  assert.equal(timeline.buckets.reduce((sum: number, b: { reverts: number }) => sum + b.reverts, 0), 1);

  assert.equal((await call('PATCH', '/volumes/rb', { readOnly: true })).statusCode, 200);
  await expectError('POST', '/volumes/rb/rollback', { at: `seq:${r2.seqLast}` }, 'READ_ONLY', 409);
  assert.equal(await seqLast('rb'), r2.seqLast + 1);
  await expectError('DELETE', '/volumes/rb', undefined, 'VOLUME_BUSY', 409);
  assert.equal((await call('DELETE', '/volumes/rb?force=true')).statusCode, 200);
  assert.deepEqual((await call('GET', '/mounts?volume=hist')).json().mounts, []);
  assert.deepEqual((await call('GET', '/mounts')).json().mounts, [], 'the forced delete took the mount with it');
});

test('restore is a job: 202 with an id, GET /jobs/:id until done, the result has the sha256 of the file', async () => {
  const [, s2, s3] = steps;
  const target = path.join(scratch, 'restore-2.img');
  const started = await call('POST', '/volumes/hist/restore', { at: s2.time, to: target });
  assert.equal(started.statusCode, 202, started.body);
  const job = started.json();
  assert.match(job.id, /^[0-9a-f-]{36}$/);
  assert.equal(job.kind, 'restore');
  assert.equal(job.state, 'running');
  assert.equal(job.volume, 'hist');
  const resolved = (await call('GET', `/volumes/hist/resolve?at=${encodeURIComponent(s2.time)}`)).json();
  assert.equal(job.seq, resolved.seq, 'the point is resolved when the job starts');
  assert.equal(job.time, resolved.time);
  const done = await waitJob(job.id);
  assert.equal(done.state, 'done', JSON.stringify(done.error));
  assert.equal(done.bytesDone, SIZE);
  assert.equal(done.bytesTotal, SIZE);
  assert.equal(done.result.path, target);
  assert.equal(done.result.seq, resolved.seq);
  assert.equal(done.result.sizeBytes, SIZE);
  assert.equal(done.result.dataBytes, 128 * KiB);
  assert.equal(done.result.sha256, sha256(s2.image));
  assert.equal(done.result.sha256, sha256(fs.readFileSync(target)));
  assert.ok(fs.statSync(target).blocks * 512 <= 1 * MiB, 'sparse');
  assert.ok((await call('GET', '/jobs')).json().jobs.some((j: { id: string }) => j.id === job.id));

  // An existing target without force: TARGET_EXISTS (the mapping says 409), file untouched.
  const before = fs.statSync(target);
  const again = await call('POST', '/volumes/hist/restore', { at: s3.time, to: target });
  const exists = again.statusCode === 202 ? (await waitJob(again.json().id)).error : again.json();
  assert.ok(again.statusCode === 202 || again.statusCode === 409, again.body);
  assert.equal(exists?.code, 'TARGET_EXISTS', JSON.stringify(exists));
  assert.match(exists!.message, /--force/);
  assert.equal(fs.statSync(target).mtimeMs, before.mtimeMs);
  assert.equal(sha256(fs.readFileSync(target)), sha256(s2.image));
  const forced = await call('POST', '/volumes/hist/restore', { at: s3.time, to: target, force: true });
  const forcedJob = await waitJob(forced.json().id);
  assert.equal(forcedJob.state, 'done');
  assert.equal(forcedJob.result.sha256, sha256(s3.image));
  assert.equal(sha256(fs.readFileSync(target)), sha256(s3.image));

  // A relative target (the daemon's working directory means nothing to a client): a clear
  // INVALID_ARGUMENT, whether refused at start (400) or by the job.
  for (const to of ['relative.img', './x/relative.img']) {
    const relative = await call('POST', '/volumes/hist/restore', { at: 'latest', to });
    const error = relative.statusCode === 202 ? (await waitJob(relative.json().id)).error : relative.json();
    assert.ok(relative.statusCode === 202 || relative.statusCode === 400, relative.body);
    assert.equal(error?.code, 'INVALID_ARGUMENT', JSON.stringify(error));
    assert.match(error!.message, /absolute/);
    assert.ok(!fs.existsSync(path.resolve(to)) && !fs.existsSync(`${path.resolve(to)}.hindsight-partial`), 'nothing written relative to the daemon\'s directory');
  }
  // A target whose directory does not exist, or a directory.
  for (const [to, pattern] of [[path.join(scratch, 'no-such-dir', 'x.img'), /directory/], [scratch, /directory/]] as const) {
    const response = await call('POST', '/volumes/hist/restore', { at: 'latest', to, force: true });
    const error = response.statusCode === 202 ? (await waitJob(response.json().id)).error : response.json();
    assert.equal(error?.code, 'INVALID_ARGUMENT', JSON.stringify(error));
    assert.match(error!.message, pattern);
  }
  assert.deepEqual(fs.readdirSync(scratch).sort(), ['restore-2.img'], 'no partial files left behind');
  for (const failed of jobs.list().filter((j) => j.state === 'failed')) {
    assert.deepEqual(Object.keys(failed.error!).sort(), ['code', 'message']);
    assert.doesNotMatch(failed.error!.message, /\n\s+at /, 'no stack trace in a job error');
  }
  fs.rmSync(target);
});

test('a volume with a running restore is not deleted without --force; with it, the restore is cancelled and its file removed', async () => {
  await call('POST', '/volumes', { name: 'busy', size: 4 * 1024 * MiB });
  await write('busy', null, [[9, 0, 1 * MiB]]);
  const target = path.join(scratch, 'busy.img');
  const started = await call('POST', '/volumes/busy/restore', { at: 'latest', to: target });
  assert.equal(started.statusCode, 202, started.body);
  const refused = await call('DELETE', '/volumes/busy');
  assert.equal(refused.statusCode, 409, refused.body);
  assert.equal(refused.json().code, 'VOLUME_BUSY');
  assert.match(refused.json().message, /running job/);
  const deleted = await call('DELETE', '/volumes/busy?force=true');
  assert.equal(deleted.statusCode, 200, deleted.body);
  const job = await waitJob(started.json().id);
  assert.equal(job.state, 'failed');
  assert.equal(job.error?.code, 'SHUTTING_DOWN');
  assert.deepEqual(fs.readdirSync(scratch).filter((name) => name.startsWith('busy.img')), [], 'no image or partial file left');
});

test('two restores to one new path at once: one succeeds with the file\'s sha256, the other is refused', async () => {
  const target = path.join(scratch, 'raced.img');
  await call('POST', '/volumes', { name: 'big', size: 64 * MiB });
  await write('big', null, Array.from({ length: 8 }, (_, i) => [i + 1, i * 8 * MiB, 1 * MiB] as [number, number, number]));
  const early = (await call('GET', '/volumes/big/resolve?at=seq:1')).json();
  assert.equal(early.seq, 1);
  const started = await Promise.all(['seq:1', 'latest'].map((at) => call('POST', '/volumes/big/restore', { at, to: target })));
  // The target is claimed when a restore starts: the second is refused at once (409).
  const accepted = started.filter((response) => response.statusCode === 202);
  const refused = started.filter((response) => response.statusCode !== 202);
  assert.equal(accepted.length, 1, `exactly one restore starts: ${started.map((r) => r.body).join(' | ')}`);
  assert.equal(refused[0].statusCode, 409);
  assert.equal(refused[0].json().code, 'TARGET_EXISTS');
  const done = await waitJob(accepted[0].json().id);
  await call('DELETE', '/volumes/big?force=true');
  try {
    assert.equal(done.state, 'done', JSON.stringify(done.error));
    assert.equal(sha256(fs.readFileSync(target)), done.result.sha256, 'the file is the image the job reported');
    assert.deepEqual(fs.readdirSync(scratch).filter((name) => name.includes('hindsight-partial')), [], 'no temporary file left');
  } finally {
    fs.rmSync(target, { force: true });
  }
});

test('timeline: step parsing (1s, 250ms, 1h30m; bogus, zero, negative → 400), sums, range limits', async () => {
  const writes = 5;
  const bytes = (64 + 64 + 4 + 4 + 128) * KiB;
  for (const [step, stepMs] of [['1s', 1000], ['250ms', 250], ['1h30m', 5_400_000], [' 2m ', 120_000], ['1w', 604_800_000]] as const) {
    const response = await call('GET', `/volumes/hist/timeline?step=${encodeURIComponent(step)}`);
    assert.equal(response.statusCode, 200, `${step}: ${response.body}`);
    const timeline = response.json();
    assert.equal(timeline.stepMs, stepMs, step);
    assert.equal(timeline.buckets.reduce((sum: number, b: { writes: number }) => sum + b.writes, 0), writes, step);
    assert.equal(timeline.buckets.reduce((sum: number, b: { bytesWritten: number }) => sum + b.bytesWritten, 0), bytes, step);
    assert.equal(timeline.flushPoints, 3, `${step}: one flush per step`);
  }
  const auto = (await call('GET', '/volumes/hist/timeline')).json();
  assert.ok(auto.buckets.length >= 1 && auto.buckets.length <= 61, `default: about 60 intervals, got ${auto.buckets.length}`);
  for (const step of ['bogus', '0s', '0ms', '-5m', '1.5s', '5', 's', '', '1m1m', '10000000w']) {
    const message = await expectError('GET', `/volumes/hist/timeline?step=${encodeURIComponent(step)}`, undefined, 'INVALID_ARGUMENT', 400);
    assert.match(message, /duration/, `${step}: ${message}`);
  }
  const tooMany = await expectError('GET', '/volumes/hist/timeline?from=-1d&step=1ms', undefined, 'INVALID_ARGUMENT', 400);
  assert.match(tooMany, /at most 10000 intervals/);
  const ranged = (await call('GET', `/volumes/hist/timeline?from=${encodeURIComponent(steps[0].time)}&to=${encodeURIComponent(steps[1].time)}&step=1h`)).json();
  assert.equal(ranged.buckets.length, 1);
  assert.equal(ranged.buckets[0].writes, 2, 'only step 2 lies in the range');

  const points = (await call('GET', '/volumes/hist/points')).json();
  assert.deepEqual(points.flushPoints.map((p: { seq: number }) => p.seq), steps.map((s) => s.seqLast), 'one flush point per step');
  assert.deepEqual((await call('GET', '/volumes/hist/points?limit=2')).json().flushPoints.map((p: { seq: number }) => p.seq), steps.slice(1).map((s) => s.seqLast));
});

test('no error answer carries a stack trace or anything but {code, message}', () => {
  assert.ok(errorBodies.length > 50, `errors seen: ${errorBodies.length}`);
  for (const { what, body } of errorBodies) {
    const parsed = JSON.parse(body) as Record<string, unknown>;
    assert.deepEqual(Object.keys(parsed).sort(), ['code', 'message'], `${what}: ${body}`);
    assert.doesNotMatch(body, /\bat .+\.(ts|js):\d+|node:internal|"stack"/, `${what}: ${body}`);
    assert.notEqual(parsed.code, 'INTERNAL', `${what}: ${body}`);
  }
});
