/**
 * The set of volumes in a data directory, and the mounts of their points in history. Each
 * volume is a directory `DATA/volumes/NAME/` holding `volume.json` (identity and size), its
 * journal, index checkpoint and bookmarks (docs/FORMAT.md); each mount one in
 * `DATA/mounts/NAME/` (mounts.ts). A volume that fails to open is kept in the list with its
 * error and is not exported; the others keep serving.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import pLimit from 'p-limit';
import { DEFAULT_RETENTION, HindsightError, LIMITS, assert, formatSize, formatTimeUs, fromSystemError, keepAllUs, parsePoint, parseRetention, retentionHorizonUs } from '../core/index.js';
import type { BlockDevice } from '../core/index.js';
import type { TimelineBucket } from '../index/index.js';
import { RecordType, crcSeedFor, listSegments, nodeFileLayer, segmentPath, tocPath } from '../journal/index.js';
import { copySegmentPrefix } from '../journal/compaction.js';
import { BookmarkStore } from './bookmarks.js';
import type { Bookmark } from './bookmarks.js';
import { JournaledDevice, verifyJournal } from './journaled-device.js';
import type { FsckReport } from './journaled-device.js';
import { createMountDirectory, mountInfo, newMountRecord, openMountDevice, readMountRecord, removeMountDirectory } from './mounts.js';
import type { Mount, MountInfo } from './mounts.js';
import { validateMountName, validateVolumeName, validateVolumeSize } from './names.js';
import { PointView } from './point-view.js';
import { resolvePoint } from './points.js';
import type { ResolvedPoint } from './points.js';
import { RetentionService } from './retention-service.js';
import { SpaceReserve } from './space-reserve.js';
import type { RetentionRun } from './retention-service.js';
import type { ForcedExpiry } from './retention-state.js';

/**
 * 2: every change journaled. (1 was the plain-file storage of early development builds,
 * before the journal; such a volume is refused with a clear message.)
 */
const FORMAT_VERSION = 2;
const syncDirectory = (directory: string) => nodeFileLayer.syncDirectory(directory);

interface VolumeRecord {
  formatVersion: number;
  id: string;
  name: string;
  sizeBytes: number;
  createdAt: string;
  readOnly?: boolean;
  /** Store only what changed (default true); false stores every write whole. */
  reduce?: boolean;
  /** Retention policy (default DEFAULT_RETENTION) and size cap of the journal (none by default). */
  retention?: { keep?: string; maxSizeBytes?: number | null };
  /**
   * Set while the volume is another site's replica (read-only to clients; records arrive by
   * replication). `image`: its first sync was the image at seq `seq` (holding points `kept`
   * too): the points before it are not here.
   */
  replica?: { from: string; since: string; image?: { seq: number; kept: number[] } };
  /**
   * Set by failover: the replica became a live volume at this seq. `runsBelow`: until a
   * failback onto its old source is done, retention's runs stay below what that site may
   * offer as the common seq (points it keeps, past the fold limit it last sent here).
   */
  promoted?: { at: string; seq: number; from: string; runsBelow?: number };
  /**
   * While no link replicates the volume, retention's runs (journal/pack.ts: records of folded
   * history that lose their own time and range) stay below this seq: what the receiver of a
   * link since removed holds (it may be linked again). Absent: no limit.
   */
  runsBelow?: number;
}

export interface VolumeSettings {
  readOnly?: boolean;
  reduce?: boolean;
  /** A retention policy (core/retention.ts). */
  keep?: string;
  /** Journal size cap in bytes; null removes it. */
  maxSizeBytes?: number | null;
}

export interface RetentionInfo {
  keep: string;
  maxSizeBytes: number | null;
  /** ok, or warning (the cap forced points out ahead of the policy, or cannot be met). */
  state: 'ok' | 'warning';
  warnings: string[];
  /** Points the policy (or the cap) removed so far, and what compaction reclaimed. */
  pointsExpired: number;
  recordsThinned: number;
  bytesReclaimed: number;
  /** Journal bytes written in the last hour, and what that rate means. */
  lastHourBytes: number;
  forecast: string;
  lastRun: RetentionRun | null;
  lastForced: ForcedExpiry | null;
}

export interface Volume {
  record: VolumeRecord;
  device: JournaledDevice | null;
  bookmarks: BookmarkStore | null;
  error: HindsightError | null;
  /** Not exported while set (a rollback is switching its content). */
  paused: boolean;
}

export interface PointInfo {
  seq: number;
  time: string;
}

export interface RollbackResult {
  volume: string;
  /** The point the volume now continues from. */
  seq: number;
  time: string;
  /** The REVERT record that says so. */
  revertSeq: number;
  revertTime: string;
  /** Seqs left behind on the old branch (still mountable by seq), or null if none. */
  abandoned: { seqFirst: number; seqLast: number } | null;
}

export interface Timeline {
  volume: string;
  from: string;
  to: string;
  stepMs: number;
  buckets: Array<Omit<TimelineBucket, 'fromUs' | 'toUs'> & { from: string; to: string }>;
  flushPoints: number;
  bookmarks: Array<{ name: string; seq: number; time: string }>;
}

/** Buckets one timeline answer may hold. */
const TIMELINE_BUCKETS_MAX = 10_000;
/** Points one listing may return. */
const POINTS_LIST_MAX = 10_000;

export interface VolumeInfo {
  name: string;
  id: string;
  sizeBytes: number;
  createdAt: string;
  readOnly: boolean;
  /** Only changed sectors stored, zero writes as zeroes (see README, "Space"). */
  reduce: boolean;
  state: 'online' | 'failed';
  error: { code: string; message: string } | null;
  /** Bytes on disk: journal segments and index checkpoint. */
  storedBytes: number;
  clientBytesWritten: number;
  /** journalBytes / clientBytesWritten (null before any write): what history costs per byte written. */
  storedPerWritten: number | null;
  journalBytes: number;
  journalSegments: number;
  /** Records in the journal (writes, zeroes, trims, flush markers); seqs run 1..seqLast. */
  records: number;
  seqFirst: number | null;
  /** The first seq whose record the history holds in memory (the older ones are folded: their points are long expired). */
  historySeqFirst: number | null;
  seqLast: number | null;
  seqDurable: number | null;
  timeFirst: string | null;
  timeLast: string | null;
  /** The oldest instant that can be restored (retention removes older ones). */
  oldestPoint: string | null;
  oldestPointSeq: number | null;
  retention: RetentionInfo;
  indexExtents: number;
  indexBytes: number;
  /** Memory of the history (every record since the first, for points in time). */
  historyBytes: number;
  /** Bookmarks and mounts of this volume. */
  bookmarks: number;
  mounts: number;
  /** Set while this volume is a replica: who sends it, since when. */
  replica: { from: string; since: string } | null;
  /** Set once a replica was promoted by failover. */
  promoted: { at: string; seq: number; from: string } | null;
}

export interface VolumeManagerOptions {
  dataDir: string;
  syncEveryWrite: boolean;
  /** How often every volume's retention policy is applied (default 60 s; 0: only on demand). */
  retentionIntervalMs?: number;
  /** Journal segment size (default LIMITS.journalSegmentBytesMax; tests use small ones). */
  segmentBytesMax?: number;
}

