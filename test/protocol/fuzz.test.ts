/**
 * A seeded fuzzer for the NBD server (handshake and transmission): each round builds a
 * valid client byte stream — flags, options (LIST, INFO, GO, EXPORT_NAME, STRUCTURED_REPLY,
 * meta contexts, STARTTLS, unknown ones), then requests of every type with payloads — and
 * mutates it (bit flips, random bytes, truncation, insertions, absurd length fields,
 * repeated frames, pure noise), sends it in random pieces and reads until the server hangs
 * up or goes quiet. Between rounds and at the end:
 * - a client connected before the fuzzing keeps reading correct data, and a fresh client
 *   can attach, write and read back (one bad client never hurts the others);
 * - the read-only volume the fuzzer aims at half the time is byte for byte unchanged (no
 *   rejected request changes data);
 * - every fuzzed connection is gone again (no session leak) and memory stays bounded.
 * Inputs that ever broke it are kept in test/protocol/fuzz-corpus/ and replayed first.
 *
 * HINDSIGHT_FUZZ_SECONDS (default 15) and HINDSIGHT_FUZZ_SEED (first seed, default 1): CI
 * runs a bounded slice; scripts/fuzz.sh runs long. A failure prints the seed to replay and
 * saves its input to the corpus directory.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { clientFlags, goData, metaContextData, option, request } from '../helpers/frames.js';
import { startInProcess } from '../helpers/in-process.js';
import type { InProcessServer } from '../helpers/in-process.js';
import { Random } from '../helpers/random.js';
import { RawClient } from '../helpers/raw-client.js';

const SIZE = 4 * 1024 * 1024;
const SECONDS = Number(process.env.HINDSIGHT_FUZZ_SECONDS ?? 15);
const SEED_FIRST = Number(process.env.HINDSIGHT_FUZZ_SEED ?? 1);
const CORPUS = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fuzz-corpus');
const EXPORTS = ['fz', 'ro', 'nope', ''];

let server: InProcessServer;
let witness: RawClient;
const roImage = Buffer.alloc(SIZE);
const witnessImage = Buffer.alloc(64 * 1024);

before(async () => {
  server = await startInProcess([
    { name: 'fz', sizeBytes: SIZE },
    { name: 'ro', sizeBytes: SIZE },
    { name: 'guard', sizeBytes: SIZE },
    { name: 'fresh', sizeBytes: SIZE },
  ], { handshakeTimeoutMs: 300 });
  const rng = new Random(99);
  rng.bytes(SIZE).copy(roImage);
  await server.volumes.device('ro')!.write(0, roImage, { fua: true });
  await server.volumes.setReadOnly('ro', true);
  rng.bytes(witnessImage.length).copy(witnessImage);
  await server.volumes.device('guard')!.write(0, witnessImage, { fua: true });
  witness = await RawClient.open(server.port, 'guard');
});

after(async () => {
  witness?.socket.destroy();
  await server.close();
});

/** One client byte stream: a plausible session, then mutated. */
function buildStream(rng: Random): Buffer {
  const frames: Buffer[] = [clientFlags(rng.int(8) === 0 ? rng.int(16) : 3)];
  const name = EXPORTS[rng.int(EXPORTS.length)];
  const options = rng.int(5);
  for (let i = 0; i < options; i += 1) {
    switch (rng.int(8)) {
      case 0: frames.push(option(3)); break; // LIST
      case 1: frames.push(option(6, goData(name, [0, 1, 2, 3].filter(() => rng.int(2) === 0)))); break; // INFO
      case 2: frames.push(option(8)); break; // STRUCTURED_REPLY
      case 3: frames.push(option(rng.int(2) === 0 ? 9 : 10, metaContextData(name, rng.int(2) === 0 ? ['base:allocation'] : ['base:', 'x:y']))); break;
      case 4: frames.push(option(5)); break; // STARTTLS (not enabled here)
      case 5: frames.push(option(100 + rng.int(50), rng.bytes(rng.int(64)))); break; // unknown
      case 6: frames.push(option(2)); break; // ABORT
      default: frames.push(option(7, goData(name))); break;
    }
  }
  frames.push(rng.int(6) === 0 ? option(1, Buffer.from(name)) : option(7, goData(name)));
  const requests = rng.int(12);
  for (let i = 0; i < requests; i += 1) {
    const type = rng.int(10);
    const offset = rng.int(4) === 0 ? rng.int(2 ** 31) * 4096 : rng.int(SIZE / 512) * 512;
    const length = rng.int(3) === 0 ? rng.int(2 ** 24) : 1 + rng.int(65536);
    const flags = rng.int(4) === 0 ? rng.int(1 << 16) : 0;
    const cookie = BigInt(i + 1);
    if (type === 1) frames.push(request({ type, flags, cookie, offset, length: Math.min(length, 65536) }, rng.bytes(Math.min(length, 65536))));
    else frames.push(request({ type, flags, cookie, offset, length }));
  }
  let stream = Buffer.concat(frames);
  const mutations = rng.int(5);
  for (let m = 0; m < mutations && stream.length > 0; m += 1) {
    const at = rng.int(stream.length);
    switch (rng.int(7)) {
      case 0: stream[at] ^= 1 << rng.int(8); break;
      case 1: stream[at] = rng.int(256); break;
      case 2: stream = stream.subarray(0, at); break;
      case 3: stream = Buffer.concat([stream.subarray(0, at), rng.bytes(1 + rng.int(64)), stream.subarray(at)]); break;
      case 4: if (at + 4 <= stream.length) stream.writeUInt32BE([0, 1, 0x7fffffff, 0xffffffff, rng.next() >>> 0][rng.int(5)], at); break;
      case 5: { const from = rng.int(stream.length); stream = Buffer.concat([stream, stream.subarray(from, Math.min(stream.length, from + 28 + rng.int(64)))]); break; }
      default: stream = rng.int(4) === 0 ? rng.bytes(rng.int(4096)) : stream; break;
    }
  }
  return stream;
}

