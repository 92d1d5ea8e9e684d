/**
 * From what a user typed (`--at`) to a seq in one volume's history: RFC 3339 and relative
 * times resolve to the last change (write, zero, trim, rollback) at or before that instant;
 * `seq:N` is taken as given; `bookmark:NAME` is the bookmark's seq; `latest` the last
 * change. Every refusal says why with its own code, and touches nothing.
 */
import { HindsightError, describePoint, formatTimeUs, parsePoint } from '../core/index.js';
import type { PointSpec } from '../core/index.js';
import type { History } from '../index/index.js';
import type { BookmarkStore } from './bookmarks.js';

export interface ResolvedPoint {
  seq: number;
  timeUs: number;
  /** What the user asked for, normalised (for messages and output). */
  asked: string;
}

export function resolvePoint(volume: string, history: History, bookmarks: BookmarkStore, at: string | PointSpec, nowMs = Date.now()): ResolvedPoint {
  const spec = typeof at === 'string' ? parsePoint(at, nowMs) : at;
  const asked = describePoint(spec);
  if (history.seqLast === 0) throw new HindsightError('POINT_BEFORE_HISTORY', `volume "${volume}" has no writes yet: there is no point to use`);
  const firstChange = history.firstChangeSeq();
  if (firstChange === 0) throw new HindsightError('POINT_BEFORE_HISTORY', `volume "${volume}" has no writes yet (only flush markers): there is no point to use`);
  let seq: number;
  switch (spec.kind) {
    case 'latest':
      // The last write (a flush marker after it shows the same content).
      seq = sameContentKept(history, history.seqLast);
      break;
    case 'seq':
      seq = spec.seq;
      break;
    case 'bookmark': {
      const bookmark = bookmarks.get(spec.name);
      seq = bookmark.seq;
      // A bookmark names a record: the same seq with another time is not its point.
      // (An expired one is refused as such below: a collapsed record's time is not kept.)
      if (seq <= history.seqLast && seq >= history.seqFirst && history.expiredRunOf(seq) === null && history.timeOf(seq) !== bookmark.timeUs) {
        throw new HindsightError('POINT_NOT_FOUND', `bookmark "${spec.name}" names seq ${seq} at ${formatTimeUs(bookmark.timeUs)}, but seq ${seq} of volume "${volume}" is a record of ${formatTimeUs(history.timeOf(seq))}: its point is gone`);
      }
      break;
    }
    case 'time': {
      let last = history.lastSeqAtOrBefore(spec.timeUs);
      // Before the records kept (folded away: History.fold): long expired.
      if (last === 0 && history.seqFirst > 1) throw expired(volume, asked, history, [1, history.seqFirst - 1]);
      // Thinned out: the kept point before (the volume as it was at the end of that minute,
      // hour or day the policy keeps) — still at or before the time asked.
      const run = last === 0 ? null : history.expiredRunOf(last);
      if (run) {
        if (run[0] <= history.seqFirst) throw expired(volume, asked, history, run);
        last = run[0] - 1;
      }
      seq = last === 0 ? 0 : sameContentKept(history, last);
      // The kept point before a thinned stretch shows no write yet: say it was thinned.
      if (seq === 0 && run) throw expired(volume, asked, history, run);
      if (seq === 0) {
        throw new HindsightError('POINT_BEFORE_HISTORY',
          `${asked} is before the first write to volume "${volume}" (seq ${firstChange} at ${formatTimeUs(history.timeOf(firstChange))})`);
      }
      break;
    }
  }
  if (seq > history.seqLast) {
    throw new HindsightError('POINT_NOT_FOUND', `${asked} is beyond the last record of volume "${volume}" (seq ${history.seqLast} at ${formatTimeUs(history.timeOf(history.seqLast))})`);
  }
  if (seq < history.seqFirst) {
    const oldest = history.oldestKept();
    const kept = oldest > 0 ? `the oldest point is seq ${oldest} at ${formatTimeUs(history.timeOf(oldest))}` : 'no point is kept';
    throw new HindsightError('POINT_EXPIRED', `${asked} is older than the history kept for volume "${volume}" (${kept})`);
  }
  const run = history.expiredRunOf(seq);
  if (run) throw expired(volume, asked, history, run);
  if (seq < firstChange) {
    throw new HindsightError('POINT_BEFORE_HISTORY', `${asked} is before the first write to volume "${volume}" (seq ${firstChange} at ${formatTimeUs(history.timeOf(firstChange))})`);
  }
  return { seq, timeUs: history.timeOf(seq), asked };
}

/**
 * The last change at or before `seq` — or `seq` itself (the same content) when that change's
 * own point was thinned out while `seq` is kept.
 */
function sameContentKept(history: History, seq: number): number {
  const change = history.lastChangeAtOrBefore(seq);
  // The last change was folded away (History.fold): `seq` shows what it left, if kept.
  if (change === 0 && history.seqFirst > 1) return history.expiredRunOf(seq) === null ? seq : 0;
  return change !== 0 && history.expiredRunOf(change) !== null && history.expiredRunOf(seq) === null ? seq : change;
}

function expired(volume: string, asked: string, history: History, run: readonly [number, number]): HindsightError {
  const around = (seq: number) => `seq ${seq} at ${formatTimeUs(history.timeOf(seq))}`;
  const before = run[0] > history.seqFirst ? `the kept point before is ${around(run[0] - 1)}` : 'no older point is kept';
  const after = run[1] < history.seqLast ? `the next is ${around(run[1] + 1)}` : 'no later point is kept';
  return new HindsightError('POINT_EXPIRED',
    `${asked} of volume "${volume}" was removed by its retention policy (seqs ${run[0]}..${run[1]}); ${before}, ${after} (bookmarks keep points)`);
}
