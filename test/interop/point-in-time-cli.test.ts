/**
 * Point in time through the CLI against a real daemon, read and written by real NBD clients
 * (qemu-io, qemu-img, nbdinfo, nbdcopy, nbdsh): mount --at (time, seq, latest, bookmark,
 * relative), BLOCK_STATUS and sparse copies of a mounted point, read-only mounts and
 * writable clones, unmount while connected, rollback and the abandoned branch, timeline and
 * points, restore with its sha256, every refusal (one line naming the code, --json error,
 * nothing created), and mounts surviving a daemon restart.
 *
 * An in-memory oracle keeps the image after each step of writes; a time taken (with
 * new Date().toISOString()) after a step's writes completed and before the next began must
 * resolve to exactly that step's image.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { TestContext } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import type { DaemonHandle } from '../helpers/daemon.js';
import { KiB, MiB, dataBytes, deferrals, hindsight, nbdMap, nbdshEnv, sha256File, typeAt, waitFor } from '../helpers/interop.js';
import { NbdHolder } from '../helpers/nbd-holder.js';
import { run } from '../helpers/run.js';

const SIZE = 16 * MiB;
/** nbdinfo --map types (base:allocation): 0 data, 3 hole+zero. */
const DATA = 0;
const HOLE = 3;

let daemon: DaemonHandle;

interface MountView {
  name: string; volume: string; seq: number; time: string; writable: boolean; state: string;
  export: string; uri: string; connections: number; cloneBytesWritten: number | null;
}

/** One step of writes: the image after it, the volume's last seq, and a time taken after it. */
interface Step {
  image: Buffer;
  seqLast: number;
  time: string;
}

/** The volume `pit`: three steps of writes, never rolled back. */
const pit: { t0: string; steps: Step[]; writes: number; bytes: number } = { t0: '', steps: [], writes: 0, bytes: 0 };

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => new Date().toISOString();
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

function cli(args: string[]) {
  return hindsight([...args, '--api', daemon.apiUrl]);
}

/** Runs a command with --json; it must succeed. */
async function cliJson<T = Record<string, unknown>>(args: string[], on: DaemonHandle = daemon): Promise<T> {
  const result = await hindsight([...args, '--json', '--api', on.apiUrl]);
  assert.equal(result.code, 0, `hindsight ${args.join(' ')} failed: ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

async function api<T>(route: string, on: DaemonHandle = daemon): Promise<T> {
  const response = await fetch(`${on.apiUrl}/api/v1${route}`);
  assert.equal(response.status, 200, route);
  return (await response.json()) as T;
}

async function request(method: string, route: string, body?: unknown, on: DaemonHandle = daemon): Promise<{ status: number; body: any }> {
  const response = await fetch(`${on.apiUrl}/api/v1${route}`, {
    method, headers: body === undefined ? {} : { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

async function createVolume(name: string, on: DaemonHandle = daemon): Promise<void> {
  const created = await request('POST', '/volumes', { name, size: SIZE }, on);
  assert.equal(created.status, 201, JSON.stringify(created.body));
}

/** Teardown: removes a mount if it is still there (through the API: not what is tested). */
function unmountLater(defer: (step: () => unknown) => void, name: string): void {
  defer(() => request('DELETE', `/mounts/${encodeURIComponent(name)}?force=true`));
}

/** The mounts, through the API (mountsNow asks the CLI). */
async function mountList(on: DaemonHandle = daemon): Promise<MountView[]> {
  return (await api<{ mounts: MountView[] }>('/mounts', on)).mounts;
}

/** Mounts through the API: for mounts that are only the setting of a test. */
async function mountApi(volume: string, at: string, options: { name?: string; writable?: boolean } = {}, on: DaemonHandle = daemon): Promise<MountView> {
  const created = await request('POST', '/mounts', { volume, at, ...options }, on);
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return created.body as MountView;
}

async function seqLast(volume: string, on: DaemonHandle = daemon): Promise<number> {
  return (await api<{ seqLast: number }>(`/volumes/${volume}`, on)).seqLast;
}

async function mountsNow(on: DaemonHandle = daemon): Promise<MountView[]> {
  return (await cliJson<{ mounts: MountView[] }>(['mounts'], on)).mounts;
}

/** A failed command: non-zero exit, exactly one line on stderr naming the code. */
function assertFails(result: { code: number; stdout: string; stderr: string }, code: string, what = ''): void {
  assert.notEqual(result.code, 0, `${what}: expected failure with ${code}, got exit 0: ${result.stdout}`);
  const lines = result.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `${what}: expected a one-line reason, got:\n${result.stderr}`);
  assert.match(lines[0], new RegExp(`^hindsight: .+ \\(${code}\\)$`), `${what}: ${lines[0]}`);
}

function assertJsonError(result: { code: number; stdout: string }, code: string, what = ''): { code: string; message: string } {
  assert.notEqual(result.code, 0, what);
  const parsed = JSON.parse(result.stdout) as { error: { code: string; message: string } };
  assert.deepEqual(Object.keys(parsed), ['error'], what);
  assert.equal(parsed.error.code, code, `${what}: ${parsed.error.message}`);
  assert.ok(parsed.error.message.length > 0, what);
  assert.ok(!parsed.error.message.includes('\n'), `${what}: one-line message`);
  return parsed.error;
}

/**
 * A refused command. With --json the CLI prints {error} on stdout and still the one-line
 * reason on stderr, so one run checks both; `text` also runs the plain form.
 */
async function assertRefused(args: string[], code: string, options: { on?: DaemonHandle; text?: boolean } = {}): Promise<{ code: string; message: string }> {
  const on = options.on ?? daemon;
  const what = `hindsight ${args.join(' ')}`;
  const [json, text] = await Promise.all([
    hindsight([...args, '--json', '--api', on.apiUrl]),
    options.text ? hindsight([...args, '--api', on.apiUrl]) : null,
  ]);
  assertFails(json, code, `${what} --json`);
  if (text) {
    assertFails(text, code, what);
    assert.equal(text.stdout, '', `${what}: nothing on stdout`);
  }
  return assertJsonError(json, code, what);
}

/** Runs `work` over `items`, at most `limit` at a time (each CLI run is a Node process). */
async function inBatches<T, R>(items: T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next;
      next += 1;
      results[i] = await work(items[i]);
    }
  }));
  return results;
}

/**
 * A restore refused by its job: the text form prints "restoring ..." on stderr first, so
 * only its last line is the reason; --json prints just the {error}.
 */
async function assertRestoreRefused(args: string[], code: string): Promise<{ code: string; message: string }> {
  const what = `hindsight ${args.join(' ')}`;
  const [text, json] = await Promise.all([hindsight([...args, '--api', daemon.apiUrl]), hindsight([...args, '--json', '--api', daemon.apiUrl])]);
  assert.notEqual(text.code, 0, what);
  const lines = text.stderr.trimEnd().split('\n');
  assert.match(lines.at(-1)!, new RegExp(`^hindsight: .+ \\(${code}\\)$`), `${what}: ${text.stderr}`);
  assert.ok(lines.length <= 2, `${what}: ${text.stderr}`);
  assert.equal(json.stderr.trimEnd().split('\n').length, 1, `${what} --json: ${json.stderr}`);
  return assertJsonError(json, code, what);
}

/** Writes patterns with one qemu-io run (it flushes when it closes) and applies them to `image`. */
async function qemuWrite(uri: string, image: Buffer | null, writes: Array<[pattern: number, offsetBytes: number, lengthBytes: number]>): Promise<void> {
  const args = ['-f', 'raw'];
  for (const [pattern, offset, length] of writes) {
    args.push('-c', `write -P 0x${pattern.toString(16)} ${offset} ${length}`);
    image?.fill(pattern, offset, offset + length);
  }
  await run('qemu-io', [...args, uri]);
  await connectionGone(uri);
}

/**
 * qemu-io has exited, but the server may not have seen its connection close yet: wait, so a
 * delete or rollback right after is not refused for a client that is already gone.
 */
async function connectionGone(uri: string): Promise<void> {
  const url = new URL(uri);
  if (!daemon || Number(url.port) !== daemon.nbdPort) return;
  const exportName = decodeURIComponent(url.pathname.slice(1));
  await waitFor(async () => {
    const { connections } = await api<{ connections: Array<{ exportName: string | null }> }>('/connections');
    return !connections.some((connection) => connection.exportName === exportName);
  }, { what: `the connection to ${exportName} to close`, timeoutMs: 10_000 });
}

/** Checks patterns with qemu-io -r (read -P): a failed comparison fails the run. */
async function qemuVerify(uri: string, reads: Array<[pattern: number, offsetBytes: number, lengthBytes: number]>): Promise<void> {
  const args = ['-r', '-f', 'raw'];
  for (const [pattern, offset, length] of reads) args.push('-c', `read -P 0x${pattern.toString(16)} ${offset} ${length}`);
  const result = await run('qemu-io', [...args, uri], { allowFailure: true });
  assert.equal(result.code, 0, result.stdout + result.stderr);
  assert.doesNotMatch(result.stdout, /Pattern verification failed/, result.stdout);
}

/** The whole export, copied with nbdcopy. */
async function readExport(uri: string, dir: string): Promise<Buffer> {
  const file = path.join(dir, `copy-${Math.random().toString(36).slice(2)}.img`);
  await run('nbdcopy', [uri, file]);
  const data = fs.readFileSync(file);
  fs.rmSync(file);
  return data;
}

function assertSameImage(actual: Buffer, expected: Buffer, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: size`);
  if (actual.equals(expected)) return;
  let first = 0;
  while (actual[first] === expected[first]) first += 1;
  assert.fail(`${what}: differs from the oracle first at byte ${first} (0x${actual[first].toString(16)} instead of 0x${expected[first].toString(16)})`);
}

