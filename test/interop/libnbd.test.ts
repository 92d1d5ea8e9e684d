/**
 * libnbd's tools against the daemon: nbdinfo (list, JSON, flags, block sizes, allocation
 * map), nbdcopy (round trips, multi-conn, sparse sources) and nbdsh running
 * nbdsh/all-commands.py, which drives every command and flag through the libnbd API.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import type { TestContext } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import type { DaemonHandle } from '../helpers/daemon.js';
import { KiB, MiB, dataBytes, nbdMap, nbdshEnv, patternBytes, sha256File, typeAt, writeSparseImage } from '../helpers/interop.js';
import type { MapExtent } from '../helpers/interop.js';
import { run } from '../helpers/run.js';

const ALL_COMMANDS_SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'nbdsh', 'all-commands.py');
const HOLE_ZERO = 3;
const DATA = 0;

const VOLUMES: Record<string, number> = {
  info0: 64 * MiB,
  list1: 16 * MiB,
  map0: 64 * MiB,
  copy0: 32 * MiB,
  mc0: 64 * MiB,
  sparse0: 256 * MiB,
  sh0: 16 * MiB,
  dirty0: 16 * MiB,
};

let daemon: DaemonHandle;

before(async () => {
  daemon = await startDaemon({ volumes: Object.entries(VOLUMES).map(([name, bytes]) => `${name}:${bytes}`) });
});

after(async () => {
  const code = await daemon?.stop();
  if (daemon) fs.rmSync(daemon.dataDir, { recursive: true, force: true });
  assert.equal(code, 0, `daemon exited with ${code}: ${daemon?.stderr()}`);
});

function tempDir(t: TestContext): string {
  const dir = makeTempDir('hindsight-libnbd-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs Python statements in nbdsh with `h` connected to uri. */
async function nbdsh(uri: string, code: string, options: { allowFailure?: boolean; baseAllocation?: boolean } = {}) {
  const args = [...(options.baseAllocation ? ['--base-allocation'] : []), '-u', uri, '-c', code];
  return run('nbdsh', args, { allowFailure: options.allowFailure, env: await nbdshEnv() });
}

/** Adjacent extents of one type merged: a client may split the map where its requests end. */
function normalise(map: MapExtent[]): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  for (const extent of map) {
    const last = out[out.length - 1];
    if (last && last[2] === extent.type && last[0] + last[1] === extent.offset) last[1] += extent.length;
    else out.push([extent.offset, extent.length, extent.type]);
  }
  return out;
}

function writeRandomFile(file: string, sizeBytes: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    for (let at = 0; at < sizeBytes; at += 4 * MiB) fs.writeSync(fd, randomBytes(Math.min(4 * MiB, sizeBytes - at)), 0, Math.min(4 * MiB, sizeBytes - at), at);
  } finally {
    fs.closeSync(fd);
  }
}

test('nbdinfo --list lists every volume as an export', async () => {
  const server = `nbd://127.0.0.1:${daemon.nbdPort}`;
  const [text, json] = await Promise.all([run('nbdinfo', ['--list', server]), run('nbdinfo', ['--list', '--json', server])]);
  for (const name of Object.keys(VOLUMES)) assert.match(text.stdout, new RegExp(`^export="${name}":$`, 'm'), `${name} missing from:\n${text.stdout}`);
  const listed = JSON.parse(json.stdout) as { exports: Array<{ 'export-name': string; 'export-size': number }> };
  assert.deepEqual(listed.exports.map((entry) => entry['export-name']).sort(), Object.keys(VOLUMES).sort());
  for (const entry of listed.exports) assert.equal(entry['export-size'], VOLUMES[entry['export-name']], entry['export-name']);
});

test('nbdinfo --json reports size, every capability and the block sizes', async () => {
  const info = JSON.parse((await run('nbdinfo', ['--json', daemon.uri('info0')])).stdout) as {
    protocol: string; structured: boolean; exports: Array<Record<string, unknown>>;
  };
  assert.equal(info.protocol, 'newstyle-fixed');
  assert.equal(info.structured, true);
  assert.equal(info.exports.length, 1);
  const entry = info.exports[0];
  assert.equal(entry['export-name'], 'info0');
  assert.equal(entry['export-size'], 64 * MiB);
  for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_multi_conn', 'can_cache', 'can_df']) {
    assert.equal(entry[flag], true, flag);
  }
  assert.equal(entry.is_read_only, false);
  assert.equal(entry.block_size_minimum, 1);
  assert.equal(entry.block_size_preferred, 4096);
  assert.equal(entry.block_size_maximum, 33554432);
  assert.deepEqual(entry.contexts, ['base:allocation']);
  assert.equal((await run('nbdinfo', ['--size', daemon.uri('info0')])).stdout.trim(), String(64 * MiB));
});

