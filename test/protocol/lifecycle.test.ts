/**
 * Connection endings and resource bounds: half-close after DISC, graceful shutdown, slow
 * readers, and one huge request that must not stall everyone else.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { request } from '../helpers/frames.js';
import { startInProcess } from '../helpers/in-process.js';
import { RawClient } from '../helpers/raw-client.js';

const MiB = 1024 * 1024;

test('DISC then half-close: every outstanding request is still answered', async (t) => {
  const server = await startInProcess([{ name: 'disk0', sizeBytes: 16 * MiB }]);
  t.after(() => server.close());
  const client = await RawClient.open(server.port, 'disk0');
  client.socket.write(Buffer.concat([
    request({ type: 1, flags: 1, cookie: 1n, offset: 0, length: 4096 }, Buffer.alloc(4096, 0x33)),
    request({ type: 3, cookie: 2n }),
    request({ type: 3, flags: 1, cookie: 3n }),
    request({ type: 2, cookie: 4n }),
  ]));
  client.socket.end();
  const cookies = [];
  for (let i = 0; i < 3; i += 1) {
    const reply = await client.readReply();
    assert.ok(reply.kind === 'simple' && reply.error === 0);
    cookies.push(reply.cookie);
  }
  assert.deepEqual(cookies.sort(), [1n, 2n, 3n]);
  await client.closed;
});

test('a client that never reads cannot make the server buffer without bound', async (t) => {
  const server = await startInProcess([{ name: 'disk0', sizeBytes: 64 * MiB }]);
  t.after(() => server.close());
  const client = await RawClient.open(server.port, 'disk0');
  client.socket.pause();
  const reads = 64;
  const frames = [];
  for (let i = 0; i < reads; i += 1) frames.push(request({ type: 0, cookie: BigInt(i), offset: 0, length: 32 * MiB }));
  client.socket.write(Buffer.concat(frames));
  const deadline = Date.now() + 2000;
  let peak = 0;
  while (Date.now() < deadline) {
    const [info] = server.nbd.connections();
    peak = Math.max(peak, info?.requestsInflight ?? 0);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.ok(peak <= 2, `at most two 32 MiB reads in flight while the client does not read (saw ${peak})`);
  assert.ok(process.memoryUsage().arrayBuffers < 400 * MiB, `buffers stay bounded: ${process.memoryUsage().arrayBuffers}`);
  client.socket.resume();
  for (let i = 0; i < reads; i += 1) {
    const reply = await client.readReply();
    assert.ok(reply.kind === 'simple' && reply.error === 0);
    await client.read(32 * MiB);
  }
  client.close();
});

test('a huge NO_HOLE zero is metadata: instant for everyone, reads back as zeroes', async (t) => {
  const server = await startInProcess([{ name: 'disk0', sizeBytes: 512 * MiB }]);
  t.after(() => server.close());
  const zeroing = await RawClient.open(server.port, 'disk0');
  const reader = await RawClient.open(server.port, 'disk0');
  zeroing.send(request({ type: 1, cookie: 1n, offset: 100 * MiB, length: 4096 }, Buffer.alloc(4096, 9)));
  await zeroing.readReply();
  zeroing.send(request({ type: 6, flags: 2, cookie: 2n, offset: 0, length: 384 * MiB }));
  const reply = await zeroing.readReply();
  assert.ok(reply.kind === 'simple' && reply.error === 0);
  reader.send(request({ type: 0, cookie: 3n, offset: 100 * MiB, length: 4096 }));
  const read = await reader.readReply(4096);
  assert.ok(read.kind === 'simple-read' && read.data.every((byte) => byte === 0));
  const info = await server.volumes.info('disk0');
  assert.ok(info.journalBytes < 1024 * 1024, `zeroing wrote no data (${info.journalBytes} journal bytes)`);
  zeroing.close();
  reader.close();
});

test('FUA is accepted on every command once advertised', async (t) => {
  const server = await startInProcess([{ name: 'disk0', sizeBytes: 4 * MiB }]);
  t.after(() => server.close());
  const client = await RawClient.open(server.port, 'disk0');
  client.send(request({ type: 0, flags: 1, cookie: 1n, length: 512 }));
  const read = await client.readReply(512);
  assert.equal(read.kind, 'simple-read');
  for (const [type, cookie] of [[3, 2n], [5, 3n], [4, 4n], [6, 5n]] as const) {
    client.send(request({ type, flags: 1, cookie, length: type === 3 ? 0 : 4096 }));
    const reply = await client.readReply();
    assert.ok(reply.kind === 'simple' && reply.error === 0, `command ${type} with FUA`);
  }
  client.close();
});

test('graceful shutdown delivers running replies and refuses the rest with ESHUTDOWN', async () => {
  const server = await startInProcess([{ name: 'disk0', sizeBytes: 64 * MiB }]);
  const client = await RawClient.open(server.port, 'disk0');
  const handshaking = await RawClient.connect(server.port);
  await handshaking.readGreeting();
  handshaking.send(Buffer.from([0, 0, 0, 3]));
  // The client stops reading, so the server's reply budget fills and later requests wait,
  // decoded or not, until shutdown.
  client.socket.pause();
  const count = 40;
  const frames = [];
  for (let i = 0; i < count; i += 1) frames.push(request({ type: 0, cookie: BigInt(i), offset: (i % 16) * 4 * MiB, length: 4 * MiB }));
  client.send(Buffer.concat(frames));
  await new Promise((resolve) => setTimeout(resolve, 200));
  const closing = server.close(10_000);
  client.socket.resume();
  let answered = 0;
  let refused = 0;
  for (let i = 0; i < count; i += 1) {
    const reply = await client.readReply(4 * MiB);
    if (reply.kind === 'simple-read') answered += 1;
    else if (reply.kind === 'simple' && reply.error === 108) refused += 1;
    else assert.fail(`unexpected reply ${JSON.stringify(reply, (k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
  }
  assert.ok(answered >= 1, 'requests already running were answered');
  assert.ok(refused >= 1, 'requests not yet started were refused with ESHUTDOWN');
  await handshaking.closed;
  await client.closed;
  await closing;
});
