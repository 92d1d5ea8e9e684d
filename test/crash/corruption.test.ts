/**
 * Damage on disk, found and contained.
 *
 * A record in the middle of a volume's journal (one that later records say was already
 * durable, so it cannot be a torn tail) has a few bytes flipped while the daemon is stopped:
 *  - the daemon starts; that volume is listed as 'failed' with JOURNAL_CORRUPT, naming the
 *    segment file and the damaged record's offset; no NBD client can open it; another volume
 *    of the same daemon keeps serving reads and writes;
 *  - `hindsight fsck A --json` exits 2 naming the segment and exactly that offset; fsck of the
 *    healthy volume exits 0.
 * Once after a clean stop (SIGTERM: the index checkpoint covers the whole journal) and once
 * with no usable checkpoint (the whole journal is replayed at start).
 *
 * The index checkpoint is derivable: deleted, damaged (header, body, truncated, emptied) or
 * stale (an older valid one), the daemon starts, rebuilds or replays the index from the journal
 * and serves identical data (sha256 of nbdcopy's copy); `fsck --rebuild-index` rewrites it.
 *
 * Seed: HINDSIGHT_CRASH_SEED (default: a fixed seed, printed).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import type { DaemonHandle } from '../helpers/daemon.js';
import {
  RECORD_HEADER_BYTES, RECORD_TYPE, checkpointFile, flipBytes, fsckJson, parseSegment, segmentFiles, shakeBlock, volumeInfo, volumeSha256,
} from '../helpers/crash.js';
import type { SegmentRecord } from '../helpers/crash.js';
import { KiB, MiB, deferrals, hindsight, nbdshEnv } from '../helpers/interop.js';
import { Random } from '../helpers/random.js';
import { run } from '../helpers/run.js';

// Fixed by default so CI is reproducible; scripts/crash-soak.sh and HINDSIGHT_CRASH_SEED explore others.
const SEED = Number(process.env.HINDSIGHT_CRASH_SEED ?? 20261125);
const VOLUME_BYTES = 16 * MiB;

/**
 * Writes through nbdsh: `count` writes of 4..64 KiB at seeded 4 KiB-aligned offsets, a flush
 * after every `flushEvery`, plus (with `mixed`) some write-zeroes and trims; ends with a flush.
 */
async function writeStream(uri: string, seed: number, count: number, flushEvery: number, mixed = false): Promise<void> {
  const rng = new Random(seed);
  const ops: string[] = [];
  for (let i = 0; i < count; i += 1) {
    const lengthBytes = (1 + rng.int(16)) * 4 * KiB;
    const offsetBytes = rng.int((VOLUME_BYTES - lengthBytes) / (4 * KiB)) * 4 * KiB;
    const choice = mixed ? rng.int(10) : 0;
    if (choice === 8) ops.push(`h.zero(${lengthBytes}, ${offsetBytes})`);
    else if (choice === 9) ops.push(`h.trim(${lengthBytes}, ${offsetBytes})`);
    else ops.push(`h.pwrite(shake(${JSON.stringify(`${seed}:${i}`)}, ${lengthBytes}), ${offsetBytes})`);
    if ((i + 1) % flushEvery === 0) ops.push('h.flush()');
  }
  ops.push('h.flush()');
  const script = ['import hashlib', 'def shake(key, n): return hashlib.shake_256(key.encode()).digest(n)', ...ops].join('\n');
  await run('nbdsh', ['-u', uri, '-c', script], { env: await nbdshEnv(), timeoutMs: 60_000 });
}

async function qemuIo(uri: string, commands: string[]): Promise<{ code: number; out: string }> {
  const result = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri], { allowFailure: true });
  return { code: result.code, out: result.stdout + result.stderr };
}

function assertQemuIoOk(result: { code: number; out: string }, what: string): void {
  assert.equal(result.code, 0, `${what}: qemu-io failed:\n${result.out}`);
  assert.doesNotMatch(result.out, /Pattern verification failed|failed/i, `${what}:\n${result.out}`);
}

async function stopCleanly(daemon: DaemonHandle): Promise<void> {
  const code = await daemon.stop();
  assert.equal(code, 0, `daemon exited with ${code} on SIGTERM: ${daemon.stderr()}`);
}

/**
 * A WRITE record that is not the last one and that a later record declares durable (its
 * seqDurable covers it): damage there is corruption, never a torn tail.
 */
