/**
 * Applying a volume's retention policy (core/retention.ts), in two steps.
 *
 * 1. Expire: the points the policy no longer keeps — never a bookmark, a mount, a rollback's
 *    target, a point a job or command is using, nor the last record — are refused from this
 *    instant and recorded in retention.json (only durable seqs).
 * 2. Reclaim: a WRITE record whose data no kept point shows (every byte of it was overwritten
 *    before the next kept point) loses its payload: the sealed segments with enough of
 *    those are compacted (journal/compaction.ts), throttled, one at a time, crash-safe at
 *    every step. The records stay as headers (THINNED), so seqs stay gap-free and the
 *    timeline still counts every write.
 *
 * Which records are visible at which kept point comes from replaying each region's history
 * (History.visibleWrites) in slices, so clients keep being served meanwhile.
 */
import { expiringRuns, isHindsightError, keepAllUs } from '../core/index.js';
import type { HindsightError, RetentionPolicy } from '../core/index.js';
import { PACK_ENTRY_BYTES, RecordType } from '../journal/index.js';
import type { RunPolicy } from '../journal/index.js';
import { storedSpan, thinnableBytes } from '../journal/record.js';
import { runnableRecords } from '../index/index.js';
import type { JournaledDevice } from './journaled-device.js';

export interface RetentionReport {
  /** Points (seqs) that expired in this run. */
  pointsExpired: number;
  segmentsCompacted: number;
  recordsThinned: number;
  /** WRITE payloads compressed (compaction compresses a sealed segment once, with reduction on). */
  recordsCompressed: number;
  bytesReclaimed: number;
  /** Records folded into the history's base (History.fold): their memory freed. */
  recordsFolded: number;
  /** The oldest point kept after the run (0: none). */
  oldestKeptSeq: number;
  durationMs: number;
}

export interface RetentionOptions {
  /** Seqs that must stay points (bookmarks, mounts, jobs, commands in progress). */
  pins: () => Iterable<number>;
  nowUs: number;
  /** Work slice before a rest of equal length (default 5 ms). */
  sliceMs?: number;
  /** A segment is compacted once this share of it can go (default 1/8). */
  reclaimShareMin?: number;
  /**
   * Folded segments wholly below `runs.below` are compacted once with runs (pack.ts): their
   * records that changed nothing share entries. Without: none.
   */
  runs?: RunPolicy;
}

const RECLAIM_BYTES_MIN = 64 * 1024;
/** A folded segment is compacted for runs alone when they take this many records or more. */
const RUN_RECORDS_MIN = 4;
/** The active segment is sealed for compaction once its first record is this old... */
const SEAL_AFTER_US = 15 * 60e6;
/** ...and it holds this much. */
const SEAL_BYTES_MIN = 64 * 1024 * 1024;

/** Both steps, one after the other (the daemon runs the first serialised with mounts and bookmarks). */
export async function applyRetention(device: JournaledDevice, policy: RetentionPolicy, options: RetentionOptions): Promise<RetentionReport> {
  const started = performance.now();
  const pointsExpired = await expireByPolicy(device, policy, options);
  const reclaimed = await reclaimSpace(device, options);
  const recordsFolded = await device.foldHistory(Math.min(Infinity, ...options.pins()));
  return { pointsExpired, ...reclaimed, recordsFolded, oldestKeptSeq: device.history.oldestKept(), durationMs: Math.round(performance.now() - started) };
}

/**
 * Step 1: expires the points `policy` no longer keeps at `nowUs`. Returns how many points
 * expired. The caller makes sure no point is being resolved and pinned meanwhile.
 */
export async function expireByPolicy(device: JournaledDevice, policy: RetentionPolicy, options: RetentionOptions): Promise<number> {
  const history = device.history;
  const { pins, durable } = await expiryGround(device, options);
  const expiredBefore = countExpired(history.expired);
  const runs = durable >= history.seqFirst ? expiringRuns(policy, options.nowUs, (seq) => history.timeOf(seq), history.seqFirst, durable, pins,
    (seq) => history.collapsedThrough(seq)) : [];
  await device.expirePoints(runs);
  return countExpired(history.expired) - expiredBefore;
}

/**
 * A size cap the policy alone does not meet: the oldest `share` of the points kept outside
 * the policy's `all` window (and at or before `upTo`, where their data is in sealed segments)
 * expire ahead of the policy — never pinned ones, never the last — but only if that frees
 * space: when what they show is live data (or shown by other kept points), nothing goes.
 * Returns the seqs that expired, oldest first ([] when nothing more can go usefully).
 */
