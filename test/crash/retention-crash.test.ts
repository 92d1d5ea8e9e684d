/**
 * Crash tests of retention on the fault-injecting file layer: the power fails at the Nth
 * change to storage (a write, sync, rename, removal or directory sync — N drawn from the
 * seed) while the policy is applied and segments are compacted, with client writes still
 * coming in. On what survived:
 * - open succeeds (a crash is never taken for corruption) and nothing acknowledged is lost;
 * - every point retention.json keeps — pins (bookmarks, mounts), the oldest, a sample, and
 *   the live volume — reads byte for byte as the oracle says; expired points are refused;
 * - retention then runs to the end on the survivor, the same checks hold, and fsck is clean.
 *
 * HINDSIGHT_RETENTION_CRASH_ROUNDS (default 40) and HINDSIGHT_RETENTION_CRASH_SEED run
 * more rounds or replay one.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fromSystemError, isHindsightError, parseRetention } from '../../src/core/index.js';
import type { FileLayer, StorageFile } from '../../src/journal/index.js';
import { JournaledDevice } from '../../src/volume/journaled-device.js';
import { PointView } from '../../src/volume/point-view.js';
import { applyRetention, expireByPolicy, reclaimSpace } from '../../src/volume/retention.js';
import { FaultFs } from '../helpers/fault-fs.js';
import { PitOracle, firstDifference } from '../helpers/pit-oracle.js';
import { Random } from '../helpers/random.js';
import { randomRange } from '../helpers/volume-oracle.js';

const MiB = 1024 * 1024;
const SIZE = 2 * MiB + 4096 + 512;
const VOLUME_ID = Buffer.from('c0ffee00deadbeef0123456789abcdef', 'hex');
const DIRECTORY = '/data/volumes/keep';
const MINUTE = 60e6;
const POLICY = parseRetention('all:10m,1m:1h,10m:3h');
/** Folded history's records that changed nothing share run entries (no replica here). */
const RUNS = { below: Infinity };
const ROUNDS = Number(process.env.HINDSIGHT_RETENTION_CRASH_ROUNDS ?? 40);
const SEED_FIRST = Number(process.env.HINDSIGHT_RETENTION_CRASH_SEED ?? 1);

/** Passes every call through, and makes the `at`-th change to storage a power failure instead. */
class CrashAt implements FileLayer {
  /** Changes counted since `armed` was set, and what each was. */
  changes = 0;
  readonly kinds: string[] = [];
  armed = false;
  survivor: FaultFs | null = null;

  constructor(readonly inner: FaultFs, private readonly at: number) {}

  /** The power fails now. */
  crash(): FaultFs {
    this.survivor ??= this.inner.crash();
    return this.survivor;
  }

  private change(what: string): void {
    if (this.survivor) throw eio(what);
    if (!this.armed) return;
    this.changes += 1;
    this.kinds.push(what);
    if (this.changes === this.at) {
      this.survivor = this.inner.crash();
      throw eio(what);
    }
  }

  open(file: string, create: boolean): StorageFile {
    if (create) this.change(`create ${file}`);
    const inner = this.inner.open(file, create);
    return {
      path: inner.path,
      sizeBytes: () => inner.sizeBytes(),
      writev: (buffers, position) => {
        this.change(`write ${file}`);
        inner.writev(buffers, position);
      },
      writevAsync: async (buffers, position) => {
        this.change(`write ${file}`);
        await inner.writevAsync(buffers, position);
      },
      read: (into, intoOffset, length, position) => inner.read(into, intoOffset, length, position),
      readAsync: (into, intoOffset, length, position) => inner.readAsync(into, intoOffset, length, position),
      readv: (buffers, position) => inner.readv(buffers, position),
      readvAsync: (buffers, position) => inner.readvAsync(buffers, position),
      datasync: async () => {
        this.change(`sync ${file}`);
        await inner.datasync();
      },
      truncate: (sizeBytes) => {
        this.change(`truncate ${file}`);
        inner.truncate(sizeBytes);
      },
      close: () => inner.close(),
    };
  }

  list(directory: string): string[] {
    return this.inner.list(directory);
  }

  exists(file: string): boolean {
    return this.inner.exists(file);
  }

  remove(file: string): void {
    this.change(`remove ${file}`);
    this.inner.remove(file);
  }

  mkdir(directory: string): void {
    this.inner.mkdir(directory);
  }

  readFile(file: string): Buffer | null {
    return this.inner.readFile(file);
  }

  async writeFileAtomic(file: string, data: Buffer): Promise<void> {
    this.change(`replace ${file}`);
    await this.inner.writeFileAtomic(file, data);
  }

