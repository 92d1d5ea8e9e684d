/**
 * The CLI as scripts use it (`node bin/hindsight.js ...` against a real daemon): volume
 * create/list/info/delete with and without --json, error codes and one-line reasons, delete
 * while an NBD client (nbdsh) is attached, status, and `serve` itself: port 0 and ports.json,
 * SIGTERM, a YAML config file, and one daemon per data directory.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { TestContext } from 'node:test';
import { CLI, makeTempDir, startDaemon } from '../helpers/daemon.js';
import type { DaemonHandle } from '../helpers/daemon.js';
import { MiB, deferrals, freePort, hindsight, nbdshEnv, startServe } from '../helpers/interop.js';
import { NbdHolder } from '../helpers/nbd-holder.js';
import { run } from '../helpers/run.js';

const INFO_FIELDS = ['name', 'sizeBytes', 'seqLast', 'timeLast', 'journalBytes', 'storedBytes', 'clientBytesWritten', 'oldestPoint'];

let daemon: DaemonHandle;

before(async () => {
  daemon = await startDaemon({ volumes: ['existing:16M'] });
});

after(async () => {
  const code = await daemon?.stop();
  if (daemon) fs.rmSync(daemon.dataDir, { recursive: true, force: true });
  assert.equal(code, 0, `daemon exited with ${code}: ${daemon?.stderr()}`);
});

function tempDir(t: TestContext): string {
  const dir = makeTempDir('hindsight-cli-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function cli(args: string[], env?: NodeJS.ProcessEnv) {
  return hindsight([...args, '--api', daemon.apiUrl], { env });
}

/** A failed command: non-zero exit, exactly one line on stderr naming the code. */
function assertFails(result: { code: number; stdout: string; stderr: string }, code: string): void {
  assert.notEqual(result.code, 0, `expected failure with ${code}, got exit 0: ${result.stdout}`);
  const lines = result.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected a one-line reason, got:\n${result.stderr}`);
  assert.match(lines[0], new RegExp(`\\(${code}\\)$`), lines[0]);
}

function assertJsonError(result: { code: number; stdout: string }, code: string): void {
  assert.notEqual(result.code, 0);
  const parsed = JSON.parse(result.stdout) as { error: { code: string; message: string } };
  assert.equal(parsed.error.code, code);
  assert.ok(parsed.error.message.length > 0);
}


test('volume create, list, info and delete, in human and JSON form', async () => {
  const created = await cli(['volume', 'create', 'vol-a', '--size', '1G']);
  assert.equal(created.code, 0, created.stderr);
  assert.match(created.stdout, /vol-a/);
  const createdJson = await cli(['volume', 'create', 'vol-b', '--size', '512M', '--json']);
  assert.equal(createdJson.code, 0, createdJson.stderr);
  const b = JSON.parse(createdJson.stdout) as Record<string, unknown>;
  assert.equal(b.name, 'vol-b');
  assert.equal(b.sizeBytes, 512 * MiB);

  const list = await cli(['volume', 'list']);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, /^NAME\s+SIZE/m);
  for (const name of ['existing', 'vol-a', 'vol-b']) assert.match(list.stdout, new RegExp(`^${name}\\s`, 'm'));
  const listJson = JSON.parse((await cli(['volume', 'list', '--json'])).stdout) as { volumes: Array<{ name: string; sizeBytes: number }> };
  const sizes = Object.fromEntries(listJson.volumes.map((v) => [v.name, v.sizeBytes]));
  assert.equal(sizes['vol-a'], 1024 * MiB);
  assert.equal(sizes['vol-b'], 512 * MiB);
  assert.equal(sizes.existing, 16 * MiB);

  const info = await cli(['volume', 'info', 'vol-a']);
  assert.equal(info.code, 0, info.stderr);
  assert.match(info.stdout, /^name\s+vol-a$/m);
  assert.match(info.stdout, /1073741824 bytes/);
  const infoJson = JSON.parse((await cli(['volume', 'info', 'vol-a', '--json'])).stdout) as Record<string, unknown>;
  for (const field of INFO_FIELDS) assert.ok(field in infoJson, `volume info --json lacks ${field}`);
  assert.equal(infoJson.name, 'vol-a');
  assert.equal(infoJson.sizeBytes, 1024 * MiB);
  assert.equal(typeof infoJson.journalBytes, 'number');
  assert.equal(typeof infoJson.storedBytes, 'number');
  assert.equal(infoJson.clientBytesWritten, 0);

  const deleted = await cli(['volume', 'delete', 'vol-a']);
  assert.equal(deleted.code, 0, deleted.stderr);
  assert.match(deleted.stdout, /vol-a/);
  const deletedJson = await cli(['volume', 'delete', 'vol-b', '--json']);
  assert.equal(deletedJson.code, 0, deletedJson.stderr);
  assert.deepEqual(JSON.parse(deletedJson.stdout), { name: 'vol-b', deleted: true, disconnectedClients: 0 });
  const after = JSON.parse((await cli(['volume', 'list', '--json'])).stdout) as { volumes: Array<{ name: string }> };
  assert.deepEqual(after.volumes.map((v) => v.name), ['existing']);
  assertFails(await cli(['volume', 'info', 'vol-a']), 'VOLUME_NOT_FOUND');
});

test('volume info --json counts what a client wrote', async () => {
  const { stdout } = await cli(['volume', 'create', 'counted', '--size', '16M', '--json']);
  assert.equal((JSON.parse(stdout) as { clientBytesWritten: number }).clientBytesWritten, 0);
  await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 64k', '-c', 'write -P 0x22 1M 4k', `nbd://127.0.0.1:${daemon.nbdPort}/counted`]);
  const info = JSON.parse((await cli(['volume', 'info', 'counted', '--json'])).stdout) as Record<string, number>;
  assert.equal(info.clientBytesWritten, 64 * 1024 + 4096);
  assert.ok(info.storedBytes >= 64 * 1024 + 4096, `storedBytes ${info.storedBytes}`);
  assert.equal((await cli(['volume', 'delete', 'counted'])).code, 0);
});

