/**
 * Bad input, hand-built: each case gets the protocol's error reply or a closed connection
 * for that client only; the server keeps serving everyone else, data is untouched, and no
 * session or file descriptor leaks.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import { clientFlags, goData, metaContextData, option, request } from '../helpers/frames.js';
import { startInProcess } from '../helpers/in-process.js';
import type { InProcessServer } from '../helpers/in-process.js';
import { RawClient } from '../helpers/raw-client.js';
import { LIMITS } from '../../src/core/index.js';

const SIZE = 8 * 1024 * 1024;
const ERR_UNSUP = 0x80000001;
const ERR_INVALID = 0x80000003;
const ERR_UNKNOWN = 0x80000006;
const ERR_TOO_BIG = 0x80000009;
const EPERM = 1;
const EINVAL = 22;
const ENOSPC = 28;

let server: InProcessServer;

before(async () => {
  server = await startInProcess([
    { name: 'disk0', sizeBytes: SIZE },
    { name: 'ro', sizeBytes: SIZE, readOnly: true },
  ], { handshakeTimeoutMs: 300 });
});
after(async () => server.close());

/** A healthy client still gets correct service: write a pattern and read it back. */
async function assertServerHealthy(tag: number): Promise<void> {
  const client = await RawClient.open(server.port, 'disk0');
  const data = Buffer.alloc(4096, tag);
  client.send(request({ type: 1, cookie: 11n, offset: 1024 * 1024, length: 4096 }, data));
  const written = await client.readReply();
  assert.equal(written.kind === 'simple' && written.error, 0);
  client.send(request({ type: 0, cookie: 12n, offset: 1024 * 1024, length: 4096 }));
  const read = await client.readReply(4096);
  assert.ok(read.kind === 'simple-read' && read.data.equals(data), 'healthy client reads its own write');
  client.close();
  await client.closed;
}

async function readAt(offset: number, length: number): Promise<Buffer> {
  const client = await RawClient.open(server.port, 'disk0');
  client.send(request({ type: 0, cookie: 99n, offset, length }));
  const reply = await client.readReply(length);
  client.close();
  assert.ok(reply.kind === 'simple-read');
  return reply.data;
}

async function expectClosed(client: RawClient): Promise<void> {
  await client.closed;
  assert.ok(client.isClosed);
}

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** Bounded poll: sessions close after the TCP FIN exchange, which has no event to await here. */
async function waitForNoSessions(): Promise<void> {
  const deadline = Date.now() + 5000;
  while (server.nbd.connections().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(server.nbd.connections(), [], 'every session is gone');
}

test('garbage instead of a handshake closes only that connection', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  client.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(4)));
  await expectClosed(client);
  await assertServerHealthy(1);
});

test('unknown client flags close the connection', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  client.send(clientFlags(0x80));
  await expectClosed(client);
});

test('a client without fixed newstyle is refused', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  client.send(clientFlags(0));
  await expectClosed(client);
});

test('unknown options get ERR_UNSUP and the handshake goes on', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  client.send(clientFlags());
  client.send(option(0x7777, Buffer.from('whatever')));
  const reply = await client.readOptionReply();
  assert.equal(reply.type, ERR_UNSUP);
  assert.equal(reply.option, 0x7777);
  client.send(option(5));
  assert.equal((await client.readOptionReply()).type, ERR_UNSUP, 'STARTTLS unsupported without TLS');
  client.send(option(7, goData('disk0')));
  let last = await client.readOptionReply();
  while (last.type !== 1) last = await client.readOptionReply();
  client.close();
});

test('an oversize option is skipped and answered ERR_TOO_BIG', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  client.send(clientFlags());
  const huge = Buffer.alloc(256 * 1024, 0x41);
  client.send(option(6, huge));
  const reply = await client.readOptionReply();
  assert.equal(reply.type, ERR_TOO_BIG);
  client.send(option(3));
  const listed = await client.readOptionReply();
  assert.equal(listed.type, 2, 'LIST still works after the skipped option');
  client.close();
});

