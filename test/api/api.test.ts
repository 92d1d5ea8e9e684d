/** The HTTP API through fastify.inject(): routes, validation at the edge, {code, message} errors. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { buildApi } from '../../src/api/index.js';
import { JobRegistry } from '../../src/volume/index.js';
import { startInProcess } from '../helpers/in-process.js';
import type { InProcessServer } from '../helpers/in-process.js';
import { RawClient } from '../helpers/raw-client.js';

let server: InProcessServer;
let api: ReturnType<typeof buildApi>;

before(async () => {
  server = await startInProcess([{ name: 'disk0', sizeBytes: 1 << 20 }]);
  api = buildApi({
    volumes: server.volumes, nbd: server.nbd, jobs: new JobRegistry(), version: 'test', startedAt: new Date(), dataDir: server.dataDir,
    ports: () => ({ nbd: { host: '127.0.0.1', port: server.port } }), log: pino({ level: 'silent' }),
  });
});
after(async () => {
  await api.close();
  await server.close();
});

test('create, list, info, set read-only, delete', async () => {
  const created = await api.inject({ method: 'POST', url: '/api/v1/volumes', payload: { name: 'vm-1.disk_a', size: '64M' } });
  assert.equal(created.statusCode, 201);
  const body = created.json();
  assert.equal(body.sizeBytes, 64 * 2 ** 20);
  for (const key of ['name', 'sizeBytes', 'seqLast', 'timeLast', 'journalBytes', 'storedBytes', 'clientBytesWritten', 'oldestPoint']) {
    assert.ok(key in body, `info has ${key}`);
  }
  const list = (await api.inject({ method: 'GET', url: '/api/v1/volumes' })).json();
  assert.deepEqual(list.volumes.map((v: { name: string }) => v.name), ['disk0', 'vm-1.disk_a']);
  const ro = await api.inject({ method: 'PATCH', url: '/api/v1/volumes/vm-1.disk_a', payload: { readOnly: true } });
  assert.equal(ro.json().readOnly, true);
  assert.equal(ro.json().reduce, true, 'reduction is on by default');
  const plain = await api.inject({ method: 'PATCH', url: '/api/v1/volumes/vm-1.disk_a', payload: { reduce: false } });
  assert.equal(plain.json().reduce, false);
  assert.equal(plain.json().readOnly, true, 'other settings are kept');
  const empty = await api.inject({ method: 'PATCH', url: '/api/v1/volumes/vm-1.disk_a', payload: {} });
  assert.equal(empty.statusCode, 400);
  const deleted = await api.inject({ method: 'DELETE', url: '/api/v1/volumes/vm-1.disk_a' });
  assert.equal(deleted.statusCode, 200);
  assert.equal((await api.inject({ method: 'GET', url: '/api/v1/volumes/vm-1.disk_a' })).json().code, 'VOLUME_NOT_FOUND');
});

test('bad input gets 400 with a code, and creates nothing', async () => {
  const cases: Array<[unknown, string]> = [
    [{ name: '../etc', size: '1G' }, 'INVALID_NAME'],
    [{ name: 'a/b', size: '1G' }, 'INVALID_NAME'],
    [{ name: 'x'.repeat(65), size: '1G' }, 'INVALID_NAME'],
    [{ name: 'ok', size: 'lots' }, 'INVALID_SIZE'],
    [{ name: 'ok', size: 1000 }, 'INVALID_SIZE'],
    [{ name: 'ok' }, 'INVALID_ARGUMENT'],
    [{ name: 'ok', size: '1G', extra: true }, 'INVALID_ARGUMENT'],
  ];
  for (const [payload, code] of cases) {
    const response = await api.inject({ method: 'POST', url: '/api/v1/volumes', payload: payload as object });
    assert.equal(response.statusCode, 400, JSON.stringify(payload));
    const body = response.json();
    assert.equal(body.code, code, JSON.stringify(payload));
    assert.equal(typeof body.message, 'string');
    assert.ok(!('stack' in body));
  }
  const garbage = await api.inject({ method: 'POST', url: '/api/v1/volumes', headers: { 'content-type': 'application/json' }, payload: '{not json' });
  assert.equal(garbage.statusCode, 400);
  assert.equal(garbage.json().code, 'INVALID_ARGUMENT');
  assert.deepEqual(server.volumes.names(), ['disk0']);
});

test('duplicates conflict, unknown routes 404 with a code', async () => {
  const duplicate = await api.inject({ method: 'POST', url: '/api/v1/volumes', payload: { name: 'disk0', size: '1M' } });
  assert.equal(duplicate.statusCode, 409);
  assert.equal(duplicate.json().code, 'VOLUME_EXISTS');
  const missing = await api.inject({ method: 'GET', url: '/api/v1/nothing' });
  assert.equal(missing.statusCode, 404);
  assert.equal(missing.json().code, 'ROUTE_NOT_FOUND');
});

test('delete refuses a connected volume unless forced, and force disconnects the client', async () => {
  const client = await RawClient.open(server.port, 'disk0');
  const busy = await api.inject({ method: 'DELETE', url: '/api/v1/volumes/disk0' });
  assert.equal(busy.statusCode, 409);
  assert.equal(busy.json().code, 'VOLUME_BUSY');
  assert.deepEqual(server.volumes.names(), ['disk0']);
  const forced = await api.inject({ method: 'DELETE', url: '/api/v1/volumes/disk0?force=true' });
  assert.equal(forced.statusCode, 200);
  assert.equal(forced.json().disconnectedClients, 1);
  await client.closed;
  assert.deepEqual(server.volumes.names(), []);
});