export async function expireOldest(device: JournaledDevice, policy: RetentionPolicy, options: RetentionOptions & { share: number; upTo?: number }): Promise<number[]> {
  const history = device.history;
  const ground = await expiryGround(device, options);
  const pins = ground.pins;
  const durable = Math.min(ground.durable, options.upTo ?? Infinity);
  const allFromUs = options.nowUs - keepAllUs(policy);
  const candidates: number[] = [];
  for (let seq = history.seqFirst; seq < durable; seq += 1) {
    // (Collapsed records are expired points: stepped over.)
    seq = Math.max(seq, history.collapsedThrough(seq) + 1);
    if (seq >= durable) break;
    if (history.timeOf(seq) >= allFromUs && keepAllUs(policy) > 0) break;
    if (!pins.has(seq) && history.expiredRunOf(seq) === null) candidates.push(seq);
  }
  if (candidates.length === 0) return [];
  const going = candidates.slice(0, Math.max(1, Math.ceil(candidates.length * options.share)));
  if ((await reclaimableIf(device, new Set(going), options.sliceMs ?? 5)) === 0) return [];
  await device.expirePoints(going.map((seq) => [seq, seq]));
  return going;
}

/**
 * What every expiry stands on: the journal synced (only durable seqs expire: a crash must not
 * hand an expired seq to a new write), the last durable seq, and the pinned seqs. (Rollback
 * targets need no pin: what a REVERT brings back is kept for the points after it.)
 */
async function expiryGround(device: JournaledDevice, options: Pick<RetentionOptions, 'pins'>): Promise<{ pins: Set<number>; durable: number }> {
  await device.syncThrough(device.history.seqLast);
  return { pins: new Set<number>(options.pins()), durable: Math.min(device.history.seqLast, device.durableSeq) };
}

/** Payload bytes compaction could drop if the points `going` expired too (nothing changes). */
async function reclaimableIf(device: JournaledDevice, going: ReadonlySet<number>, sliceMs: number): Promise<number> {
  const history = device.history;
  const expired = history.expired;
  let lastExpired = expired.length > 0 ? expired[expired.length - 1][1] : 0;
  for (const seq of going) lastExpired = Math.max(lastExpired, seq);
  const upTo = Math.min(device.sealedSeqLast(), lastExpired + 1);
  if (upTo < history.seqFirst) return 0;
  const visible = await visibleWrites(device, upTo, sliceMs, () => false, going);
  if (!visible) return 0;
  let bytes = 0;
  for (const segment of device.sealedSegments()) {
    for (const entry of segment.entries) {
      if (entry.type !== RecordType.WRITE || entry.seq > upTo || visible[entry.seq - history.seqFirst] === 1) continue;
      if (history.expiredRunOf(entry.seq) === null && !going.has(entry.seq)) continue;
      bytes += thinnableBytes(entry.payloadBytes, entry.flags);
    }
  }
  return bytes;
}

/** What one reclaim step did. */
export type ReclaimReport = Pick<RetentionReport, 'segmentsCompacted' | 'recordsThinned' | 'recordsCompressed' | 'bytesReclaimed'>;

/**
 * Step 2: drops the payloads no kept point shows, compacting the sealed segments where
 * enough can go (folded ones too). Clients keep being served; one segment at a time.
 */