test('malformed INFO/GO data gets ERR_INVALID; an unknown export ERR_UNKNOWN', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  client.send(clientFlags());
  const lying = goData('disk0');
  lying.writeUInt32BE(1000, 0);
  client.send(option(7, lying));
  assert.equal((await client.readOptionReply()).type, ERR_INVALID);
  client.send(option(7, Buffer.concat([goData('disk0', [1]), Buffer.from([0])])));
  assert.equal((await client.readOptionReply()).type, ERR_INVALID, 'trailing byte after info list');
  client.send(option(7, goData('nope')));
  assert.equal((await client.readOptionReply()).type, ERR_UNKNOWN);
  client.send(option(3, Buffer.from('x')));
  assert.equal((await client.readOptionReply()).type, ERR_INVALID, 'LIST with data');
  client.send(option(10, metaContextData('disk0', ['base:allocation'])));
  assert.equal((await client.readOptionReply()).type, ERR_INVALID, 'SET_META_CONTEXT before STRUCTURED_REPLY');
  client.send(option(8, Buffer.from('x')));
  assert.equal((await client.readOptionReply()).type, ERR_INVALID, 'STRUCTURED_REPLY with data');
  client.send(option(8));
  assert.equal((await client.readOptionReply()).type, 1);
  const badMeta = metaContextData('disk0', ['base:allocation']);
  badMeta.writeUInt32BE(50, badMeta.length - 'base:allocation'.length - 4);
  client.send(option(10, badMeta));
  assert.equal((await client.readOptionReply()).type, ERR_INVALID, 'query length beyond the option');
  client.close();
});

test('EXPORT_NAME for an unknown export closes the connection', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  client.send(clientFlags());
  client.send(option(1, Buffer.from('missing')));
  await expectClosed(client);
  await assertServerHealthy(2);
});

test('a lying option length followed by a disconnect hurts no one', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  client.send(clientFlags());
  client.send(option(7, Buffer.alloc(10), 60000));
  client.close();
  await client.closed;
  await assertServerHealthy(3);
});

test('a silent client is dropped when the handshake times out', async () => {
  const client = await RawClient.connect(server.port);
  await client.readGreeting();
  await expectClosed(client);
});

test('bad requests get NBD errors and leave data untouched', async () => {
  const before = await readAt(0, 65536);
  const client = await RawClient.open(server.port, 'disk0');
  const cases: Array<[string, Buffer, number]> = [
    ['unknown command', request({ type: 42, cookie: 1n }), EINVAL],
    ['unknown flag on read', request({ type: 0, flags: 0x8000, cookie: 2n, length: 512 }), EINVAL],
    ['NO_HOLE on read', request({ type: 0, flags: 2, cookie: 3n, length: 512 }), EINVAL],
    ['DF without structured replies', request({ type: 0, flags: 4, cookie: 4n, length: 512 }), EINVAL],
    ['read past the end', request({ type: 0, cookie: 5n, offset: SIZE - 256, length: 512 }), EINVAL],
    ['read at a huge offset', request({ type: 0, cookie: 6n, offset: 0xfffffffffffffe00n, length: 512 }), EINVAL],
    ['zero-length read', request({ type: 0, cookie: 7n, length: 0 }), EINVAL],
    ['read larger than the maximum', request({ type: 0, cookie: 8n, length: 64 * 1024 * 1024 }), EINVAL],
    ['write past the end', request({ type: 1, cookie: 9n, offset: SIZE - 256, length: 512 }, Buffer.alloc(512, 0xee)), ENOSPC],
    ['trim past the end', request({ type: 4, cookie: 10n, offset: SIZE, length: 4096 }), EINVAL],
    ['zero past the end', request({ type: 6, cookie: 11n, offset: SIZE - 1, length: 2 }), ENOSPC],
    ['flush with a length', request({ type: 3, cookie: 12n, length: 5 }), EINVAL],
    ['block status without a meta context', request({ type: 7, cookie: 13n, length: 4096 }), EINVAL],
    ['NO_HOLE on a write', request({ type: 1, flags: 2, cookie: 14n, length: 512 }, Buffer.alloc(512, 0xee)), EINVAL],
  ];
  for (const [what, frame, errno] of cases) {
    client.send(frame);
    const reply = await client.readReply();
    assert.ok(reply.kind === 'simple', what);
    assert.equal(reply.error, errno, what);
  }
  client.close();
  assert.ok((await readAt(0, 65536)).equals(before), 'rejected requests changed nothing');
  const tail = await readAt(SIZE - 4096, 4096);
  assert.ok(tail.every((byte) => byte === 0), 'nothing written at the end');
});

test('an oversize write is refused, its payload skipped, and the connection stays in sync', async () => {
  const client = await RawClient.open(server.port, 'disk0');
  const length = 33 * 1024 * 1024;
  client.send(request({ type: 1, cookie: 21n, offset: 0, length }));
  for (let sent = 0; sent < length; sent += 1024 * 1024) client.send(Buffer.alloc(1024 * 1024, 0x77));
  const refused = await client.readReply();
  assert.ok(refused.kind === 'simple' && refused.cookie === 21n && refused.error === EINVAL);
  client.send(request({ type: 3, cookie: 22n }));
  const flushed = await client.readReply();
  assert.ok(flushed.kind === 'simple' && flushed.cookie === 22n && flushed.error === 0);
  client.close();
  const head = await readAt(0, 4096);
  assert.ok(!head.every((byte) => byte === 0x77), 'the refused payload was not written');
});

