/**
 * API tokens: a daemon whose API listens beyond loopback refuses every request without a
 * valid token (401 UNAUTHORIZED, {code, message}, the health check excepted); tokens made
 * with `hindsight token create --data DIR` next to the running daemon work at once, are
 * stored only as hashes (0600), listed without secrets, and stop working when revoked. NBD
 * beyond loopback is still refused without --insecure (no TLS yet). On loopback, no token
 * is needed unless --require-token.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import { hindsight } from '../helpers/interop.js';
import { run } from '../helpers/run.js';

async function get(url: string, token?: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(url, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

test('beyond loopback, the API wants a token; tokens are hashed, listed without secrets, revocable', async (t) => {
  const dataDir = makeTempDir('hindsight-auth-');
  const daemon = await startDaemon({ dataDir, volumes: ['v:8M'], extraArgs: ['--api', '0.0.0.0:0'] });
  t.after(async () => {
    await daemon.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  const api = daemon.apiUrl.replace('0.0.0.0', '127.0.0.1');
  assert.equal((await get(`${api}/api/v1/health`)).status, 200, 'the health check needs no token');
  const missing = await get(`${api}/api/v1/volumes`);
  assert.equal(missing.status, 401);
  assert.deepEqual(Object.keys(missing.body).sort(), ['code', 'message']);
  assert.equal(missing.body.code, 'UNAUTHORIZED');
  const cliMissing = await hindsight(['volume', 'list', '--api', api]);
  assert.notEqual(cliMissing.code, 0);
  assert.match(cliMissing.stderr, /UNAUTHORIZED/);

  // The first token: made on the host, in the data directory, while the daemon runs.
  const created = await hindsight(['token', 'create', 'backup-server', '--data', dataDir, '--json']);
  assert.equal(created.code, 0, created.stderr);
  const { token, id } = JSON.parse(created.stdout) as { token: string; id: string };
  assert.match(token, /^hst_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
  const file = path.join(dataDir, 'tokens.json');
  const stored = fs.readFileSync(file, 'utf8');
  assert.ok(!stored.includes(token.slice('hst_'.length + 12 + 1)), 'the secret is not stored');
  assert.equal(fs.statSync(file).mode & 0o777, 0o600, 'tokens.json is readable by its owner only');

  assert.equal((await get(`${api}/api/v1/volumes`, token)).status, 200, 'a valid token is accepted');
  const wrong = token.slice(0, -4) + (token.endsWith('AAAA') ? 'BBBB' : 'AAAA');
  assert.equal((await get(`${api}/api/v1/volumes`, wrong)).status, 401, 'a wrong secret is refused');
  assert.equal((await get(`${api}/api/v1/volumes`, 'hst_000000000000_' + 'A'.repeat(43))).status, 401, 'an unknown id is refused');
  const listed = await hindsight(['volume', 'list', '--api', api, '--json'], { env: { ...process.env, HINDSIGHT_TOKEN: token } });
  assert.equal(listed.code, 0, listed.stderr);
  const withFlag = await hindsight(['--token', token, 'volume', 'info', 'v', '--api', api, '--json']);
  assert.equal(withFlag.code, 0, withFlag.stderr);
  fs.writeFileSync(path.join(dataDir, '..', `${path.basename(dataDir)}.token`), `${token}\n`);
  const fromFile = await hindsight(['volume', 'info', 'v', '--api', api], { env: { ...process.env, HINDSIGHT_TOKEN_FILE: path.join(dataDir, '..', `${path.basename(dataDir)}.token`) } });
  assert.equal(fromFile.code, 0, fromFile.stderr);
  fs.rmSync(path.join(dataDir, '..', `${path.basename(dataDir)}.token`));
  // Concurrent changes from the API and from --data beside it: none undoes another.
  const burst = await Promise.all(Array.from({ length: 6 }, (_, i) => hindsight(['token', 'create', `burst-${i}`, '--data', dataDir])));
  assert.ok(burst.every((result) => result.code === 0), burst.map((result) => result.stderr).join(''));
  const afterBurst = await get(`${api}/api/v1/tokens`, token);
  assert.equal((afterBurst.body.tokens as unknown[]).filter((entry) => String((entry as { name: string }).name).startsWith('burst-')).length, 6, 'every concurrent create is kept');

  // A second token through the API; list shows names and ids, never secrets.
  const second = await fetch(`${api}/api/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'monitoring' }) });
  assert.equal(second.status, 201);
  const list = await get(`${api}/api/v1/tokens`, token);
  assert.deepEqual((list.body.tokens as Array<{ name: string }>).map((entry) => entry.name).filter((name) => !name.startsWith('burst-')).sort(), ['backup-server', 'monitoring']);
  assert.ok(!JSON.stringify(list.body).includes('hst_'), 'no secret in the listing');
  const bad = await hindsight(['token', 'create', '../x', '--data', dataDir]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /INVALID_NAME/);

  // Revoked: refused from the next request on.
  const revoked = await hindsight(['token', 'revoke', id, '--data', dataDir]);
  assert.equal(revoked.code, 0, revoked.stderr);
  assert.equal((await get(`${api}/api/v1/volumes`, token)).status, 401, 'a revoked token is refused');
  assert.ok(!daemon.stderr().includes(token.slice('hst_'.length + 12 + 1)), 'the secret never reaches the log');

  // A damaged tokens.json: every request refused (401, never 500), no path shown to clients.
  const second2 = JSON.parse(fs.readFileSync(file, 'utf8')) as { tokens: unknown[] };
  fs.writeFileSync(file, JSON.stringify({ formatVersion: 1, tokens: [null, ...second2.tokens] }));
  assert.equal((await get(`${api}/api/v1/volumes`, token)).status, 401, 'an odd entry is skipped, not a crash');
  fs.writeFileSync(file, '{"formatVersion": 1, "tok');
  const damaged = await get(`${api}/api/v1/volumes`, token);
  assert.equal(damaged.status, 401);
  assert.equal(damaged.body.code, 'UNAUTHORIZED');
  assert.ok(!String(damaged.body.message).includes(dataDir), 'no path in the answer');
});

test('NBD beyond loopback is still refused without --insecure; on loopback the API needs no token unless --require-token', async (t) => {
  const dataDir = makeTempDir('hindsight-auth-');
  const refused = await hindsight(['serve', '--data', dataDir, '--nbd', '0.0.0.0:0', '--api', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--log-level', 'warn']);
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /INSECURE_BIND/);
  const daemon = await startDaemon({ dataDir, extraArgs: ['--require-token'] });
  t.after(async () => {
    await daemon.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  assert.equal((await get(`${daemon.apiUrl}/api/v1/volumes`)).status, 401, '--require-token applies on loopback');
  const open = await startDaemon({ dataDir: makeTempDir('hindsight-auth-open-') });
  t.after(async () => {
    await open.stop();
    fs.rmSync(open.dataDir, { recursive: true, force: true });
  });
  assert.equal((await get(`${open.apiUrl}/api/v1/volumes`)).status, 200, 'loopback without --require-token is open (local trust)');
});

test('the API over HTTPS: clients that trust the CA get through (with a token beyond loopback), others do not', async (t) => {
  const dir = makeTempDir('hindsight-https-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sh = (command: string) => run('sh', ['-c', `cd '${dir}' && ${command}`]);
  await sh(`openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 2 -subj '/CN=api test CA'`);
  await sh(`openssl req -newkey rsa:2048 -nodes -keyout api-key.pem -out api.csr -subj '/CN=localhost'`);
  fs.writeFileSync(path.join(dir, 'san.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await sh('openssl x509 -req -in api.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -out api-cert.pem -days 2 -extfile san.cnf');
  const daemon = await startDaemon({ dataDir: path.join(dir, 'data'), volumes: ['v:8M'], extraArgs: ['--api', '0.0.0.0:0', '--api-tls-cert', path.join(dir, 'api-cert.pem'), '--api-tls-key', path.join(dir, 'api-key.pem')] });
  t.after(async () => {
    await daemon.stop();
  });
  assert.match(daemon.apiUrl, /^https:\/\//);
  const api = daemon.apiUrl.replace('0.0.0.0', '127.0.0.1');
  const created = await hindsight(['token', 'create', 'ops', '--data', path.join(dir, 'data'), '--json']);
  const { token } = JSON.parse(created.stdout) as { token: string };
  const trusted = { ...process.env, NODE_EXTRA_CA_CERTS: path.join(dir, 'ca-cert.pem'), HINDSIGHT_TOKEN: token };
  const listed = await hindsight(['volume', 'list', '--api', api, '--json'], { env: trusted });
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, /"name": "v"/);
  const untrusted = await hindsight(['volume', 'list', '--api', api], { env: { ...process.env, HINDSIGHT_TOKEN: token } });
  assert.notEqual(untrusted.code, 0, 'a client that does not trust the certificate does not connect');
  const noToken = await hindsight(['volume', 'list', '--api', api], { env: { ...process.env, NODE_EXTRA_CA_CERTS: path.join(dir, 'ca-cert.pem') } });
  assert.match(noToken.stderr, /UNAUTHORIZED/);
});