/** Sends `stream` in random pieces; waits for the server to hang up or go quiet. */
async function play(stream: Buffer, rng: Random): Promise<void> {
  const socket = net.connect(server.port, '127.0.0.1');
  socket.on('error', () => undefined);
  socket.on('data', () => undefined);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()).once('error', () => resolve()));
  for (let at = 0; at < stream.length;) {
    const piece = Math.min(stream.length - at, 1 + rng.int(rng.int(2) === 0 ? 64 : 65536));
    socket.write(stream.subarray(at, at + piece));
    at += piece;
    if (rng.int(4) === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  if (rng.int(3) === 0) socket.end();
  // The handshake timeout (300 ms) ends a stalled handshake; a stalled transmission we end.
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 600))]);
  socket.destroy();
  await closed;
}

async function checkOthers(label: string, tag: number): Promise<void> {
  const offset = (tag % 16) * 4096;
  witness.send(request({ type: 0, cookie: BigInt(tag), offset, length: 4096 }));
  const reply = await witness.readReply();
  assert.ok(reply.kind === 'simple' && reply.error === 0, `${label}: the witness client's read is answered`);
  const data = await witness.read(4096);
  assert.ok(data.equals(witnessImage.subarray(offset, offset + 4096)), `${label}: the witness client reads correct data`);
  const fresh = await RawClient.open(server.port, 'fresh');
  const pattern = Buffer.alloc(4096, tag & 0xff);
  fresh.send(request({ type: 1, cookie: 1n, offset: 8192, length: 4096 }, pattern));
  assert.equal(((await fresh.readReply()) as { error: number }).error, 0, `${label}: a fresh client can write`);
  fresh.send(request({ type: 0, cookie: 2n, offset: 8192, length: 4096 }));
  await fresh.readReply();
  assert.ok((await fresh.read(4096)).equals(pattern), `${label}: and read back`);
  fresh.socket.destroy();
}

async function checkEnd(label: string): Promise<void> {
  const ro = Buffer.alloc(SIZE);
  await server.volumes.device('ro')!.read(0, ro);
  assert.ok(ro.equals(roImage), `${label}: the read-only volume is unchanged`);
  // Every fuzzed connection is gone (the witness stays).
  const deadline = Date.now() + 3000;
  while (server.nbd.connections().length > 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  if (server.nbd.connections().length !== 1) console.log("# leftover", JSON.stringify(server.nbd.connections()));
  assert.equal(server.nbd.connections().length, 1, `${label}: no session outlives its connection: ${JSON.stringify(server.nbd.connections())}`);
}

test('the corpus of inputs that once broke the server: each handled, nobody else hurt', async () => {
  const files = fs.existsSync(CORPUS) ? fs.readdirSync(CORPUS).filter((name) => name.endsWith('.bin')).sort() : [];
  for (const [i, name] of files.entries()) await play(fs.readFileSync(path.join(CORPUS, name)), new Random(i + 1));
  await checkOthers('corpus', 1);
  await checkEnd('corpus');
});

test(`fuzzing for ${SECONDS} s from seed ${SEED_FIRST}: no crash, no hang, others served, nothing changed, memory bounded`, { timeout: (SECONDS + 120) * 1000 }, async (t) => {
  const deadline = Date.now() + SECONDS * 1000;
  const rssStart = process.memoryUsage().rss;
  let seed = SEED_FIRST;
  let bytes = 0;
  for (; Date.now() < deadline; seed += 1) {
    const rng = new Random(seed);
    const stream = buildStream(rng);
    bytes += stream.length;
    try {
      await play(stream, rng);
      if (seed % 25 === 0) await checkOthers(`after seed ${seed}`, seed);
    } catch (err) {
      fs.mkdirSync(CORPUS, { recursive: true });
      fs.writeFileSync(path.join(CORPUS, `seed-${seed}.bin`), stream);
      console.log(`# replay: HINDSIGHT_FUZZ_SEED=${seed} HINDSIGHT_FUZZ_SECONDS=1 (input saved to test/protocol/fuzz-corpus/seed-${seed}.bin)`);
      throw err;
    }
  }
  await checkOthers('at the end', seed);
  await checkEnd('at the end');
  const rssGrowth = process.memoryUsage().rss - rssStart;
  t.diagnostic(`seeds ${SEED_FIRST}..${seed - 1} (${seed - SEED_FIRST} connections, ${(bytes / 1024 / 1024).toFixed(1)} MiB sent), RSS ${(rssGrowth / 1024 / 1024).toFixed(0)} MiB more than at the start`);
  assert.ok(rssGrowth < 512 * 1024 * 1024, `memory stays bounded (RSS grew ${rssGrowth} bytes)`);
});