test('writes, trims and zeroes on a read-only export get EPERM', async () => {
  const client = await RawClient.open(server.port, 'ro');
  client.send(request({ type: 1, cookie: 31n, length: 512 }, Buffer.alloc(512, 1)));
  assert.equal((await client.readReply() as { error: number }).error, EPERM);
  client.send(request({ type: 4, cookie: 32n, length: 512 }));
  assert.equal((await client.readReply() as { error: number }).error, EPERM);
  client.send(request({ type: 6, cookie: 33n, length: 512 }));
  assert.equal((await client.readReply() as { error: number }).error, EPERM);
  client.send(request({ type: 0, cookie: 34n, length: 512 }));
  const read = await client.readReply(512);
  assert.ok(read.kind === 'simple-read' && read.data.every((byte) => byte === 0));
  client.close();
});

test('a structured-reply client gets error chunks for failed reads', async () => {
  const client = await RawClient.open(server.port, 'disk0', { structured: true, baseAllocation: true });
  client.send(request({ type: 0, cookie: 41n, offset: SIZE, length: 512 }));
  const reply = await client.readReply();
  assert.ok(reply.kind === 'chunk');
  assert.equal(reply.type, 0x8001, 'NBD_REPLY_TYPE_ERROR');
  assert.equal(reply.flags & 1, 1, 'DONE');
  assert.equal(reply.payload.readUInt32BE(0), EINVAL);
  const messageLength = reply.payload.readUInt16BE(4);
  assert.equal(reply.payload.length, 6 + messageLength);
  client.send(request({ type: 7, cookie: 42n, offset: SIZE - 512, length: 4096 }));
  const status = await client.readReply();
  assert.ok(status.kind === 'chunk' && status.type === 0x8001 && status.payload.readUInt32BE(0) === EINVAL);
  client.close();
});

test('disconnecting in the middle of a write payload changes nothing', async () => {
  const before = await readAt(2 * 1024 * 1024, 65536);
  const client = await RawClient.open(server.port, 'disk0');
  client.send(request({ type: 1, cookie: 51n, offset: 2 * 1024 * 1024, length: 65536 }));
  client.send(Buffer.alloc(30000, 0x99));
  client.close();
  await client.closed;
  assert.ok((await readAt(2 * 1024 * 1024, 65536)).equals(before));
  await assertServerHealthy(4);
});

test('DISC after a write: the write is answered, then the server hangs up', async () => {
  const client = await RawClient.open(server.port, 'disk0');
  client.send(Buffer.concat([
    request({ type: 1, cookie: 61n, offset: 3 * 1024 * 1024, length: 4096 }, Buffer.alloc(4096, 0x61)),
    request({ type: 2, cookie: 62n }),
    request({ type: 0, cookie: 63n, length: 512 }),
  ]));
  const reply = await client.readReply();
  assert.ok(reply.kind === 'simple' && reply.cookie === 61n && reply.error === 0);
  await expectClosed(client);
  assert.ok((await readAt(3 * 1024 * 1024, 4096)).every((byte) => byte === 0x61));
});

test('a request with a bad magic closes the connection only', async () => {
  const client = await RawClient.open(server.port, 'disk0');
  client.send(request({ type: 0, length: 512, magic: 0xdeadbeef }));
  await expectClosed(client);
  await assertServerHealthy(5);
});

test('hundreds of abusive connections leak no sessions or descriptors', async () => {
  await waitForNoSessions();
  const fdsBefore = openFds();
  for (let round = 0; round < 100; round += 1) {
    const client = await RawClient.connect(server.port);
    await client.readGreeting();
    const abuse = round % 4;
    if (abuse === 0) client.send(Buffer.alloc(64, round));
    if (abuse === 1) client.send(Buffer.concat([clientFlags(), option(7, Buffer.alloc(3), 900)]));
    if (abuse === 2) client.send(Buffer.concat([clientFlags(), option(7, goData('disk0')), request({ type: 1, length: 1 << 20 })]));
    client.close();
    await client.closed;
  }
  await waitForNoSessions();
  await assertServerHealthy(6);
  await waitForNoSessions();
  assert.ok(openFds() <= fdsBefore + 2, `descriptors: ${fdsBefore} before, ${openFds()} after`);
});

