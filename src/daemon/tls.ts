/**
 * TLS credentials for NBD (NBD_OPT_STARTTLS), in the layouts QEMU and nbdkit use so the same
 * files serve every tool:
 * - X.509: a directory with `ca-cert.pem`, `server-cert.pem`, `server-key.pem`; with
 *   `verifyPeer`, clients must present a certificate signed by that CA;
 * - PSK: a file of `identity:hexkey` lines (as made by `psktool`); a client is who its
 *   identity says once its key matches.
 * TLS 1.2 at least (NBD's rule).
 */
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { HindsightError } from '../core/index.js';
import type { ExportAccess, SessionTls } from '../nbd/index.js';

export interface TlsConfig {
  mode: 'off' | 'on' | 'require';
  /** X.509 credentials directory. */
  x509Dir?: string;
  verifyPeer?: boolean;
  /** PSK keys file. */
  pskFile?: string;
}

export function loadNbdTls(config: TlsConfig): SessionTls | null {
  if (config.mode === 'off') return null;
  if (!config.x509Dir && !config.pskFile) {
    throw new HindsightError('CONFIG_INVALID', `--tls ${config.mode} needs credentials: --tls-certificates DIR (ca-cert.pem, server-cert.pem, server-key.pem) or --tls-psk-file FILE`);
  }
  // Both at once would let a client finish a certificate handshake while naming a PSK
  // identity it never proved: one or the other.
  if (config.x509Dir && config.pskFile) throw new HindsightError('CONFIG_INVALID', 'use --tls-certificates or --tls-psk-file, not both');
  const contextOptions: tls.SecureContextOptions = { minVersion: 'TLSv1.2' };
  const serverOptions: tls.TlsOptions = {};
  if (config.x509Dir) {
    const read = (name: string) => {
      const file = path.join(config.x509Dir!, name);
      try {
        return fs.readFileSync(file);
      } catch (err) {
        throw new HindsightError('CONFIG_INVALID', `TLS: cannot read ${file} (${(err as Error).message})`);
      }
    };
    contextOptions.cert = read('server-cert.pem');
    contextOptions.key = read('server-key.pem');
    contextOptions.ca = read('ca-cert.pem');
    serverOptions.requestCert = config.verifyPeer ?? false;
    serverOptions.rejectUnauthorized = config.verifyPeer ?? false;
  }
  if (config.pskFile) {
    const keys = readPskFile(config.pskFile);
    serverOptions.pskCallback = (socket: tls.TLSSocket, identity: string) => {
      const key = keys.get(identity) ?? null;
      // Without certificates a handshake can only finish with this key: the identity holds.
      if (key) (socket as PskSocket).pskIdentity = identity;
      return key;
    };
    contextOptions.ciphers = 'PSK';
  }
  // Tried once now: a key that does not fit its certificate fails here, at start, not on a
  // client's STARTTLS.
  try {
    tls.createSecureContext(contextOptions);
  } catch (err) {
    throw new HindsightError('CONFIG_INVALID', `TLS credentials: ${(err as Error).message}`);
  }
  const verifyPeer = Boolean(config.x509Dir && config.verifyPeer);
  return {
    mode: config.mode,
    server: () => tls.createServer({ ...contextOptions, ...serverOptions }),
    identify: (socket) => identify(socket, verifyPeer),
  };
}

/** Whether clients must prove who they are (a PSK, or a certificate from the CA). */
export function authenticatesClients(config: TlsConfig): boolean {
  return config.mode === 'require' && (Boolean(config.pskFile) || Boolean(config.x509Dir && config.verifyPeer));
}

type PskSocket = tls.TLSSocket & { pskIdentity?: string };

/** The identity TLS proved: the PSK identity, or the verified client certificate's CN. */
function identify(socket: tls.TLSSocket, verifyPeer: boolean): string | null {
  const psk = (socket as PskSocket).pskIdentity;
  if (psk) return psk;
  if (!verifyPeer || !socket.authorized) return null;
  const subject = socket.getPeerCertificate()?.subject as { CN?: string | string[] } | undefined;
  const cn = Array.isArray(subject?.CN) ? subject?.CN[0] : subject?.CN;
  return cn ?? null;
}

/**
 * Export access rules: `IDENTITY=PATTERN[,PATTERN...]`, a pattern an export name or a prefix
 * ending in `*` (`db1*` also covers the mounts `db1@SEQ`); identity `*` is anyone, including
 * clients without TLS identity. Without rules, anyone may open anything; with rules, only
 * what a rule allows.
 */
export function parseAccess(rules: string[]): ExportAccess | null {
  if (rules.length === 0) return null;
  const byIdentity = new Map<string, string[]>();
  for (const rule of rules) {
    const at = rule.indexOf('=');
    const identity = rule.slice(0, at).trim();
    const patterns = rule.slice(at + 1).split(',').map((pattern) => pattern.trim()).filter((pattern) => pattern !== '');
    if (at <= 0 || identity === '' || patterns.length === 0) throw new HindsightError('CONFIG_INVALID', `--nbd-allow "${rule}": use IDENTITY=EXPORT[,EXPORT...] (an export may end in *; identity * is anyone)`);
    byIdentity.set(identity, [...(byIdentity.get(identity) ?? []), ...patterns]);
  }
  const matches = (pattern: string, name: string) => (pattern.endsWith('*') ? name.startsWith(pattern.slice(0, -1)) : pattern === name);
  return {
    allows(identity, exportName) {
      const patterns = [...(byIdentity.get('*') ?? []), ...(identity === null ? [] : byIdentity.get(identity) ?? [])];
      return patterns.some((pattern) => matches(pattern, exportName));
    },
  };
}

function readPskFile(file: string): Map<string, Buffer> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new HindsightError('CONFIG_INVALID', `TLS: cannot read the PSK file ${file} (${(err as Error).message})`);
  }
  const keys = new Map<string, Buffer>();
  for (const [i, line] of text.split('\n').entries()) {
    if (line.trim() === '') continue;
    const match = /^([^:]+):([0-9a-fA-F]+)$/.exec(line.trim());
    if (!match || match[2].length % 2 !== 0) throw new HindsightError('CONFIG_INVALID', `TLS: ${file} line ${i + 1} is not identity:hexkey`);
    keys.set(match[1], Buffer.from(match[2], 'hex'));
  }
  if (keys.size === 0) throw new HindsightError('CONFIG_INVALID', `TLS: ${file} holds no key`);
  return keys;
}