test('nbdinfo --can and --is answer with their exit codes', async () => {
  const uri = daemon.uri('info0');
  for (const what of ['flush', 'fua', 'trim', 'zero', 'multi-conn', 'cache', 'fast-zero', 'df', 'write', 'read', 'structured-reply', 'connect']) {
    const { code, stderr } = await run('nbdinfo', ['--can', what, uri], { allowFailure: true });
    assert.equal(code, 0, `--can ${what} exited ${code}: ${stderr}`);
  }
  assert.equal((await run('nbdinfo', ['--is', 'read-only', uri], { allowFailure: true })).code, 2, '--is read-only is false (exit 2)');
  assert.equal((await run('nbdinfo', ['--is', 'tls', uri], { allowFailure: true })).code, 2, '--is tls is false (exit 2)');
  const missing = await run('nbdinfo', ['--can', 'connect', daemon.uri('no-such-volume')], { allowFailure: true });
  assert.notEqual(missing.code, 0, 'an unknown export cannot be connected to');
});

test('nbdinfo --map shows data where written and hole,zero elsewhere', async () => {
  const uri = daemon.uri('map0');
  const end = 64 * MiB;
  await nbdsh(uri, [
    `h.pwrite(b'\\xa5' * ${64 * KiB}, ${MiB})`,
    `h.pwrite(b'\\x01' * 100, ${8 * MiB + 10})`,
    `h.pwrite(b'\\x02' * ${8 * KiB}, ${16 * MiB - 2 * KiB})`,
    `h.pwrite(b'\\x03' * ${128 * KiB}, ${32 * MiB})`,
    `h.zero(${64 * KiB}, ${32 * MiB})`,
    `h.pwrite(b'\\x04' * 4096, ${end - 4096}, nbd.CMD_FLAG_FUA)`,
    'h.flush()',
  ].join('\n'));
  const map = await nbdMap(uri);
  assert.deepEqual(normalise(map), [
    [0, MiB, HOLE_ZERO],
    [MiB, 64 * KiB, DATA],
    [MiB + 64 * KiB, 7 * MiB - 64 * KiB, HOLE_ZERO],
    [8 * MiB, 4 * KiB, DATA], // 100 bytes allocate their 4 KiB chunk
    [8 * MiB + 4 * KiB, 8 * MiB - 8 * KiB, HOLE_ZERO],
    [16 * MiB - 4 * KiB, 12 * KiB, DATA], // 8 KiB straddling two chunk edges
    [16 * MiB + 8 * KiB, 16 * MiB + 56 * KiB, HOLE_ZERO],
    [32 * MiB + 64 * KiB, 64 * KiB, DATA], // the zeroed first half became a hole again
    [32 * MiB + 128 * KiB, end - 4 * KiB - (32 * MiB + 128 * KiB), HOLE_ZERO],
    [end - 4 * KiB, 4 * KiB, DATA],
  ]);
  const text = (await run('nbdinfo', ['--map', uri])).stdout;
  assert.match(text, /^\s*0\s+1048576\s+3\s+hole,zero$/m);
  assert.match(text, /^\s*1048576\s+65536\s+0\s+data$/m);
  const totals = (await run('nbdinfo', ['--map', '--totals', uri])).stdout;
  assert.match(totals, new RegExp(`^\\s*${64 * KiB + 4 * KiB + 12 * KiB + 64 * KiB + 4 * KiB}\\s+\\S+\\s+0\\s+data$`, 'm'), totals);
});

test('nbdcopy copies a file into the volume and back out byte for byte', async (t) => {
  const dir = tempDir(t);
  const source = path.join(dir, 'source.bin');
  const back = path.join(dir, 'back.bin');
  writeRandomFile(source, VOLUMES.copy0);
  const uri = daemon.uri('copy0');

  await run('nbdcopy', [source, uri]);
  await run('nbdcopy', [uri, back]);

  assert.equal(fs.statSync(back).size, VOLUMES.copy0);
  assert.equal(await sha256File(back), await sha256File(source));
  assert.equal(dataBytes(await nbdMap(uri)), VOLUMES.copy0, 'random data leaves no holes');
});