test('a client that sends DISC and vanishes, or stops mid-handshake after an ABORT, leaves no session behind', async () => {
  const before = server.nbd.connections().length;
  const gone = await RawClient.open(server.port, 'disk0');
  gone.send(request({ type: 0, cookie: 1n, offset: 0, length: 1024 * 1024 }));
  gone.send(request({ type: 2, cookie: 2n }));
  // Bytes after DISC (the server stops reading at DISC: it must still see this peer go).
  gone.send(request({ type: 0, cookie: 3n, offset: 0, length: 4096 }));
  await new Promise((resolve) => setTimeout(resolve, 50));
  gone.socket.destroy();
  const aborted = await RawClient.connect(server.port);
  await aborted.readGreeting();
  aborted.send(clientFlags());
  aborted.send(option(2));
  aborted.socket.destroy();
  const deadline = Date.now() + 8000;
  while (server.nbd.connections().length > before && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(server.nbd.connections().length, before, 'the sessions are gone (the server sees its peers close even after it ended its side)');
  await assertServerHealthy(0x77);
});

test('past the total in-flight limit sessions wait, and every request is still answered', async () => {
  const limits = LIMITS as { nbdInflightTotalMax: number };
  const saved = limits.nbdInflightTotalMax;
  limits.nbdInflightTotalMax = 3;
  try {
    const clients = await Promise.all(Array.from({ length: 6 }, () => RawClient.open(server.port, 'disk0')));
    for (const [c, client] of clients.entries()) {
      for (let i = 0; i < 20; i += 1) client.send(request({ type: 0, cookie: BigInt(c * 100 + i + 1), offset: i * 65536, length: 65536 }));
    }
    for (const client of clients) {
      const cookies = new Set<bigint>();
      for (let i = 0; i < 20; i += 1) {
        const reply = await client.readReply(65536);
        assert.ok(reply.kind === 'simple-read', 'answered');
        cookies.add(reply.cookie);
      }
      assert.equal(cookies.size, 20, 'every request answered once');
      client.socket.destroy();
    }
  } finally {
    limits.nbdInflightTotalMax = saved;
  }
  await assertServerHealthy(0x42);
});

test('replies queued for a slow reader outlive the end of the session; a client that takes none is cut off', async () => {
  const limits = LIMITS as { nbdWriteStallMs: number; nbdCloseLingerMs: number };
  const saved = { stall: limits.nbdWriteStallMs, linger: limits.nbdCloseLingerMs };
  limits.nbdWriteStallMs = 1500;
  limits.nbdCloseLingerMs = 300;
  try {
    // A slow but steady reader: 24 x 1 MiB of replies then DISC; it reads them over ~2.5 s.
    const slow = await RawClient.open(server.port, 'disk0');
    for (let i = 0; i < 24; i += 1) slow.send(request({ type: 0, cookie: BigInt(i + 1), offset: (i % 8) * 1024 * 1024, length: 1024 * 1024 }));
    slow.send(request({ type: 2, cookie: 99n }));
    for (let i = 0; i < 24; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const reply = await slow.readReply(1024 * 1024);
      assert.ok(reply.kind === 'simple-read', `reply ${i + 1} of 24 arrives`);
    }
    slow.socket.destroy();
    // A client that takes none of its replies: the server cuts it off after the stall time
    // (its own paused socket would not notice).
    const before = server.nbd.connections().length;
    const stuck = await RawClient.open(server.port, 'disk0');
    stuck.socket.pause();
    for (let i = 0; i < 100; i += 1) stuck.send(request({ type: 0, cookie: BigInt(i + 1), offset: (i % 8) * 1024 * 1024, length: 1024 * 1024 }));
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(server.nbd.connections().length, before + 1);
    const deadline = Date.now() + 8000;
    while (server.nbd.connections().length > before && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(server.nbd.connections().length, before, 'the client that reads nothing is cut off');
    stuck.socket.destroy();
  } finally {
    limits.nbdWriteStallMs = saved.stall;
    limits.nbdCloseLingerMs = saved.linger;
  }
  await assertServerHealthy(0x31);
});

test('the total in-flight limit never holds a handshake back', async () => {
  const limits = LIMITS as { nbdInflightTotalMax: number };
  const saved = limits.nbdInflightTotalMax;
  limits.nbdInflightTotalMax = 1;
  try {
    const busy = await RawClient.open(server.port, 'disk0');
    for (let i = 0; i < 200; i += 1) busy.send(request({ type: 0, cookie: BigInt(i + 1), offset: (i % 8) * 1024 * 1024, length: 256 * 1024 }));
    const started = Date.now();
    const fresh = await RawClient.open(server.port, 'disk0');
    assert.ok(Date.now() - started < 250, `a GO is answered at once (${Date.now() - started} ms)`);
    fresh.send(request({ type: 0, cookie: 1n, offset: 0, length: 4096 }));
    assert.equal((await fresh.readReply(4096)).kind, 'simple-read', 'and its request is served among the busy one\'s');
    fresh.socket.destroy();
    for (let i = 0; i < 200; i += 1) await busy.readReply(256 * 1024);
    busy.socket.destroy();
  } finally {
    limits.nbdInflightTotalMax = saved;
  }
});