export class VolumeManager {
  private readonly volumes = new Map<string, Volume>();
  private readonly mounts = new Map<string, Mount>();
  private readonly volumesDir: string;
  private readonly mountsDir: string;
  /** Changes (create, delete, settings, replication's) one at a time, in order (a failed one does not stop the next). */
  private readonly serialise = pLimit(1);

  /** Told when a volume (or a mount of it) that was online is refused (damaged journal data found). */
  onVolumeFailed: (name: string, error: HindsightError) => void = () => undefined;
  /** Told what retention did (info) and when it removed points ahead of the policy (warn). */
  onRetentionEvent: (name: string, level: 'info' | 'warn', message: string, details: Record<string, unknown>) => void = () => undefined;
  /**
   * Asked before a rollback to `seq` of `name`: throws if that would break something else
   * (replication: a point the replica was never sent).
   */
  rollbackGuard: (name: string, seq: number) => void = () => undefined;
  /**
   * Set by replication: the seq below which the volume's folded history may lose its records'
   * own times and ranges (runs, pack.ts) — what its link's receiver holds; undefined without
   * a link (then the volume record's `runsBelow`, if any, applies).
   */
  historyRunsBelow: (name: string) => number | undefined = () => undefined;
  /** Seqs in use by commands and jobs (a restore running, a mount being made): kept as points. */
  private readonly pinned = new Map<string, Map<number, number>>();
  private readonly retention: RetentionService;
  /** Room for compaction when the disk is full (space-reserve.ts). */
  private readonly reserve: SpaceReserve;

  constructor(private readonly options: VolumeManagerOptions) {
    this.volumesDir = path.join(options.dataDir, 'volumes');
    this.mountsDir = path.join(options.dataDir, 'mounts');
    this.retention = new RetentionService({
      names: () => this.names(),
      target: (name) => {
        const volume = this.volumes.get(name);
        if (!volume?.device || volume.error || !volume.bookmarks) return null;
        // A stored policy that no longer parses (edited by hand, a newer version's) turns
        // retention off for that volume; volume info says so.
        // Folded history's records that changed nothing share run entries below what every
        // replica holds, never at a failover's seq (pack.ts, RunPolicy).
        const below = Math.min(this.historyRunsBelow(name) ?? volume.record.runsBelow ?? Infinity, volume.record.promoted?.runsBelow ?? Infinity);
        const runs = { below, exact: volume.record.promoted?.seq };
        // A replica's points expire when its source's do (replication mirrors them); its
        // own retention only reclaims and compresses.
        if (volume.record.replica) return { device: volume.device, policy: parseRetention('all:forever'), maxSizeBytes: null, thin: false, runs };
        const policy = policyOrError(volume.record);
        if (policy instanceof HindsightError) return null;
        return { device: volume.device, policy, maxSizeBytes: volume.record.retention?.maxSizeBytes ?? null, runs };
      },
      pins: (name) => this.pinsOf(name),
      serialise: (work) => this.serialise(work),
      event: (name, level, message, details) => this.onRetentionEvent(name, level, message, details),
      releaseReserve: () => this.reserve.release() > 0,
      ensureReserve: () => this.reserve.ensure(this.reserveWanted()),
    }, options.retentionIntervalMs ?? 60_000);
    this.reserve = new SpaceReserve(path.join(options.dataDir, 'reserve'));
  }

  /**
   * How large the space reserve should be: the largest copy a compaction may write (a
   * segment), as far as any volume's journal reaches that size.
   */
  private reserveWanted(): number {
    let largest = 0;
    for (const volume of this.volumes.values()) largest = Math.max(largest, volume.device?.stats().bytes ?? 0);
    return Math.min(this.options.segmentBytesMax ?? LIMITS.journalSegmentBytesMax, largest);
  }

  /** Bytes the space reserve holds (status). */
  get reserveBytes(): number {
    return this.reserve.bytes;
  }

  /** Starts applying retention policies in the background. */
  startRetention(): void {
    this.retention.start();
  }

  /** Applies a volume's retention policy now. */
  async thin(name: string): Promise<RetentionRun> {
    const policy = policyOrError(this.online(name).record);
    if (policy instanceof HindsightError) throw policy;
    return this.retention.run(name);
  }