export async function reclaimSpace(device: JournaledDevice, options: Pick<RetentionOptions, 'sliceMs' | 'reclaimShareMin' | 'runs'> & {
  nowUs?: number; cancelled?: () => boolean; analyseEveryMs?: number; thin?: boolean;
  /**
   * A compaction that frees space found no room for its copy: make some (let the daemon's
   * reserve go, SpaceReserve) and say whether any was made; it is then tried once more.
   * Other compactions without room (compression only) are skipped.
   */
  onNoSpace?: () => boolean;
}): Promise<ReclaimReport> {
  const history = device.history;
  // A quiet volume may take days to fill its 1 GiB segment: past SEAL_AFTER, what it holds
  // is sealed so it can be compressed and thinned too.
  const active = device.activeSegment();
  if (options.nowUs !== undefined && active.timeFirstUs !== null && active.bytes >= SEAL_BYTES_MIN && options.nowUs - active.timeFirstUs >= SEAL_AFTER_US) await device.seal();
  // What points expired since the last run leave without use goes from memory first: never
  // while the analysis below holds postings' places.
  await device.collapsePending();
  const report = { segmentsCompacted: 0, recordsThinned: 0, recordsCompressed: 0, bytesReclaimed: 0 };
  /** The last compaction that would have freed space but found no room for its copy. */
  let noRoom: HindsightError | null = null;
  const expired = history.expired;
  const lastExpired = expired.length > 0 ? expired[expired.length - 1][1] : 0;
  // Past the last expired seq every point is kept: every record there is needed.
  const upTo = Math.min(device.sealedSeqLast(), lastExpired + 1);
  const cancelled = options.cancelled ?? (() => false);
  // The analysis replays the history: only when something it depends on changed (more
  // points expired, more segments sealed), and (in the background) not more often than
  // `analyseEveryMs`.
  const state = { expired: countExpired(expired), sealed: upTo };
  const last = device.retention.lastAnalysis;
  const unchanged = last !== null && last.expired === state.expired && last.sealed === state.sealed;
  const tooSoon = last !== null && options.analyseEveryMs !== undefined && Date.now() - last.atMs < options.analyseEveryMs;
  const analyse = (options.thin ?? true) && upTo >= history.seqFirst && lastExpired > 0 && !unchanged && !tooSoon;
  const verdicts = analyse ? await analyseVisibility(device, upTo, options.sliceMs ?? 5, cancelled) : null;
  if (verdicts) device.retention.lastAnalysis = { ...state, atMs: Date.now() };
  // A record no kept point shows (2) may go; unknown (0) or shown (1) stays.
  const visible = verdicts ? { at: (seq: number) => verdicts[seq - history.seqFirst] !== 2 } : null;
  for (const segment of device.sealedSegments()) {
    if (cancelled()) break;
    // A sealed segment is compacted once to compress it, and again whenever enough of it
    // can go.
    const compress = device.compresses && !device.retention.compressedSegments.has(segment.segmentIndex);
    if (!compress && (visible === null || segment.seqFirst > upTo)) continue;
    const thinned = new Set<number>();
    let reclaimable = 0;
    let bytes = 0;
    for (const entry of segment.entries) {
      bytes += storedSpan(entry.payloadBytes, entry.flags);
      if (visible === null || entry.type !== RecordType.WRITE || entry.seq > upTo || visible.at(entry.seq)) continue;
      if (history.expiredRunOf(entry.seq) === null) continue;
      thinned.add(entry.seq);
      reclaimable += thinnableBytes(entry.payloadBytes, entry.flags);
    }
    const worth = thinned.size > 0 && reclaimable >= Math.max(RECLAIM_BYTES_MIN, bytes * (options.reclaimShareMin ?? 1 / 8));
    if (!worth && !compress) continue;
    // Compacted anyway (to compress): whatever can go, goes.
    const result = await roomy(() => device.compactSegment(segment.segmentIndex, thinned, cancelled), thinned.size > 0);
    if (result === 'no room') continue;
    if (!result) break; // the volume is closing
    addCompaction(report, result);
  }
  // Folded segments (History.fold): what no base shows any more can go.
  for (const segmentIndex of history.foldedSegments()) {
    if (cancelled()) break;
    const folded = history.foldedSegment(segmentIndex)!;
    const compress = device.compresses && !device.retention.compressedSegments.has(segmentIndex);
    let shown = 0;
    for (const bytes of folded.spans) shown += bytes;
    // (What is left of a folded segment is mostly small: rewriting it is cheap.)
    // (A replica too: it folds only where no rollback of its source can go back.)
    const share = (shown + folded.droppableBytes) * (options.reclaimShareMin ?? 1 / 8);
    const thin = folded.droppableBytes >= Math.max(4096, share);
    // Runs once per segment, when every replica holds all of it: its records that changed
    // nothing then cost an entry per run, not one each (whenever it is compacted anyway,
    // and alone when that saves enough).
    const runsAllowed = options.runs !== undefined && folded.seqLast < options.runs.below && !device.retention.runSegments.has(segmentIndex);
    const runnable = runnableRecords(folded);
    const runsWorth = runsAllowed && runnable >= RUN_RECORDS_MIN && runnable * PACK_ENTRY_BYTES >= share;
    if (!thin && !compress && !runsWorth) continue;
    const result = await roomy(() => device.compactSegment(segmentIndex, new Set(), cancelled, { thinUnshown: thin, runs: runsAllowed ? options.runs : undefined }), thin || runsWorth);
    if (result === 'no room') continue;
    if (!result) break;
    addCompaction(report, result);
  }
  // Compactions that would free space but found no room: the next run looks again, and a
  // run that freed nothing fails with the full disk (the volume shows it). Those that would
  // only compress wait for room.
  if (noRoom) device.retention.lastAnalysis = null;
  if (noRoom && report.bytesReclaimed === 0) throw noRoom;
  return report;

  /** A compaction, tried again once room is made if it frees space; 'no room' if it still finds none. */
  async function roomy<T>(compact: () => Promise<T>, freesSpace: boolean): Promise<T | 'no room'> {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await compact();
      } catch (err) {
        if (!isHindsightError(err, 'NO_SPACE')) throw err;
        if (freesSpace) noRoom = err;
        if (attempt > 0 || !freesSpace || !options.onNoSpace?.()) return 'no room';
      }
    }
  }
}

