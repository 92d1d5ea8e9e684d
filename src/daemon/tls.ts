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
import type tls from 'node:tls';
import { HindsightError } from '../core/index.js';
import type { SessionTls } from '../nbd/index.js';

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
  const options: tls.TlsOptions = { minVersion: 'TLSv1.2' };
  if (config.x509Dir) {
    const read = (name: string) => {
      const file = path.join(config.x509Dir!, name);
      try {
        return fs.readFileSync(file);
      } catch (err) {
        throw new HindsightError('CONFIG_INVALID', `TLS: cannot read ${file} (${(err as Error).message})`);
      }
    };
    options.cert = read('server-cert.pem');
    options.key = read('server-key.pem');
    options.ca = read('ca-cert.pem');
    options.requestCert = config.verifyPeer ?? false;
    options.rejectUnauthorized = config.verifyPeer ?? false;
  }
  if (config.pskFile) {
    const keys = readPskFile(config.pskFile);
    options.pskCallback = (_socket: tls.TLSSocket, identity: string) => keys.get(identity) ?? null;
    // PSK suites are off by default; TLS 1.3 suites take PSKs as they are.
    options.ciphers = config.x509Dir ? 'DEFAULT:PSK' : 'PSK';
  }
  return { mode: config.mode, options };
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
