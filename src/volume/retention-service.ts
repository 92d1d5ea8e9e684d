/**
 * Runs every volume's retention policy in the background (every minute by default), and on
 * demand (`hindsight volume thin NAME`). A run expires what the policy drops (serialised
 * with mounts, bookmarks and rollbacks, so no point being taken is lost under them), then
 * reclaims space, throttled. With a size cap (`--max-size`) the policy does not meet, the
 * oldest points go ahead of the policy, a quarter of those outside the `all` window at a
 * time — each time logged as a warning and recorded (retention.json), never silently; when
 * even that cannot meet the cap (bookmarks, mounts or the `all` window hold the data), the
 * volume shows a warning.
 */
import type { RetentionPolicy } from '../core/index.js';
import type { JournaledDevice } from './journaled-device.js';
import type { RunPolicy } from '../journal/index.js';
import { expireByPolicy, expireOldest, reclaimSpace } from './retention.js';

export interface RetentionTarget {
  device: JournaledDevice;
  policy: RetentionPolicy;
  maxSizeBytes: number | null;
  /**
   * false for a replica: it compresses but does not thin — a rollback its source made may
   * not have arrived yet, and could show again what looks unused here (its source thins,
   * and the thinned records arrive as such). It does drop what its folded segments no longer
   * show: it folds only where its source says no rollback goes back (foldHistory).
   */
  thin?: boolean;
  /** Which records of folded history may share run entries (pack.ts: below what every replica holds). */
  runs?: RunPolicy;
}

export interface RetentionHost {
  names(): string[];
  /** An online volume's device and policy, or null. */
  target(name: string): RetentionTarget | null;
  /** Seqs that must stay points: bookmarks, mounts, points commands and jobs are using. */
  pins(name: string): Iterable<number>;
  /** Runs `work` serialised with the commands that resolve and pin points. */
  serialise<T>(work: () => Promise<T>): Promise<T>;
  event(name: string, level: 'info' | 'warn', message: string, details: Record<string, unknown>): void;
  /** Lets the daemon's space reserve go (SpaceReserve): whether that made room. */
  releaseReserve?(): boolean;
  /** Makes the space reserve again, as far as there is room (after each run). */
  ensureReserve?(): Promise<void>;
}

export interface RetentionRun {
  volume: string;
  at: string;
  pointsExpired: number;
  /** Points expired ahead of the policy to meet --max-size (0 normally). */
  pointsForced: number;
  segmentsCompacted: number;
  recordsThinned: number;
  recordsCompressed: number;
  bytesReclaimed: number;
  /** Records folded out of memory (History.fold). */
  recordsFolded: number;
  journalBytes: number;
  durationMs: number;
}

/** Rounds of forced expiry per run (each removes a quarter of what may go, while it frees space). */
const FORCED_ROUNDS_MAX = 4;
/** A wall clock further ahead than this of the monotonic one pauses expiry. */
const CLOCK_JUMP_MS_MAX = 10 * 60_000;
/** The background runs' reclaim analysis (a replay of the history) at most this often. */
const ANALYSE_EVERY_MS = 10 * 60_000;

export class RetentionService {
  private timer: NodeJS.Timeout | null = null;
  private readonly running = new Map<string, Promise<RetentionRun>>();
  private stopped = false;
  /** Wall and monotonic clocks at start: a forward jump of the wall clock is seen. */
  private clockBase = { wallMs: Date.now(), monoMs: performance.now() };

  constructor(private readonly host: RetentionHost, private readonly intervalMs: number) {}

  start(): void {
    if (this.intervalMs <= 0 || this.timer) return;
    const tick = async () => {
      for (const name of this.host.names()) {
        if (this.stopped) return;
        try {
          if (this.host.target(name)) await this.run(name, false);
        } catch (err) {
          this.host.event(name, 'warn', 'retention run failed', { error: (err as Error).message });
        }
      }
      if (!this.stopped) this.timer = setTimeout(() => void tick(), this.intervalMs).unref();
    };
    this.timer = setTimeout(() => void tick(), this.intervalMs).unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await Promise.allSettled([...this.running.values()]);
  }

  /** Applies `name`'s policy now (joins a run already going). */
  run(name: string, onDemand = true): Promise<RetentionRun> {
    const going = this.running.get(name);
    if (going) return going;
    const run = this.runNow(name, onDemand).finally(() => this.running.delete(name));
    this.running.set(name, run);
    return run;
  }