function tempDir(t: TestContext): string {
  const dir = makeTempDir('hindsight-pit-cli-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Entries of DATA/mounts (staging leftovers included). */
function mountDirs(on: DaemonHandle = daemon): string[] {
  return fs.readdirSync(path.join(on.dataDir, 'mounts')).sort();
}


/**
 * Writes steps of patterns to a volume, each with its own qemu-io run, and takes a time
 * after each (a few ms clear of the writes on both sides: the daemon stamps records with
 * its wall clock, in the same millisecond grid as toISOString()).
 */
async function writeSteps(on: DaemonHandle, volume: string, steps: Array<Array<[number, number, number]>>, image = Buffer.alloc(SIZE)): Promise<Step[]> {
  const out: Step[] = [];
  for (const writes of steps) {
    await pause(5);
    await qemuWrite(on.uri(volume), image, writes);
    await pause(5);
    out.push({ image: Buffer.from(image), seqLast: await seqLast(volume, on), time: now() });
    await pause(5);
  }
  return out;
}

const PIT_STEPS: Array<Array<[number, number, number]>> = [
  [[0x11, 0, 64 * KiB]],
  [[0x22, 1 * MiB, 64 * KiB], [0x33, 32 * KiB, 4 * KiB]],
  [[0x44, 0, 4 * KiB], [0x55, 8 * MiB, 128 * KiB]],
];

before(async () => {
  daemon = await startDaemon({ volumes: ['pit:16M', 'empty:16M'] });
  await pause(5);
  pit.t0 = now();
  pit.steps = await writeSteps(daemon, 'pit', PIT_STEPS);
  pit.writes = PIT_STEPS.flat().length;
  pit.bytes = PIT_STEPS.flat().reduce((sum, [, , length]) => sum + length, 0);
});

after(async () => {
  const code = await daemon?.stop();
  if (daemon) fs.rmSync(daemon.dataDir, { recursive: true, force: true });
  assert.equal(code, 0, `daemon exited with ${code}: ${daemon?.stderr()}`);
});

test('mount --at a time, seq:N, latest, bookmark:NAME shows exactly the image at that point', async (t) => {
  const dir = tempDir(t);
  const defer = deferrals(t);
  const [s1, s2, s3] = pit.steps;
  let previous: Step | null = null;
  for (const [i, step] of pit.steps.entries()) {
    const mount = await cliJson<MountView>(['mount', 'pit', '--at', step.time]);
    unmountLater(defer, mount.export);
    for (const field of ['export', 'uri', 'seq', 'time']) assert.ok(field in mount, `mount --json has ${field}`);
    assert.equal(mount.volume, 'pit');
    assert.equal(mount.writable, false);
    assert.equal(mount.export, `pit@${mount.seq}`, 'the default export name is VOLUME@SEQ');
    assert.equal(mount.uri, daemon.uri(encodeURIComponent(mount.export)));
    // The last write of this step: after the previous step's records, at most this step's last.
    assert.ok(mount.seq > (previous?.seqLast ?? 0) && mount.seq <= step.seqLast, `step ${i + 1}: seq ${mount.seq} not in (${previous?.seqLast ?? 0}, ${step.seqLast}]`);
    assert.ok(mount.time <= step.time, `step ${i + 1}: record time ${mount.time} after the asked time ${step.time}`);
    if (previous) assert.ok(mount.time >= previous.time, `step ${i + 1}: record time ${mount.time} before the previous step's time`);
    assertSameImage(await readExport(mount.uri, dir), step.image, `mount --at ${step.time} (step ${i + 1})`);
    previous = step;
  }
  // The patterns themselves, through qemu-io -r on the step-2 point.
  const m2 = await cliJson<MountView>(['mount', 'pit', '--at', s2.time]);
  await qemuVerify(m2.uri, [[0x11, 0, 32 * KiB], [0x33, 32 * KiB, 4 * KiB], [0x11, 36 * KiB, 28 * KiB], [0, 64 * KiB, 1 * MiB - 64 * KiB], [0x22, 1 * MiB, 64 * KiB], [0, 8 * MiB, 128 * KiB]]);

  // seq:N (a flush record here: taken as given) and latest.
  const bySeq = await cliJson<MountView>(['mount', 'pit', '--at', `seq:${s1.seqLast}`]);
  unmountLater(defer, bySeq.export);
  assert.equal(bySeq.seq, s1.seqLast);
  assertSameImage(await readExport(bySeq.uri, dir), s1.image, `mount --at seq:${s1.seqLast}`);
  const lastBySeq = await cliJson<MountView>(['mount', 'pit', '--at', `seq:${s3.seqLast}`]);
  unmountLater(defer, lastBySeq.export);
  // latest = the last write (the flush markers after it show the same content).
  const latest = await cliJson<MountView>(['mount', 'pit', '--at', 'latest']);
  unmountLater(defer, latest.export);
  assert.ok(latest.seq > s2.seqLast && latest.seq < s3.seqLast, `latest resolves to the last write, before the flush markers: ${latest.seq}`);
  const latestAgain = await cliJson<MountView>(['mount', 'pit', '--at', 'latest']);
  assert.equal(latestAgain.export, latest.export, 'the same point mounted read-only twice is the same mount');
  assertSameImage(await readExport(latest.uri, dir), s3.image, 'mount --at latest');
  assertSameImage(await readExport(lastBySeq.uri, dir), s3.image, `mount --at seq:${s3.seqLast}`);

  // bookmark:NAME, created at a time.
  const bookmark = await cliJson<{ name: string; seq: number; time: string }>(['bookmark', 'create', 'pit', 'b2', '--at', s2.time]);
  assert.equal(bookmark.name, 'b2');
  assert.equal(bookmark.seq, m2.seq, 'a bookmark at a time is the point that time resolves to');
  const listed = await cliJson<{ bookmarks: Array<{ name: string; seq: number }> }>(['bookmark', 'list', 'pit']);
  assert.deepEqual(listed.bookmarks.map((b) => [b.name, b.seq]), [['b2', m2.seq]]);
  const byBookmark = await cliJson<MountView>(['mount', 'pit', '--at', 'bookmark:b2', '--name', 'pit-b2']);
  unmountLater(defer, 'pit-b2');
  assert.equal(byBookmark.export, 'pit-b2');
  assert.equal(byBookmark.seq, m2.seq);
  assertSameImage(await readExport(byBookmark.uri, dir), s2.image, 'mount --at bookmark:b2');

  // Relative: an hour ago is before this volume's first write.
  await assertRefused(['mount', 'pit', '--at', '-1h'], 'POINT_BEFORE_HISTORY');
  await assertRefused(['mount', 'pit', '--at', pit.t0], 'POINT_BEFORE_HISTORY');
  // ... and a few ms ago (after the last write) is the newest image.
  const relative = await cliJson<MountView>(['mount', 'pit', '--at', '-1ms', '--name', 'pit-rel']);
  unmountLater(defer, 'pit-rel');
  assert.ok(relative.seq > s2.seqLast && relative.seq <= s3.seqLast, `--at -1ms resolved to seq ${relative.seq}`);

  // The human form names the point and the export.
  const human = await cli(['mount', 'pit', '--at', s1.time, '--name', 'pit-human']);
  unmountLater(defer, 'pit-human');
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, new RegExp(`^mounted pit at seq \\d+ \\(\\S+Z\\) read-only$`, 'm'));
  assert.match(human.stdout, /^export pit-human$/m);
  assert.match(human.stdout, /^uri\s+nbd:\/\/127\.0\.0\.1:\d+\/pit-human$/m);
});

test('BLOCK_STATUS of a mounted point: holes where never written; nbdcopy and qemu-img copies are sparse and identical', async (t) => {
  const dir = tempDir(t);
  const defer = deferrals(t);
  const [, s2, s3] = pit.steps;
  const m2 = await mountApi('pit', s2.time, { name: 'map-2' });
  unmountLater(defer, 'map-2');
  const m3 = await mountApi('pit', s3.time, { name: 'map-3' });
  unmountLater(defer, 'map-3');

  const map2 = await nbdMap(m2.uri);
  for (const [offset, type] of [[0, DATA], [32 * KiB, DATA], [64 * KiB - 1, DATA], [64 * KiB, HOLE], [1 * MiB - 1, HOLE], [1 * MiB, DATA], [1 * MiB + 64 * KiB, HOLE], [8 * MiB, HOLE], [SIZE - 1, HOLE]] as const) {
    assert.equal(typeAt(map2, offset), type, `step-2 point: type at ${offset} in ${JSON.stringify(map2)}`);
  }
  assert.equal(dataBytes(map2), 128 * KiB, 'step 2: exactly the written bytes are data');
  const map3 = await nbdMap(m3.uri);
  assert.equal(typeAt(map3, 8 * MiB), DATA);
  assert.equal(typeAt(map3, 8 * MiB + 128 * KiB), HOLE);
  assert.equal(dataBytes(map3), 256 * KiB, 'step 3: exactly the written bytes are data');

  for (const [tool, args] of [
    ['nbdcopy', (uri: string, file: string) => [uri, file]],
    ['qemu-img', (uri: string, file: string) => ['convert', '-f', 'raw', '-O', 'raw', uri, file]],
  ] as const) {
    const file = path.join(dir, `${tool}.img`);
    await run(tool, args(m2.uri, file));
    const stats = fs.statSync(file);
    assert.equal(stats.size, SIZE, `${tool}: size`);
    assert.ok(stats.blocks * 512 <= 1 * MiB, `${tool}: copy is not sparse (${stats.blocks * 512} bytes allocated of ${SIZE})`);
    assertSameImage(fs.readFileSync(file), s2.image, `${tool} copy of the step-2 point`);
  }
});

test('a read-only mount refuses writes; a writable clone takes them without touching the source or the point', async (t) => {
  const dir = tempDir(t);
  const defer = deferrals(t);
  const [, s2, s3] = pit.steps;
  const ro = await cliJson<MountView>(['mount', 'pit', '--at', s2.time, '--name', 'ro-2']);
  unmountLater(defer, 'ro-2');

  const qemu = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x99 0 4k', ro.uri], { allowFailure: true });
  assert.notEqual(qemu.code, 0, `qemu-io wrote to a read-only mount: ${qemu.stdout}`);
  // The server refuses too (not only the client honouring the read-only flag).
  const nbdsh = await run('nbdsh', ['-u', ro.uri, '-c', 'assert h.is_read_only()', '-c', 'h.set_strict_mode(0)', '-c', 'h.pwrite(b"x" * 4096, 0)'], { env: await nbdshEnv(), allowFailure: true });
  assert.notEqual(nbdsh.code, 0, 'the server accepted a write to a read-only mount');
  assert.match(nbdsh.stderr, /Operation not permitted|EPERM/, nbdsh.stderr);
  assertSameImage(await readExport(ro.uri, dir), s2.image, 'the read-only mount after refused writes');

  const clone = await cliJson<MountView>(['mount', 'pit', '--at', s2.time, '--writable']);
  unmountLater(defer, clone.export);
  assert.equal(clone.writable, true);
  assert.equal(clone.export, `pit@${ro.seq}-rw`);
  assert.equal(clone.seq, ro.seq);
  const cloneImage = Buffer.from(s2.image);
  await qemuWrite(clone.uri, cloneImage, [[0x66, 2 * MiB, 64 * KiB], [0x67, 0, 4 * KiB]]);
  assertSameImage(await readExport(clone.uri, dir), cloneImage, 'the clone after its writes');
  assertSameImage(await readExport(daemon.uri('pit'), dir), s3.image, 'the source volume after writes to its clone');
  assertSameImage(await readExport(ro.uri, dir), s2.image, 'the read-only mount of the same point');
  const again = await mountApi('pit', `seq:${ro.seq}`, { name: 'ro-2-again' });
  unmountLater(defer, 'ro-2-again');
  assertSameImage(await readExport(again.uri, dir), s2.image, 'a new mount of the same point');
  assert.equal(await seqLast('pit'), s3.seqLast, 'the source journal did not grow');

  const listed = await mountsNow();
  const listedClone = listed.find((m) => m.export === clone.export);
  assert.ok(listedClone, `mounts lists the clone: ${JSON.stringify(listed)}`);
  assert.equal(listedClone.writable, true);
  assert.equal(listedClone.seq, ro.seq);
  assert.equal(listedClone.cloneBytesWritten, 68 * KiB);
  assert.ok(listed.some((m) => m.export === 'ro-2' && !m.writable));
  const onlyPit = await cliJson<{ mounts: MountView[] }>(['mounts', 'pit']);
  assert.ok(onlyPit.mounts.every((m) => m.volume === 'pit'));
  const human = await cli(['mounts']);
  assert.match(human.stdout, /^EXPORT\s+VOLUME\s+SEQ/m);
  assert.match(human.stdout, new RegExp(`^${clone.export.replace(/[@-]/g, '\\$&')}\\s+pit\\s+${ro.seq}\\s+\\S+\\s+writable\\s+online\\s+0\\s`, 'm'));

  // unmount: gone from the list and from NBD; a clone's writes go with it.
  const unmounted = await cliJson<{ name: string; unmounted: boolean; disconnectedClients: number }>(['unmount', clone.export]);
  assert.equal(unmounted.name, clone.export);
  assert.equal(unmounted.disconnectedClients, 0);
  assert.ok(!(await mountList()).some((m) => m.export === clone.export));
  const connect = await run('nbdinfo', ['--can', 'connect', clone.uri], { allowFailure: true });
  assert.notEqual(connect.code, 0, 'an unmounted clone is no longer exported');
  const fresh = await cliJson<MountView>(['mount', 'pit', '--at', s2.time, '--writable']);
  assertSameImage(await readExport(fresh.uri, dir), s2.image, 'a new clone of the point does not inherit an unmounted clone\'s writes');
  const human2 = await cli(['unmount', fresh.export]);
  assert.equal(human2.code, 0, human2.stderr);
  assert.equal(human2.stdout, `unmounted ${fresh.export}\n`);
});

test('unmount is refused while a client is connected (VOLUME_BUSY) unless --force, which disconnects it', async (t) => {
  const defer = deferrals(t);
  const mount = await cliJson<MountView>(['mount', 'pit', '--at', pit.steps[0].time, '--name', 'held']);
  unmountLater(defer, 'held');
  const holder = await NbdHolder.open(mount.uri);
  defer(() => holder.close());

  const refused = await assertRefused(['unmount', 'held'], 'VOLUME_BUSY', { text: true });
  assert.match(refused.message, /connected/);
  assert.equal(await holder.read(), 'read-ok', 'a refused unmount leaves the client working');
  const listed = (await mountList()).find((m) => m.export === 'held');
  assert.equal(listed?.connections, 1);

  const forced = await cliJson<{ name: string; disconnectedClients: number }>(['unmount', 'held', '--force']);
  assert.equal(forced.disconnectedClients, 1);
  assert.match(await holder.read(), /^read-failed /, 'the client was disconnected');
  assert.ok(!(await mountList()).some((m) => m.export === 'held'));
  assert.ok(!mountDirs().includes('held'), 'its directory is gone');
  await assertRefused(['unmount', 'held'], 'MOUNT_NOT_FOUND');
});

test('rollback: refused with a client connected unless --force; the live volume becomes the point; the abandoned writes stay mountable', async (t) => {
  const dir = tempDir(t);
  const defer = deferrals(t);
  await createVolume('rb');
  defer(() => request('DELETE', '/volumes/rb?force=true'));
  const [r1, r2] = await writeSteps(daemon, 'rb', [
    [[0xa1, 0, 64 * KiB]],
    [[0xa2, 0, 32 * KiB], [0xa3, 4 * MiB, 64 * KiB]],
  ]);
  const before = await mountApi('rb', 'latest', { name: 'rb-before' });
  const point = await mountApi('rb', r1.time, { name: 'rb-r1' });

  const holder = await NbdHolder.open(daemon.uri('rb'));
  defer(() => holder.close());
  const refused = await assertRefused(['rollback', 'rb', '--at', r1.time], 'VOLUME_BUSY', { text: true });
  assert.match(refused.message, /connected NBD client/, 'the message says why');
  assert.match(refused.message, /--force/, 'and how to go ahead');
  assert.equal(await holder.read(), 'read-ok');
  assert.equal(await seqLast('rb'), r2.seqLast, 'a refused rollback records nothing');
  assertSameImage(await readExport(daemon.uri('rb'), dir), r2.image, 'the live volume after a refused rollback');

  const rolled = await cliJson<{ volume: string; seq: number; time: string; revertSeq: number; abandoned: { seqFirst: number; seqLast: number } | null; disconnectedClients: number }>(['rollback', 'rb', '--at', r1.time, '--force']);
  assert.equal(rolled.volume, 'rb');
  assert.equal(rolled.seq, point.seq, 'rolled back to the point the time resolves to');
  assert.equal(rolled.revertSeq, r2.seqLast + 1);
  assert.deepEqual(rolled.abandoned, { seqFirst: point.seq + 1, seqLast: r2.seqLast });
  assert.equal(rolled.disconnectedClients, 1);
  assert.match(await holder.read(), /^read-failed /, 'the client was disconnected');
  await pause(5);
  const afterRollback = now();
  await pause(5);

  assertSameImage(await readExport(daemon.uri('rb'), dir), r1.image, 'the live volume after rollback');
  assertSameImage(await readExport(before.uri, dir), r2.image, 'a mount made before the rollback');
  const abandoned = await cliJson<MountView>(['mount', 'rb', '--at', `seq:${r2.seqLast}`, '--name', 'rb-abandoned']);
  assertSameImage(await readExport(abandoned.uri, dir), r2.image, 'the abandoned writes, by seq');
  const thenTime = await mountApi('rb', r2.time, { name: 'rb-then' });
  assertSameImage(await readExport(thenTime.uri, dir), r2.image, 'a time before the rollback: the disk as it was then');

  // New writes go on the new branch; a time after the rollback resolves there.
  const [r3] = await writeSteps(daemon, 'rb', [[[0xa4, 2 * MiB, 4 * KiB]]], Buffer.from(r1.image));
  const atRevert = await cliJson<MountView>(['mount', 'rb', '--at', afterRollback, '--name', 'rb-revert']);
  assert.equal(atRevert.seq, rolled.revertSeq, 'a time between the rollback and the next write is the REVERT record');
  assertSameImage(await readExport(atRevert.uri, dir), r1.image, 'a time just after the rollback');
  const newBranch = await cliJson<MountView>(['mount', 'rb', '--at', r3.time, '--name', 'rb-new']);
  assert.ok(newBranch.seq > rolled.revertSeq);
  assertSameImage(await readExport(newBranch.uri, dir), r3.image, 'a time on the new branch');
  assertSameImage(await readExport(daemon.uri('rb'), dir), r3.image, 'the live volume on the new branch');

  const timeline = await cliJson<{ buckets: Array<{ writes: number; reverts: number }> }>(['timeline', 'rb']);
  assert.equal(timeline.buckets.reduce((sum, b) => sum + b.reverts, 0), 1, 'the timeline counts the rollback');
  assert.equal(timeline.buckets.reduce((sum, b) => sum + b.writes, 0), 4);

  // Without clients no --force is needed; the human form says what was left behind.
  const human = await cli(['rollback', 'rb', '--at', 'bookmark:nothing']);
  assertFails(human, 'BOOKMARK_NOT_FOUND');
  const plain = await cli(['rollback', 'rb', '--at', `seq:${point.seq}`]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.match(plain.stdout, new RegExp(`^rolled rb back to seq ${point.seq} \\(\\S+\\); recorded as seq \\d+$`, 'm'));
  assert.match(plain.stdout, new RegExp(`^the writes seq ${point.seq + 1}\\.\\.\\d+ stay mountable with --at seq:N$`, 'm'));
  assertSameImage(await readExport(daemon.uri('rb'), dir), r1.image, 'the live volume after a second rollback');
});

test('timeline and points: writes and bytes add up, flush points and bookmarks are listed', async () => {
  const [s1, s2, s3] = pit.steps;
  type Timeline = { volume: string; from: string; to: string; stepMs: number; flushPoints: number; buckets: Array<{ from: string; to: string; writes: number; bytesWritten: number; flushes: number; reverts: number }>; bookmarks: Array<{ name: string; seq: number }> };
  const [auto, bySecond] = await Promise.all([cliJson<Timeline>(['timeline', 'pit']), cliJson<Timeline>(['timeline', 'pit', '--step', '1s'])]);
  for (const timeline of [auto, bySecond]) {
    assert.equal(timeline.volume, 'pit');
    assert.equal(timeline.buckets.reduce((sum, b) => sum + b.writes, 0), pit.writes, `writes in ${JSON.stringify(timeline.buckets)}`);
    assert.equal(timeline.buckets.reduce((sum, b) => sum + b.bytesWritten, 0), pit.bytes);
    assert.equal(timeline.buckets.reduce((sum, b) => sum + b.reverts, 0), 0);
    const flushes = timeline.buckets.reduce((sum, b) => sum + b.flushes, 0);
    assert.equal(timeline.flushPoints, flushes);
    assert.ok(flushes >= pit.steps.length, `one flush per qemu-io run at least, got ${flushes}`);
    for (let i = 1; i < timeline.buckets.length; i += 1) assert.equal(timeline.buckets[i].from, timeline.buckets[i - 1].to, 'buckets are contiguous');
    assert.ok(timeline.bookmarks.some((b) => b.name === 'b2'), 'the bookmark from the first test is in range');
  }
  assert.equal(bySecond.stepMs, 1000);
  assert.ok(bySecond.buckets.length <= 2, `a sub-second history in 1 s buckets: ${bySecond.buckets.length}`);
  // A range: only step 1's writes up to its time.
  const firstStep = await cliJson<Timeline>(['timeline', 'pit', '--to', s1.time]);
  assert.equal(firstStep.buckets.reduce((sum, b) => sum + b.writes, 0), 1);
  await assertRefused(['timeline', 'pit', '--step', 'bogus'], 'INVALID_ARGUMENT');
  await assertRefused(['timeline', 'pit', '--from', 'yesterday'], 'POINT_INVALID');

  const points = await cliJson<{ flushPoints: Array<{ seq: number; time: string }>; bookmarks: Array<{ name: string; seq: number; time: string }> }>(['points', 'pit']);
  const seqs = points.flushPoints.map((p) => p.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'flush points in seq order');
  for (const [i, step] of [s1, s2, s3].entries()) {
    // Each qemu-io run ends with a flush: the step's last record.
    const flush = points.flushPoints.find((p) => p.seq === step.seqLast);
    assert.ok(flush, `step ${i + 1}: flush point seq ${step.seqLast} listed in ${JSON.stringify(points.flushPoints)}`);
    assert.ok(flush.time <= step.time);
  }
  assert.deepEqual(points.bookmarks.map((b) => b.name), ['b2']);
  const newest = await cliJson<{ flushPoints: Array<{ seq: number }> }>(['points', 'pit', '--limit', '1']);
  assert.deepEqual(newest.flushPoints.map((p) => p.seq), [s3.seqLast], '--limit keeps the newest');
  const window = await cliJson<{ flushPoints: Array<{ seq: number }> }>(['points', 'pit', '--from', s1.time, '--to', s2.time]);
  assert.deepEqual(window.flushPoints.map((p) => p.seq), [s2.seqLast]);
  const human = await cli(['points', 'pit']);
  assert.match(human.stdout, /^SEQ\s+TIME\s+KIND\s+NAME$/m);
  assert.match(human.stdout, /\sbookmark\s+b2$/m);

  // Deleting a bookmark forgets the name, not the point.
  const created = await cliJson<{ seq: number }>(['bookmark', 'create', 'pit', 'tmp-mark']);
  const resolvedLatest = await api<{ seq: number }>('/volumes/pit/resolve?at=latest');
  assert.equal(created.seq, resolvedLatest.seq, 'a bookmark defaults to the latest write');
  const deleted = await cliJson<{ name: string; deleted: boolean }>(['bookmark', 'delete', 'pit', 'tmp-mark']);
  assert.equal(deleted.deleted, true);
  await assertRefused(['mount', 'pit', '--at', 'bookmark:tmp-mark'], 'BOOKMARK_NOT_FOUND');
});

test('restore --json writes a sparse image whose sha256 is the one reported and the oracle\'s; an existing target needs --force', async (t) => {
  const dir = tempDir(t);
  const [, s2, s3] = pit.steps;
  const target = path.join(dir, 'restored.img');
  const result = await cliJson<{ seq: number; time: string; path: string; kind: string; sizeBytes: number; dataBytes: number; zeroBytes: number; sha256: string }>(['restore', 'pit', '--at', s2.time, '--to', target]);
  assert.equal(result.path, target);
  assert.equal(result.kind, 'file');
  assert.equal(result.sizeBytes, SIZE);
  assert.equal(result.dataBytes, 128 * KiB);
  assert.equal(result.zeroBytes, SIZE - 128 * KiB);
  assert.equal(result.sha256, await sha256File(target), 'reported sha256 is the file\'s');
  assert.equal(result.sha256, sha256(s2.image), 'and the oracle image\'s');
  const stats = fs.statSync(target);
  assert.equal(stats.size, SIZE);
  assert.ok(stats.blocks * 512 <= 1 * MiB, `restored file is not sparse: ${stats.blocks * 512} bytes allocated`);
  assert.deepEqual(fs.readdirSync(dir), ['restored.img'], 'no partial file left behind');

  const untouched = { ino: stats.ino, mtimeMs: stats.mtimeMs, sha256: result.sha256 };
  assert.match((await assertRestoreRefused(['restore', 'pit', '--at', s3.time, '--to', target], 'TARGET_EXISTS')).message, /--force/);
  const afterRefusal = fs.statSync(target);
  assert.deepEqual({ ino: afterRefusal.ino, mtimeMs: afterRefusal.mtimeMs, sha256: await sha256File(target) }, untouched, 'a refused restore leaves the file untouched');
  assert.deepEqual(fs.readdirSync(dir), ['restored.img']);

  const forced = await cliJson<{ seq: number; sha256: string }>(['restore', 'pit', '--at', s3.time, '--to', target, '--force']);
  assert.equal(forced.sha256, sha256(s3.image));
  assert.equal(await sha256File(target), forced.sha256);
  assert.ok(fs.statSync(target).blocks * 512 <= 1 * MiB);

  // The human form (no TTY: no progress bar) prints the fields.
  const plain = await cli(['restore', 'pit', '--at', 'bookmark:b2', '--to', path.join(dir, 'b2.img')]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.match(plain.stdout, new RegExp(`^sha256\\s+${sha256(s2.image)}$`, 'm'));
  assert.match(plain.stderr, /^restoring pit at seq \d+ \(\S+\) to \S+b2\.img$/m);
});

test('refusals: non-zero exit, one line naming the code, {error} with --json, and nothing created', async (t) => {
  const defer = deferrals(t);
  // A volume that existed and was deleted.
  await createVolume('gone');
  await qemuWrite(daemon.uri('gone'), null, [[0x12, 0, 4 * KiB]]);
  // force: qemu-io has exited, but its connection may take a moment to close on the server.
  assert.equal((await request('DELETE', '/volumes/gone?force=true')).status, 200);
  await mountApi('pit', pit.steps[0].time, { name: 'dup' });
  unmountLater(defer, 'dup');

  const mountsBefore = (await mountsNow()).map((m) => `${m.export} ${m.seq} ${m.writable}`);
  const dirsBefore = mountDirs();
  const bookmarksBefore = await api('/volumes/pit/bookmarks');
  const seqBefore = await seqLast('pit');
  // [args, code, also run the plain (non --json) form]
  const cases: Array<[string[], string, boolean?]> = [
    [['mount', 'pit', '--at', pit.t0], 'POINT_BEFORE_HISTORY', true],
    [['mount', 'pit', '--at', '2000-01-01T00:00:00Z', '--writable'], 'POINT_BEFORE_HISTORY'],
    [['mount', 'pit', '--at', `seq:${seqBefore + 1}`], 'POINT_NOT_FOUND'],
    [['mount', 'pit', '--at', 'bookmark:nope'], 'BOOKMARK_NOT_FOUND', true],
    [['mount', 'pit', '--at', '2026-13-01T00:00:00Z'], 'POINT_INVALID', true],
    [['mount', 'pit', '--at', 'yesterday'], 'POINT_INVALID'],
    [['mount', 'pit', '--at', '2026-11-25T10:15:03'], 'POINT_INVALID'],
    [['mount', 'pit', '--at', 'seq:0', '--writable'], 'POINT_INVALID'],
    [['mount', 'gone', '--at', 'latest'], 'VOLUME_NOT_FOUND'],
    [['mount', 'never-was', '--at', 'latest'], 'VOLUME_NOT_FOUND'],
    [['mount', '../x', '--at', 'latest'], 'INVALID_NAME'],
    [['mount', 'empty', '--at', 'latest'], 'POINT_BEFORE_HISTORY', true],
    [['mount', 'empty', '--at', 'seq:1', '--writable'], 'POINT_BEFORE_HISTORY'],
    [['mount', 'pit', '--at', pit.steps[1].time, '--name', 'dup'], 'MOUNT_EXISTS'],
    [['mount', 'pit', '--at', pit.steps[0].time, '--name', 'dup', '--writable'], 'MOUNT_EXISTS'],
    [['mount', 'pit', '--at', 'latest', '--name', 'empty'], 'MOUNT_EXISTS'],
    [['mount', 'pit', '--at', 'latest', '--name', '../x'], 'INVALID_NAME', true],
    [['mount', 'pit', '--at', 'latest', '--name', 'a/b', '--writable'], 'INVALID_NAME'],
    [['unmount', 'no-such-mount'], 'MOUNT_NOT_FOUND'],
    [['mounts', 'never-was'], 'VOLUME_NOT_FOUND'],
    [['bookmark', 'create', 'pit', 'b2'], 'BOOKMARK_EXISTS'],
    [['bookmark', 'create', 'empty', 'x'], 'POINT_BEFORE_HISTORY'],
    [['bookmark', 'delete', 'pit', 'nope'], 'BOOKMARK_NOT_FOUND'],
    [['rollback', 'pit', '--at', pit.t0], 'POINT_BEFORE_HISTORY'],
    [['restore', 'empty', '--at', 'latest', '--to', path.join(daemon.dataDir, 'never.img')], 'POINT_BEFORE_HISTORY'],
  ];
  const results = await inBatches(cases, 3, async ([args, code, text]) => ({ args, error: await assertRefused(args, code, { text }) }));
  // Refused inside the restore job (after its "restoring ..." line).
  await assertRestoreRefused(['restore', 'pit', '--at', 'latest', '--to', path.join(daemon.dataDir, 'no-such-dir', 'x.img')], 'INVALID_ARGUMENT');
  const byArgs = new Map(results.map(({ args, error }) => [args.join(' '), error.message]));
  assert.match(byArgs.get(`mount pit --at ${pit.t0}`)!, /before the first write/);
  assert.match(byArgs.get('mount pit --at 2026-11-25T10:15:03')!, /zone/);
  assert.match(byArgs.get('mount pit --at 2026-13-01T00:00:00Z')!, /month/);
  assert.match(byArgs.get(`mount pit --at seq:${seqBefore + 1}`)!, /beyond the last record/);
  assert.match(byArgs.get('mount empty --at latest')!, /no writes yet/);

  assert.deepEqual((await mountsNow()).map((m) => `${m.export} ${m.seq} ${m.writable}`), mountsBefore, 'no mount was created');
  assert.deepEqual(mountDirs(), dirsBefore, 'nothing was left in DATA/mounts');
  assert.deepEqual(await api('/volumes/pit/bookmarks'), bookmarksBefore, 'no bookmark was created');
  assert.equal(await seqLast('pit'), seqBefore, 'nothing was recorded');
  assert.ok(!fs.existsSync(path.join(daemon.dataDir, 'never.img')));
  assert.ok(!fs.existsSync(path.join(daemon.dataDir, 'volumes', 'gone')));
});

test('deleting a volume that has mounts is VOLUME_BUSY; --force removes the mounts with it', async (t) => {
  const dir = tempDir(t);
  const defer = deferrals(t);
  await createVolume('withmounts');
  defer(() => request('DELETE', '/volumes/withmounts?force=true'));
  const [w1] = await writeSteps(daemon, 'withmounts', [[[0x5a, 0, 64 * KiB]]]);
  const ro = await mountApi('withmounts', 'latest');
  const rw = await mountApi('withmounts', 'latest', { writable: true });
  await qemuWrite(rw.uri, null, [[0x5b, 1 * MiB, 4 * KiB]]);
  const holder = await NbdHolder.open(ro.uri);
  defer(() => holder.close());

  const refused = await assertRefused(['volume', 'delete', 'withmounts'], 'VOLUME_BUSY', { text: true });
  assert.match(refused.message, /mount/);
  assert.match(refused.message, new RegExp(ro.export));
  assert.equal(await holder.read(), 'read-ok');
  assert.deepEqual((await mountList()).filter((m) => m.volume === 'withmounts').map((m) => m.export).sort(), [ro.export, rw.export].sort());
  assertSameImage(await readExport(ro.uri, dir), w1.image, 'a mount after a refused delete');

  const forced = await cliJson<{ deleted: boolean }>(['volume', 'delete', 'withmounts', '--force']);
  assert.equal(forced.deleted, true);
  assert.match(await holder.read(), /^read-failed /, 'a mount\'s client was disconnected');
  assert.ok(!(await mountsNow()).some((m) => m.volume === 'withmounts'), 'mounts --json: the mounts went with the volume');
  assert.ok(!mountDirs().some((name) => name.startsWith('withmounts')), `mount directories removed: ${mountDirs().join(', ')}`);
  for (const uri of [ro.uri, rw.uri]) {
    const connect = await run('nbdinfo', ['--can', 'connect', uri], { allowFailure: true });
    assert.notEqual(connect.code, 0, `${uri} is no longer exported`);
  }
  await assertRefused(['mount', 'withmounts', '--at', 'latest'], 'VOLUME_NOT_FOUND');
});

test('mounts survive a daemon restart: listed, same content, a clone keeps its own writes', async (t) => {
  const dir = tempDir(t);
  const defer = deferrals(t);
  const dataDir = makeTempDir('hindsight-pit-restart-');
  defer(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  let first: DaemonHandle | null = await startDaemon({ dataDir, volumes: ['rs:16M'] });
  defer(() => first?.kill());
  const [a1, a2] = await writeSteps(first, 'rs', [
    [[0x71, 0, 64 * KiB], [0x72, 3 * MiB, 8 * KiB]],
    [[0x73, 0, 16 * KiB], [0x74, 12 * MiB, 64 * KiB]],
  ]);
  const ro = await mountApi('rs', a1.time, { name: 'rs-ro' }, first);
  const rw = await mountApi('rs', a1.time, { name: 'rs-rw', writable: true }, first);
  const cloneImage = Buffer.from(a1.image);
  await qemuWrite(rw.uri, cloneImage, [[0x75, 5 * MiB, 64 * KiB], [0x76, 0, 4 * KiB]]);
  await cliJson(['bookmark', 'create', 'rs', 'mark1', '--at', a1.time], first);
  const listedBefore = (await mountsNow(first)).map(({ export: name, seq, time, writable, cloneBytesWritten }) => ({ name, seq, time, writable, cloneBytesWritten }));
  assert.equal(await first.stop(), 0, first.stderr());
  first = null;

  const second = await startDaemon({ dataDir });
  defer(async () => assert.equal(await second.stop(), 0, second.stderr()));
  const listed = await mountsNow(second);
  assert.deepEqual(listed.map(({ export: name, seq, time, writable, cloneBytesWritten }) => ({ name, seq, time, writable, cloneBytesWritten })), listedBefore);
  assert.ok(listed.every((m) => m.state === 'online'), JSON.stringify(listed));
  assert.ok(listed.every((m) => m.uri === second.uri(m.export)), 'uris name the new port');
  assertSameImage(await readExport(second.uri('rs-ro'), dir), a1.image, 'a read-only mount after restart');
  assertSameImage(await readExport(second.uri('rs-rw'), dir), cloneImage, 'a clone after restart');
  assertSameImage(await readExport(second.uri('rs'), dir), a2.image, 'the volume after restart');
  // Points resolve as before, and the clone still takes writes.
  const again = await cliJson<MountView>(['mount', 'rs', '--at', a1.time, '--name', 'rs-ro2'], second);
  assert.equal(again.seq, ro.seq);
  assert.equal((await cliJson<MountView>(['mount', 'rs', '--at', 'bookmark:mark1', '--name', 'rs-bm'], second)).seq, ro.seq);
  await qemuWrite(second.uri('rs-rw'), cloneImage, [[0x77, 6 * MiB, 4 * KiB]]);
  assertSameImage(await readExport(second.uri('rs-rw'), dir), cloneImage, 'a clone written after restart');
  assertSameImage(await readExport(second.uri('rs-ro'), dir), a1.image, 'the read-only mount beside it');
});