  /**
   * Keeps `seq` of a volume as a point until the returned function is called (a restore
   * running). Call it in the same turn as the point was resolved.
   */
  pin(name: string, seq: number): () => void {
    let seqs = this.pinned.get(name);
    if (!seqs) this.pinned.set(name, seqs = new Map());
    seqs.set(seq, (seqs.get(seq) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (seqs.get(seq) ?? 1) - 1;
      if (left > 0) seqs.set(seq, left);
      else seqs.delete(seq);
    };
  }

  private pinsOf(name: string): number[] {
    const volume = this.volumes.get(name);
    return [
      ...(volume?.bookmarks?.list().map((bookmark) => bookmark.seq) ?? []),
      ...[...this.mounts.values()].filter((mount) => mount.record.volume === name && mount.record.volumeId === volume?.record.id).map((mount) => mount.record.seq),
      ...(this.pinned.get(name)?.keys() ?? []),
    ];
  }

  async open(): Promise<void> {
    for (const name of await entries(this.volumesDir)) {
      const volume = await this.load(name);
      this.volumes.set(name, volume);
      // After registering: a damaged record found at once must find the volume to refuse.
      // Then the history's snapshots are completed, also in the background.
      const device = volume.device;
      if (device) void device.scrub().catch(() => undefined).then(() => device.warmHistory());
    }
    for (const name of await entries(this.mountsDir)) this.mounts.set(name, await this.loadMount(name));
  }

  names(): string[] {
    return [...this.volumes.keys()].sort();
  }

  /** Online volumes and mounts only: what NBD may export under `name`. */
  device(name: string): BlockDevice | undefined {
    const volume = this.volumes.get(name);
    if (volume) return !volume.error && !volume.paused ? volume.device ?? undefined : undefined;
    const mount = this.mounts.get(name);
    return mount && !mount.error ? mount.device ?? undefined : undefined;
  }

  /** What NBD clients see as an export's description. */
  exportDescription(name: string): string {
    const mount = this.mounts.get(name)?.record;
    if (!mount) return `Hindsight volume ${name}`;
    const what = mount.writable ? 'writable clone of' : 'read-only point of';
    return `Hindsight ${what} ${mount.volume} at seq ${mount.seq} (${formatTimeUs(mount.timeUs)})`;
  }

  /** Every export name: volumes, then mounts. */
  exportNames(): string[] {
    return [...this.names(), ...[...this.mounts.keys()].sort()];
  }

  get(name: string): Volume {
    validateVolumeName(name);
    const volume = this.volumes.get(name);
    if (!volume) throw new HindsightError('VOLUME_NOT_FOUND', `no volume named "${name}"`);
    return volume;
  }

  async info(name: string): Promise<VolumeInfo> {
    const volume = this.get(name);
    const stats = volume.device?.stats();
    const storedBytes = await diskUsage(this.volumeDir(name));
    const time = (us: number | undefined) => (us ? new Date(Math.floor(us / 1000)).toISOString() : null);
    const hasRecords = (stats?.records ?? 0) > 0;
    const oldest = volume.device && hasRecords ? volume.device.history.oldestKept() : 0;
    return {
      name,
      id: volume.record.id,
      sizeBytes: volume.record.sizeBytes,
      createdAt: volume.record.createdAt,
      readOnly: (volume.record.readOnly ?? false) || volume.record.replica !== undefined,
      reduce: volume.record.reduce ?? true,
      state: volume.device && !volume.error ? 'online' : 'failed',
      error: volume.error ? volume.error.toJSON() : null,
      storedBytes,
      clientBytesWritten: stats?.clientBytesWritten ?? 0,
      storedPerWritten: stats && stats.clientBytesWritten > 0 ? Math.round((stats.bytes / stats.clientBytesWritten) * 10_000) / 10_000 : null,
      journalBytes: stats?.bytes ?? 0,
      journalSegments: stats?.segments ?? 0,
      records: stats?.records ?? 0,
      seqFirst: hasRecords ? 1 : null,
      historySeqFirst: hasRecords ? volume.device!.history.seqFirst : null,
      seqLast: hasRecords ? stats!.seqLast : null,
      seqDurable: hasRecords ? stats!.seqDurable : null,
      timeFirst: hasRecords ? time(stats!.timeFirstUs) : null,
      timeLast: hasRecords ? time(stats!.timeLastUs) : null,
      oldestPoint: oldest > 0 ? time(volume.device!.history.timeOf(oldest)) : null,
      oldestPointSeq: oldest > 0 ? oldest : null,
      retention: this.retentionInfo(volume),
      indexExtents: stats?.extents ?? 0,
      indexBytes: stats?.indexBytes ?? 0,
      historyBytes: stats?.historyBytes ?? 0,
      bookmarks: volume.bookmarks?.list().length ?? 0,
      mounts: [...this.mounts.values()].filter((mount) => mount.record.volume === name).length,
      replica: volume.record.replica ?? null,
      promoted: volume.record.promoted ?? null,
    };
  }

  private retentionInfo(volume: Volume): RetentionInfo {
    const keep = volume.record.retention?.keep ?? DEFAULT_RETENTION;
    const maxSizeBytes = volume.record.retention?.maxSizeBytes ?? null;
    const device = volume.device;
    const state = device?.retention;
    const journalBytes = device?.stats().bytes ?? 0;
    const nowUs = Date.now() * 1000;
    const lastHourBytes = device ? device.history.journalBytesSince(nowUs - 3600e6) : 0;
    const policy = policyOrError(volume.record);
    const warnings: string[] = [];
    if (policy instanceof HindsightError) warnings.push(`${policy.message}: retention is off until \`hindsight volume set ${volume.record.name} --keep POLICY\` sets a valid one`);
    if (maxSizeBytes !== null && journalBytes > maxSizeBytes) {
      warnings.push(`the journal (${formatSize(journalBytes)}) exceeds --max-size ${formatSize(maxSizeBytes)}: bookmarks, mounts or the "all" window hold it; older points go ahead of the policy at each run`);
    }
    // The history's memory grows with the writes kept points show (History.fold frees what is
    // older than the oldest kept point, collapseSegments the rest no kept point needs): say so early.
    const historyBytes = device?.stats().historyBytes ?? 0;
    if (historyBytes > HISTORY_BYTES_WARN) {
      warnings.push(`the history of this volume holds ${formatSize(historyBytes)} of memory: about 70 bytes for each write since the oldest point kept that a kept point still shows — a shorter retention policy, coarser tiers (or fewer bookmarks on old points) free it`);
    }
    const lastForced = state?.lastForced ?? null;
    if (lastForced && Date.parse(lastForced.at) > Date.now() - 86_400_000) {
      warnings.push(`at ${lastForced.at}, --max-size removed ${lastForced.pointsExpired} points (${lastForced.from} .. ${lastForced.to}) ahead of the policy`);
    }
    return {
      keep, maxSizeBytes, state: warnings.length > 0 ? 'warning' : 'ok', warnings,
      pointsExpired: device ? device.history.expired.reduce((sum, [a, b]) => sum + b - a + 1, 0) : 0,
      recordsThinned: state?.recordsThinned ?? 0,
      bytesReclaimed: state?.bytesReclaimed ?? 0,
      lastHourBytes,
      forecast: policy instanceof HindsightError ? 'retention is off: the stored policy is invalid' : forecast(policy, journalBytes, lastHourBytes, maxSizeBytes),
      lastRun: (state?.lastRun as RetentionRun | undefined) ?? null,
      lastForced,
    };
  }

  create(name: string, sizeBytes: number, settings: Pick<VolumeSettings, 'keep' | 'maxSizeBytes'> = {}): Promise<VolumeInfo> {
    return this.serialise(async () => {
      const retention = retentionSettings(undefined, settings);
      return this.createNow({ formatVersion: FORMAT_VERSION, id: randomUUID(), name, sizeBytes, createdAt: new Date().toISOString(), ...(retention ? { retention } : {}) });
    });
  }

  /**
   * Creates the replica `name` of another site's volume: the same id (the records' CRCs are
   * seeded with it) and size, read-only to clients, filled by replication.
   */
  createReplica(name: string, sizeBytes: number, id: string, from: string): Promise<VolumeInfo> {
    return this.serialise(async () => {
      if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(id)) throw new HindsightError('PROTOCOL_ERROR', 'a volume id is a lower-case uuid');
      const now = new Date().toISOString();
      return this.createNow({ formatVersion: FORMAT_VERSION, id, name, sizeBytes, createdAt: now, replica: { from, since: now } });
    });
  }

  private async createNow(record: VolumeRecord): Promise<VolumeInfo> {
    {
      const { name, sizeBytes } = record;
      validateVolumeName(name);
      validateVolumeSize(sizeBytes);
      if (this.volumes.has(name)) throw new HindsightError('VOLUME_EXISTS', `volume "${name}" already exists`);
      if (this.mounts.has(name)) throw new HindsightError('VOLUME_EXISTS', `a mount named "${name}" exists (volumes and mounts share the NBD export names)`);
      const staging = path.join(this.volumesDir, `.create-${record.id}`);
      try {
        await fs.mkdir(staging);
        await writeRecord(staging, record);
        await syncDirectory(staging);
        await fs.rename(staging, this.volumeDir(name));
        await syncDirectory(this.volumesDir);
      } catch (err) {
        await fs.rm(staging, { recursive: true, force: true });
        throw fromSystemError(err, `creating volume ${name}`);
      }
      this.volumes.set(name, await this.load(name));
      return this.info(name);
    }
  }

  // ---- replication ----

  /**
   * Where retention's runs stop while no link replicates `name` (VolumeRecord.runsBelow): set
   * as a link goes, to what its receiver held.
   */
  setHistoryRunsBelow(name: string, seq: number): Promise<void> {
    // (The last receiver's: one linked before it and linked again may meet runs.)
    return this.changeRecord(name, (record) => ({ ...record, runsBelow: seq }));
  }

  /** A failback onto the site `name` was failed over from is done: its runs floor goes (VolumeRecord promoted.runsBelow). */
  failedBack(name: string): Promise<void> {
    return this.changeRecord(name, (record) => {
      if (record.promoted?.runsBelow === undefined) return null;
      const { runsBelow: _done, ...promoted } = record.promoted;
      return { ...record, promoted };
    });
  }

  /** Writes the volume.json of `name` (if it is here) as `change` makes it (null: unchanged), serialised with other changes. */
  private changeRecord(name: string, change: (record: VolumeRecord) => VolumeRecord | null): Promise<void> {
    return this.serialise(async () => {
      const volume = this.volumes.get(name);
      const record = volume ? change(volume.record) : null;
      if (!volume || !record) return;
      await this.writeVolumeRecord(name, record);
      volume.record = record;
    });
  }