test('create errors: duplicate, invalid name, bad size; each a one-line reason with its code', async () => {
  assertFails(await cli(['volume', 'create', 'existing', '--size', '1G']), 'VOLUME_EXISTS');
  assertJsonError(await cli(['volume', 'create', 'existing', '--size', '1G', '--json']), 'VOLUME_EXISTS');
  for (const name of ['../etc', '.hidden', 'a/b', '-', ' ']) {
    assertFails(await cli(['volume', 'create', name, '--size', '1G']), 'INVALID_NAME');
  }
  assertJsonError(await cli(['volume', 'create', '../etc', '--size', '1G', '--json']), 'INVALID_NAME');
  for (const size of ['12Q', 'lots', '0', '1000', '-1G']) {
    assertFails(await cli(['volume', 'create', 'sized', '--size', size]), 'INVALID_SIZE');
  }
  assertJsonError(await cli(['volume', 'create', 'sized', '--size', '12Q', '--json']), 'INVALID_SIZE');
  const list = JSON.parse((await cli(['volume', 'list', '--json'])).stdout) as { volumes: Array<{ name: string }> };
  assert.ok(!list.volumes.some((v) => v.name === 'sized' || v.name.includes('etc')), 'nothing was created');
  assert.ok(!fs.existsSync(path.join(daemon.dataDir, 'etc')), 'no directory escaped the volumes folder');
});

test('a name longer than 64 characters is INVALID_NAME like every other bad name', async () => {
  assertFails(await cli(['volume', 'create', 'x'.repeat(65), '--size', '1G']), 'INVALID_NAME');
});

