/**
 * The set of volumes in a data directory. Each volume is a directory
 * `DATA/volumes/NAME/` holding `volume.json` (identity and size), the data file and its
 * chunk map (docs/FORMAT.md). A volume that fails to open is kept in the list with its error
 * and is not exported; the others keep serving.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HindsightError, LIMITS, fromSystemError } from '../core/index.js';
import { nodeFileLayer } from '../journal/index.js';
import { JournaledDevice, verifyJournal } from './journaled-device.js';
import type { FsckReport } from './journaled-device.js';
import { validateVolumeName, validateVolumeSize } from './names.js';

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
}

export interface Volume {
  record: VolumeRecord;
  device: JournaledDevice | null;
  error: HindsightError | null;
}

export interface VolumeInfo {
  name: string;
  id: string;
  sizeBytes: number;
  createdAt: string;
  readOnly: boolean;
  state: 'online' | 'failed';
  error: { code: string; message: string } | null;
  /** Bytes on disk: journal segments and index checkpoint. */
  storedBytes: number;
  clientBytesWritten: number;
  journalBytes: number;
  journalSegments: number;
  /** Records in the journal (writes, zeroes, trims, flush markers); seqs run 1..seqLast. */
  records: number;
  seqFirst: number | null;
  seqLast: number | null;
  seqDurable: number | null;
  timeFirst: string | null;
  timeLast: string | null;
  /** The oldest instant that can be restored (no retention yet: the first record). */
  oldestPoint: string | null;
  indexExtents: number;
  indexBytes: number;
}

export interface VolumeManagerOptions {
  dataDir: string;
  syncEveryWrite: boolean;
}

export class VolumeManager {
  private readonly volumes = new Map<string, Volume>();
  private readonly volumesDir: string;
  /** Serialises create/delete so two requests for one name cannot race. */
  private mutation: Promise<unknown> = Promise.resolve();

  /** Told when a volume that was online is refused (damaged journal data found). */
  onVolumeFailed: (name: string, error: HindsightError) => void = () => undefined;

  constructor(private readonly options: VolumeManagerOptions) {
    this.volumesDir = path.join(options.dataDir, 'volumes');
  }

  async open(): Promise<void> {
    await fs.mkdir(this.volumesDir, { recursive: true });
    for (const entry of await fs.readdir(this.volumesDir, { withFileTypes: true })) {
      if (!entry.isDirectory()) continue;
      if (entry.name.startsWith('.')) {
        // Left over from a create or delete that crashed half-way.
        await fs.rm(path.join(this.volumesDir, entry.name), { recursive: true, force: true });
        continue;
      }
      const volume = await this.load(entry.name);
      this.volumes.set(entry.name, volume);
      // After registering: a damaged record found at once must find the volume to refuse.
      void volume.device?.scrub().catch(() => undefined);
    }
  }

  names(): string[] {
    return [...this.volumes.keys()].sort();
  }

  /** Online volumes only: what NBD may export. */
  device(name: string): JournaledDevice | undefined {
    const volume = this.volumes.get(name);
    return volume && !volume.error ? volume.device ?? undefined : undefined;
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
    return {
      name,
      id: volume.record.id,
      sizeBytes: volume.record.sizeBytes,
      createdAt: volume.record.createdAt,
      readOnly: volume.record.readOnly ?? false,
      state: volume.device && !volume.error ? 'online' : 'failed',
      error: volume.error ? volume.error.toJSON() : null,
      storedBytes,
      clientBytesWritten: stats?.clientBytesWritten ?? 0,
      journalBytes: stats?.bytes ?? 0,
      journalSegments: stats?.segments ?? 0,
      records: stats?.records ?? 0,
      seqFirst: hasRecords ? 1 : null,
      seqLast: hasRecords ? stats!.seqLast : null,
      seqDurable: hasRecords ? stats!.seqDurable : null,
      timeFirst: hasRecords ? time(stats!.timeFirstUs) : null,
      timeLast: hasRecords ? time(stats!.timeLastUs) : null,
      oldestPoint: hasRecords ? time(stats!.timeFirstUs) : null,
      indexExtents: stats?.extents ?? 0,
      indexBytes: stats?.indexBytes ?? 0,
    };
  }

