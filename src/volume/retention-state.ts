/**
 * What retention has done to one volume (docs/FORMAT.md, "retention.json"): the runs of
 * seqs whose points it removed, and what compaction reclaimed. Written atomically, and
 * always before any data of those points goes: the file is the one truth of which points
 * are refused. Without it, a journal holding thinned records cannot tell exact points from
 * points missing data, so such a volume is refused rather than served wrong.
 */
import path from 'node:path';
import { HindsightError } from '../core/index.js';
import type { History } from '../index/index.js';
import { RecordType } from '../journal/index.js';
import type { FileLayer } from '../journal/index.js';

const FORMAT_VERSION = 1;
export const RETENTION_FILE = 'retention.json';

/** Points removed ahead of the policy to meet --max-size: recorded, never silent. */
export interface ForcedExpiry {
  at: string;
  journalBytes: number;
  maxSizeBytes: number | null;
  pointsExpired: number;
  from: string;
  to: string;
  oldestPoint: string | null;
}

interface RetentionFile {
  formatVersion: number;
  expired: Array<[number, number]>;
  recordsThinned: number;
  bytesReclaimed: number;
  lastForced?: ForcedExpiry | null;
  /** Sealed segments whose payloads compaction has compressed. */
  compressedSegments?: number[];
  /** Folded segments compacted with runs (pack.ts): their records that changed nothing share entries. */
  runSegments?: number[];
  /** Compactions begun: an index checkpoint made in an earlier generation names old positions. */
  compactions?: number;
  recordsCompressed?: number;
  /**
   * The history is folded up to here (History.fold): a start folds the records before it as
   * it loads them. With the rollbacks among them (seq, target), which a start must know
   * before it meets them.
   */
  foldedBefore?: number;
  foldedReverts?: Array<[number, number]>;
  /**
   * The fold was made by a replica, as far as its source allowed: only then does a replica
   * fold as far at start (a fold made as a source may go past what a new source keeps).
   */
  foldedAsReplica?: boolean;
}

export class RetentionState {
  recordsThinned = 0;
  bytesReclaimed = 0;
  recordsCompressed = 0;
  compactions = 0;
  lastForced: ForcedExpiry | null = null;
  readonly compressedSegments = new Set<number>();
  /** Folded segments compacted with runs, each once (pack.ts, RunPolicy). */
  readonly runSegments = new Set<number>();
  /** The rollbacks the history's fold took in (History.fold; the fold itself is history.seqFirst): see RetentionFile. */
  foldedReverts: Array<[number, number]> = [];
  /** What the last reclaim analysis saw (not persisted): it is not repeated for nothing. */
  lastAnalysis: { expired: number; sealed: number; atMs: number } | null = null;
  /**
   * The reclaim analysis' verdicts (memory only; the first run after start analyses all):
   * per seq - seqFirst up to `upTo`, 1 = some kept point shows the record, 2 = none does.
   * Later runs analyse only the stretches around points expired since, and newly sealed
   * records (retention.ts).
   */
  verdicts: { seen: Uint8Array; upTo: number; expired: Array<[number, number]> } | null = null;
  /** The last run since start (not persisted). */
  lastRun: { at: string; pointsExpired: number; pointsForced: number; bytesReclaimed: number; journalBytes: number; durationMs: number } | null = null;

  private saving: Promise<void> = Promise.resolve();
  /** history.expiredVersion when retention.json was last written (or read). */
  private savedVersion = -1;

  /** A replica (until promoted): its folds are made as its source allows (RetentionFile.foldedAsReplica). */
  replica = false;

  private constructor(private readonly files: FileLayer, private readonly file: string, private readonly history: History) {}

  /**
   * `replica`: the volume mirrors another site's expiry, saved before the records it covers
   * arrive; runs past the journal's end (records a crash cut, sent again on reconnection)
   * are clipped rather than refused.
   */
  static load(files: FileLayer, directory: string, history: History, replica = false): RetentionState {
    const file = path.join(directory, RETENTION_FILE);
    const state = new RetentionState(files, file, history);
    state.replica = replica;
    const bytes = files.readFile(file);
    if (bytes === null) {
      if (history.thinnedRecords > 0) throw corrupt(file, `missing, but the journal holds ${history.thinnedRecords} thinned records`);
      state.savedVersion = history.expiredVersion;
      return state;
    }
    let parsed: RetentionFile;
    try {
      parsed = JSON.parse(bytes.toString('utf8')) as RetentionFile;
    } catch {
      throw corrupt(file, 'is not valid JSON');
    }
    if (parsed?.formatVersion !== FORMAT_VERSION || !Array.isArray(parsed.expired)) throw corrupt(file, `has an unknown format (version ${String(parsed?.formatVersion)})`);
    let previousEnd = 0;
    if (replica && Array.isArray(parsed.expired)) {
      parsed.expired = parsed.expired.filter((run) => Array.isArray(run) && run[0] <= history.seqLast).map((run) => [run[0], Math.min(run[1], history.seqLast)]);
    }
    for (const run of parsed.expired) {
      const ok = Array.isArray(run) && run.length === 2 && Number.isSafeInteger(run[0]) && Number.isSafeInteger(run[1]) && run[0] > previousEnd && run[1] >= run[0];
      if (!ok) throw corrupt(file, 'has expired runs that are not ascending, disjoint seq ranges');
      // Only durable seqs expire, so the journal reaches every one of them.
      if (run[1] > history.seqLast) throw corrupt(file, `names seq ${run[1]}, beyond the journal's last record (seq ${history.seqLast})`);
      previousEnd = run[1];
    }
    history.expire(parsed.expired);
    state.savedVersion = history.expiredVersion;
    if (history.thinnedRecords > 0) {
      // Data goes only after its points expired (durably): a thinned record outside the
      // expired runs means a point that looks kept but misses data.
      const seq = history.thinnedNotExpired();
      if (seq !== 0) throw corrupt(file, `does not list seq ${seq}, whose data retention reclaimed, as expired`);
    }
    state.recordsThinned = Number(parsed.recordsThinned) || 0;
    state.bytesReclaimed = Number(parsed.bytesReclaimed) || 0;
    state.lastForced = parsed.lastForced ?? null;
    state.recordsCompressed = Number(parsed.recordsCompressed) || 0;
    state.compactions = Number(parsed.compactions) || 0;
    for (const segment of parsed.compressedSegments ?? []) if (Number.isSafeInteger(segment)) state.compressedSegments.add(segment);
    for (const segment of parsed.runSegments ?? []) if (Number.isSafeInteger(segment)) state.runSegments.add(segment);
    // A replica folds as far as its source allows; a fold it did not make as a replica (it was
    // a source before a failback) is not its own: it goes at the next save.
    const ownFold = !replica || parsed.foldedAsReplica === true;
    state.foldedReverts = ownFold ? foldedRevertsOf(parsed) : [];
    if (!ownFold && (parsed.foldedBefore ?? 1) > 1) state.savedVersion = -1;
    return state;
  }