function pickVictim(records: SegmentRecord[], rng: Random): SegmentRecord {
  const laterDurable: number[] = new Array(records.length).fill(0);
  for (let i = records.length - 2; i >= 0; i -= 1) laterDurable[i] = Math.max(laterDurable[i + 1], records[i + 1].seqDurable);
  const candidates = records.filter((record, i) => i < records.length - 1 && record.type === RECORD_TYPE.WRITE
    && laterDurable[i] >= record.seq && i > 0);
  assert.ok(candidates.length >= 5, `expected several durable WRITE records mid-journal, found ${candidates.length}`);
  return candidates[rng.int(candidates.length)];
}

/** Flips 1..3 bytes somewhere in the record's header or payload (not its unchecked padding). */
function damageRecord(file: string, record: SegmentRecord, rng: Random): number[] {
  const covered = record.payloadPosition - record.position + record.payloadBytes;
  const positions = new Set<number>();
  const flips = 1 + rng.int(3);
  while (positions.size < flips) positions.add(record.position + rng.int(covered));
  const list = [...positions];
  flipBytes(file, list, list.map(() => 1 + rng.int(255)));
  return list;
}

interface CorruptSetup {
  daemon: DaemonHandle;
  victim: SegmentRecord;
  /** The victim's payload before the damage. */
  original: Buffer;
  /** Every record of the segment (to tell which bytes of the victim are still live). */
  records: SegmentRecord[];
  segmentName: string;
  flipped: number[];
}

/**
 * Reads the victim's range through NBD; where no later record overwrote it, compares with the
 * payload before the damage. Returns a description of the first difference, or null.
 */
async function servedDamage(daemon: DaemonHandle, setup: CorruptSetup): Promise<string | null> {
  const { victim, original, records } = setup;
  const live = new Array<boolean>(victim.lengthBytes).fill(true);
  for (const later of records.filter((r) => r.seq > victim.seq && r.type !== RECORD_TYPE.FLUSH)) {
    const from = Math.max(later.offsetBytes, victim.offsetBytes);
    const to = Math.min(later.offsetBytes + later.lengthBytes, victim.offsetBytes + victim.lengthBytes);
    for (let at = from; at < to; at += 1) live[at - victim.offsetBytes] = false;
  }
  const result = await run('nbdsh', ['-u', daemon.uri('alpha'), '-c', `import sys; sys.stdout.write(h.pread(${victim.lengthBytes}, ${victim.offsetBytes}).hex())`], { env: await nbdshEnv(), allowFailure: true });
  if (result.code !== 0) return null;
  const served = Buffer.from(result.stdout.trim(), 'hex');
  for (let i = 0; i < victim.lengthBytes; i += 1) {
    if (live[i] && served[i] !== original[i]) {
      return `volume offset ${victim.offsetBytes + i} reads 0x${served[i].toString(16)} where record seq ${victim.seq} wrote 0x${original[i].toString(16)} (READ succeeded, no error)`;
    }
  }
  return null;
}

/**
 * Two volumes: alpha gets a seeded write stream with regular flushes, bravo a qemu-io
 * pattern. The daemon stops with SIGTERM; one mid-journal record of alpha is damaged
 * (`withoutCheckpoint`: alpha's index.ckpt is removed too, so start-up replays everything);
 * the daemon starts again.
 */