/** Counts one compaction in a run's report. */
function addCompaction(report: ReclaimReport, result: { recordsThinned: number; recordsCompressed: number; bytesBefore: number; bytesAfter: number }): void {
  report.segmentsCompacted += 1;
  report.recordsThinned += result.recordsThinned;
  report.recordsCompressed += result.recordsCompressed;
  report.bytesReclaimed += result.bytesBefore - result.bytesAfter;
}

/**
 * Which WRITE records up to `upTo` some kept point shows: verdicts per seq - seqFirst (1
 * shown, 2 not). The first time, the whole history is replayed; then only the stretches a
 * change can affect: around each run of points expired since (from the kept point before it
 * to the kept point after it — a record before that stretch is shown at its start, one
 * after it is untouched) and the records sealed since. A rollback in a stretch is replayed
 * with it; one past `upTo` keeps what its target shows.
 */
async function analyseVisibility(device: JournaledDevice, upTo: number, sliceMs: number, cancelled: () => boolean): Promise<Uint8Array | null> {
  const history = device.history;
  const state = device.retention;
  const previous = state.verdicts;
  if (previous === null || process.env.HINDSIGHT_RETENTION_FULL_ANALYSIS === '1') {
    const visible = await visibleWrites(device, upTo, sliceMs, cancelled);
    if (!visible) return null;
    const seen = new Uint8Array(upTo - history.seqFirst + 1);
    for (let i = 0; i < seen.length; i += 1) seen[i] = visible[i] === 1 ? 1 : 2;
    state.verdicts = { seen, upTo, expired: history.expired.map(([a, b]) => [a, b]) };
    return seen;
  }
  const seen = new Uint8Array(upTo - history.seqFirst + 1);
  seen.set(previous.seen.subarray(0, Math.min(previous.seen.length, seen.length)));
  // What changed: points expired since, and records sealed since.
  const changes: Array<[number, number]> = newlyExpired(previous.expired, history.expired, upTo);
  if (upTo > previous.upTo) changes.push([previous.upTo, upTo]);
  const keptBefore = (seq: number) => {
    let at = seq;
    for (let run = history.expiredRunOf(at); run !== null && at >= history.seqFirst; run = history.expiredRunOf(at)) at = run[0] - 1;
    return Math.max(0, at);
  };
  const keptAfter = (seq: number) => {
    let at = seq;
    for (let run = history.expiredRunOf(at); run !== null && at <= upTo; run = history.expiredRunOf(at)) at = run[1] + 1;
    return Math.min(upTo, at);
  };
  const bands = mergeBands(changes.map(([x, y]) => [keptBefore(x - 1), keptAfter(y + 1)] as [number, number]));
  const mark = (seq: number) => {
    seen[seq - history.seqFirst] = 1;
  };
  for (const [from, to] of bands) {
    // Not shown (2) unless a kept point in the stretch, or its end, shows it.
    for (let seq = Math.max(from + 1, history.seqFirst); seq <= to; seq += 1) seen[seq - history.seqFirst] = 2;
    const kept: number[] = [];
    for (let seq = from + 1; seq <= to; seq += 1) if (history.expiredRunOf(seq) === null) kept.push(seq);
    // A rollback after the stretch brings back what its target in the stretch shows: kept
    // for it (a full replay would see exactly what comes back; this keeps at least that).
    history.revertSeqs.forEach((revertSeq, i) => {
      const target = history.revertTargets[i];
      if (revertSeq > to && target > from && target <= to) kept.push(target);
    });
    kept.sort((a, b) => a - b);
    const regions = history.touchedRegions().filter((regionIndex) => history.touchedBetween(regionIndex, from, to));
    if (!(await replayRegions(device, regions, kept, to, mark, from, sliceMs, cancelled))) return null;
  }
  state.verdicts = { seen, upTo, expired: history.expired.map(([a, b]) => [a, b]) };
  if (process.env.HINDSIGHT_RETENTION_VERIFY_ANALYSIS === '1') {
    try {
      await verifyAgainstFull(device, seen, upTo, sliceMs);
    } catch (err) {
      // What a failure needs to be understood: the stretches this run analysed.
      throw new Error(`${(err as Error).message} (previous upTo ${previous.upTo}, upTo ${upTo}, stretches ${JSON.stringify(bands)})`);
    }
  }
  return seen;
}

