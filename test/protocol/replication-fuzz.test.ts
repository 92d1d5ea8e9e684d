/**
 * A seeded fuzzer for the replication listener, in process. Each round is one connection:
 * plain TCP noise, TLS with a wrong key or an unknown identity, or — authenticated — a
 * plausible session (HELLO, STATE, RECORDS of well-formed records of the volume, HEARTBEAT)
 * mutated: bit flips, random bytes, truncation, absurd length fields, unknown types and
 * flags, frames in the wrong direction, zstd bodies that lie about their size (bombs),
 * records that skip seqs, go back in time, lie outside the volume or claim to be thinned.
 * Meanwhile a real sender replicates another volume to the same listener. Between rounds and
 * at the end:
 * - the real link keeps working: its replica equals its source, byte for byte;
 * - a live volume of the listener's site is never touched; the fuzzed replica's records stay
 *   a gap-free, checkable journal (fsck);
 * - every fuzzed session is gone again, and memory stays bounded.
 *
 * HINDSIGHT_FUZZ_SECONDS (default 15) and HINDSIGHT_FUZZ_SEED (first seed): scripts/fuzz.sh
 * runs it long with the NBD fuzzer. A failure prints the seed to replay.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { crcSeedFor } from '../../src/journal/index.js';
import { encodeRecordHeader } from '../../src/journal/record.js';
import { encodeChunkTable } from '../../src/journal/chunk-crc.js';
import { ReplicationService } from '../../src/replication/index.js';
import { FrameType, encodeFrame, jsonFrame, recordsBody } from '../../src/replication/index.js';
import { VolumeManager } from '../../src/volume/index.js';
import { makeTempDir } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';

const SIZE = 4 * 1024 * 1024;
const SECONDS = Number(process.env.HINDSIGHT_FUZZ_SECONDS ?? 15);
const SEED_FIRST = Number(process.env.HINDSIGHT_FUZZ_SEED ?? 1);
const KEY_FUZZER = crypto.randomBytes(32);
const KEY_A = crypto.randomBytes(32);

interface Site {
  dir: string;
  volumes: VolumeManager;
  replication: ReplicationService;
  port: number;
}

let receiver: Site;
let source: Site;
const silent = pino({ level: 'silent' });

async function site(lines: string[]): Promise<Site> {
  const dir = makeTempDir('hindsight-repl-fuzz-');
  const pskFile = path.join(dir, 'replication.psk');
  fs.writeFileSync(pskFile, `${lines.join('\n')}\n`, { mode: 0o600 });
  const volumes = new VolumeManager({ dataDir: path.join(dir, 'data'), syncEveryWrite: false, retentionIntervalMs: 0 });
  await volumes.open();
  const replication = ReplicationService.load({ dataDir: path.join(dir, 'data'), volumes, log: silent, pskFile, clients: () => 0 });
  const { port } = await replication.start('127.0.0.1', 0);
  return { dir, volumes, replication, port };
}

before(async () => {
  receiver = await site([`recv:${crypto.randomBytes(32).toString('hex')}`, `fuzzer:${KEY_FUZZER.toString('hex')}`, `siteA:${KEY_A.toString('hex')}`]);
  source = await site([`siteA:${KEY_A.toString('hex')}`]);
  await receiver.volumes.create('live', SIZE);
  await receiver.volumes.device('live')!.write(0, Buffer.alloc(64 * 1024, 7), { fua: true });
  await receiver.replication.accept('fz', 'fuzzer');
  await receiver.replication.accept('real', 'siteA');
  await source.volumes.create('real', SIZE);
  await source.replication.replicate({ volume: 'real', to: `127.0.0.1:${receiver.port}` });
});

after(async () => {
  for (const one of [source, receiver]) {
    await one?.replication.close();
    await one?.volumes.close();
    if (one) fs.rmSync(one.dir, { recursive: true, force: true });
  }
});

function frame(type: number, body: Buffer): Buffer {
  return Buffer.concat(encodeFrame(type as 1, body));
}

/** Well-formed records of the fuzzed volume from `seq` on (what a real source could send), then mutated by the caller. */
function records(rng: Random, volumeId: Buffer, seq: number, count: number, timeUs: number): Buffer[] {
  const seed = crcSeedFor(volumeId);
  const out: Buffer[] = [];
  for (let i = 0; i < count; i += 1) {
    const kind = rng.int(4);
    const header = Buffer.alloc(56);
    const length = 512 * (1 + rng.int(16));
    const offset = 512 * rng.int((SIZE - length) / 512);
    if (kind === 0) {
      const payload = rng.bytes(length);
      const table = encodeChunkTable(payload, seed);
      encodeRecordHeader(header, { type: 1, flags: 0, seq: seq + i, timeUs: timeUs + i, offsetBytes: offset, lengthBytes: length, payloadBytes: length, seqDurable: 0, payloadSkip: 0 }, table, seed);
      out.push(Buffer.concat([header, table, payload]));
    } else {
      const type = [2, 3, 4][kind - 1] as 2 | 3 | 4;
      encodeRecordHeader(header, { type, flags: 0, seq: seq + i, timeUs: timeUs + i, offsetBytes: type === 4 ? 0 : offset, lengthBytes: type === 4 ? 0 : length, payloadBytes: 0, seqDurable: 0 }, null, seed);
      out.push(header);
    }
  }
  return out;
}