test('nbdcopy with four connections (multi-conn) round-trips 64 MiB', async (t) => {
  const dir = tempDir(t);
  const source = path.join(dir, 'source.bin');
  const back = path.join(dir, 'back.bin');
  writeRandomFile(source, VOLUMES.mc0);
  const uri = daemon.uri('mc0');

  const into = await run('nbdcopy', ['-v', '--connections=4', '--threads=4', '--requests=16', source, uri]);
  // nbdcopy drops to one connection unless the server advertises multi-conn.
  assert.match(into.stderr, /^nbdcopy: connections=4 /m, 'nbdcopy should use 4 connections');
  const out = await run('nbdcopy', ['-v', '--connections=4', '--threads=4', '--requests=16', uri, back]);
  assert.match(out.stderr, /^nbdcopy: connections=4 /m);

  assert.equal(await sha256File(back), await sha256File(source));
});

test('nbdcopy of a sparse source keeps the volume sparse and zeroes stale data', async (t) => {
  const dir = tempDir(t);
  const size = VOLUMES.sparse0;
  const source = path.join(dir, 'sparse.raw');
  const back = path.join(dir, 'back.raw');
  writeSparseImage(source, size, [
    { offsetBytes: 0, data: patternBytes(4 * KiB, 1) },
    { offsetBytes: 100 * MiB, data: patternBytes(MiB, 2) },
    { offsetBytes: 200 * MiB + 512, data: patternBytes(10 * KiB, 3) },
  ]);
  const uri = daemon.uri('sparse0');
  // Old data where the source has a hole: the copy must not leave it behind.
  await nbdsh(uri, `h.pwrite(b'\\x5a' * ${MiB}, ${50 * MiB}, nbd.CMD_FLAG_FUA)`);

  await run('nbdcopy', [source, uri]);

  const map = await nbdMap(uri);
  const stored = dataBytes(map);
  assert.ok(stored >= MiB + 4 * KiB && stored <= MiB + 4 * KiB + 12 * KiB, `only the written regions are data, got ${stored} bytes`);
  assert.equal(typeAt(map, 0), DATA);
  assert.equal(typeAt(map, 100 * MiB), DATA);
  assert.equal(typeAt(map, 200 * MiB), DATA);
  assert.equal(typeAt(map, 50 * MiB), HOLE_ZERO, 'stale region became hole,zero');
  assert.equal(typeAt(map, 150 * MiB), HOLE_ZERO);

  await run('nbdcopy', [uri, back]);
  assert.equal(await sha256File(back), await sha256File(source));
});

test('nbdsh: all-commands.py exercises every command and flag', async () => {
  const result = await nbdsh(daemon.uri('sh0'), `exec(open(${JSON.stringify(ALL_COMMANDS_SCRIPT)}).read())`, { baseAllocation: true, allowFailure: true });
  assert.equal(result.code, 0, `all-commands.py failed:\n${result.stdout.split('\n').slice(-8).join('\n')}\n${result.stderr}`);
  const lines = result.stdout.trim().split('\n');
  assert.equal(lines[lines.length - 1], 'ALL-COMMANDS-OK');
  assert.ok(lines.filter((line) => line.startsWith('ok: ')).length > 80, 'every check ran');
});

test('nbdsh: all-commands.py fails loudly on a mismatch', async () => {
  const uri = daemon.uri('dirty0');
  await nbdsh(uri, "h.pwrite(b'\\xff' * 512, 0)");
  const result = await nbdsh(uri, `exec(open(${JSON.stringify(ALL_COMMANDS_SCRIPT)}).read())`, { baseAllocation: true, allowFailure: true });
  assert.notEqual(result.code, 0);
  assert.match(result.stdout + result.stderr, /FAIL: fresh volume reads zeroes/);
  assert.doesNotMatch(result.stdout, /ALL-COMMANDS-OK/);
});

test('an oversize WRITE is refused with EINVAL and the connection keeps serving', async () => {
  const max = 32 * MiB;
  const result = await nbdsh(daemon.uri('dirty0'), [
    'h.set_strict_mode(0)',
    'try:',
    `    h.pwrite(bytes(${max + 4096}), 0)`,
    '    print("accepted")',
    'except nbd.Error as err:',
    '    print("refused", err.errno, err.string)',
    'print("alive", len(h.pread(4096, 0)))',
  ].join('\n'), { allowFailure: true });
  assert.match(result.stdout, /^refused EINVAL /m, `${result.stdout}${result.stderr}`);
  assert.match(result.stdout, /^alive 4096$/m, `${result.stdout}${result.stderr}`);
  assert.equal(result.code, 0);
});