  /** An online volume's device, bookmarks and identity (replication's source or receiver). */
  replicationView(name: string): { device: JournaledDevice; bookmarks: BookmarkStore; id: string; sizeBytes: number; replica: VolumeRecord['replica'] | null; promoted: VolumeRecord['promoted'] | null } {
    const volume = this.online(name);
    return { device: volume.device, bookmarks: volume.bookmarks, id: volume.record.id, sizeBytes: volume.record.sizeBytes, replica: volume.record.replica ?? null, promoted: volume.record.promoted ?? null };
  }

  /**
   * A replica mirrors its source's expired points: in memory at once (refused from now on),
   * on disk when `saveReplicatedExpiry` is called — which the receiver does before any thinned
   * record (a write whose data its source reclaimed) is appended: such a record must never be
   * on disk outside the runs retention.json lists. Saving for every batch of an initial sync
   * would cost a file sync each.
   */
  expireReplicated(name: string, runs: Array<[number, number]>): void {
    const device = this.replicaDevice(name);
    const fresh = runs.filter(([a, b]) => {
      const run = device.history.expiredRunOf(a);
      return !(run && run[1] >= b);
    });
    if (fresh.length > 0) device.expireInHistory(fresh);
  }

  /** How far a replica may fold its history, as its source says (JournaledDevice.setReplicaFoldLimit). */
  foldLimitReplicated(name: string, seq: number): void {
    this.replicaDevice(name).setReplicaFoldLimit(seq);
  }

  /** Saves a replica's expired runs if they changed since the last save. */
  saveReplicatedExpiry(name: string): Promise<void> {
    return this.serialise(async () => {
      const device = this.replicaDevice(name);
      if (device.retention.unsaved) await device.retention.save();
    });
  }

  /** Records that a replica's first sync is the image at `image.seq` (see VolumeRecord.replica). */
  setReplicaImage(name: string, image: { seq: number; kept: number[] }): Promise<void> {
    return this.serialise(async () => {
      const volume = this.online(name);
      if (!volume.record.replica) throw new HindsightError('PROTOCOL_ERROR', `volume "${name}" is not a replica`);
      const current = volume.record.replica.image;
      if (current && current.seq === image.seq && current.kept.join() === image.kept.join()) return;
      const record: VolumeRecord = { ...volume.record, replica: { ...volume.record.replica, image } };
      await this.writeVolumeRecord(name, record);
      volume.record = record;
    });
  }

  /** A replica mirrors its source's bookmarks. */
  bookmarksReplicated(name: string, bookmarks: Bookmark[]): Promise<void> {
    return this.serialise(async () => {
      const volume = this.online(name);
      if (!volume.record.replica) throw new HindsightError('PROTOCOL_ERROR', `volume "${name}" is not a replica`);
      await volume.bookmarks.replaceAll(bookmarks.filter((bookmark) => bookmark.seq <= volume.device.history.seqLast));
    });
  }

  /**
   * Failback, at the site that receives: the live volume `name` becomes a replica of
   * `from`'s volume (same id), keeping records 1..`commonSeq` — the history both sites
   * share. Records after it (written here after the sites diverged) are not destroyed: the
   * volume as it was moves to a new volume NAME.diverged-TIME (readable, mountable,
   * exportable). The new replica's journal shares the sealed segments (hard links) and
   * copies only the part of the segment holding `commonSeq`. Refused while NBD clients or
   * mounts use the volume.
   */
  convertToReplica(name: string, commonSeq: number, from: string, clients: () => number): Promise<{ diverged: string | null }> {
    return this.serialise(async () => {
      const volume = this.online(name);
      if (volume.record.replica) throw new HindsightError('IS_REPLICA', `volume "${name}" is already a replica`);
      if (clients() > 0) throw new HindsightError('VOLUME_BUSY', `volume "${name}" has connected NBD clients; stop them before failing back`);
      const mounts = [...this.mounts.values()].filter((mount) => mount.record.volume === name);
      if (mounts.length > 0) throw new HindsightError('VOLUME_BUSY', `volume "${name}" has mounts (${mounts.map((mount) => mount.record.name).join(', ')}); unmount them before failing back`);
      const device = volume.device;
      await device.sync();
      const seqLast = device.lastSeq;
      assert(commonSeq >= 0 && commonSeq <= seqLast, 'the common seq is in the history');
      const now = new Date().toISOString();
      // (Its last link's receiver is its source now: no floor for runs left to keep.)
      const { promoted: _promoted, runsBelow: _runsBelow, ...rest } = volume.record;
      const record: VolumeRecord = { ...rest, replica: { from, since: now } };
      this.volumes.delete(name);
      // Closing waits for a compaction being installed: positions are final after it.
      await device.close();
      // Where the shared history ends: segment and position after record `commonSeq`.
      let cut: { segment: number; seqFirst: number } | null = null;
      if (commonSeq > 0) {
        const segment = device.entryAt(commonSeq).segment;
        cut = { segment, seqFirst: device.segmentEntries(segment, false)!.seqFirst };
      }
      if (commonSeq === seqLast) {
        // Nothing diverged: the same journal continues as a replica, unfolded (it folds again
        // as far as its new source allows: its own fold may have gone past a point the new
        // source keeps and could roll back to).
        const retentionFile = path.join(this.volumeDir(name), 'retention.json');
        const text = await fs.readFile(retentionFile, 'utf8').catch(() => null);
        if (text !== null) await nodeFileLayer.writeFileAtomic(retentionFile, Buffer.from(withoutFold(text)));
        await this.writeVolumeRecord(name, record);
        const reloaded = await this.load(name);
        this.volumes.set(name, reloaded);
        return { diverged: null };
      }
      const stamp = now.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
      const diverged = `${name.slice(0, 64 - 26)}.diverged-${stamp}`;
      let moved = false;
      const staging = path.join(this.volumesDir, `.create-${randomUUID()}`);
      try {
        await fs.rename(this.volumeDir(name), this.volumeDir(diverged));
        moved = true;
        await syncDirectory(this.volumesDir);
        await this.writeVolumeRecord(diverged, { ...volume.record, name: diverged });
        const oldJournal = path.join(this.volumeDir(diverged), 'journal');
        const newJournal = path.join(staging, 'journal');
        await fs.mkdir(newJournal, { recursive: true });
        for (const segment of cut ? listSegments(nodeFileLayer, oldJournal) : []) {
          const from = segmentPath(oldJournal, segment);
          const to = segmentPath(newJournal, segment);
          if (segment < cut!.segment) {
            await fs.link(from, to);
            // Its table of contents too (the same records): no full read at the first open.
            await fs.link(tocPath(oldJournal, segment), tocPath(newJournal, segment)).catch(() => undefined);
          } else if (segment === cut!.segment) {
            await copySegmentPrefix({ files: nodeFileLayer, directory: oldJournal, crcSeed: crcSeedFor(volumeIdOf(volume.record)) }, segment, cut!.seqFirst, commonSeq, to);
          }
        }
        for (const file of ['retention.json', 'bookmarks.json']) {
          const text = await fs.readFile(path.join(this.volumeDir(diverged), file), 'utf8').catch(() => null);
          if (text === null) continue;
          let content = text;
          if (file === 'bookmarks.json') {
            content = `${JSON.stringify({ bookmarks: ((JSON.parse(text) as { bookmarks?: Bookmark[] }).bookmarks ?? []).filter((bookmark) => bookmark.seq <= commonSeq) }, null, 2)}\n`;
          } else {
            // The boundary segment, cut short, takes new records: compressed again later.
            const state = JSON.parse(withoutFold(text)) as { compressedSegments?: number[]; runSegments?: number[] };
            state.compressedSegments = (state.compressedSegments ?? []).filter((segment) => cut === null || segment < cut.segment);
            if (state.runSegments) state.runSegments = state.runSegments.filter((segment) => cut === null || segment < cut.segment);
            content = `${JSON.stringify(state)}\n`;
          }
          await fs.writeFile(path.join(staging, file), content, { flush: true });
        }
        await writeRecord(staging, record);
        await syncDirectory(newJournal);
        await syncDirectory(staging);
        await fs.rename(staging, this.volumeDir(name));
        await syncDirectory(this.volumesDir);
      } catch (err) {
        await fs.rm(staging, { recursive: true, force: true });
        // Not moved: the volume is as it was. Moved: it lives on under the new name.
        if (moved) this.volumes.set(diverged, await this.load(diverged));
        else this.volumes.set(name, await this.load(name));
        throw fromSystemError(err, `failing back volume ${name}`);
      }
      this.volumes.set(diverged, await this.load(diverged));
      this.volumes.set(name, await this.load(name));
      return { diverged };
    });
  }

