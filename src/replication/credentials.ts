/**
 * Replication credentials: a TLS pre-shared-key file of `identity:hexkey` lines (the format
 * of NBD's --tls-psk-file and `psktool`). The first line is this site's own identity and key
 * (what it presents when it sends); every line is a peer that may send here. Both sites of a
 * link hold the sender's line. Without a file named in the config, DATA/replication.psk is
 * used, made at first start with this host's name and a fresh 256-bit key (mode 0600).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import { HindsightError } from '../core/index.js';

export interface PskEntry {
  identity: string;
  key: Buffer;
}

const IDENTITY_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;

export class PskFile {
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

  /** The key of `identity`, or null (a peer not listed). */
  keyOf(identity: string): Buffer | null {
    try {
      return this.entries().find((entry) => entry.identity === identity)?.key ?? null;
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