/** A zstd frame declaring a small content size, then inflating far past it (or declaring 4 GiB). */
function bomb(rng: Random): Buffer {
  const body = frame(FrameType.RECORDS, Buffer.alloc(1));
  body[5] = 1; // compressed flag, body is not zstd at all
  return rng.int(2) === 0 ? body : Buffer.concat([body.subarray(0, 8), Buffer.from([0xff, 0xff, 0xff, 0x7f]), body.subarray(12)]);
}

function mutate(rng: Random, stream: Buffer): Buffer {
  const copy = Buffer.from(stream);
  switch (rng.int(6)) {
    case 0: return copy;
    case 1: {
      for (let i = 0, n = 1 + rng.int(8); i < n && copy.length > 0; i += 1) copy[rng.int(copy.length)] ^= 1 << rng.int(8);
      return copy;
    }
    case 2: return copy.subarray(0, rng.int(copy.length + 1));
    case 3: return Buffer.concat([copy.subarray(0, rng.int(copy.length + 1)), rng.bytes(rng.int(512)), copy.subarray(rng.int(copy.length + 1))]);
    case 4: {
      // An absurd length in some frame header.
      if (copy.length >= 16) copy.writeUInt32LE(rng.next(), 8 + 16 * rng.int(Math.max(1, Math.floor(copy.length / 16) - 1)));
      return copy;
    }
    default: return rng.bytes(rng.int(4096));
  }
}

/** One session's bytes after the handshake: HELLO then frames. */
function session(rng: Random): Buffer {
  const volume = rng.int(8) === 0 ? 'live' : rng.int(10) === 0 ? 'nope' : 'fz';
  const volumeId = rng.int(3) === 0 ? crypto.randomBytes(16) : FZ_ID;
  const uuid = volumeId.toString('hex').replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5');
  const parts: Buffer[] = [Buffer.concat(jsonFrame(FrameType.HELLO, { protocol: rng.int(10) === 0 ? 2 : 1, volume, volumeId: uuid, sizeBytes: rng.int(10) === 0 ? SIZE * 2 : SIZE, seqLast: 1000, timeLastUs: 0 }))];
  let seq = (receiver.volumes.names().includes('fz') ? receiver.volumes.replicationView('fz').device.lastSeq : 0) + 1;
  const frames = 1 + rng.int(6);
  for (let i = 0; i < frames; i += 1) {
    switch (rng.int(9)) {
      case 0: parts.push(Buffer.concat(jsonFrame(FrameType.STATE, rng.int(2) === 0 ? { expired: [[1, rng.int(5) + 1]] } : { bookmarks: [{ name: 'b', seq: rng.int(50), timeUs: 1, createdAt: 'x' }] }))); break;
      case 1: parts.push(Buffer.concat(jsonFrame(FrameType.HEARTBEAT, { seqLast: rng.int(100) }))); break;
      case 2: parts.push(frame(FrameType.ACK, rng.bytes(16))); break; // wrong direction
      case 3: parts.push(frame(8 + rng.int(200), rng.bytes(rng.int(64)))); break; // unknown type
      case 4: parts.push(bomb(rng)); break;
      case 5: {
        // Records that lie: a skipped seq, time going back, a thinned record never expired, beyond the volume.
        const batch = records(rng, volumeId, seq + (rng.int(3) === 0 ? 5 : 0), 1 + rng.int(4), rng.int(2) === 0 ? 1 : Date.now() * 1000);
        if (rng.int(2) === 0 && batch[0].length >= 56) batch[0][4] = 8;
        parts.push(frame(FrameType.RECORDS, recordsBody(batch)));
        break;
      }
      default: {
        const batch = records(rng, volumeId, seq, 1 + rng.int(8), Date.now() * 1000 + i);
        seq += batch.length;
        parts.push(Buffer.concat(encodeFrame(FrameType.RECORDS, recordsBody(batch), rng.int(2) === 0)));
      }
    }
  }
  return mutate(rng, Buffer.concat(parts));
}

const FZ_ID = crypto.randomBytes(16);