  private replicaDevice(name: string): JournaledDevice {
    const volume = this.online(name);
    if (!volume.record.replica) throw new HindsightError('PROTOCOL_ERROR', `volume "${name}" is not a replica`);
    return volume.device;
  }

  /**
   * Failover: the replica becomes a live, writable volume (served over NBD for writes from
   * now on); replication into it must have stopped. With `at`, it then rolls back to that
   * point (a new branch: the newer records stay readable by seq).
   */
  promote(name: string, at: string | undefined, clients: () => number, detach: (exportName: string) => Promise<void>): Promise<VolumeInfo & { rollback: RollbackResult | null }> {
    const promoted = this.serialise(async () => {
      const volume = this.online(name);
      if (!volume.record.replica) throw new HindsightError('INVALID_ARGUMENT', `volume "${name}" is not a replica: nothing to fail over`);
      if (at !== undefined) resolvePoint(name, volume.device.history, volume.bookmarks, at);
      await volume.device.sync();
      // Runs its source expired past what arrived would refuse this volume's own new points.
      const seqLast = volume.device.history.seqLast;
      const clipped = volume.device.history.expired.filter(([a]) => a <= seqLast).map(([a, b]) => [a, Math.min(b, seqLast)] as [number, number]);
      if (clipped.length !== volume.device.history.expired.length || clipped.some(([, b], i) => b !== volume.device.history.expired[i][1])) {
        volume.device.history.setExpired(clipped);
      }
      if (volume.device.retention.unsaved) await volume.device.retention.save();
      const { replica, ...rest } = volume.record;
      // Its runs stay below what its old source may offer at a failback (points it keeps: past
      // the last fold limit it sent here), whatever retention does here meanwhile.
      const runsBelow = Math.max(volume.device.foldLimitAsReplica, volume.device.history.seqFirst);
      const record: VolumeRecord = { ...rest, promoted: { at: new Date().toISOString(), seq: volume.device.history.seqLast, from: replica.from, runsBelow } };
      await this.writeVolumeRecord(name, record);
      volume.record = record;
      volume.device.setReadOnly(record.readOnly ?? false);
      volume.device.promoted();
    });
    return promoted.then(async () => {
      const rollback = at === undefined ? null : await this.rollback(name, at, true, clients, detach);
      return { ...(await this.info(name)), rollback };
    });
  }

  /**
   * Removes a volume. It disappears from the catalog first (no new client can attach), then
   * `detach` disconnects the clients still attached, then the device closes.
   */
  delete(name: string, detach: (exportName: string) => Promise<void>, force = false): Promise<void> {
    return this.serialise(async () => {
      const volume = this.get(name);
      const mounts = [...this.mounts.values()].filter((mount) => mount.record.volume === name);
      if (mounts.length > 0 && !force) {
        throw new HindsightError('VOLUME_BUSY', `volume "${name}" has ${mounts.length} mount(s) (${mounts.map((mount) => mount.record.name).join(', ')}); unmount them or use --force`);
      }
      for (const mount of mounts) await this.unmountNow(mount.record.name, detach);
      this.volumes.delete(name);
      await detach(name);
      await volume.device?.close().catch(() => undefined);
      const trash = path.join(this.volumesDir, `.delete-${randomUUID()}`);
      try {
        await fs.rename(this.volumeDir(name), trash);
        await syncDirectory(this.volumesDir);
        await fs.rm(trash, { recursive: true, force: true });
      } catch (err) {
        throw fromSystemError(err, `deleting volume ${name}`);
      }
    });
  }

  /** Switches a volume between read-only and writable; persisted in volume.json. */
  setReadOnly(name: string, readOnly: boolean): Promise<VolumeInfo> {
    return this.update(name, { readOnly });
  }

  /** Changes a volume's settings (read-only, reduction, retention); persisted in volume.json. */
  update(name: string, changes: VolumeSettings): Promise<VolumeInfo> {
    return this.serialise(async () => {
      const volume = this.get(name);
      if (changes.readOnly === false || changes.keep !== undefined || changes.maxSizeBytes !== undefined) refuseReplica(volume.record, 'its retention and writes follow its source; fail over first');
      const { keep, maxSizeBytes, ...flags } = changes;
      const retention = retentionSettings(volume.record.retention, { keep, maxSizeBytes });
      const record: VolumeRecord = { ...volume.record, ...flags, ...(retention ? { retention } : {}) };
      await this.writeVolumeRecord(name, record);
      volume.record = record;
      if (changes.readOnly !== undefined) volume.device?.setReadOnly(changes.readOnly);
      if (changes.reduce !== undefined) volume.device?.setReduce(changes.reduce);
      return this.info(name);
    });
  }

  /** Replaces volume.json atomically and durably. */
  private async writeVolumeRecord(name: string, record: VolumeRecord): Promise<void> {
    const temporary = path.join(this.volumesDir, `.update-${randomUUID()}`);
    try {
      await fs.mkdir(temporary, { recursive: true });
      await writeRecord(temporary, record);
      await fs.rename(path.join(temporary, 'volume.json'), path.join(this.volumeDir(name), 'volume.json'));
      await syncDirectory(this.volumeDir(name));
    } catch (err) {
      throw fromSystemError(err, `updating volume ${name}`);
    } finally {
      await fs.rm(temporary, { recursive: true, force: true });
    }
  }