test('delete refuses while an NBD client is attached; --force disconnects it', async (t) => {
  const defer = deferrals(t);
  assert.equal((await cli(['volume', 'create', 'busy', '--size', '16M'])).code, 0);
  const holder = await NbdHolder.open(daemon.uri('busy'));
  defer(() => holder.close());

  assertFails(await cli(['volume', 'delete', 'busy']), 'VOLUME_BUSY');
  assertJsonError(await cli(['volume', 'delete', 'busy', '--json']), 'VOLUME_BUSY');
  assert.equal(await holder.read(), 'read-ok', 'a refused delete leaves the client working');
  const info = JSON.parse((await cli(['volume', 'info', 'busy', '--json'])).stdout) as { connections: number };
  assert.equal(info.connections, 1);

  const forced = await cli(['volume', 'delete', 'busy', '--force', '--json']);
  assert.equal(forced.code, 0, forced.stderr);
  assert.deepEqual(JSON.parse(forced.stdout), { name: 'busy', deleted: true, disconnectedClients: 1 });
  assert.match(await holder.read(), /^read-failed /, 'the client was disconnected');
  assertFails(await cli(['volume', 'info', 'busy']), 'VOLUME_NOT_FOUND');
  const connect = await run('nbdinfo', ['--can', 'connect', daemon.uri('busy')], { allowFailure: true });
  assert.notEqual(connect.code, 0, 'a deleted volume is no longer exported');

  // The name is free again, and the new volume does not inherit the old one's data.
  assert.equal((await cli(['volume', 'create', 'busy', '--size', '16M'])).code, 0);
  const fresh = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0 0 1M', daemon.uri('busy')], { allowFailure: true });
  assert.equal(fresh.code, 0, fresh.stdout);
  assert.equal((await cli(['volume', 'delete', 'busy'])).code, 0);
});

test('a delete right after a client disconnects is not refused for the client that just left', async () => {
  // qemu-io exits as soon as it has sent its disconnect; the server sees the socket close a
  // moment later. A delete (no --force) straight after must wait for that, not fail. (A race:
  // on an idle machine the close usually wins anyway; a loaded CI machine lost it once.)
  for (let i = 0; i < 5; i += 1) {
    const name = `left-${i}`;
    assert.equal((await cli(['volume', 'create', name, '--size', '16M'])).code, 0);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x31 0 4k', daemon.uri(name)]);
    const response = await fetch(`${daemon.apiUrl}/api/v1/volumes/${name}`, { method: 'DELETE' });
    assert.equal(response.status, 200, await response.text());
  }
});

test('status --json describes the running daemon', async () => {
  const result = await cli(['status', '--json']);
  assert.equal(result.code, 0, result.stderr);
  const status = JSON.parse(result.stdout) as { version: string; pid: number; dataDir: string; ports: { nbd: { port: number }; api: { port: number } }; volumes: number };
  assert.equal(status.pid, daemon.process.pid);
  assert.equal(status.dataDir, daemon.dataDir);
  assert.equal(status.ports.nbd.port, daemon.nbdPort);
  assert.equal(status.ports.api.port, Number(new URL(daemon.apiUrl).port));
  assert.match(status.version, /^\d+\.\d+\.\d+/);
  assert.ok(status.volumes >= 1);
  const human = await cli(['status']);
  assert.equal(human.code, 0);
  assert.match(human.stdout, /^version\s+\S+/m);
});

test('HINDSIGHT_API finds the daemon when --api is not given', async () => {
  const result = await hindsight(['volume', 'list', '--json'], { env: { ...process.env, HINDSIGHT_API: daemon.apiUrl } });
  assert.equal(result.code, 0, result.stderr);
  assert.ok((JSON.parse(result.stdout) as { volumes: Array<{ name: string }> }).volumes.some((v) => v.name === 'existing'));
});