  rename(from: string, to: string): void {
    this.change(`rename ${from}`);
    this.inner.rename(from, to);
  }

  async syncDirectory(directory: string): Promise<void> {
    this.change(`sync ${directory}`);
    await this.inner.syncDirectory(directory);
  }
}

function eio(what: string): Error {
  return Object.assign(new Error(`EIO: power failed (${what})`), { code: 'EIO' });
}

function open(files: FileLayer, clock: { us: number }): JournaledDevice {
  return JournaledDevice.open({
    name: 'keep', directory: DIRECTORY, sizeBytes: SIZE, volumeId: VOLUME_ID, files,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 96 * 1024, checkpointEveryBytes: 128 * 1024,
    idleCheckpointMs: 0, nowUs: () => clock.us,
  });
}

/** Hours of history: many small writes over a hot area (soon overwritten), some elsewhere. */
async function write(device: JournaledDevice, oracle: PitOracle, rng: Random, clock: { us: number }, changes: number, pins: Set<number>): Promise<void> {
  for (let i = 0; i < changes; i += 1) {
    clock.us += rng.int(8) === 0 ? rng.int(4 * MINUTE) : rng.int(2e6);
    const { offsetBytes, lengthBytes } = randomRange(rng, rng.int(4) === 0 ? SIZE : 256 * 1024, 32 * 1024);
    const action = rng.int(20);
    if (action < 16) {
      const data = rng.bytes(lengthBytes, rng.int(6) === 0);
      await device.write(offsetBytes, data, { fua: false });
      oracle.write(offsetBytes, data, clock.us);
    } else if (action < 18) {
      await device.writeZeroes(offsetBytes, lengthBytes, { fua: false, mayTrim: true, fastOnly: false });
      oracle.zero(offsetBytes, lengthBytes, false, clock.us);
    } else if (action < 19) {
      await device.flush();
      oracle.flush(clock.us);
    } else {
      const seq = 1 + rng.int(oracle.seqLast);
      if (!device.history.expiredRunOf(seq)) pins.add(seq);
    }
  }
  await device.flush();
  oracle.flush(clock.us);
}

async function check(device: JournaledDevice, oracle: PitOracle, seqLast: number, pins: Set<number>, rng: Random, label: string): Promise<void> {
  const history = device.history;
  assert.equal(history.seqLast, seqLast, `${label}: the journal ends at seq ${seqLast}`);
  const kept: number[] = [];
  for (let seq = 1; seq <= seqLast; seq += 1) if (!history.expiredRunOf(seq)) kept.push(seq);
  for (const pin of pins) if (pin <= seqLast) assert.equal(history.expiredRunOf(pin), null, `${label}: pinned seq ${pin} is kept`);
  const sample = new Set<number>([kept[0], seqLast, ...[...pins].filter((seq) => seq <= seqLast)]);
  for (let i = 0; i < 6; i += 1) sample.add(kept[rng.int(kept.length)]);
  for (const seq of sample) {
    const got = Buffer.alloc(SIZE);
    await new PointView('p', device, seq).read(0, got);
    const difference = firstDifference(got, oracle.imageAt(seq).data);
    if (difference !== -1) assert.fail(`${label}: kept point seq ${seq} differs at offset ${difference}`);
  }
  for (const [a, b] of history.expired.slice(-5)) {
    assert.throws(() => new PointView('x', device, a + rng.int(b - a + 1)), (err) => isHindsightError(err, 'POINT_EXPIRED'), `${label}: expired points are refused`);
  }
  const live = Buffer.alloc(SIZE);
  await device.read(0, live);
  assert.equal(firstDifference(live, oracle.imageAt(seqLast).data), -1, `${label}: live volume at seq ${seqLast}`);
}

interface Built {
  device: JournaledDevice;
  oracle: PitOracle;
  pins: Set<number>;
  rng: Random;
  clock: { us: number };
}

/** The same history for the same seed: retention already ran once (maybe folding), more writes came after. */
async function build(seed: number, files: CrashAt): Promise<Built> {
  const rng = new Random(seed);
  const clock = { us: 1_700_000_000_000_000 };
  const device = open(files, clock);
  const oracle = new PitOracle(SIZE);
  const pins = new Set<number>();
  await write(device, oracle, rng, clock, 400 + rng.int(300), pins);
  // Half the time, the first writes age past the policy's first tier: folded, their segments
  // are compacted (runs made) in the run under test.
  if (rng.int(2) === 0) {
    clock.us += (20 + rng.int(120)) * MINUTE;
    pins.clear(); // (bookmarks deleted: a pin stops the fold)
  }
  await applyRetention(device, POLICY, { pins: () => pins, nowUs: clock.us, sliceMs: 1, reclaimShareMin: 1 / 16, runs: RUNS });
  await write(device, oracle, rng, clock, 300 + rng.int(300), pins);
  // Time passes before the run under test: more points age into coarser tiers.
  clock.us += (30 + rng.int(60)) * MINUTE;
  return { device, oracle, pins, rng, clock };
}

