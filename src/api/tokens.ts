/**
 * API tokens (`DATA/tokens.json`, docs/FORMAT.md): random 256-bit secrets, handed out once
 * and stored only as their SHA-256 (a token is as strong as a key: a slow hash adds nothing).
 * A token reads `hst_<id>_<secret>`; the id finds the entry, the secret's hash is compared
 * in constant time. The file is written atomically; the daemon reloads it when it changes,
 * so `hindsight token create --data DIR` works next to a running daemon.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { HindsightError } from '../core/index.js';

const FORMAT_VERSION = 1;
const FILE = 'tokens.json';
const TOKEN = /^hst_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const TOKENS_MAX = 1000;

export interface TokenInfo {
  id: string;
  name: string;
  createdAt: string;
}

interface StoredToken extends TokenInfo {
  sha256: string;
}

interface TokenFile {
  formatVersion: number;
  tokens: StoredToken[];
}

export class TokenStore {
  private tokens: StoredToken[] = [];
  private loadedMtimeMs = -1;
  private damaged = false;

  /** Told (once per change of the file) why a damaged tokens.json is refused. */
  onDamage: (message: string) => void = () => undefined;

  constructor(private readonly dataDir: string) {}

  private get file(): string {
    return path.join(this.dataDir, FILE);
  }

  /** The tokens as on disk now (re-read when the file changed). */
  private current(): StoredToken[] {
    let mtimeMs: number;
    try {
      mtimeMs = fs.statSync(this.file).mtimeMs;
    } catch {
      this.tokens = [];
      this.loadedMtimeMs = -1;
      return this.tokens;
    }
    if (mtimeMs === this.loadedMtimeMs && this.damaged) throw new HindsightError('UNAUTHORIZED', 'the daemon cannot check tokens right now (see its log)');
    if (mtimeMs !== this.loadedMtimeMs) {
      this.damaged = false;
      let parsed: TokenFile;
      try {
        parsed = JSON.parse(fs.readFileSync(this.file, 'utf8')) as TokenFile;
        if (parsed?.formatVersion !== FORMAT_VERSION || !Array.isArray(parsed.tokens)) throw new Error('unknown format');
      } catch (err) {
        // Refuse everyone rather than guess: a damaged file must not open the API. The reason
        // goes to the daemon's log, not to a client that has not proved anything yet.
        this.onDamage(`${this.file} cannot be used (${(err as Error).message}); no token is accepted until it is fixed`);
        this.damaged = true;
        this.loadedMtimeMs = mtimeMs;
        throw new HindsightError('UNAUTHORIZED', 'the daemon cannot check tokens right now (see its log)');
      }
      this.tokens = parsed.tokens.filter((token): token is StoredToken => typeof token === 'object' && token !== null && typeof token.id === 'string' && typeof token.sha256 === 'string' && typeof token.name === 'string');
      this.loadedMtimeMs = mtimeMs;
    }
    return this.tokens;
  }

  list(): TokenInfo[] {
    return this.current().map(({ id, name, createdAt }) => ({ id, name, createdAt }));
  }

  /** A new token: the secret is returned once and never stored. */
  create(name: string): TokenInfo & { token: string } {
    if (!NAME.test(name)) throw new HindsightError('INVALID_NAME', `a token name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
    return this.locked(() => this.createNow(name));
  }

  private createNow(name: string): TokenInfo & { token: string } {
    this.loadedMtimeMs = -1; // re-read under the lock: another process may have changed it
    const tokens = this.current();
    if (tokens.some((token) => token.name === name)) throw new HindsightError('INVALID_NAME', `a token named "${name}" exists; revoke it first or pick another name`);
    if (tokens.length >= TOKENS_MAX) throw new HindsightError('LIMIT_REACHED', `${tokens.length} tokens exist (at most ${TOKENS_MAX})`);
    const id = randomBytes(6).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const stored: StoredToken = { id, name, createdAt: new Date().toISOString(), sha256: sha256(secret) };
    this.write([...tokens, stored]);
    return { id, name, createdAt: stored.createdAt, token: `hst_${id}_${secret}` };
  }

  revoke(idOrName: string): TokenInfo {
    return this.locked(() => this.revokeNow(idOrName));
  }

  private revokeNow(idOrName: string): TokenInfo {
    this.loadedMtimeMs = -1;
    const tokens = this.current();
    const found = tokens.find((token) => token.id === idOrName || token.name === idOrName);
    if (!found) throw new HindsightError('TOKEN_NOT_FOUND', `no token with id or name "${idOrName}"`);
    this.write(tokens.filter((token) => token !== found));
    return { id: found.id, name: found.name, createdAt: found.createdAt };
  }

  /** The token's entry if `presented` is a valid token, else null. */
  verify(presented: string): TokenInfo | null {
    const match = TOKEN.exec(presented);
    if (!match) return null;
    const found = this.current().find((token) => token.id === match[1]);
    if (!found) return null;
    const expected = Buffer.from(found.sha256, 'hex');
    const actual = Buffer.from(sha256(match[2]), 'hex');
    return expected.length === actual.length && timingSafeEqual(expected, actual) ? { id: found.id, name: found.name, createdAt: found.createdAt } : null;
  }

  /**
   * Changes happen under `tokens.json.lock` (created exclusively), so the daemon's API and a
   * `token … --data DIR` beside it cannot undo each other's change. A lock older than 10 s
   * is taken for a crash's leftover.
   */
  private locked<T>(work: () => T): T {
    fs.mkdirSync(this.dataDir, { recursive: true });
    const lock = `${this.file}.lock`;
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        fs.closeSync(fs.openSync(lock, 'wx', 0o600));
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const age = Date.now() - (fs.statSync(lock, { throwIfNoEntry: false })?.mtimeMs ?? Date.now());
        if (age > 10_000) fs.rmSync(lock, { force: true });
        else if (Date.now() > deadline) throw new HindsightError('LIMIT_REACHED', `${lock} is held by another change; try again`);
        else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
      }
    }
    try {
      return work();
    } finally {
      fs.rmSync(lock, { force: true });
    }
  }

  private write(tokens: StoredToken[]): void {
    fs.mkdirSync(this.dataDir, { recursive: true });
    const temporary = `${this.file}.${process.pid}.tmp`;
    const content: TokenFile = { formatVersion: FORMAT_VERSION, tokens };
    fs.writeFileSync(temporary, `${JSON.stringify(content, null, 2)}\n`, { mode: 0o600, flush: true });
    fs.renameSync(temporary, this.file);
    this.loadedMtimeMs = -1;
  }
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
