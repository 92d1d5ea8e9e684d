/**
 * Replication credentials: a TLS pre-shared-key file of `identity:hexkey` lines (the format
 * of NBD's --tls-psk-file and `psktool`). The first line is this site's own identity and key
 * (what it presents when it sends); every line is a peer that may send here. Both sites of a
 * link hold the sender's line. Without a file named in the config, DATA/replication.psk is
 * used, made at first start with this host's name and a fresh 256-bit key (mode 0600).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { HindsightError } from '../core/index.js';

/**
 * What the link's TLS needs from either kind of credentials: this site's identity, the
 * listener's options (authenticating the sender), the sender's options (authenticating the
 * receiver), and the identity a finished handshake proved.
 */
export interface ReplicationCredentials {
  readonly kind: 'psk' | 'x509';
  /** This site's identity (as a sender), `identity` picking another PSK one. */
  own(identity?: string): { identity: string };
  serverOptions(): tls.TlsOptions;
  clientOptions(host: string, identity?: string): tls.ConnectionOptions;
  /** The peer identity the handshake proved, or null. */
  identify(socket: tls.TLSSocket): string | null;
}

export interface PskEntry {
  identity: string;
  key: Buffer;
}

const IDENTITY_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;

type PskSocket = tls.TLSSocket & { pskIdentity?: string };
/** The extended key usage of client certificates (RFC 5280). */
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/** TLS 1.2 with a pre-shared key: both ends prove they know it before anything flows. */
export class PskFile implements ReplicationCredentials {
  readonly kind = 'psk' as const;

  private cached: { mtimeMs: number; size: number; entries: PskEntry[] } | null = null;

  constructor(readonly file: string) {}