/** Retention runs with client writes coming in (unacknowledged). Returns the last seq appended. */
async function runWithWrites(built: Built, files: CrashAt): Promise<number> {
  const { device, oracle, rng, clock, pins } = built;
  let appended = device.history.seqLast;
  const writes = (async () => {
    for (let i = 0; i < 50 && !files.survivor; i += 1) {
      const { offsetBytes, lengthBytes } = randomRange(rng, 256 * 1024, 16 * 1024);
      const data = rng.bytes(lengthBytes);
      let done;
      try {
        done = device.write(offsetBytes, data, { fua: false });
      } catch {
        break;
      }
      oracle.write(offsetBytes, data, clock.us);
      appended += 1;
      if (!(await done.then(() => true, () => false))) break;
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  await applyRetention(device, POLICY, { pins: () => pins, nowUs: clock.us, sliceMs: 1, reclaimShareMin: 1 / 16, runs: RUNS }).catch((err: unknown) => {
    if (!files.survivor) throw err;
  });
  await writes;
  return appended;
}

async function round(seed: number): Promise<{ compactions: number; runs: number; changes: number }> {
  const label = `seed ${seed}`;
  // Count the changes a run makes, then crash at one of them (or just after the run).
  const counting = new CrashAt(new FaultFs({ seed }), Infinity);
  const probe = await build(seed, counting);
  const compactionsBefore = probe.device.retention.recordsThinned;
  const runsBefore = probe.device.retention.runSegments.size;
  counting.armed = true;
  await runWithWrites(probe, counting);
  const total = counting.changes;
  const compactions = probe.device.retention.recordsThinned > compactionsBefore ? 1 : 0;
  const runs = probe.device.retention.runSegments.size > runsBefore ? 1 : 0;
  await probe.device.close();
  // Half the crashes anywhere, half around a compaction's install (its rename and the steps
  // just before and after), where the order of durable steps matters most.
  const draw = new Random(seed ^ 0x5a5a5a);
  const installs = counting.kinds.flatMap((kind, i) => (kind.startsWith('rename') ? [i + 1] : []));
  const crashAt = installs.length > 0 && draw.int(2) === 0 ? Math.max(1, installs[draw.int(installs.length)] - 3 + draw.int(8)) : 1 + draw.int(total + 2);

  const files = new CrashAt(new FaultFs({ seed }), crashAt);
  const built = await build(seed, files);
  const acked = built.device.history.seqLast;
  files.armed = true;
  const appended = await runWithWrites(built, files);
  const survivor = files.crash();
  const device = open(survivor, built.clock);
  try {
    const recovered = device.history.seqLast;
    const where = `crash at change ${crashAt} of ${total}`;
    assert.ok(recovered >= acked && recovered <= appended, `${label}: recovered seq ${recovered} within [${acked}, ${appended}] (${where})`);
    await check(device, built.oracle, recovered, built.pins, built.rng, `${label} after a ${where}`);
    // Retention runs again on the survivor, to the end (no more writes: the oracle's lost
    // ones would not match).
    await applyRetention(device, POLICY, { pins: () => built.pins, nowUs: built.clock.us, sliceMs: 1, reclaimShareMin: 1 / 16, runs: RUNS });
    await check(device, built.oracle, recovered, built.pins, built.rng, `${label} after retention ran again (${where})`);
    const fsck = await device.fsck(false);
    assert.deepEqual(fsck.problems, [], `${label}: fsck (${where})`);
  } finally {
    await device.close();
  }
  return { compactions, runs, changes: total };
}

test('retention survives a power failure at any change to storage', { timeout: 600_000 }, async () => {
  let compactions = 0;
  let runs = 0;
  let changes = 0;
  for (let seed = SEED_FIRST; seed < SEED_FIRST + ROUNDS; seed += 1) {
    try {
      const result = await round(seed);
      compactions += result.compactions;
      runs += result.runs;
      changes += result.changes;
    } catch (err) {
      console.log(`# replay: HINDSIGHT_RETENTION_CRASH_SEED=${seed} HINDSIGHT_RETENTION_CRASH_ROUNDS=1`);
      throw err;
    }
  }
  // Crashes must have hit runs that compacted, not only empty ones.
  assert.ok(compactions >= ROUNDS / 2, `runs that compacted segments: ${compactions} of ${ROUNDS}`);
  assert.ok(runs >= ROUNDS / 8, `runs that made runs of folded records: ${runs} of ${ROUNDS}`);
  console.log(`# retention crash: ${ROUNDS} rounds, ${compactions} with compactions, ${runs} making runs, ${changes} changes to storage to crash at`);
});

test('a disk full during compaction leaves that segment for the next run: no leftover, the volume serves on, the next run compacts it', async () => {
  const files = new FaultFs({ seed: 4242 });
  const clock = { us: 1_700_000_000_000_000 };
  const device = open(files, clock);
  const oracle = new PitOracle(SIZE);
  const rng = new Random(4242);
  const pins = new Set<number>();
  await write(device, oracle, rng, clock, 600, pins);
  clock.us += 120 * MINUTE;
  // The next writev fails (the expiry before it is saved): compaction's copy hits the full
  // disk. The run goes on with the other segments (a run that frees nothing at all fails).
  files.injectWritevFault({ errno: 'ENOSPC', after: 0 });
  const first = await applyRetention(device, POLICY, { pins: () => pins, nowUs: clock.us, sliceMs: 1, reclaimShareMin: 1 / 16, runs: RUNS });
  assert.ok(device.history.expired.length > 0, 'the expiry went through; the compaction after it hit the full disk');
  const unchanged = device.sealedSegments().filter((segment) => !device.retention.compressedSegments.has(segment.segmentIndex)).length;
  assert.ok(unchanged > 0, `the segment whose copy found no room is left as it was (${JSON.stringify(first)})`);
  assert.deepEqual(files.list(`${DIRECTORY}/journal`).filter((name) => name.endsWith('.compact')), [], 'no half-written copy left behind');
  assert.equal(device.corruptionError, null, 'a full disk is not corruption');
  files.clearFaults();
  await check(device, oracle, device.history.seqLast, pins, rng, 'after a failed compaction');
  const report = await applyRetention(device, POLICY, { pins: () => pins, nowUs: clock.us, sliceMs: 1, reclaimShareMin: 1 / 16, runs: RUNS });
  assert.ok(report.segmentsCompacted > 0, 'the next run compacts it');
  await check(device, oracle, device.history.seqLast, pins, rng, 'after the next run');
  await device.close();
});

test('a disk full after a compaction is in place (its checkpoint) is no compaction without room: nothing is tried twice, nothing lost', async () => {
  const files = new FaultFs({ seed: 4343 });
  let thinning = false;
  let renamed = false;
  let failed = 0;
  // The first index checkpoint written after a thinning compaction's rename finds the disk full.
  const full = new Proxy(files, {
    get(target, property) {
      if (property === 'rename') return (from: string, to: string) => {
        if (from.endsWith('.compact')) renamed = thinning;
        return target.rename(from, to);
      };
      if (property === 'writeFileAtomic') return async (file: string, data: Buffer) => {
        if (renamed && failed === 0 && file.endsWith('index.ckpt')) {
          failed += 1;
          throw fromSystemError(Object.assign(new Error('ENOSPC'), { code: 'ENOSPC', syscall: 'write', path: file }), `writing ${file}`);
        }
        return target.writeFileAtomic(file, data);
      };
      const value = (target as unknown as Record<string | symbol, unknown>)[property];
      return typeof value === 'function' ? value.bind(target) : value;
    },
  }) as FaultFs;
  const clock = { us: 1_700_000_000_000_000 };
  const device = open(full, clock);
  const oracle = new PitOracle(SIZE);
  const rng = new Random(4343);
  const pins = new Set<number>();
  await write(device, oracle, rng, clock, 600, pins);
  clock.us += 120 * MINUTE;
  const compact = device.compactSegment.bind(device);
  device.compactSegment = (segmentIndex, thinned, cancelled, options) => {
    thinning = thinned.size > 0;
    return compact(segmentIndex, thinned, cancelled, options);
  };
  let released = 0;
  await expireByPolicy(device, POLICY, { pins: () => pins, nowUs: clock.us });
  const report = await reclaimSpace(device, { sliceMs: 1, reclaimShareMin: 1 / 16, runs: RUNS, onNoSpace: () => (released += 1) > 0 });
  assert.equal(failed, 1, 'the checkpoint after a compaction found the disk full');
  assert.equal(released, 0, 'no room was asked for: the compaction was in place');
  assert.ok(report.segmentsCompacted > 0 && report.bytesReclaimed > 0, `the run went on (${JSON.stringify(report)})`);
  await check(device, oracle, device.history.seqLast, pins, rng, 'after a checkpoint found the disk full');
  await device.close();
});
