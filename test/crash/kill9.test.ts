/**
 * kill -9 of the real daemon in the middle of a write stream from a real client.
 *
 * Each round, nbdsh runs writer.py against the volume: pipelined writes (and a few write
 * zeroes) of 1..8 blocks of 4 KiB at seeded offsets, some with FUA, with flushes in between;
 * it prints, line by line, each command as it is sent and as it is acknowledged. At a seeded
 * moment (after N acknowledgements) the daemon gets SIGKILL. It is restarted on the same data
 * directory and the volume is read back with nbdcopy, then checked block by block against the
 * log:
 *  - durability (the NBD contract): a write acknowledged before a FLUSH that completed was
 *    sent, and every acknowledged FUA write, is there with exactly its data — or a write sent
 *    after it on that block is;
 *  - process-crash durability (the design: a write is acknowledged once in the OS page cache,
 *    which a killed process does not lose): every acknowledged write is there, or a later one;
 *  - nothing half-written: every block holds exactly one version (one that was sent, or what
 *    the block held before the round), and a multi-block write is whole or absent (a journal
 *    record is cut as a whole);
 *  - `hindsight fsck` is clean, every record is accounted for, and the journal's seq carries
 *    on gap-free after the restart (seqLast + 2 after one write and a flush; markers written
 *    after earlier restarts are still there).
 * Some rounds stop the daemon cleanly before the stream, so recovery replays from an index
 * checkpoint instead of from the journal's start.
 *
 * Seed: HINDSIGHT_CRASH_SEED (default: random, printed); rounds: HINDSIGHT_CRASH_ROUNDS (6).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import type { DaemonHandle } from '../helpers/daemon.js';
import { fsckJson, readVolume, shakeBlock, volumeInfo } from '../helpers/crash.js';
import { MiB, deferrals, nbdshEnv } from '../helpers/interop.js';
import { Random } from '../helpers/random.js';
import { run } from '../helpers/run.js';

const WRITER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'writer.py');
const BLOCK = 4096;
const VOLUME = 'crash0';
const VOLUME_BYTES = 32 * MiB;
/** The writer touches the first 16 MiB; markers written after each restart live beyond. */
const WRITER_BLOCKS = (16 * MiB) / BLOCK;
const HOT_BLOCKS = 256;
const MARKER_BASE = 24 * MiB;
// Fixed by default so CI is reproducible; scripts/crash-soak.sh and HINDSIGHT_CRASH_SEED explore others.
const SEED = Number(process.env.HINDSIGHT_CRASH_SEED ?? 20261125);
const ROUNDS = Number(process.env.HINDSIGHT_CRASH_ROUNDS ?? 6);

interface Write {
  id: number;
  kind: 'W' | 'Z';
  first: number;
  count: number;
  fua: boolean;
  sentAt: number;
  ackedAt: number | null;
}

interface WriterLog {
  seed: number;
  lines: string[];
  writes: Write[];
  /** Line of the latest-sent flush that completed (-1: none). */
  lastCompletedFlushSentAt: number;
  acks: number;
  flushesSent: number;
  flushesCompleted: number;
}

function parseLog(seed: number, lines: string[]): WriterLog {
  const writes: Write[] = [];
  const byId = new Map<number, Write>();
  const flushSentAt = new Map<number, number>();
  let lastCompletedFlushSentAt = -1;
  let acks = 0;
  let flushesCompleted = 0;
  lines.forEach((line, at) => {
    const [tag, ...rest] = line.split(' ');
    switch (tag) {
      case 'S': {
        const [id, kind, first, count, fua] = rest;
        const write: Write = { id: Number(id), kind: kind as 'W' | 'Z', first: Number(first), count: Number(count), fua: fua === '1', sentAt: at, ackedAt: null };
        writes.push(write);
        byId.set(write.id, write);
        break;
      }
      case 'A': {
        const write = byId.get(Number(rest[0]));
        assert.ok(write, `ack of an unsent write: ${line}`);
        write.ackedAt = at;
        acks += 1;
        break;
      }
      case 'F':
        flushSentAt.set(Number(rest[0]), at);
        break;
      case 'FA':
        lastCompletedFlushSentAt = Math.max(lastCompletedFlushSentAt, flushSentAt.get(Number(rest[0])) ?? -1);
        flushesCompleted += 1;
        break;
      default:
        break;
    }
  });
  return { seed, lines, writes, lastCompletedFlushSentAt, acks, flushesSent: flushSentAt.size, flushesCompleted };
}