test('an unreachable daemon is DAEMON_UNREACHABLE with a non-zero exit', async () => {
  for (const args of [['volume', 'list'], ['status'], ['volume', 'create', 'x', '--size', '1G']]) {
    assertFails(await hindsight([...args, '--api', 'http://127.0.0.1:1']), 'DAEMON_UNREACHABLE');
  }
  assertJsonError(await hindsight(['status', '--json', '--api', 'http://127.0.0.1:1']), 'DAEMON_UNREACHABLE');
});

test('serve on port 0 writes the bound ports to DATA/ports.json; SIGTERM exits 0 and removes it', async (t) => {
  const defer = deferrals(t);
  const dataDir = makeTempDir('hindsight-cli-serve-');
  defer(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const own = await startDaemon({ dataDir, volumes: ['keep:16M'] });
  defer(() => own.kill());
  const portsFile = path.join(dataDir, 'ports.json');
  const ports = JSON.parse(fs.readFileSync(portsFile, 'utf8')) as { pid: number; nbd: { host: string; port: number }; api: { host: string; port: number } };
  assert.equal(ports.pid, own.process.pid);
  assert.equal(ports.nbd.port, own.nbdPort);
  assert.notEqual(ports.nbd.port, 0);
  assert.equal(`http://${ports.api.host}:${ports.api.port}`, own.apiUrl);
  assert.notEqual(ports.api.port, 0);
  assert.equal((await run('nbdinfo', ['--size', `nbd://${ports.nbd.host}:${ports.nbd.port}/keep`])).stdout.trim(), String(16 * MiB));

  // Written without FLUSH or FUA, with a client still attached when the signal arrives:
  // an orderly stop must flush it.
  await run('nbdsh', ['-u', own.uri('keep'), '-c', "h.pwrite(b'\\x42' * 65536, 1048576)"], { env: await nbdshEnv() });
  const holder = await NbdHolder.open(own.uri('keep'));
  defer(() => holder.close());

  assert.equal(await own.stop(), 0, `SIGTERM exit: ${own.stderr()}`);
  assert.ok(!fs.existsSync(portsFile), 'ports.json removed on exit');
  assert.ok(!fs.existsSync(path.join(dataDir, 'daemon.pid')), 'data directory unlocked on exit');
  assert.match(await holder.read(), /^read-failed /, 'attached client was disconnected');

  const again = await startDaemon({ dataDir });
  defer(async () => assert.equal(await again.stop(), 0));
  const read = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x42 1M 64k', again.uri('keep')], { allowFailure: true });
  assert.equal(read.code, 0, `data written before SIGTERM was lost:\n${read.stdout}`);
});

test('a YAML config file sets the data directory, addresses and initial volumes; flags override it', async (t) => {
  const defer = deferrals(t);
  const dir = tempDir(t);
  const [nbdPort, apiPort] = [await freePort(), await freePort()];
  const configFile = path.join(dir, 'hindsight.yaml');
  fs.writeFileSync(configFile, [
    '# hindsight test configuration',
    `data: ${path.join(dir, 'data')}`,
    `nbd: 127.0.0.1:${nbdPort}`,
    `api: "127.0.0.1:${apiPort}"`,
    'replication: "127.0.0.1:0"',
    'logLevel: warn',
    'volumes:',
    '  - name: cfg0',
    '    size: 16M',
    '',
  ].join('\n'));

  const served = await startServe(['--config', configFile]);
  defer(async () => assert.equal((await served.stop()).code, 0));
  assert.equal(served.ready.nbdPort, nbdPort);
  assert.equal(served.ready.apiPort, apiPort);
  assert.equal(served.ready.dataDir, path.join(dir, 'data'));
  const ports = JSON.parse(fs.readFileSync(path.join(dir, 'data', 'ports.json'), 'utf8')) as { nbd: { port: number }; api: { port: number } };
  assert.deepEqual([ports.nbd.port, ports.api.port], [nbdPort, apiPort]);
  assert.equal((await run('nbdinfo', ['--size', `nbd://127.0.0.1:${nbdPort}/cfg0`])).stdout.trim(), String(16 * MiB));
  const listed = await hindsight(['volume', 'list', '--json', '--api', `http://127.0.0.1:${apiPort}`]);
  assert.deepEqual((JSON.parse(listed.stdout) as { volumes: Array<{ name: string }> }).volumes.map((v) => v.name), ['cfg0']);

  // Flags win over the file: same config, other data dir and ports (the file's are taken).
  const otherData = path.join(dir, 'other');
  const overridden = await startServe(['--config', configFile, '--data', otherData, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--replication', '127.0.0.1:0']);
  defer(async () => assert.equal((await overridden.stop()).code, 0));
  assert.notEqual(overridden.ready.nbdPort, nbdPort);
  assert.notEqual(overridden.ready.apiPort, apiPort);
  assert.equal(overridden.ready.dataDir, otherData);

  // A typo in the file is an error, not silently ignored.
  const badFile = path.join(dir, 'bad.yaml');
  fs.writeFileSync(badFile, 'nbd: 127.0.0.1:0\napi: 127.0.0.1:0\nlisten: 127.0.0.1:0\n');
  const bad = await run(process.execPath, [CLI, 'serve', '--config', badFile, '--data', path.join(dir, 'bad-data')], { allowFailure: true, timeoutMs: 15_000 });
  assertFails(bad, 'CONFIG_INVALID');
});

test('a second daemon on the same data directory fails with DATA_DIR_LOCKED and leaves the first alone', async () => {
  const second = await run(process.execPath, [CLI, 'serve', '--data', daemon.dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--replication', '127.0.0.1:0'], {
    allowFailure: true, timeoutMs: 15_000,
  });
  assertFails(second, 'DATA_DIR_LOCKED');
  assert.ok(fs.existsSync(path.join(daemon.dataDir, 'ports.json')), 'the first daemon keeps its ports.json');
  assert.equal(fs.readFileSync(path.join(daemon.dataDir, 'daemon.pid'), 'utf8').trim(), String(daemon.process.pid));
  const status = await cli(['status', '--json']);
  assert.equal(status.code, 0, 'the first daemon still answers');
  assert.equal((await run('nbdinfo', ['--can', 'connect', daemon.uri('existing')], { allowFailure: true })).code, 0);
});

test('volume create/set --keep --max-size, volume thin, and volume info show retention; a bad policy is one line with its code', async () => {
  const created = await cli(['volume', 'create', 'kept', '--size', '16M', '--keep', 'all:1h,1m:1d', '--max-size', '1G', '--json']);
  assert.equal(created.code, 0, created.stderr);
  const info = JSON.parse((await cli(['volume', 'info', 'kept', '--json'])).stdout) as { retention: { keep: string; maxSizeBytes: number; state: string; forecast: string } };
  assert.deepEqual([info.retention.keep, info.retention.maxSizeBytes, info.retention.state], ['all:1h,1m:1d', 1024 ** 3, 'ok']);
  const set = await cli(['volume', 'set', 'kept', '--keep', 'all:forever', '--max-size', 'none']);
  assert.equal(set.code, 0, set.stderr);
  assert.match(set.stdout, /keeping all:forever \(no size cap\)/);
  const thin = await cli(['volume', 'thin', 'kept']);
  assert.equal(thin.code, 0, thin.stderr);
  assert.match(thin.stdout, /0 point\(s\) expired/);
  const human = await cli(['volume', 'info', 'kept']);
  assert.match(human.stdout, /retention\s+--keep all:forever, --max-size none: ok/);
  const bad = await cli(['volume', 'set', 'kept', '--keep', '1h:1m']);
  assert.notEqual(bad.code, 0);
  assert.equal(bad.stderr.trim().split('\n').length, 1, 'one line');
  assert.match(bad.stderr, /RETENTION_INVALID/);
  assert.equal((await cli(['volume', 'delete', 'kept'])).code, 0);
});
