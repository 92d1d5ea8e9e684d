/**
 * NBD over TLS (NBD_OPT_STARTTLS) with clients no one here wrote: X.509 (a CA and a server
 * certificate made with openssl, the QEMU directory layout) and TLS-PSK (identity:hexkey).
 * nbdinfo and nbdcopy with nbds:// URIs, qemu-io and qemu-img with tls-creds-x509 and
 * tls-creds-psk objects; data written over TLS reads back exact. `--tls require` refuses
 * plaintext (NBD_REP_ERR_TLS_REQD) and lets NBD listen beyond loopback; a wrong PSK, a
 * server certificate from another CA and (with --tls-verify-peer) a client without a
 * certificate are refused; `--tls on` offers TLS and still serves plaintext.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import type { DaemonHandle } from '../helpers/daemon.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;

async function openssl(args: string[], cwd: string): Promise<void> {
  await run('sh', ['-c', `cd '${cwd}' && openssl ${args.join(' ')}`]);
}

/** A CA, a server certificate for 127.0.0.1/localhost, a client certificate: QEMU's file names. */
async function makeCertificates(dir: string, name = 'hindsight test CA'): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca-cert.pem', '-days', '2', '-subj', `'/CN=${name}'`], dir);
  fs.writeFileSync(path.join(dir, 'server.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  fs.writeFileSync(path.join(dir, 'client.cnf'), 'extendedKeyUsage=clientAuth\n');
  for (const who of ['server', 'client']) {
    await openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${who}-key.pem`, '-out', `${who}.csr`, '-subj', `'/CN=${who === 'server' ? 'localhost' : 'backup-client'}'`], dir);
    await openssl(['x509', '-req', '-in', `${who}.csr`, '-CA', 'ca-cert.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', `${who}-cert.pem`, '-days', '2', '-extfile', `${who}.cnf`], dir);
  }
}

function clientDir(from: string, to: string, withClientCert: boolean): string {
  fs.mkdirSync(to, { recursive: true });
  fs.copyFileSync(path.join(from, 'ca-cert.pem'), path.join(to, 'ca-cert.pem'));
  if (withClientCert) {
    fs.copyFileSync(path.join(from, 'client-cert.pem'), path.join(to, 'client-cert.pem'));
    fs.copyFileSync(path.join(from, 'client-key.pem'), path.join(to, 'client-key.pem'));
  }
  return to;
}

async function daemonWith(t: TestContext, args: string[]): Promise<DaemonHandle> {
  const daemon = await startDaemon({ volumes: ['v:16M'], extraArgs: args });
  assert.ok(daemon.nbdPort > 0, `daemon started: ${daemon.stderr()}`);
  t.after(async () => {
    await daemon.stop();
    fs.rmSync(daemon.dataDir, { recursive: true, force: true });
  });
  return daemon;
}

const nbdinfo = (uri: string) => run('nbdinfo', ['--json', uri], { allowFailure: true, timeoutMs: 20_000 });

test('X.509: nbdinfo, nbdcopy, qemu-io and qemu-img over TLS; plaintext refused under --tls require; not beyond loopback without client authentication', async (t) => {
  const dir = makeTempDir('hindsight-tls-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const certs = path.join(dir, 'server');
  await makeCertificates(certs);
  const client = clientDir(certs, path.join(dir, 'client'), false);
  // Beyond loopback only when clients must prove who they are: not without --tls-verify-peer.
  const refused = await run('node', [path.join(process.cwd(), 'bin', 'hindsight.js'), 'serve', '--data', path.join(dir, 'refused'), '--nbd', '0.0.0.0:0', '--api', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--tls', 'require', '--tls-certificates', certs], { allowFailure: true, timeoutMs: 20_000 });
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /INSECURE_BIND/);
  const daemon = await daemonWith(t, ['--tls', 'require', '--tls-certificates', certs]);
  const port = daemon.nbdPort;
  const tlsUri = `nbds://127.0.0.1:${port}/v?tls-certificates=${client}`;

  const info = await nbdinfo(tlsUri);
  assert.equal(info.code, 0, info.stderr);
  assert.equal((JSON.parse(info.stdout) as { TLS: boolean }).TLS, true, 'nbdinfo reports TLS');
  const plain = await nbdinfo(`nbd://127.0.0.1:${port}/v`);
  assert.notEqual(plain.code, 0, 'plaintext is refused');

  // Write with qemu-io over TLS, read back with nbdcopy over TLS and with qemu-io.
  const object = `tls-creds-x509,id=tls0,dir=${client},endpoint=client`;
  const image = `driver=nbd,host=127.0.0.1,port=${port},export=v,tls-creds=tls0`;
  await run('qemu-io', ['--object', object, '--image-opts', image, '-c', 'write -P 0x5a 1M 2M', '-c', 'flush']);
  const verify = await run('qemu-io', ['--object', object, '--image-opts', image, '-c', 'read -P 0x5a 1M 2M', '-c', 'read -P 0 0 1M']);
  assert.doesNotMatch(verify.stdout, /Pattern verification failed/, verify.stdout);
  const copy = path.join(dir, 'copy.img');
  await run('nbdcopy', [tlsUri, copy]);
  const bytes = fs.readFileSync(copy);
  assert.equal(bytes.length, 16 * MiB);
  assert.ok(bytes.subarray(MiB, 3 * MiB).every((byte) => byte === 0x5a) && bytes.subarray(0, MiB).every((byte) => byte === 0), 'nbdcopy over TLS reads what qemu-io wrote');
  const qemuInfo = await run('qemu-img', ['info', '--object', object, '--image-opts', image]);
  assert.match(qemuInfo.stdout, /virtual size: 16 MiB/);

  // A server certificate from another CA: the client refuses it.
  const other = path.join(dir, 'other');
  await makeCertificates(other, 'another CA');
  const stranger = await nbdinfo(`nbds://127.0.0.1:${port}/v?tls-certificates=${clientDir(other, path.join(dir, 'other-client'), false)}`);
  assert.notEqual(stranger.code, 0, 'a certificate the client does not trust is refused');
  assert.match(daemon.stderr() + stranger.stderr, /certificate|verify|TLS|alert/i);
});

test('TLS-PSK: nbdinfo and qemu-img with the key; a wrong key is refused', async (t) => {
  const dir = makeTempDir('hindsight-psk-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const pskDir = path.join(dir, 'psk');
  fs.mkdirSync(pskDir);
  const key = (await run('openssl', ['rand', '-hex', '32'])).stdout.trim();
  fs.writeFileSync(path.join(pskDir, 'keys.psk'), `alice:${key}\n`);
  fs.writeFileSync(path.join(dir, 'wrong.psk'), `alice:${'00'.repeat(32)}\n`);
  const daemon = await daemonWith(t, ['--tls', 'require', '--tls-psk-file', path.join(pskDir, 'keys.psk')]);
  const port = daemon.nbdPort;
  const good = await nbdinfo(`nbds://alice@127.0.0.1:${port}/v?tls-psk-file=${path.join(pskDir, 'keys.psk')}`);
  assert.equal(good.code, 0, good.stderr);
  const qemu = await run('qemu-img', ['info', '--object', `tls-creds-psk,id=tls0,dir=${pskDir},endpoint=client,username=alice`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=v,tls-creds=tls0`]);
  assert.match(qemu.stdout, /virtual size: 16 MiB/);
  const wrong = await nbdinfo(`nbds://alice@127.0.0.1:${port}/v?tls-psk-file=${path.join(dir, 'wrong.psk')}`);
  assert.notEqual(wrong.code, 0, 'a wrong key is refused');
  const plain = await nbdinfo(`nbd://127.0.0.1:${port}/v`);
  assert.notEqual(plain.code, 0, 'plaintext is refused');
});

test('--tls-verify-peer wants a client certificate from the CA (and lets NBD listen beyond loopback); --tls on also serves plaintext', async (t) => {
  const dir = makeTempDir('hindsight-tls-peer-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const certs = path.join(dir, 'server');
  await makeCertificates(certs);
  const strict = await daemonWith(t, ['--tls', 'require', '--tls-certificates', certs, '--tls-verify-peer', '--nbd', '0.0.0.0:0']);
  const withCert = await nbdinfo(`nbds://127.0.0.1:${strict.nbdPort}/v?tls-certificates=${clientDir(certs, path.join(dir, 'with'), true)}`);
  assert.equal(withCert.code, 0, withCert.stderr);
  const without = await nbdinfo(`nbds://127.0.0.1:${strict.nbdPort}/v?tls-certificates=${clientDir(certs, path.join(dir, 'without'), false)}`);
  assert.notEqual(without.code, 0, 'no client certificate: refused');

  // The certificate's CN is the identity --nbd-allow matches (CN=backup-client here).
  const acl = await daemonWith(t, ['--create-volume', 'w:8M', '--tls', 'require', '--tls-certificates', certs, '--tls-verify-peer', '--nbd-allow', 'backup-client=v']);
  assert.equal((await nbdinfo(`nbds://127.0.0.1:${acl.nbdPort}/v?tls-certificates=${path.join(dir, 'with')}`)).code, 0, 'CN backup-client opens v');
  assert.notEqual((await nbdinfo(`nbds://127.0.0.1:${acl.nbdPort}/w?tls-certificates=${path.join(dir, 'with')}`)).code, 0, 'and not w');

  // Bad credentials fail at start, never on a client's STARTTLS; certificates and PSK together are refused.
  const other = path.join(dir, 'other');
  await makeCertificates(other, 'another CA');
  const mixed = path.join(dir, 'mixed');
  fs.mkdirSync(mixed);
  for (const name of ['ca-cert.pem', 'server-cert.pem']) fs.copyFileSync(path.join(certs, name), path.join(mixed, name));
  fs.copyFileSync(path.join(other, 'server-key.pem'), path.join(mixed, 'server-key.pem'));
  const serve = (args: string[]) => run('node', [path.join(process.cwd(), 'bin', 'hindsight.js'), 'serve', '--data', path.join(dir, `d${args.length}`), '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--replication', '127.0.0.1:0', ...args], { allowFailure: true, timeoutMs: 20_000 });
  const badKey = await serve(['--tls', 'require', '--tls-certificates', mixed]);
  assert.notEqual(badKey.code, 0);
  assert.match(badKey.stderr, /CONFIG_INVALID/);
  fs.writeFileSync(path.join(dir, 'k.psk'), `a:${'11'.repeat(32)}
`);
  const both = await serve(['--tls', 'require', '--tls-certificates', certs, '--tls-psk-file', path.join(dir, 'k.psk')]);
  assert.notEqual(both.code, 0);
  assert.match(both.stderr, /not both/);

  const optional = await daemonWith(t, ['--tls', 'on', '--tls-certificates', certs]);
  assert.equal((await nbdinfo(`nbd://127.0.0.1:${optional.nbdPort}/v`)).code, 0, '--tls on: plaintext still served');
  const secure = await nbdinfo(`nbds://127.0.0.1:${optional.nbdPort}/v?tls-certificates=${path.join(dir, 'with')}`);
  assert.equal(secure.code, 0, secure.stderr);
  assert.equal((JSON.parse(secure.stdout) as { TLS: boolean }).TLS, true);
});

test('--nbd-allow: each TLS identity opens only its exports, and lists only those', async (t) => {
  const dir = makeTempDir('hindsight-acl-');
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const keys = path.join(dir, 'keys.psk');
  const alice = (await run('openssl', ['rand', '-hex', '32'])).stdout.trim();
  const bob = (await run('openssl', ['rand', '-hex', '32'])).stdout.trim();
  fs.writeFileSync(keys, `alice:${alice}\nbob:${bob}\n`);
  fs.writeFileSync(path.join(dir, 'alice.psk'), `alice:${alice}\n`);
  fs.writeFileSync(path.join(dir, 'bob.psk'), `bob:${bob}\n`);
  const daemon = await daemonWith(t, ['--create-volume', 'w:8M', '--tls', 'require', '--tls-psk-file', keys, '--nbd-allow', 'alice=v', '--nbd-allow', 'bob=w*']);
  const as = (who: string, name: string) => `nbds://${who}@127.0.0.1:${daemon.nbdPort}/${name}?tls-psk-file=${path.join(dir, `${who}.psk`)}`;
  assert.equal((await nbdinfo(as('alice', 'v'))).code, 0, 'alice opens v');
  const refused = await nbdinfo(as('alice', 'w'));
  assert.notEqual(refused.code, 0, 'alice may not open w');
  assert.equal((await nbdinfo(as('bob', 'w'))).code, 0, 'bob opens w');
  assert.notEqual((await nbdinfo(as('bob', 'v'))).code, 0, 'bob may not open v');
  const listed = await run('nbdinfo', ['--list', '--json', as('alice', '')], { allowFailure: true });
  assert.equal(listed.code, 0, listed.stderr);
  const names = (JSON.parse(listed.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((entry) => entry['export-name']);
  assert.deepEqual(names, ['v'], 'alice sees only her export');
  assert.match(daemon.stderr(), /client \\"alice\\" may not open export \\"w\\"/, 'the refusal is logged with the identity');
});