  noteCompacted(segmentIndex: number, thinned: number, compressed: number, bytes: number, compressing: boolean, runs = false): void {
    this.recordsThinned += thinned;
    this.recordsCompressed += compressed;
    this.bytesReclaimed += bytes;
    if (compressing) this.compressedSegments.add(segmentIndex);
    if (runs) this.runSegments.add(segmentIndex);
  }

  noteForced(event: ForcedExpiry): void {
    this.lastForced = event;
  }

  /** Saves are queued: two at once would share the temporary file. Each writes the state as it is when it runs. */
  save(): Promise<void> {
    const next = this.saving.catch(() => undefined).then(() => this.saveNow());
    this.saving = next;
    return next;
  }

  /** Expired runs changed since the last save (a replica saves them when it must). */
  get unsaved(): boolean {
    return this.savedVersion !== this.history.expiredVersion;
  }

  private async saveNow(): Promise<void> {
    const version = this.history.expiredVersion;
    const content: RetentionFile = {
      formatVersion: FORMAT_VERSION,
      expired: this.history.expired.map(([a, b]) => [a, b]),
      recordsThinned: this.recordsThinned,
      bytesReclaimed: this.bytesReclaimed,
      lastForced: this.lastForced,
      compressedSegments: [...this.compressedSegments].sort((a, b) => a - b),
      ...(this.runSegments.size > 0 ? { runSegments: [...this.runSegments].sort((a, b) => a - b) } : {}),
      recordsCompressed: this.recordsCompressed,
      compactions: this.compactions,
      foldedBefore: this.history.seqFirst,
      foldedReverts: this.foldedReverts,
      ...(this.replica ? { foldedAsReplica: true } : {}),
    };
    await this.files.writeFileAtomic(this.file, Buffer.from(`${JSON.stringify(content)}\n`));
    this.savedVersion = version;
  }
}

function corrupt(file: string, why: string): HindsightError {
  return new HindsightError('VOLUME_CORRUPT', `${file} ${why}; the volume is not served (its points in history cannot be told exact)`);
}

/**
 * The compaction generation from retention.json, read before the history exists (the index
 * checkpoint is checked against it): 0 when absent or unreadable (the full load says why).
 */
export function compactionGeneration(files: FileLayer, directory: string): number {
  try {
    const bytes = files.readFile(path.join(directory, RETENTION_FILE));
    return bytes ? Number((JSON.parse(bytes.toString('utf8')) as RetentionFile).compactions) || 0 : 0;
  } catch {
    return 0;
  }
}

function foldedRevertsOf(parsed: RetentionFile): Array<[number, number]> {
  const reverts = Array.isArray(parsed.foldedReverts) ? parsed.foldedReverts : [];
  return reverts.filter((pair) => Array.isArray(pair) && Number.isSafeInteger(pair[0]) && Number.isSafeInteger(pair[1]) && pair[1] < pair[0]);
}

/**
 * How far a start may fold the history as it loads it (History.fold), read before the
 * history exists: the fold retention.json records (a replica's: only one it made as a
 * replica), never past its oldest kept point; and the folded rollbacks. Nothing (1) when absent or unreadable (the full load says why).
 */
export function foldPlan(files: FileLayer, directory: string, replica = false): { foldBefore: number; reverts: Array<[number, number]> } {
  try {
    const bytes = files.readFile(path.join(directory, RETENTION_FILE));
    if (!bytes) return { foldBefore: 1, reverts: [] };
    const parsed = JSON.parse(bytes.toString('utf8')) as RetentionFile;
    // A replica folds only as far as it folded as one (RetentionFile.foldedAsReplica).
    if (replica && parsed.foldedAsReplica !== true) return { foldBefore: 1, reverts: [] };
    const first = Array.isArray(parsed.expired) ? parsed.expired[0] : undefined;
    const oldestKept = Array.isArray(first) && first[0] === 1 && Number.isSafeInteger(first[1]) ? first[1] + 1 : 1;
    const folded = Number.isSafeInteger(parsed.foldedBefore) ? (parsed.foldedBefore as number) : 1;
    return { foldBefore: Math.max(1, Math.min(folded, oldestKept)), reverts: foldedRevertsOf(parsed) };
  } catch {
    return { foldBefore: 1, reverts: [] };
  }
}