/** What block `block` holds after write `write` (which covers it). */
function contentOf(seed: number, write: Write, block: number): Buffer {
  if (write.kind === 'Z') return Buffer.alloc(BLOCK);
  return shakeBlock(`${seed}:${write.id}:${block - write.first}`);
}

function isDurable(log: WriterLog, write: Write): boolean {
  if (write.ackedAt === null) return false;
  return write.fua || write.ackedAt < log.lastCompletedFlushSentAt;
}

/**
 * Checks the recovered image (the writer's region) against the log and the image before the
 * round. Returns human-readable problems (empty when all holds).
 */
function verifyImage(log: WriterLog, before: Buffer, after: Buffer): string[] {
  const problems: string[] = [];
  const note = (message: string) => {
    if (problems.length < 20) problems.push(message);
  };
  // Versions of each block, in the order they were sent (never two in flight on one block,
  // so this is also the order the server saw them).
  const versions = new Map<number, Write[]>();
  for (const write of log.writes) {
    for (let b = write.first; b < write.first + write.count; b += 1) {
      let list = versions.get(b);
      if (!list) versions.set(b, (list = []));
      list.push(write);
    }
  }
  /** Index in `list` of the version the block shows (-1: the pre-round content), or null. */
  const shown = new Map<number, number | null>();
  for (let b = 0; b < WRITER_BLOCKS; b += 1) {
    const actual = after.subarray(b * BLOCK, (b + 1) * BLOCK);
    const previous = before.subarray(b * BLOCK, (b + 1) * BLOCK);
    const list = versions.get(b) ?? [];
    if (list.length === 0) {
      if (!actual.equals(previous)) note(`block ${b} was never written this round but changed`);
      continue;
    }
    // Latest match wins: zero versions can alias each other and the old content.
    let match: number | null = null;
    for (let i = list.length - 1; i >= 0 && match === null; i -= 1) {
      if (actual.equals(contentOf(log.seed, list[i], b))) match = i;
    }
    if (match === null && actual.equals(previous)) match = -1;
    shown.set(b, match);
    const describe = (i: number | null) => (i === null ? 'no version at all (half-written or foreign data)' : i === -1 ? 'its pre-round content' : `write ${list[i].id}`);
    if (match === null) {
      note(`block ${b} holds ${describe(null)}; versions sent: ${list.map((w) => w.id).join(', ')}`);
      continue;
    }
    let durable = -1;
    let acked = -1;
    list.forEach((write, i) => {
      if (isDurable(log, write)) durable = i;
      if (write.ackedAt !== null) acked = i;
    });
    // A zero version may alias the pre-round content or another zero version: accept any
    // index whose content equals what is there, at or after the floor.
    const allowedFrom = (floor: number) => {
      if (match! >= floor) return true;
      for (let i = Math.max(floor, 0); i < list.length; i += 1) {
        if (actual.equals(contentOf(log.seed, list[i], b))) return true;
      }
      return false;
    };
    if (durable >= 0 && !allowedFrom(durable)) {
      const w = list[durable];
      note(`block ${b}: ${w.fua ? 'FUA write' : 'write'} ${w.id} was durable (acknowledged ${w.fua ? 'with FUA' : 'before a completed flush'}) but the block holds ${describe(match)}`);
    } else if (acked >= 0 && !allowedFrom(acked)) {
      note(`block ${b}: write ${list[acked].id} was acknowledged (in the page cache, which kill -9 does not lose) but the block holds ${describe(match)}`);
    }
  }
  // A multi-block write is one journal record: whole or absent.
  for (const write of log.writes) {
    if (write.kind !== 'W' || write.count < 2) continue;
    const present: number[] = [];
    const absent: number[] = [];
    for (let b = write.first; b < write.first + write.count; b += 1) {
      const list = versions.get(b)!;
      const mine = list.indexOf(write);
      const index = shown.get(b);
      if (index === mine) present.push(b);
      else if (index === null || index === undefined || index < mine) absent.push(b);
    }
    if (present.length > 0 && absent.length > 0) {
      note(`write ${write.id} (blocks ${write.first}..${write.first + write.count - 1}) is torn: present in ${present.join(',')}, missing from ${absent.join(',')}`);
    }
  }
  return problems;
}