  /** Checks one volume's journal and index (see JournaledDevice.fsck); works on failed volumes too. */
  async fsck(name: string, rebuildIndex: boolean): Promise<FsckReport & { name: string; state: 'online' | 'failed' }> {
    const volume = this.get(name);
    if (volume.device) {
      const report = await volume.device.fsck(rebuildIndex);
      return { name, state: volume.error ? 'failed' : 'online', ...report };
    }
    if (!volume.record.id) {
      return { name, state: 'failed', records: 0, journalBytes: 0, indexRebuilt: false, indexCompared: false, problems: [{ kind: 'journal', segment: null, offsetBytes: null, message: volume.error?.message ?? 'volume cannot be read' }] };
    }
    const verified = await verifyJournal({ directory: this.volumeDir(name), files: nodeFileLayer, volumeId: volumeIdOf(volume.record), sizeBytes: volume.record.sizeBytes, replica: volume.record.replica !== undefined });
    const problems = verified.problems.length > 0 ? verified.problems : [{ kind: 'journal' as const, segment: null, offsetBytes: null, message: `journal checks out, but the volume failed to open: ${volume.error?.message}` }];
    return { name, state: 'failed', records: verified.records, journalBytes: 0, indexRebuilt: false, indexCompared: false, problems };
  }

  /** A volume that is online (served), with its device and bookmarks. */
  private online(name: string): Volume & { device: JournaledDevice; bookmarks: BookmarkStore } {
    const volume = this.get(name);
    if (volume.error || !volume.device || !volume.bookmarks) {
      throw volume.error ?? new HindsightError('VOLUME_CORRUPT', `volume "${name}" is not online`);
    }
    return volume as Volume & { device: JournaledDevice; bookmarks: BookmarkStore };
  }

  /** Resolves a point (`--at`) in one volume's history. */
  resolve(name: string, at: string): ResolvedPoint {
    const volume = this.online(name);
    return resolvePoint(name, volume.device.history, volume.bookmarks, at);
  }

  /** A read-only view of a volume at a seq (restore, export). */
  view(name: string, seq: number): PointView {
    return new PointView(`${name}@${seq}`, this.online(name).device, seq);
  }

  // ---- mounts ----

  mountList(volume?: string): MountInfo[] {
    return [...this.mounts.values()].filter((mount) => volume === undefined || mount.record.volume === volume)
      .map(mountInfo).sort((a, b) => a.name.localeCompare(b.name));
  }

  mountGet(name: string): MountInfo {
    validateMountName(name);
    const mount = this.mounts.get(name);
    if (!mount) throw new HindsightError('MOUNT_NOT_FOUND', `no mount named "${name}"`);
    return mountInfo(mount);
  }

  /**
   * Presents a point as a new export: read-only, or a writable clone whose writes go to its
   * own journal. Copies nothing: it takes the same time whatever the volume's size or age.
   */
  mount(volumeName: string, at: string, options: { name?: string; writable?: boolean }): Promise<MountInfo> {
    return this.serialise(async () => {
      const volume = this.online(volumeName);
      const point = resolvePoint(volumeName, volume.device.history, volume.bookmarks, at);
      const writable = options.writable ?? false;
      const name = validateMountName(options.name ?? `${volumeName}@${point.seq}${writable ? '-rw' : ''}`);
      const existing = this.mounts.get(name);
      if (existing) {
        // Mounting the same point read-only twice is harmless: the existing mount answers.
        const same = !writable && !existing.record.writable && existing.record.volume === volumeName && existing.record.seq === point.seq && options.name === undefined;
        if (same) return mountInfo(existing);
        throw new HindsightError('MOUNT_EXISTS', `a mount named "${name}" already exists (${existing.record.volume} at seq ${existing.record.seq}); choose another --name`);
      }
      if (this.volumes.has(name)) throw new HindsightError('MOUNT_EXISTS', `a volume named "${name}" exists (volumes and mounts share the NBD export names); choose another --name`);
      if (this.mounts.size >= LIMITS.mountsMax) throw new HindsightError('LIMIT_REACHED', `${this.mounts.size} mounts exist (at most ${LIMITS.mountsMax}); unmount some first`);
      await volume.device.syncThrough(point.seq);
      const record = newMountRecord(name, volumeName, volume.record.id, point.seq, point.timeUs, writable);
      await createMountDirectory(this.mountsDir, record);
      let device;
      try {
        device = openMountDevice(this.mountsDir, record, volume.device, this.options.syncEveryWrite, (error) => this.failMount(name, error));
      } catch (err) {
        await removeMountDirectory(this.mountsDir, record).catch(() => undefined);
        throw err;
      }
      const mount: Mount = { record, device, error: null };
      this.mounts.set(name, mount);
      return mountInfo(mount);
    });
  }

  /** Removes a mount: hidden from NBD first, clients disconnected, a clone's data deleted. */
  unmount(name: string, detach: (exportName: string) => Promise<void>): Promise<MountInfo> {
    return this.serialise(() => this.unmountNow(name, detach));
  }

  private async unmountNow(name: string, detach: (exportName: string) => Promise<void>): Promise<MountInfo> {
    const info = this.mountGet(name);
    const mount = this.mounts.get(name)!;
    this.mounts.delete(name);
    await detach(name);
    // A read-only view frees its cached regions now; a clone's base view leaves them to age
    // out of the daemon-wide cache.
    if (mount.device instanceof JournaledDevice) await mount.device.close().catch(() => undefined);
    else mount.device?.close();
    await removeMountDirectory(this.mountsDir, mount.record);
    return info;
  }

  private async loadMount(name: string): Promise<Mount> {
    let record;
    try {
      record = await readMountRecord(this.mountsDir, name);
    } catch (err) {
      const error = err instanceof HindsightError ? err : fromSystemError(err, `loading mount ${name}`);
      return { record: { formatVersion: 0, id: '', name, volume: '', volumeId: '', seq: 0, timeUs: 0, writable: false, createdAt: '' }, device: null, error };
    }
    const source = this.volumes.get(record.volume);
    if (!source || source.record.id !== record.volumeId) {
      return { record, device: null, error: new HindsightError('VOLUME_NOT_FOUND', `mount "${name}": its volume "${record.volume}" no longer exists`) };
    }
    if (!source.device || source.error) {
      return { record, device: null, error: new HindsightError('VOLUME_CORRUPT', `mount "${name}": its volume "${record.volume}" is not online (${source.error?.message ?? 'failed'})`) };
    }
    const history = source.device.history;
    if (record.seq < history.seqFirst) {
      return { record, device: null, error: new HindsightError('POINT_EXPIRED', `mount "${name}": its point (seq ${record.seq} at ${formatTimeUs(record.timeUs)}) is older than the history kept for "${record.volume}"; unmount it`) };
    }
    if (record.seq <= history.seqLast && history.expiredRunOf(record.seq) !== null) {
      return { record, device: null, error: new HindsightError('POINT_EXPIRED', `mount "${name}": its point (seq ${record.seq} at ${formatTimeUs(record.timeUs)}) was removed by the retention policy of "${record.volume}"; unmount it`) };
    }
    if (record.seq > history.seqLast || history.timeOf(record.seq) !== record.timeUs) {
      const now = record.seq > history.seqLast ? `the journal ends at seq ${history.seqLast}` : `seq ${record.seq} is now a record of ${formatTimeUs(history.timeOf(record.seq))}`;
      return { record, device: null, error: new HindsightError('POINT_NOT_FOUND', `mount "${name}": its point (seq ${record.seq} at ${formatTimeUs(record.timeUs)}) is not in the history of "${record.volume}" any more (${now}); unmount it`) };
    }
    try {
      const device = openMountDevice(this.mountsDir, record, source.device, this.options.syncEveryWrite, (error) => this.failMount(name, error));
      if (device instanceof JournaledDevice) void device.scrub().catch(() => undefined);
      return { record, device, error: null };
    } catch (err) {
      return { record, device: null, error: err instanceof HindsightError ? err : fromSystemError(err, `opening mount ${name}`) };
    }
  }

