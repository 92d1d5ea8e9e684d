/**
 * A volume's bookmarks: names for points in its history, kept in `bookmarks.json` in the
 * volume's directory (written atomically: temp file, fsync, rename, directory fsync). A
 * bookmark pins its point against retention. Deleting one forgets the name, never data.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { HindsightError, fromSystemError } from '../core/index.js';
import { nodeFileLayer } from '../journal/index.js';

const BOOKMARK_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Bookmarks one volume may hold (each pins history). */
export const BOOKMARKS_PER_VOLUME_MAX = 10_000;

export interface Bookmark {
  name: string;
  seq: number;
  timeUs: number;
  createdAt: string;
}

export function validateBookmarkName(name: unknown): string {
  if (typeof name !== 'string' || !BOOKMARK_PATTERN.test(name)) {
    throw new HindsightError('INVALID_NAME', `invalid bookmark name ${JSON.stringify(name)}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return name;
}

export class BookmarkStore {
  private constructor(private readonly file: string, private readonly bookmarks: Map<string, Bookmark>) {}

  static async load(directory: string): Promise<BookmarkStore> {
    const file = path.join(directory, 'bookmarks.json');
    const bookmarks = new Map<string, Bookmark>();
    let text: string | null = null;
    try {
      text = await fs.readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw fromSystemError(err, `reading ${file}`);
    }
    if (text !== null) {
      let parsed: { bookmarks?: Bookmark[] };
      try {
        parsed = JSON.parse(text) as { bookmarks?: Bookmark[] };
      } catch (err) {
        throw new HindsightError('VOLUME_CORRUPT', `${file} is not valid JSON`, { cause: err });
      }
      for (const bookmark of parsed.bookmarks ?? []) {
        if (!BOOKMARK_PATTERN.test(bookmark.name) || !Number.isSafeInteger(bookmark.seq) || bookmark.seq < 1) {
          throw new HindsightError('VOLUME_CORRUPT', `${file}: invalid bookmark ${JSON.stringify(bookmark)}`);
        }
        bookmarks.set(bookmark.name, bookmark);
      }
    }
    return new BookmarkStore(file, bookmarks);
  }

  list(): Bookmark[] {
    return [...this.bookmarks.values()].sort((a, b) => a.seq - b.seq || a.name.localeCompare(b.name));
  }

  get(name: string): Bookmark {
    validateBookmarkName(name);
    const bookmark = this.bookmarks.get(name);
    if (!bookmark) throw new HindsightError('BOOKMARK_NOT_FOUND', `no bookmark named "${name}"`);
    return bookmark;
  }

  /** The lowest seq any bookmark pins (retention keeps everything from there), or null. */
  get seqPinnedMin(): number | null {
    let min: number | null = null;
    for (const bookmark of this.bookmarks.values()) min = min === null ? bookmark.seq : Math.min(min, bookmark.seq);
    return min;
  }

  async create(bookmark: Bookmark): Promise<Bookmark> {
    validateBookmarkName(bookmark.name);
    if (this.bookmarks.has(bookmark.name)) throw new HindsightError('BOOKMARK_EXISTS', `bookmark "${bookmark.name}" already exists (at seq ${this.bookmarks.get(bookmark.name)!.seq})`);
    if (this.bookmarks.size >= BOOKMARKS_PER_VOLUME_MAX) throw new HindsightError('INVALID_ARGUMENT', `a volume holds at most ${BOOKMARKS_PER_VOLUME_MAX} bookmarks; delete some first`);
    this.bookmarks.set(bookmark.name, bookmark);
    try {
      await this.save();
    } catch (err) {
      this.bookmarks.delete(bookmark.name);
      throw err;
    }
    return bookmark;
  }

  async delete(name: string): Promise<Bookmark> {
    const bookmark = this.get(name);
    this.bookmarks.delete(name);
    try {
      await this.save();
    } catch (err) {
      this.bookmarks.set(name, bookmark);
      throw err;
    }
    return bookmark;
  }

  /**
   * Replaces every bookmark by `bookmarks` (a replica mirroring its source's); a no-op when
   * nothing differs. Entries that are not sound bookmarks are refused whole.
   */
  async replaceAll(bookmarks: Bookmark[]): Promise<boolean> {
    for (const bookmark of bookmarks) {
      if (!BOOKMARK_PATTERN.test(bookmark.name) || !Number.isSafeInteger(bookmark.seq) || bookmark.seq < 1) {
        throw new HindsightError('PROTOCOL_ERROR', `invalid bookmark ${JSON.stringify(bookmark).slice(0, 200)}`);
      }
    }
    const next = new Map(bookmarks.map((bookmark) => [bookmark.name, { name: bookmark.name, seq: bookmark.seq, timeUs: bookmark.timeUs, createdAt: bookmark.createdAt }]));
    const same = next.size === this.bookmarks.size && [...next].every(([name, bookmark]) => this.bookmarks.get(name)?.seq === bookmark.seq);
    if (same) return false;
    const before = new Map(this.bookmarks);
    this.bookmarks.clear();
    for (const [name, bookmark] of next) this.bookmarks.set(name, bookmark);
    try {
      await this.save();
    } catch (err) {
      this.bookmarks.clear();
      for (const [name, bookmark] of before) this.bookmarks.set(name, bookmark);
      throw err;
    }
    return true;
  }

  private async save(): Promise<void> {
    const temporary = `${this.file}.tmp`;
    try {
      await fs.writeFile(temporary, `${JSON.stringify({ bookmarks: this.list() }, null, 2)}\n`, { flush: true });
      await fs.rename(temporary, this.file);
      await nodeFileLayer.syncDirectory(path.dirname(this.file));
    } catch (err) {
      await fs.rm(temporary, { force: true });
      throw fromSystemError(err, `saving ${this.file}`);
    }
  }
}