  create(name: string, sizeBytes: number): Promise<VolumeInfo> {
    return this.serialise(async () => {
      validateVolumeName(name);
      validateVolumeSize(sizeBytes);
      if (this.volumes.has(name)) throw new HindsightError('VOLUME_EXISTS', `volume "${name}" already exists`);
      const record: VolumeRecord = { formatVersion: FORMAT_VERSION, id: randomUUID(), name, sizeBytes, createdAt: new Date().toISOString() };
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
    });
  }

  /**
   * Removes a volume. It disappears from the catalog first (no new client can attach), then
   * `detach` disconnects the clients still attached, then the device closes.
   */
  delete(name: string, detach: () => Promise<void>): Promise<void> {
    return this.serialise(async () => {
      const volume = this.get(name);
      this.volumes.delete(name);
      await detach();
      await volume.device?.close().catch(() => undefined);
      const trash = path.join(this.volumesDir, `.delete-${volume.record.id}`);
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
    return this.serialise(async () => {
      const volume = this.get(name);
      const record = { ...volume.record, readOnly };
      const temporary = path.join(this.volumesDir, `.update-${record.id}`);
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
      volume.record = record;
      volume.device?.setReadOnly(readOnly);
      return this.info(name);
    });
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
    const verified = await verifyJournal({ directory: this.volumeDir(name), files: nodeFileLayer, volumeId: volumeIdOf(volume.record), sizeBytes: volume.record.sizeBytes });
    const problems = verified.problems.length > 0 ? verified.problems : [{ kind: 'journal' as const, segment: null, offsetBytes: null, message: `journal checks out, but the volume failed to open: ${volume.error?.message}` }];
    return { name, state: 'failed', records: verified.records, journalBytes: 0, indexRebuilt: false, indexCompared: false, problems };
  }

  /** Closes every volume; one failing to close does not keep the others open. */
  async close(): Promise<void> {
    await this.mutation.catch(() => undefined);
    const failures: unknown[] = [];
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
  }

  private serialise<T>(work: () => Promise<T>): Promise<T> {
    const result = this.mutation.catch(() => undefined).then(work);
    this.mutation = result;
    return result;
  }

  private async load(name: string): Promise<Volume> {
    let record: VolumeRecord;
    try {
      record = JSON.parse(await fs.readFile(path.join(this.volumeDir(name), 'volume.json'), 'utf8')) as VolumeRecord;
    } catch (err) {
      const error = new HindsightError('VOLUME_CORRUPT', `volume "${name}": cannot read volume.json`, { cause: err });
      return { record: { formatVersion: 0, id: '', name, sizeBytes: 0, createdAt: '' }, device: null, error };
    }
    try {
      if (record.formatVersion !== FORMAT_VERSION) {
        throw new HindsightError('VOLUME_CORRUPT', `volume "${name}": unsupported format version ${record.formatVersion}`);
      }
      validateVolumeSize(record.sizeBytes);
      const device = JournaledDevice.open({
        name,
        directory: this.volumeDir(name),
        sizeBytes: record.sizeBytes,
        volumeId: volumeIdOf(record),
        files: nodeFileLayer,
        readOnly: record.readOnly ?? false,
        syncEveryWrite: this.options.syncEveryWrite,
        segmentBytesMax: LIMITS.journalSegmentBytesMax,
        checkpointEveryBytes: LIMITS.indexCheckpointEveryBytes,
        nowUs: () => Date.now() * 1000,
        onCorruption: (error) => this.fail(name, error),
      });
      return { record, device, error: null };
    } catch (err) {
      const error = err instanceof HindsightError ? err : fromSystemError(err, `opening volume ${name}`);
      return { record, device: null, error };
    }
  }

  private volumeDir(name: string): string {
    return path.join(this.volumesDir, name);
  }
}

async function writeRecord(directory: string, record: VolumeRecord): Promise<void> {
  await fs.writeFile(path.join(directory, 'volume.json'), `${JSON.stringify(record, null, 2)}\n`, { flush: true });
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
    else if (entry.isFile()) total += (await fs.stat(full)).blocks * 512;
  }
  return total;
}

function volumeIdOf(record: VolumeRecord): Buffer {
  return Buffer.from(record.id.replace(/-/g, ''), 'hex');
}