/** Tests: a record the stretch-by-stretch verdicts drop must be one a full replay drops. */
async function verifyAgainstFull(device: JournaledDevice, seen: Uint8Array, upTo: number, sliceMs: number): Promise<void> {
  const history = device.history;
  const full = await visibleWrites(device, upTo, sliceMs, () => false);
  if (!full) return;
  for (let seq = history.seqFirst; seq <= upTo; seq += 1) {
    if (history.typeOf(seq) !== RecordType.WRITE || history.expiredRunOf(seq) === null) continue;
    // Keeping more than a full replay would is allowed (a rollback's target), less is not.
    if (seen[seq - history.seqFirst] === 2 && full[seq - history.seqFirst] === 1) throw new Error(`retention analysis: seq ${seq} is droppable by stretches, shown by a full replay`);
  }
}

/** The seqs expired in `now` and not in `before`, as runs, up to `upTo`. */
function newlyExpired(before: ReadonlyArray<readonly [number, number]>, now: ReadonlyArray<readonly [number, number]>, upTo: number): Array<[number, number]> {
  const added: Array<[number, number]> = [];
  let j = 0;
  for (const [a, b] of now) {
    let at = a;
    while (at <= b && at <= upTo) {
      while (j < before.length && before[j][1] < at) j += 1;
      const covering = j < before.length && before[j][0] <= at ? before[j] : null;
      if (covering) {
        at = covering[1] + 1;
        continue;
      }
      const end = Math.min(b, upTo, j < before.length ? before[j][0] - 1 : Infinity);
      added.push([at, end]);
      at = end + 1;
    }
  }
  return added;
}

function mergeBands(bands: Array<[number, number]>): Array<[number, number]> {
  const merged: Array<[number, number]> = [];
  for (const [a, b] of bands.sort((x, y) => x[0] - y[0])) {
    const last = merged[merged.length - 1];
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else merged.push([a, b]);
  }
  return merged;
}

/** Which WRITE records up to `upTo` some kept point (or `upTo`) shows: 1 at seq - seqFirst. */
async function visibleWrites(device: JournaledDevice, upTo: number, sliceMs: number, cancelled: () => boolean, alsoExpired: ReadonlySet<number> = new Set()): Promise<Uint8Array | null> {
  const history = device.history;
  const kept: number[] = [];
  let next = history.seqFirst;
  const keep = (seq: number) => {
    if (!alsoExpired.has(seq)) kept.push(seq);
  };
  for (const [a, b] of history.expired) {
    if (a > upTo) break;
    for (let seq = next; seq < a && seq <= upTo; seq += 1) keep(seq);
    next = b + 1;
  }
  for (let seq = next; seq <= upTo; seq += 1) keep(seq);
  // A rollback past `upTo` brings back what its target showed: kept for the points after it
  // (one at or before `upTo` is replayed, and what it brings back marked where it shows).
  history.revertSeqs.forEach((revertSeq, i) => {
    const target = history.revertTargets[i];
    if (revertSeq > upTo && target >= history.seqFirst && target <= upTo) kept.push(target);
  });
  kept.sort((a, b) => a - b);
  const visible = new Uint8Array(upTo - history.seqFirst + 1);
  const mark = (seq: number) => {
    visible[seq - history.seqFirst] = 1;
  };
  return (await replayRegions(device, [...history.touchedRegions()], kept, upTo, mark, 0, sliceMs, cancelled)) ? visible : null;
}

/**
 * History.visibleWrites over `regions`, in slices of `sliceMs` with equal rests; false if
 * cancelled on the way.
 */
async function replayRegions(device: JournaledDevice, regions: readonly number[], kept: number[], upTo: number, mark: (seq: number) => void, from: number, sliceMs: number, cancelled: () => boolean): Promise<boolean> {
  let sliceStart = performance.now();
  for (const regionIndex of regions) {
    for (const _ of device.history.visibleWrites(regionIndex, kept, upTo, mark, from)) {
      const spent = performance.now() - sliceStart;
      if (spent >= sliceMs) {
        if (cancelled()) return false;
        await new Promise((resolve) => setTimeout(resolve, Math.ceil(spent)));
        sliceStart = performance.now();
      }
    }
    if (cancelled()) return false;
  }
  return true;
}

function countExpired(runs: ReadonlyArray<readonly [number, number]>): number {
  let count = 0;
  for (const [a, b] of runs) count += b - a + 1;
  return count;
}