interface WriterRun {
  done: Promise<string[]>;
  kill(): void;
}

/** Starts writer.py in nbdsh; calls onAck(n) after each acknowledgement. */
async function startWriter(uri: string, seed: number, depth: number, onAck: (acks: number) => void): Promise<WriterRun> {
  const env = { ...(await nbdshEnv()), HS_SEED: String(seed), HS_BLOCKS: String(WRITER_BLOCKS), HS_HOT: String(HOT_BLOCKS), HS_DEPTH: String(depth), HS_WRITES: '200000' };
  const child = spawn('nbdsh', ['-u', uri, '-c', `exec(open(${JSON.stringify(WRITER)}).read())`], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let stderr = '';
  let acks = 0;
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const closed = new Promise<void>((resolve) => readline.createInterface({ input: child.stdout }).on('line', (line) => {
    lines.push(line);
    if (line.startsWith('A ')) onAck((acks += 1));
  }).on('close', resolve));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    done: (async () => {
      const code = await exited;
      await closed;
      if (code !== 0) throw new Error(`writer exited with ${code}: ${stderr}\n${lines.slice(-5).join('\n')}`);
      return lines;
    })(),
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]);
}

/** One 4 KiB write and a flush through nbdsh (two journal records). */
async function writeMarker(uri: string, round: number): Promise<void> {
  const data = shakeBlock(`marker:${SEED}:${round}`);
  const code = `h.pwrite(bytes.fromhex(${JSON.stringify(data.toString('hex'))}), ${MARKER_BASE + round * BLOCK}); h.flush()`;
  await run('nbdsh', ['-u', uri, '-c', code], { env: await nbdshEnv() });
}

test('the crash oracle itself: accepts every legal outcome, rejects lost, torn and foreign blocks', () => {
  const seed = 99;
  const lines = [
    'S 1 W 0 2 0', 'A 1', 'F 1', 'FA 1', // write 1 (blocks 0-1) flushed
    'S 2 W 1 2 0', 'A 2', // write 2 (blocks 1-2) acknowledged, not flushed
    'S 3 W 10 3 1', 'A 3', // write 3 (blocks 10-12) FUA
    'S 4 W 20 2 0', // write 4 (blocks 20-21) sent, never acknowledged
    'S 5 Z 30 1 0', 'A 5', // write zeroes over block 30 (held data before the round)
    'X Error: connection reset',
  ];
  const log = parseLog(seed, lines);
  const w = (id: number) => log.writes.find((x) => x.id === id)!;
  const before = Buffer.alloc(WRITER_BLOCKS * BLOCK);
  before.fill(7, 30 * BLOCK, 31 * BLOCK);
  const good = Buffer.from(before);
  const put = (image: Buffer, block: number, data: Buffer) => data.copy(image, block * BLOCK);
  put(good, 0, contentOf(seed, w(1), 0));
  put(good, 1, contentOf(seed, w(2), 1));
  put(good, 2, contentOf(seed, w(2), 2));
  for (const b of [10, 11, 12]) put(good, b, contentOf(seed, w(3), b));
  put(good, 30, Buffer.alloc(BLOCK));
  assert.deepEqual(verifyImage(log, before, good), []);
  const withFour = Buffer.from(good);
  put(withFour, 20, contentOf(seed, w(4), 20));
  put(withFour, 21, contentOf(seed, w(4), 21));
  assert.deepEqual(verifyImage(log, before, withFour), [], 'an unacknowledged write may be there, whole');

  const bad = (change: (image: Buffer) => void, expected: RegExp) => {
    const image = Buffer.from(good);
    change(image);
    const problems = verifyImage(log, before, image);
    assert.ok(problems.some((p) => expected.test(p)), `expected ${expected} in ${JSON.stringify(problems)}`);
  };
  bad((image) => put(image, 0, Buffer.alloc(BLOCK)), /block 0: write 1 was durable/);
  bad((image) => put(image, 11, Buffer.alloc(BLOCK)), /block 11: FUA write 3 was durable/);
  bad((image) => { put(image, 1, contentOf(seed, w(1), 1)); put(image, 2, Buffer.alloc(BLOCK)); }, /block 1: write 2 was acknowledged/);
  bad((image) => put(image, 2, Buffer.alloc(BLOCK)), /write 2 \(blocks 1..2\) is torn/);
  bad((image) => put(image, 20, contentOf(seed, w(4), 20)), /write 4 \(blocks 20..21\) is torn/);
  bad((image) => { image[11 * BLOCK + 100] ^= 1; }, /block 11 holds no version/);
  bad((image) => { image[40 * BLOCK] = 1; }, /block 40 was never written this round but changed/);
  bad((image) => put(image, 30, Buffer.alloc(BLOCK, 7)), /block 30: write 5 was acknowledged/);
});