  // ---- bookmarks ----

  bookmarkList(volumeName: string): Array<Bookmark & { time: string }> {
    return this.online(volumeName).bookmarks.list().map((bookmark) => ({ ...bookmark, time: formatTimeUs(bookmark.timeUs) }));
  }

  bookmarkCreate(volumeName: string, name: string, at = 'latest'): Promise<Bookmark & { time: string }> {
    return this.serialise(async () => {
      const volume = this.online(volumeName);
      refuseReplica(volume.record, 'bookmarks come from its source');
      const point = resolvePoint(volumeName, volume.device.history, volume.bookmarks, at);
      await volume.device.syncThrough(point.seq);
      const bookmark = await volume.bookmarks.create({ name, seq: point.seq, timeUs: point.timeUs, createdAt: new Date().toISOString() });
      return { ...bookmark, time: formatTimeUs(bookmark.timeUs) };
    });
  }

  bookmarkDelete(volumeName: string, name: string): Promise<Bookmark & { time: string }> {
    return this.serialise(async () => {
      const volume = this.online(volumeName);
      refuseReplica(volume.record, 'bookmarks come from its source');
      const bookmark = await volume.bookmarks.delete(name);
      return { ...bookmark, time: formatTimeUs(bookmark.timeUs) };
    });
  }

  // ---- rollback, timeline, points ----

  /**
   * Moves the live volume back to a point, as a new branch of its history (nothing is
   * destroyed: the writes after the point stay mountable by seq). Refused while clients are
   * attached unless `force`, which disconnects them first; the volume is not exported while
   * its content switches.
   */
  rollback(name: string, at: string, force: boolean, clients: () => number, detach: (exportName: string) => Promise<void>): Promise<RollbackResult> {
    return this.serialise(async () => {
      const volume = this.online(name);
      refuseReplica(volume.record, 'fail over first (hindsight failover NAME --at POINT)');
      if (volume.record.readOnly) throw new HindsightError('READ_ONLY', `volume "${name}" is read-only; make it writable first (volume set --writable)`);
      const point = resolvePoint(name, volume.device.history, volume.bookmarks, at);
      this.rollbackGuard(name, point.seq);
      const connected = clients();
      if (connected > 0 && !force) {
        throw new HindsightError('VOLUME_BUSY', `volume "${name}" has ${connected} connected NBD client(s), which would see the disk change under them; shut the VM down or disconnect them, or pass --force to disconnect them`);
      }
      volume.paused = true;
      try {
        await detach(name);
        // Again, now that nobody writes: `latest` or `-5m` may have moved during the detach.
        const target = resolvePoint(name, volume.device.history, volume.bookmarks, at);
        this.rollbackGuard(name, target.seq);
        point.seq = target.seq;
        point.timeUs = target.timeUs;
        const seqBefore = volume.device.history.seqLast;
        const revert = await volume.device.rollback(point.seq);
        return {
          volume: name, seq: point.seq, time: formatTimeUs(point.timeUs), revertSeq: revert.seq, revertTime: formatTimeUs(revert.timeUs),
          abandoned: seqBefore > point.seq ? { seqFirst: point.seq + 1, seqLast: seqBefore } : null,
        };
      } finally {
        volume.paused = false;
      }
    });
  }

  /** Activity per interval (writes, bytes, zeroes, flushes, rollbacks), and the bookmarks in range. */
  timeline(name: string, options: { from?: string; to?: string; stepMs?: number }): Timeline {
    const volume = this.online(name);
    const history = volume.device.history;
    const timeOf = (text: string | undefined, fallbackUs: number) => this.timeOfPoint(name, text, fallbackUs);
    const lastUs = history.seqLast > 0 ? history.timeOf(history.seqLast) : Date.now() * 1000;
    const fromUs = timeOf(options.from, history.seqLast > 0 ? history.timeOf(history.seqFirst) : lastUs);
    const toUs = Math.max(fromUs, timeOf(options.to, lastUs + 1));
    const spanUs = Math.max(1, toUs - fromUs);
    const stepUs = options.stepMs !== undefined ? options.stepMs * 1000 : Math.max(1000, Math.ceil(spanUs / 60 / 1000) * 1000);
    if (!(stepUs > 0) || spanUs / stepUs > TIMELINE_BUCKETS_MAX) {
      throw new HindsightError('INVALID_ARGUMENT', `a timeline holds at most ${TIMELINE_BUCKETS_MAX} intervals; use a larger --step`);
    }
    const buckets = history.timeline(fromUs, toUs, stepUs).map(({ fromUs: start, toUs: end, ...counts }) => ({ from: formatTimeUs(start), to: formatTimeUs(end), ...counts }));
    return {
      volume: name, from: formatTimeUs(fromUs), to: formatTimeUs(toUs), stepMs: stepUs / 1000, buckets,
      flushPoints: buckets.reduce((sum, bucket) => sum + bucket.flushes, 0),
      bookmarks: volume.bookmarks.list().filter((bookmark) => bookmark.timeUs >= fromUs && bookmark.timeUs <= toUs)
        .map((bookmark) => ({ name: bookmark.name, seq: bookmark.seq, time: formatTimeUs(bookmark.timeUs) })),
    };
  }

  /** The time a range bound names: a time as given, any other point as its record's time. */
  private timeOfPoint(name: string, text: string | undefined, fallbackUs: number): number {
    if (text === undefined) return fallbackUs;
    const now = Date.now();
    const spec = parsePoint(text, now);
    if (spec.kind === 'time') return spec.timeUs;
    const volume = this.online(name);
    return resolvePoint(name, volume.device.history, volume.bookmarks, spec, now).timeUs;
  }

  /** Flush points (the client's crash-consistent points), newest `limit` within [from, to]. */
  flushPoints(name: string, options: { from?: string; to?: string; limit?: number }): PointInfo[] {
    const history = this.online(name).device.history;
    const timeOf = (text: string | undefined, fallbackUs: number) => this.timeOfPoint(name, text, fallbackUs);
    const limit = Math.min(options.limit ?? 100, POINTS_LIST_MAX);
    return history.seqsOfType(RecordType.FLUSH, timeOf(options.from, 0), timeOf(options.to, Number.MAX_SAFE_INTEGER), limit, true)
      .map((seq) => ({ seq, time: formatTimeUs(history.timeOf(seq)) }));
  }

  /** Closes every mount and volume; one failing to close does not keep the others open. */
  async close(): Promise<void> {
    await this.retention.stop();
    await this.serialise(async () => undefined); // the changes queued before finish
    const failures: unknown[] = [];
    for (const mount of this.mounts.values()) {
      if (mount.device instanceof JournaledDevice) await mount.device.close().catch((err: unknown) => failures.push(err));
    }
    for (const volume of this.volumes.values()) {
      await volume.device?.close().catch((err: unknown) => failures.push(err));
    }
    if (failures.length > 0) throw failures[0];
  }

  /** Refuses a volume from now on: hidden from NBD, listed as failed with the error. */
  private fail(name: string, error: HindsightError): void {
    const volume = this.volumes.get(name);
    if (!volume || volume.error) return;
    volume.error = error;
    this.onVolumeFailed(name, error);
    // Its mounts read the same journal: refused with it.
    for (const mount of this.mounts.values()) {
      if (mount.record.volume !== name || mount.error) continue;
      mount.error = new HindsightError(error.code, `mount "${mount.record.name}": its volume "${name}" was refused: ${error.message}`);
      this.onVolumeFailed(mount.record.name, mount.error);
    }
  }