  /** Creates the file with one fresh key when it does not exist. */
  static ensure(file: string): PskFile {
    if (!fs.existsSync(file)) {
      const identity = os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').replace(/^[^A-Za-z0-9]+/, '').slice(0, 64) || 'hindsight';
      fs.writeFileSync(file, `${identity}:${crypto.randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
    }
    const psk = new PskFile(file);
    psk.entries();
    return psk;
  }

  /** Every entry, first this site's own; read again when the file changed. */
  entries(): PskEntry[] {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(this.file);
    } catch (err) {
      throw new HindsightError('CONFIG_INVALID', `replication: cannot read the PSK file ${this.file} (${(err as Error).message})`);
    }
    if (this.cached && this.cached.mtimeMs === stat.mtimeMs && this.cached.size === stat.size) return this.cached.entries;
    if ((stat.mode & 0o077) !== 0) throw new HindsightError('CONFIG_INVALID', `replication: ${this.file} may be read by others (mode ${(stat.mode & 0o777).toString(8)}); chmod 600 it`);
    const entries = parsePsk(fs.readFileSync(this.file, 'utf8'), this.file);
    this.cached = { mtimeMs: stat.mtimeMs, size: stat.size, entries };
    return entries;
  }

  own(identity?: string): PskEntry {
    const entries = this.entries();
    if (identity === undefined) return entries[0];
    const entry = entries.find((candidate) => candidate.identity === identity);
    if (!entry) throw new HindsightError('INVALID_ARGUMENT', `no key for identity "${identity}" in ${this.file}`);
    return entry;
  }

  serverOptions(): tls.TlsOptions {
    return {
      ciphers: 'PSK', minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2',
      pskCallback: (socket, identity) => {
        const key = this.keyOf(identity);
        if (key) (socket as PskSocket).pskIdentity = identity;
        return key;
      },
    };
  }

  clientOptions(host: string, identity?: string): tls.ConnectionOptions {
    const own = this.own(identity);
    return {
      host, ciphers: 'PSK', minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2',
      pskCallback: () => ({ identity: own.identity, psk: own.key }),
      // No certificate with PSK: the key proves the peer.
      checkServerIdentity: () => undefined,
    };
  }

  identify(socket: tls.TLSSocket): string | null {
    return (socket as PskSocket).pskIdentity ?? null;
  }

  /** The key of `identity`, or null (a peer not listed). */
  keyOf(identity: string): Buffer | null {
    try {
      return this.entries().find((entry) => entry.identity === identity)?.key ?? null;
    } catch {
      return null;
    }
  }
}

/**
 * X.509 in the QEMU layout: `ca-cert.pem` (the CA both sites trust), `server-cert.pem` and
 * `server-key.pem` (what the listener presents), `client-cert.pem` and `client-key.pem` (what
 * this site presents when it sends). Each side verifies the other's chain; the sender also
 * checks the receiver's certificate names the host it dialled (an IP address needs an IP
 * subjectAltName). A sender's identity is its client certificate's common name.
 */
export class X509Credentials implements ReplicationCredentials {
  readonly kind = 'x509' as const;
  private readonly files: Record<'ca' | 'serverCert' | 'serverKey' | 'clientCert' | 'clientKey', Buffer>;
  private readonly identity: string;

  constructor(readonly directory: string) {
    const read = (name: string) => {
      try {
        return fs.readFileSync(path.join(directory, name));
      } catch (err) {
        throw new HindsightError('CONFIG_INVALID', `replication: cannot read ${path.join(directory, name)} (${(err as Error).message})`);
      }
    };
    this.files = { ca: read('ca-cert.pem'), serverCert: read('server-cert.pem'), serverKey: read('server-key.pem'), clientCert: read('client-cert.pem'), clientKey: read('client-key.pem') };
    try {
      tls.createSecureContext({ cert: this.files.serverCert, key: this.files.serverKey, ca: this.files.ca });
      tls.createSecureContext({ cert: this.files.clientCert, key: this.files.clientKey, ca: this.files.ca });
    } catch (err) {
      throw new HindsightError('CONFIG_INVALID', `replication certificates in ${directory}: ${(err as Error).message}`);
    }
    const names = [...new crypto.X509Certificate(this.files.clientCert).subject.matchAll(/(?:^|\n)CN=([^\n]+)/g)].map((match) => match[1]);
    if (names.length !== 1) throw new HindsightError('CONFIG_INVALID', `replication: ${path.join(directory, 'client-cert.pem')} must have exactly one common name (the identity this site sends as)`);
    this.identity = validateIdentity(names[0]);
  }

  own(identity?: string): { identity: string } {
    if (identity !== undefined && identity !== this.identity) throw new HindsightError('INVALID_ARGUMENT', `this site sends as "${this.identity}" (its client certificate's common name), not "${identity}"`);
    return { identity: this.identity };
  }

  serverOptions(): tls.TlsOptions {
    return { minVersion: 'TLSv1.2', ca: this.files.ca, cert: this.files.serverCert, key: this.files.serverKey, requestCert: true, rejectUnauthorized: true };
  }

  clientOptions(host: string, identity?: string): tls.ConnectionOptions {
    this.own(identity);
    return { host, minVersion: 'TLSv1.2', ca: this.files.ca, cert: this.files.clientCert, key: this.files.clientKey, ...(net.isIP(host) ? {} : { servername: host }) };
  }

  /**
   * The sender's identity: the one common name of a certificate from the CA that is meant
   * for clients (extended key usage clientAuth) — a server certificate from the same CA, or
   * one with two names, proves nobody.
   */
  identify(socket: tls.TLSSocket): string | null {
    if (!socket.authorized) return null;
    const certificate = socket.getPeerCertificate();
    const subject = certificate?.subject as { CN?: string | string[] } | undefined;
    if (!subject?.CN || Array.isArray(subject.CN)) return null;
    if (!(certificate.ext_key_usage ?? []).includes(CLIENT_AUTH)) return null;
    try {
      return validateIdentity(subject.CN);
    } catch {
      return null;
    }
  }
}

function parsePsk(text: string, file: string): PskEntry[] {
  const entries: PskEntry[] = [];
  for (const [i, line] of text.split('\n').entries()) {
    if (line.trim() === '' || line.trim().startsWith('#')) continue;
    const match = /^([^:]+):([0-9a-fA-F]+)$/.exec(line.trim());
    if (!match || match[2].length % 2 !== 0 || match[2].length < 32 || !IDENTITY_PATTERN.test(match[1])) {
      throw new HindsightError('CONFIG_INVALID', `replication: ${file} line ${i + 1} is not identity:hexkey (a key of 16 bytes or more)`);
    }
    entries.push({ identity: match[1], key: Buffer.from(match[2], 'hex') });
  }
  if (entries.length === 0) throw new HindsightError('CONFIG_INVALID', `replication: ${file} holds no key`);
  return entries;
}

export function validateIdentity(identity: unknown): string {
  if (typeof identity !== 'string' || !IDENTITY_PATTERN.test(identity)) {
    throw new HindsightError('INVALID_NAME', 'a peer identity is 1-128 of A-Za-z0-9._@- starting with a letter or digit');
  }
  return identity;
}