async function corruptSetup(t: TestContext, seed: number, withoutCheckpoint: boolean): Promise<CorruptSetup> {
  const rng = new Random(seed);
  const defer = deferrals(t);
  const dataDir = makeTempDir('hindsight-corrupt-');
  defer(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const first = await startDaemon({ volumes: [`alpha:${VOLUME_BYTES}`, `bravo:${VOLUME_BYTES}`], dataDir });
  defer(() => first.kill());
  await writeStream(first.uri('alpha'), seed, 60, 6);
  assertQemuIoOk(await qemuIo(first.uri('bravo'), ['write -P 0x5a 0 1M', 'write -P 0xa5 4M 512k', 'flush']), 'writing bravo');
  await stopCleanly(first);

  const segments = segmentFiles(dataDir, 'alpha');
  assert.equal(segments.length, 1, 'alpha has one (closed, synced) segment');
  const parsed = parseSegment(segments[0]);
  assert.equal(parsed.endPosition, parsed.sizeBytes, 'the segment parses to its end');
  const victim = pickVictim(parsed.records, rng);
  const original = Buffer.from(fs.readFileSync(segments[0]).subarray(victim.payloadPosition, victim.payloadPosition + victim.payloadBytes));
  const flipped = damageRecord(segments[0], victim, rng);
  t.diagnostic(`seed ${seed}: damaged record seq ${victim.seq} at offset ${victim.position} (span ${victim.span}) of ${path.basename(segments[0])}: bytes ${flipped.join(', ')}`);
  if (withoutCheckpoint) fs.rmSync(checkpointFile(dataDir, 'alpha'), { force: true });

  const daemon = await startDaemon({ dataDir });
  defer(() => daemon.kill());
  return { daemon, victim, original, records: parsed.records, segmentName: path.basename(segments[0]), flipped };
}

async function checkContained(t: TestContext, setup: CorruptSetup): Promise<void> {
  const { daemon, victim, segmentName } = setup;

  await t.test('the damaged volume is failed with JOURNAL_CORRUPT naming the segment and offset', async () => {
    const info = await volumeInfo(daemon.apiUrl, 'alpha');
    assert.equal(info.state, 'failed', `alpha should have failed to open; info: ${JSON.stringify(info)}`);
    assert.equal(info.error?.code, 'JOURNAL_CORRUPT');
    assert.ok(info.error!.message.includes(segmentName), `message names ${segmentName}: ${info.error!.message}`);
    assert.match(info.error!.message, new RegExp(`offset ${victim.position}\\b`), `message names offset ${victim.position}`);
  });

  await t.test('no NBD client can open it', async () => {
    const opened = await run('nbdinfo', ['--json', daemon.uri('alpha')], { allowFailure: true });
    if (opened.code === 0) {
      // Say precisely what goes wrong: is the damaged payload handed to clients?
      const served = await servedDamage(daemon, setup);
      assert.fail(`nbdinfo opened the corrupt volume${served ? `, and it serves the damaged bytes: ${served}` : ''}`);
    }
    const read = await qemuIo(daemon.uri('alpha'), ['read 0 4k']);
    assert.notEqual(read.code, 0, `qemu-io read the corrupt volume:\n${read.out}`);
    const list = await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${daemon.nbdPort}`]);
    const names = (JSON.parse(list.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name']);
    assert.deepEqual(names, ['bravo'], 'only the healthy volume is listed');
  });

  await t.test('the other volume of the same daemon keeps serving reads and writes', async () => {
    assertQemuIoOk(await qemuIo(daemon.uri('bravo'), ['read -P 0x5a 0 1M', 'read -P 0xa5 4M 512k', 'read -P 0 1M 3M']), 'bravo data written before the stop');
    assertQemuIoOk(await qemuIo(daemon.uri('bravo'), ['write -P 0xc3 2M 256k', 'write -P 0x3c 8M 4k', 'flush']), 'bravo new writes');
    assertQemuIoOk(await qemuIo(daemon.uri('bravo'), ['read -P 0xc3 2M 256k', 'read -P 0x3c 8M 4k', 'read -P 0x5a 0 1M']), 'bravo read back');
    assert.equal((await volumeInfo(daemon.apiUrl, 'bravo')).state, 'online');
  });

  await t.test('fsck of the damaged volume exits 2 naming the segment and the offset of the record', async () => {
    const { code, report, stdout } = await fsckJson(daemon.apiUrl, 'alpha');
    assert.equal(code, 2, stdout);
    assert.equal(report.ok, false);
    assert.equal(report.volumes.length, 1);
    const volume = report.volumes[0];
    assert.equal(volume.name, 'alpha');
    const journalProblems = volume.problems.filter((p) => p.kind === 'journal');
    assert.ok(journalProblems.length >= 1, stdout);
    assert.equal(journalProblems[0].segment, segmentName, stdout);
    assert.equal(journalProblems[0].offsetBytes, victim.position, `fsck names the damaged record's offset: ${stdout}`);
    assert.equal(volume.records, victim.seq - 1, 'every record before the damaged one checks out');
    assert.equal(volume.state, 'failed', 'fsck reports the volume as failed (it must not be online)');
  });

  await t.test('fsck of the healthy volume exits 0; fsck of all exits 2', async () => {
    const healthy = await fsckJson(daemon.apiUrl, 'bravo');
    assert.equal(healthy.code, 0, healthy.stdout);
    assert.equal(healthy.report.ok, true);
    assert.deepEqual(healthy.report.volumes[0].problems, []);
    const all = await fsckJson(daemon.apiUrl);
    assert.equal(all.code, 2, all.stdout);
    assert.deepEqual(all.report.volumes.map((v) => [v.name, v.problems.length > 0]), [['alpha', true], ['bravo', false]]);
  });

  await t.test('text fsck exits 2 too and names the segment and offset', async () => {
    const result = await hindsight(['fsck', 'alpha', '--api', daemon.apiUrl]);
    assert.equal(result.code, 2, result.stdout + result.stderr);
    assert.ok(result.stdout.includes(`segment ${segmentName} offset ${victim.position}`), result.stdout);
  });

  await t.test('the daemon still stops cleanly', async () => {
    await stopCleanly(daemon);
  });
}

test(`a corrupt record mid-journal after a clean stop: volume failed, others serve, fsck names it (seed ${SEED})`, { timeout: 90_000 }, async (t) => {
  const setup = await corruptSetup(t, SEED, false);
  await checkContained(t, setup);
});

test(`a corrupt record mid-journal with no index checkpoint (full replay): volume failed, others serve, fsck names it (seed ${SEED + 1})`, { timeout: 90_000 }, async (t) => {
  const setup = await corruptSetup(t, SEED + 1, true);
  await checkContained(t, setup);
});

type Damage = 'deleted' | 'header byte flipped' | 'body byte flipped' | 'truncated' | 'emptied' | 'stale (older, valid)';
const DAMAGES: Damage[] = ['deleted', 'header byte flipped', 'body byte flipped', 'truncated', 'emptied', 'stale (older, valid)'];

test(`a lost, damaged or stale index checkpoint: the index is rebuilt from the journal, data identical, fsck --rebuild-index (seed ${SEED + 2})`, { timeout: 120_000 }, async (t) => {
  const rng = new Random(SEED + 2);
  const defer = deferrals(t);
  const dataDir = makeTempDir('hindsight-ckpt-');
  const scratch = makeTempDir('hindsight-ckpt-img-');
  defer(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  defer(() => fs.rmSync(scratch, { recursive: true, force: true }));
  const image = path.join(scratch, 'image.raw');
  let daemon = await startDaemon({ volumes: [`charlie:${VOLUME_BYTES}`], dataDir });
  defer(() => daemon.kill());
  const ckpt = checkpointFile(dataDir, 'charlie');

  for (const damage of DAMAGES) {
    await t.test(`checkpoint ${damage}`, async () => {
      const round = DAMAGES.indexOf(damage);
      // An earlier case that failed half-way may have left the daemon stopped.
      if (daemon.process.exitCode !== null || daemon.process.signalCode !== null) daemon = await startDaemon({ dataDir });
      await writeStream(daemon.uri('charlie'), SEED + 100 + round, 40, 7, true);
      let stale: Buffer | null = null;
      if (damage === 'stale (older, valid)') {
        // A valid checkpoint of an earlier point, then more journal after it.
        await stopCleanly(daemon);
        stale = fs.readFileSync(ckpt);
        daemon = await startDaemon({ dataDir });
        await writeStream(daemon.uri('charlie'), SEED + 200 + round, 40, 5, true);
      }
      const expectedSha = await volumeSha256(daemon.uri('charlie'), image);
      const expectedInfo = await volumeInfo(daemon.apiUrl, 'charlie');
      await stopCleanly(daemon);
      assert.ok(fs.existsSync(ckpt), 'a clean stop leaves a checkpoint');

      const bytes = fs.readFileSync(ckpt);
      switch (damage) {
        case 'deleted':
          fs.rmSync(ckpt);
          break;
        case 'header byte flipped':
          flipBytes(ckpt, [8 + rng.int(80)], [1 + rng.int(255)]);
          break;
        case 'body byte flipped':
          assert.ok(bytes.length > 128, 'the checkpoint has a body');
          flipBytes(ckpt, [128 + rng.int(bytes.length - 128)], [1 + rng.int(255)]);
          break;
        case 'truncated':
          fs.truncateSync(ckpt, Math.floor(bytes.length / 2));
          break;
        case 'emptied':
          fs.truncateSync(ckpt, 0);
          break;
        case 'stale (older, valid)':
          fs.writeFileSync(ckpt, stale!);
          break;
      }

      daemon = await startDaemon({ dataDir });
      const info = await volumeInfo(daemon.apiUrl, 'charlie');
      assert.equal(info.state, 'online', `charlie failed to open with its checkpoint ${damage}: ${JSON.stringify(info.error)}`);
      assert.equal(info.seqLast, expectedInfo.seqLast, 'same journal');
      assert.equal(info.records, expectedInfo.records);
      assert.equal(info.clientBytesWritten, expectedInfo.clientBytesWritten, 'client byte counter recovered from the journal');
      assert.equal(info.indexExtents, expectedInfo.indexExtents, 'same index');
      assert.equal(await volumeSha256(daemon.uri('charlie'), image), expectedSha, `identical data after the checkpoint was ${damage}`);

      const checked = await fsckJson(daemon.apiUrl, 'charlie');
      assert.equal(checked.code, 0, checked.stdout);
      assert.deepEqual(checked.report.volumes[0].problems, []);

      const before = fs.existsSync(ckpt) ? fs.statSync(ckpt).mtimeMs : null;
      const rebuilt = await fsckJson(daemon.apiUrl, 'charlie', { rebuildIndex: true });
      assert.equal(rebuilt.code, 0, rebuilt.stdout);
      assert.equal(rebuilt.report.volumes[0].indexRebuilt, true, rebuilt.stdout);
      assert.ok(fs.existsSync(ckpt), 'fsck --rebuild-index writes a checkpoint');
      assert.notEqual(fs.statSync(ckpt).mtimeMs, before, 'the checkpoint was rewritten');
      assert.equal(await volumeSha256(daemon.uri('charlie'), image), expectedSha, 'identical data after fsck --rebuild-index');

      // Writes carry on with the next seq, and a restart from the rewritten checkpoint agrees.
      const marker = shakeBlock(`ckpt:${SEED}:${round}`);
      await run('nbdsh', ['-u', daemon.uri('charlie'), '-c', `h.pwrite(bytes.fromhex(${JSON.stringify(marker.toString('hex'))}), ${12 * MiB + round * 4096}); h.flush()`], { env: await nbdshEnv() });
      assert.equal((await volumeInfo(daemon.apiUrl, 'charlie')).seqLast, (expectedInfo.seqLast ?? 0) + 2);
      const withMarker = await volumeSha256(daemon.uri('charlie'), image);
      await stopCleanly(daemon);
      daemon = await startDaemon({ dataDir });
      assert.equal(await volumeSha256(daemon.uri('charlie'), image), withMarker, 'identical data after a restart from the rebuilt checkpoint');
    });
  }
  if (daemon.process.exitCode === null && daemon.process.signalCode === null) await stopCleanly(daemon);
});

test(`a checkpoint ahead of its journal (segment restored from an older copy): flushed data is missing, so the volume is refused until the operator accepts the loss (seed ${SEED + 3})`, { timeout: 90_000 }, async (t) => {
  const defer = deferrals(t);
  const dataDir = makeTempDir('hindsight-ckpt-ahead-');
  const scratch = makeTempDir('hindsight-ckpt-ahead-img-');
  defer(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  defer(() => fs.rmSync(scratch, { recursive: true, force: true }));
  const image = path.join(scratch, 'image.raw');
  let daemon = await startDaemon({ volumes: [`delta:${VOLUME_BYTES}`], dataDir });
  defer(() => daemon.kill());
  await writeStream(daemon.uri('delta'), SEED + 300, 30, 5);
  const olderSha = await volumeSha256(daemon.uri('delta'), image);
  const olderInfo = await volumeInfo(daemon.apiUrl, 'delta');
  await stopCleanly(daemon);
  const [segment] = segmentFiles(dataDir, 'delta');
  const older = fs.readFileSync(segment);

  daemon = await startDaemon({ dataDir });
  await writeStream(daemon.uri('delta'), SEED + 301, 30, 5);
  await stopCleanly(daemon);
  // The checkpoint now covers journal bytes the older segment does not have.
  fs.writeFileSync(segment, older);

  daemon = await startDaemon({ dataDir });
  const refused = await volumeInfo(daemon.apiUrl, 'delta');
  assert.equal(refused.state, 'failed', 'the checkpoint proves flushed writes the journal no longer holds');
  assert.equal(refused.error?.code, 'JOURNAL_CORRUPT');
  assert.match(refused.error?.message ?? '', /had been made durable/);
  await stopCleanly(daemon);

  // The operator accepts the loss: without the checkpoint the journal alone is the truth.
  fs.rmSync(checkpointFile(dataDir, 'delta'));
  daemon = await startDaemon({ dataDir });
  const info = await volumeInfo(daemon.apiUrl, 'delta');
  assert.equal(info.state, 'online', JSON.stringify(info.error));
  assert.equal(info.seqLast, olderInfo.seqLast, `seqLast must be the journal's (${olderInfo.seqLast}), not the checkpoint's`);
  assert.equal(await volumeSha256(daemon.uri('delta'), image), olderSha, 'the volume reads as its journal says');
  // New writes continue the journal's seq without a gap.
  await writeStream(daemon.uri('delta'), SEED + 302, 10, 5);
  const checked = await fsckJson(daemon.apiUrl, 'delta');
  assert.equal(checked.code, 0, `journal after new writes: ${checked.stdout}`);
  await stopCleanly(daemon);
});
