/**
 * Mounts: points in a volume's history served as NBD exports of their own. Each is a
 * directory `DATA/mounts/NAME/` with `mount.json` (source volume and its id, seq, time,
 * writable); a writable clone keeps its own journal and index there too, over a read-only
 * view of the point as its base, so its writes never touch the source's history. Mounts
 * survive a daemon restart. Creating one copies nothing (PointView).
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { HindsightError, LIMITS, formatTimeUs, fromSystemError } from '../core/index.js';
import { nodeFileLayer } from '../journal/index.js';
import { JournaledDevice } from './journaled-device.js';
import { PointView } from './point-view.js';

const MOUNT_FORMAT_VERSION = 1;

export interface MountRecord {
  formatVersion: number;
  id: string;
  name: string;
  volume: string;
  /** The source volume's id: a volume deleted and created again under the same name is not the source. */
  volumeId: string;
  seq: number;
  timeUs: number;
  writable: boolean;
  createdAt: string;
}

export interface Mount {
  record: MountRecord;
  device: PointView | JournaledDevice | null;
  error: HindsightError | null;
}

export interface MountInfo {
  name: string;
  volume: string;
  seq: number;
  time: string;
  writable: boolean;
  createdAt: string;
  state: 'online' | 'failed';
  error: { code: string; message: string } | null;
  /** Writable clones: bytes clients wrote to the clone (its own journal). */
  cloneBytesWritten: number | null;
}

export function mountInfo(mount: Mount): MountInfo {
  const clone = mount.device instanceof JournaledDevice ? mount.device : null;
  return {
    name: mount.record.name,
    volume: mount.record.volume,
    seq: mount.record.seq,
    time: formatTimeUs(mount.record.timeUs),
    writable: mount.record.writable,
    createdAt: mount.record.createdAt,
    state: mount.device && !mount.error ? 'online' : 'failed',
    error: mount.error ? mount.error.toJSON() : null,
    cloneBytesWritten: clone ? clone.stats().clientBytesWritten : null,
  };
}

export function newMountRecord(name: string, volume: string, volumeId: string, seq: number, timeUs: number, writable: boolean): MountRecord {
  return { formatVersion: MOUNT_FORMAT_VERSION, id: randomUUID(), name, volume, volumeId, seq, timeUs, writable, createdAt: new Date().toISOString() };
}

/** Writes a new mount's directory atomically (staging directory, then rename). */
export async function createMountDirectory(mountsDir: string, record: MountRecord): Promise<void> {
  const staging = path.join(mountsDir, `.create-${record.id}`);
  try {
    await fs.mkdir(mountsDir, { recursive: true });
    await fs.mkdir(staging);
    await fs.writeFile(path.join(staging, 'mount.json'), `${JSON.stringify(record, null, 2)}\n`, { flush: true });
    await nodeFileLayer.syncDirectory(staging);
    await fs.rename(staging, path.join(mountsDir, record.name));
    await nodeFileLayer.syncDirectory(mountsDir);
  } catch (err) {
    await fs.rm(staging, { recursive: true, force: true });
    throw fromSystemError(err, `creating mount ${record.name}`);
  }
}

export async function removeMountDirectory(mountsDir: string, record: MountRecord): Promise<void> {
  const trash = path.join(mountsDir, `.delete-${record.id}`);
  try {
    await fs.rename(path.join(mountsDir, record.name), trash);
    await nodeFileLayer.syncDirectory(mountsDir);
    await fs.rm(trash, { recursive: true, force: true });
  } catch (err) {
    throw fromSystemError(err, `removing mount ${record.name}`);
  }
}

export async function readMountRecord(mountsDir: string, name: string): Promise<MountRecord> {
  const file = path.join(mountsDir, name, 'mount.json');
  let record: MountRecord;
  try {
    record = JSON.parse(await fs.readFile(file, 'utf8')) as MountRecord;
  } catch (err) {
    throw new HindsightError('VOLUME_CORRUPT', `mount "${name}": cannot read ${file}`, { cause: err });
  }
  if (record.formatVersion !== MOUNT_FORMAT_VERSION || record.name !== name || !Number.isSafeInteger(record.seq)) {
    throw new HindsightError('VOLUME_CORRUPT', `mount "${name}": ${file} is not a mount record this version understands`);
  }
  return record;
}

/** The device serving a mount: a read-only view, or a clone journaling over one. */
export function openMountDevice(mountsDir: string, record: MountRecord, source: JournaledDevice, syncEveryWrite: boolean, onCorruption: (error: HindsightError) => void): PointView | JournaledDevice {
  const view = new PointView(record.name, source, record.seq);
  if (!record.writable) return view;
  return JournaledDevice.open({
    name: record.name,
    directory: path.join(mountsDir, record.name),
    sizeBytes: source.sizeBytes,
    volumeId: Buffer.from(record.id.replace(/-/g, ''), 'hex'),
    files: nodeFileLayer,
    readOnly: false,
    syncEveryWrite,
    segmentBytesMax: LIMITS.journalSegmentBytesMax,
    checkpointEveryBytes: LIMITS.indexCheckpointEveryBytes,
    nowUs: () => Date.now() * 1000,
    base: view,
    onCorruption,
  });
}