  /** Refuses a writable clone whose own journal is damaged (its source is not affected). */
  private failMount(name: string, error: HindsightError): void {
    const mount = this.mounts.get(name);
    if (!mount || mount.error) return;
    mount.error = error;
    this.onVolumeFailed(name, error);
  }

  private async load(name: string): Promise<Volume> {
    let record: VolumeRecord;
    try {
      record = JSON.parse(await fs.readFile(path.join(this.volumeDir(name), 'volume.json'), 'utf8')) as VolumeRecord;
    } catch (err) {
      const error = new HindsightError('VOLUME_CORRUPT', `volume "${name}": cannot read volume.json`, { cause: err });
      return { record: { formatVersion: 0, id: '', name, sizeBytes: 0, createdAt: '' }, device: null, bookmarks: null, error, paused: false };
    }
    try {
      if (record.formatVersion !== FORMAT_VERSION) {
        throw new HindsightError('VOLUME_CORRUPT', `volume "${name}": unsupported format version ${record.formatVersion}`);
      }
      validateVolumeSize(record.sizeBytes);
      const bookmarks = await BookmarkStore.load(this.volumeDir(name));
      const device = JournaledDevice.open({
        name,
        directory: this.volumeDir(name),
        sizeBytes: record.sizeBytes,
        volumeId: volumeIdOf(record),
        files: nodeFileLayer,
        readOnly: (record.readOnly ?? false) || record.replica !== undefined,
        reduce: record.reduce ?? true,
        replica: record.replica !== undefined,
        syncEveryWrite: this.options.syncEveryWrite,
        segmentBytesMax: this.options.segmentBytesMax ?? LIMITS.journalSegmentBytesMax,
        checkpointEveryBytes: LIMITS.indexCheckpointEveryBytes,
        nowUs: () => Date.now() * 1000,
        onCorruption: (error) => this.fail(name, error),
      });
      return { record, device, bookmarks, error: null, paused: false };
    } catch (err) {
      const error = err instanceof HindsightError ? err : fromSystemError(err, `opening volume ${name}`);
      return { record, device: null, bookmarks: null, error, paused: false };
    }
  }

  private volumeDir(name: string): string {
    return path.join(this.volumesDir, name);
  }
}

/**
 * The names of the directories in `directory` (created if missing). Those starting with '.'
 * are left over from a create or delete that crashed half-way: removed.
 */
async function entries(directory: string): Promise<string[]> {
  await fs.mkdir(directory, { recursive: true });
  const names: string[] = [];
  for (const entry of await fs.readdir(directory, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    if (entry.name.startsWith('.')) await fs.rm(path.join(directory, entry.name), { recursive: true, force: true });
    else names.push(entry.name);
  }
  return names;
}

async function writeRecord(directory: string, record: VolumeRecord): Promise<void> {
  await fs.writeFile(path.join(directory, 'volume.json'), `${JSON.stringify(record, null, 2)}\n`, { flush: true });
}

/**
 * retention.json's text without the fold it records (a volume becoming a replica by failback:
 * it folds again only as far as its new source allows, JournaledDevice.foldHistory).
 */
function withoutFold(text: string): string {
  const state = JSON.parse(text) as { foldedBefore?: number; foldedReverts?: unknown };
  delete state.foldedBefore;
  delete state.foldedReverts;
  return `${JSON.stringify(state)}\n`;
}

/** Bytes allocated on disk under a directory (st_blocks), recursively. */
async function diskUsage(directory: string): Promise<number> {
  let total = 0;
  let entries;
  try {
    entries = await fs.readdir(directory, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const entry of entries) {
    const full = path.join(directory, entry.name);
    if (entry.isDirectory()) total += await diskUsage(full);
    // A temporary file renamed away since the listing (a save in progress) counts as gone.
    else if (entry.isFile()) total += ((await fs.stat(full).catch(() => null))?.blocks ?? 0) * 512;
  }
  return total;
}

function refuseReplica(record: VolumeRecord, why: string): void {
  if (record.replica) throw new HindsightError('IS_REPLICA', `volume "${record.name}" is a replica of ${record.replica.from}'s: ${why}`);
}

function volumeIdOf(record: VolumeRecord): Buffer {
  return Buffer.from(record.id.replace(/-/g, ''), 'hex');
}

/** A volume whose history holds more memory than this gets a warning in volume info. */
const HISTORY_BYTES_WARN = 2 * 1024 ** 3;

function policyOrError(record: VolumeRecord): ReturnType<typeof parseRetention> | HindsightError {
  try {
    return parseRetention(record.retention?.keep ?? DEFAULT_RETENTION);
  } catch (err) {
    return err instanceof HindsightError ? err : new HindsightError('RETENTION_INVALID', String(err));
  }
}

/** The retention part of volume.json after `changes` (validated), or undefined if none. */
function retentionSettings(current: VolumeRecord['retention'], changes: Pick<VolumeSettings, 'keep' | 'maxSizeBytes'>): VolumeRecord['retention'] {
  if (changes.keep === undefined && changes.maxSizeBytes === undefined) return current;
  const next = { ...current };
  if (changes.keep !== undefined) next.keep = parseRetention(changes.keep).text;
  if (changes.maxSizeBytes !== undefined) {
    if (changes.maxSizeBytes !== null && !(Number.isSafeInteger(changes.maxSizeBytes) && changes.maxSizeBytes >= 1024 * 1024)) {
      throw new HindsightError('INVALID_SIZE', `--max-size must be at least 1M (got ${changes.maxSizeBytes} bytes)`);
    }
    next.maxSizeBytes = changes.maxSizeBytes;
  }
  return next;
}

/** What the last hour's growth means for the journal (a sentence for volume info). */
function forecast(policy: ReturnType<typeof parseRetention>, journalBytes: number, lastHourBytes: number, maxSizeBytes: number | null): string {
  const rate = `${formatSize(lastHourBytes)}/h`;
  const horizon = retentionHorizonUs(policy);
  const all = keepAllUs(policy);
  if (lastHourBytes === 0) return 'no writes in the last hour';
  if (maxSizeBytes === null) {
    const what = horizon === Infinity ? 'the policy keeps everything: the journal grows without bound' : `every write is kept ${formatDuration(all)}, then thinned`;
    return `at the last hour's rate (${rate}), ${what}; no --max-size set`;
  }
  if (journalBytes >= maxSizeBytes) return `at --max-size already (${formatSize(journalBytes)} of ${formatSize(maxSizeBytes)}): the oldest points go ahead of the policy`;
  const hours = (maxSizeBytes - journalBytes) / lastHourBytes;
  return `at the last hour's rate (${rate}), the journal reaches --max-size in ${formatDuration(hours * 3600e6)}, unless thinning keeps it below; then the oldest points go ahead of the policy`;
}

function formatDuration(us: number): string {
  if (us === Infinity) return 'forever';
  const hours = us / 3600e6;
  if (hours < 1) return `${Math.max(1, Math.round(hours * 60))} min`;
  if (hours < 48) return `${Math.round(hours * 10) / 10} h`;
  return `${Math.round(hours / 24 * 10) / 10} days`;
}