  private async runNow(name: string, onDemand: boolean): Promise<RetentionRun> {
    const started = performance.now();
    const target = this.host.target(name);
    if (!target) throw new Error(`volume "${name}" is not online`);
    const { device, policy, maxSizeBytes, thin, runs } = target;
    const options = { pins: () => this.host.pins(name), nowUs: Date.now() * 1000 };
    const cancelled = () => this.stopped;
    // The wall clock must not have jumped ahead of the monotonic one since the daemon
    // started: a clock set a year forward would otherwise expire real history for good.
    // A run asked for by hand (`volume thin`) takes the clock as it is now.
    const jumpMs = Date.now() - this.clockBase.wallMs - (performance.now() - this.clockBase.monoMs);
    if (onDemand) {
      this.clockBase.wallMs = Date.now();
      this.clockBase.monoMs = performance.now();
    } else if (jumpMs > CLOCK_JUMP_MS_MAX) {
      this.host.event(name, 'warn', 'the wall clock is ahead of the time elapsed since the daemon started (set forward, or the machine slept): retention expires nothing until `hindsight volume thin NAME` confirms the clock', { jumpSeconds: Math.round(jumpMs / 1000) });
      throw new Error(`the wall clock jumped ${Math.round(jumpMs / 1000)} s ahead: retention skipped until volume thin confirms the clock`);
    }
    const pointsExpired = await this.host.serialise(() => expireByPolicy(device, policy, options));
    // In the background the reclaim analysis (a replay of the history) runs at most every
    // ANALYSE_EVERY_MS; on demand, now.
    const onNoSpace = () => {
      const freed = this.host.releaseReserve?.() ?? false;
      if (freed) this.host.event(name, 'warn', 'the disk is full: the space reserve was let go so that compaction could free space', {});
      return freed;
    };
    const reclaimed = await reclaimSpace(device, { nowUs: options.nowUs, cancelled, analyseEveryMs: onDemand ? undefined : ANALYSE_EVERY_MS, thin, runs, onNoSpace });
    let pointsForced = 0;
    for (let round = 0; maxSizeBytes !== null && device.stats().bytes > maxSizeBytes && round < FORCED_ROUNDS_MAX && !this.stopped; round += 1) {
      // Only points whose data lies in sealed segments: going, they can free space.
      const going = await this.host.serialise(() => expireOldest(device, policy, { ...options, share: 1 / 4, upTo: device.sealedSeqLast() }));
      if (going.length === 0) break;
      pointsForced += going.length;
      const history = device.history;
      const oldest = history.oldestKept();
      const details = {
        journalBytes: device.stats().bytes, maxSizeBytes, pointsExpired: going.length,
        from: new Date(history.timeOf(going[0]) / 1000).toISOString(), to: new Date(history.timeOf(going[going.length - 1]) / 1000).toISOString(),
        oldestPoint: oldest > 0 ? new Date(history.timeOf(oldest) / 1000).toISOString() : null,
      };
      device.retention.noteForced({ at: new Date().toISOString(), ...details });
      this.host.event(name, 'warn', 'the journal exceeds --max-size: the oldest points were removed ahead of the retention policy', details);
      const more = await reclaimSpace(device, { cancelled, runs, onNoSpace });
      for (const key of ['segmentsCompacted', 'recordsThinned', 'recordsCompressed', 'bytesReclaimed'] as const) reclaimed[key] += more[key];
      // Nothing freed: the rest is live data or not yet sealed. Removing more points would
      // destroy history for nothing; the warning says the cap is not met.
      if (more.bytesReclaimed === 0) break;
    }
    if (pointsForced > 0) await device.retention.save();
    // The records before the oldest kept point leave memory (History.fold).
    const recordsFolded = this.stopped ? 0 : await device.foldHistory(Math.min(Infinity, ...this.host.pins(name)));
    const run: RetentionRun = {
      volume: name, at: new Date().toISOString(), pointsExpired, pointsForced, ...reclaimed, recordsFolded,
      journalBytes: device.stats().bytes, durationMs: Math.round(performance.now() - started),
    };
    device.retention.lastRun = run;
    // The reserve again, as far as there is room now (a smaller one on a full disk).
    if (!this.stopped) await this.host.ensureReserve?.().catch(() => undefined);
    if (maxSizeBytes !== null && run.journalBytes > maxSizeBytes) {
      this.host.event(name, 'warn', 'the journal still exceeds --max-size: bookmarks, mounts or the policy\'s "all" window hold the rest', { journalBytes: run.journalBytes, maxSizeBytes });
    }
    if (run.pointsExpired + run.pointsForced + run.bytesReclaimed > 0) this.host.event(name, 'info', 'retention applied', { ...run });
    return run;
  }
}