test(`kill -9 during a write stream: flushed and FUA writes survive, nothing torn, fsck clean, seq continues (seed ${SEED}, ${ROUNDS} rounds)`, { timeout: 120_000 }, async (t) => {
  t.diagnostic(`seed ${SEED} (rerun with HINDSIGHT_CRASH_SEED=${SEED})`);
  const rng = new Random(SEED);
  const dataDir = makeTempDir('hindsight-kill9-');
  const scratch = makeTempDir('hindsight-kill9-img-');
  const defer = deferrals(t);
  defer(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  defer(() => fs.rmSync(scratch, { recursive: true, force: true }));
  let daemon: DaemonHandle = await startDaemon({ volumes: [`${VOLUME}:${VOLUME_BYTES}`], dataDir });
  defer(() => daemon.kill());
  let writer: WriterRun | null = null;
  defer(() => writer?.kill());

  let before = Buffer.alloc(WRITER_BLOCKS * BLOCK);
  let seqBefore = 0;
  const imageFile = path.join(scratch, 'image.raw');
  const failures: string[] = [];
  for (let round = 0; round < ROUNDS; round += 1) {
    const writerSeed = rng.next();
    const depth = [1, 4, 16][rng.int(3)];
    const killAfterAcks = 100 + rng.int(3000);
    const cleanRestartFirst = round > 0 && rng.int(3) === 0;
    // Sometimes SIGTERM first and SIGKILL a moment later: the kill may land in the middle of
    // the shutdown (connections closing, the index checkpoint being written).
    const termFirstMs = rng.int(4) === 0 ? rng.int(40) : null;
    const how = termFirstMs === null ? 'kill' : `SIGTERM then SIGKILL after ${termFirstMs} ms`;
    const where = `round ${round} (seed ${SEED}, writer seed ${writerSeed}, depth ${depth}, ${how} after ${killAfterAcks} acks${cleanRestartFirst ? ', after a clean restart' : ''})`;
    if (cleanRestartFirst) {
      const code = await daemon.stop();
      assert.equal(code, 0, `${where}: clean stop exited ${code}: ${daemon.stderr()}`);
      daemon = await startDaemon({ dataDir });
    }

    const victim = daemon;
    const killing: { done: Promise<void> | null } = { done: null };
    writer = await startWriter(victim.uri(VOLUME), writerSeed, depth, (acks) => {
      if (acks !== killAfterAcks) return;
      if (termFirstMs === null) {
        killing.done = victim.kill();
      } else {
        victim.process.kill('SIGTERM');
        killing.done = new Promise((resolve) => setTimeout(resolve, termFirstMs)).then(() => victim.kill());
      }
    });
    const lines = await withTimeout(writer.done, 30_000, `${where}: writer`);
    writer = null;
    assert.ok(killing.done !== null, `${where}: the writer stopped before ${killAfterAcks} acknowledgements:\n${lines.slice(-5).join('\n')}`);
    await killing.done;
    if (termFirstMs === null) assert.equal(victim.process.signalCode, 'SIGKILL', `${where}: the daemon was not killed by SIGKILL`);
    else assert.ok(victim.process.signalCode === 'SIGKILL' || victim.process.exitCode === 0, `${where}: the daemon exited with ${victim.process.exitCode}: ${victim.stderr()}`);
    const log = parseLog(writerSeed, lines);
    assert.match(lines[lines.length - 1], /^X /, `${where}: the writer should have lost its connection`);

    daemon = await startDaemon({ dataDir });
    const info = await volumeInfo(daemon.apiUrl, VOLUME);
    assert.equal(info.state, 'online', `${where}: volume failed to open after kill -9: ${JSON.stringify(info.error)}\n${daemon.stderr()}`);
    const image = await readVolume(daemon.uri(VOLUME), imageFile);
    assert.equal(image.length, VOLUME_BYTES);
    const after = Buffer.from(image.subarray(0, WRITER_BLOCKS * BLOCK));
    const problems = verifyImage(log, before, after);
    t.diagnostic(`${where}: ${victim.process.signalCode ?? `exit ${victim.process.exitCode}`}; ${log.writes.length} writes sent, ${log.acks} acknowledged, ${log.flushesCompleted} flushes completed, seqLast after restart ${info.seqLast}`);
    if (problems.length > 0) failures.push(`${where}:\n  ${problems.join('\n  ')}`);
    for (let r = 0; r < round; r += 1) {
      const at = MARKER_BASE + r * BLOCK;
      if (!image.subarray(at, at + BLOCK).equals(shakeBlock(`marker:${SEED}:${r}`))) failures.push(`${where}: the flushed marker of round ${r} is gone`);
    }

    // Every acknowledged write and completed flush is one record; unacknowledged ones may be.
    const seqLast = info.seqLast ?? 0;
    const seqMin = seqBefore + log.acks + log.flushesCompleted;
    const seqMax = seqBefore + log.writes.length + log.flushesSent;
    if (seqLast < seqMin || seqLast > seqMax) failures.push(`${where}: seqLast ${seqLast} after restart is outside [${seqMin}, ${seqMax}] (acknowledged .. sent records on top of ${seqBefore})`);

    const checked = await fsckJson(daemon.apiUrl, VOLUME);
    assert.equal(checked.code, 0, `${where}: fsck after restart: ${checked.stdout}`);
    assert.equal(checked.report.ok, true);
    assert.deepEqual(checked.report.volumes[0].problems, []);
    assert.equal(checked.report.volumes[0].records, info.seqLast, `${where}: fsck checked every record 1..seqLast`);

    await writeMarker(daemon.uri(VOLUME), round);
    const next = await volumeInfo(daemon.apiUrl, VOLUME);
    assert.equal(next.seqLast, (info.seqLast ?? 0) + 2, `${where}: seq continues after the restart (one write + one flush marker)`);
    assert.equal(next.seqDurable, next.seqLast, `${where}: flushed`);
    before = after;
    seqBefore = next.seqLast ?? 0;
  }
  const finalCheck = await fsckJson(daemon.apiUrl, VOLUME);
  assert.equal(finalCheck.code, 0, `final fsck: ${finalCheck.stdout}`);
  const code = await daemon.stop();
  assert.equal(code, 0, `final stop: ${daemon.stderr()}`);
  assert.deepEqual(failures, [], `crash consistency violated (seed ${SEED}):\n${failures.join('\n')}`);
});