async function round(rng: Random): Promise<string> {
  const mode = rng.int(10);
  if (mode === 0) {
    const socket = net.connect(receiver.port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.write(rng.bytes(rng.int(8192)));
    socket.end();
    await closed(socket, 15_000);
    return 'noise';
  }
  const identity = mode === 1 ? 'stranger' : 'fuzzer';
  const key = mode === 2 ? crypto.randomBytes(32) : KEY_FUZZER;
  const socket = tls.connect({ host: '127.0.0.1', port: receiver.port, ciphers: 'PSK', maxVersion: 'TLSv1.2', checkServerIdentity: () => undefined, pskCallback: () => ({ identity, psk: key }) });
  socket.on('error', () => undefined);
  socket.on('data', () => undefined);
  const connected = await Promise.race([
    new Promise<boolean>((resolve) => socket.once('secureConnect', () => resolve(true))),
    closed(socket, 15_000).then(() => false),
  ]);
  if (!connected) return mode <= 2 ? 'refused-tls' : 'tls-failed';
  const bytes = session(rng);
  for (let at = 0; at < bytes.length;) {
    const piece = 1 + rng.int(Math.max(1, bytes.length - at));
    socket.write(bytes.subarray(at, at + piece));
    at += piece;
  }
  // Half the time the fuzzer hangs up, half the time it waits for the listener to.
  if (rng.int(2) === 0) socket.end();
  const ended = await closed(socket, 300);
  if (!ended) socket.destroy();
  return 'session';
}

function closed(socket: net.Socket, timeoutMs: number): Promise<boolean> {
  if (socket.destroyed) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

async function realLinkHolds(rng: Random): Promise<void> {
  const data = rng.bytes(64 * 1024);
  const offset = 64 * 1024 * rng.int(SIZE / (64 * 1024));
  const device = source.volumes.device('real')!;
  await device.write(offset, data, { fua: true });
  const target = source.volumes.replicationView('real').device.lastSeq;
  const deadline = Date.now() + 20_000;
  while (!receiver.volumes.names().includes('real') || receiver.volumes.replicationView('real').device.durableSeq < target) {
    assert.ok(Date.now() < deadline, `the real link stalled: ${JSON.stringify(source.replication.list().outgoing)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const [a, b] = [Buffer.alloc(SIZE), Buffer.alloc(SIZE)];
  await source.volumes.device('real')!.read(0, a);
  await receiver.volumes.device('real')!.read(0, b);
  assert.ok(a.equals(b), 'the real replica equals its source');
}

test(`replication listener fuzzing for ${SECONDS} s from seed ${SEED_FIRST}: no crash, no hang, nothing touched, the real link keeps working`, { timeout: (SECONDS + 120) * 1000 }, async (t) => {
  const liveBefore = Buffer.alloc(SIZE);
  await receiver.volumes.device('live')!.read(0, liveBefore);
  const liveSeq = receiver.volumes.replicationView('live').device.lastSeq;
  const counts: Record<string, number> = {};
  const deadline = Date.now() + SECONDS * 1000;
  let seed = SEED_FIRST;
  let rssWarm = 0;
  let rounds = 0;
  while (Date.now() < deadline) {
    const rng = new Random(seed);
    try {
      const kind = await round(rng);
      counts[kind] = (counts[kind] ?? 0) + 1;
      if (rounds % 25 === 0) await realLinkHolds(rng);
    } catch (err) {
      throw new Error(`seed ${seed}: ${(err as Error).message}`, { cause: err });
    }
    rounds += 1;
    seed += 1;
    if (rounds === 50) rssWarm = process.memoryUsage().rss;
  }
  await realLinkHolds(new Random(seed));
  const liveAfter = Buffer.alloc(SIZE);
  await receiver.volumes.device('live')!.read(0, liveAfter);
  assert.ok(liveAfter.equals(liveBefore) && receiver.volumes.replicationView('live').device.lastSeq === liveSeq, 'the live volume was never touched');
  if (receiver.volumes.names().includes('fz')) {
    const report = await receiver.volumes.fsck('fz', false);
    assert.deepEqual(report.problems, [], 'the fuzzed replica is a sound journal');
  }
  // Every fuzzed session ended.
  const incoming = receiver.replication.list().incoming.filter((entry) => entry.volume !== 'real');
  for (const entry of incoming) assert.equal(entry.state, 'waiting', `no session left for ${entry.volume}`);
  const rss = process.memoryUsage().rss;
  if (rssWarm > 0) assert.ok(rss < rssWarm + 256 * 1024 * 1024, `memory bounded: ${Math.round(rssWarm / 2 ** 20)} -> ${Math.round(rss / 2 ** 20)} MiB`);
  t.diagnostic(`${rounds} rounds (seeds ${SEED_FIRST}..${seed - 1}): ${JSON.stringify(counts)}; fz replica seq ${receiver.volumes.names().includes('fz') ? receiver.volumes.replicationView('fz').device.lastSeq : 0}; RSS ${Math.round(rss / 2 ** 20)} MiB`);
});
