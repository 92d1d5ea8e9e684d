/**
 * Retention policies: which points in time a volume keeps as it ages.
 *
 * Grammar: tiers separated by commas, each `GRANULARITY:HORIZON`. `all:24h,1m:7d,1h:30d,1d:1y`
 * keeps every write for 24 hours, then one point per minute up to 7 days old, one per hour up
 * to 30 days, one per day up to a year; older points go. `all:forever` keeps everything.
 * Durations: whole numbers with s, m, h, d, w or y (365 days). Rules, so that a point kept by
 * a coarser tier was kept by every finer one before it (thinning only ever removes points
 * it has not removed yet): `all` may only be the first tier; granularities grow, and each is
 * a whole multiple of the one before; horizons grow; a granularity is below its horizon.
 *
 * The point a tier keeps in each interval of its granularity (aligned to the Unix epoch, UTC)
 * is the last record in it: the volume as it was at the end of that minute, hour or day.
 */
import { HindsightError } from './errors.js';

export interface RetentionTier {
  /** 0 = every point ("all"). */
  granularityUs: number;
  /** Infinity = forever. */
  horizonUs: number;
}

export interface RetentionPolicy {
  tiers: RetentionTier[];
  /** The policy as the user wrote it, normalised. */
  text: string;
}

export const DEFAULT_RETENTION = 'all:24h,1m:7d,1h:30d,1d:1y';

const UNIT_US: Record<string, number> = {
  s: 1e6, m: 60e6, h: 3600e6, d: 86_400e6, w: 7 * 86_400e6, y: 365 * 86_400e6,
};
const DURATION = /^([1-9]\d{0,6})([smhdwy])$/;

export function parseRetention(text: string): RetentionPolicy {
  const input = text.trim();
  if (input.length === 0 || input.length > 256) throw invalid(text, 'expected tiers such as all:24h,1m:7d,1h:30d,1d:1y');
  const tiers: RetentionTier[] = [];
  const parts = input.split(',').map((part) => part.trim());
  for (const [i, part] of parts.entries()) {
    const [granularity, horizon, extra] = part.split(':');
    if (horizon === undefined || extra !== undefined) throw invalid(text, `tier "${part}" is not GRANULARITY:HORIZON (e.g. 1m:7d)`);
    const granularityUs = granularity === 'all' ? 0 : duration(text, granularity);
    const horizonUs = horizon === 'forever' ? Infinity : duration(text, horizon);
    if (granularityUs === 0 && i > 0) throw invalid(text, `"all" can only be the first tier (every point, then coarser ones)`);
    if (granularityUs >= horizonUs) throw invalid(text, `tier "${part}": the granularity must be shorter than how long it is kept`);
    const previous = tiers[tiers.length - 1];
    if (previous) {
      if (previous.horizonUs === Infinity) throw invalid(text, `nothing can follow a tier kept forever`);
      if (horizonUs <= previous.horizonUs) throw invalid(text, `tier "${part}" must be kept longer than the tier before it`);
      if (previous.granularityUs > 0 && (granularityUs <= previous.granularityUs || granularityUs % previous.granularityUs !== 0)) {
        throw invalid(text, `tier "${part}": each granularity must be a whole multiple of the one before (e.g. 1m, then 1h, then 1d)`);
      }
    }
    tiers.push({ granularityUs, horizonUs });
  }
  return { tiers, text: parts.join(',') };
}

/** How long the policy keeps anything (Infinity: forever). */
export function retentionHorizonUs(policy: RetentionPolicy): number {
  return policy.tiers[policy.tiers.length - 1].horizonUs;
}

/** How long every single point is kept (0 without an `all` tier). */
export function keepAllUs(policy: RetentionPolicy): number {
  return policy.tiers[0].granularityUs === 0 ? policy.tiers[0].horizonUs : 0;
}

/**
 * The granularity that applies to a record `ageUs` old: 0 (every point kept), a bucket
 * length, or -1 (older than the policy keeps).
 */
export function granularityAt(policy: RetentionPolicy, ageUs: number): number {
  for (const tier of policy.tiers) if (ageUs < tier.horizonUs) return tier.granularityUs;
  return -1;
}

/**
 * Which of the records `seqFirst..seqLast` the policy keeps as points at `nowUs`: every
 * point in the `all` window, the last record of each interval of a tier's granularity,
 * every seq in `pins` (bookmarks, mounts, rollback targets, running jobs) and the last
 * record. Returns the runs of seqs it does not keep (inclusive, ascending): those points
 * expire. Record times never go backwards along seq. `expiredThrough(seq)`: the last seq of
 * a stretch from `seq` known expired already (seq - 1 if none), stepped over whole.
 */
export function expiringRuns(policy: RetentionPolicy, nowUs: number, timeOf: (seq: number) => number, seqFirst: number, seqLast: number, pins: ReadonlySet<number>,
  expiredThrough: (seq: number) => number = (seq) => seq - 1): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let runStart = 0;
  let seq = seqFirst;
  for (; seq <= seqLast; seq += 1) {
    const through = Math.min(expiredThrough(seq), seqLast - 1);
    if (through >= seq) {
      if (runStart === 0) runStart = seq;
      seq = through;
      continue;
    }
    const time = timeOf(seq);
    const granularity = granularityAt(policy, nowUs - time);
    if (granularity === 0) break; // from here on every point is kept (times only grow)
    let kept = seq === seqLast || pins.has(seq);
    if (!kept && granularity > 0) kept = Math.floor(timeOf(seq + 1) / granularity) !== Math.floor(time / granularity);
    if (!kept && runStart === 0) runStart = seq;
    if (kept && runStart !== 0) {
      runs.push([runStart, seq - 1]);
      runStart = 0;
    }
  }
  if (runStart !== 0) runs.push([runStart, seq - 1]);
  return runs;
}

function duration(text: string, value: string): number {
  const m = DURATION.exec(value);
  if (!m) throw invalid(text, `"${value}" is not a duration (whole number with s, m, h, d, w or y, e.g. 30d)`);
  return Number(m[1]) * UNIT_US[m[2]];
}

function invalid(text: string, reason: string): HindsightError {
  const shown = text.length > 64 ? `${text.slice(0, 64)}…` : text;
  return new HindsightError('RETENTION_INVALID', `invalid retention policy ${JSON.stringify(shown)}: ${reason}`);
}
