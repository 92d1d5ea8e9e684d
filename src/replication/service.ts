/**
 * Replication in one daemon: the outgoing links (this site's volumes sent elsewhere), the
 * listener receiving other sites' volumes, and what both were told — kept in
 * DATA/replication.json (written atomically), so links come back after a restart.
 */
import path from 'node:path';
import pLimit from 'p-limit';
import type { Logger } from 'pino';
import { HindsightError, parseSize } from '../core/index.js';
import { nodeFileLayer } from '../journal/index.js';
import type { VolumeInfo, VolumeManager } from '../volume/index.js';
import { validateVolumeName } from '../volume/index.js';
import { PskFile, X509Credentials, validateIdentity } from './credentials.js';
import type { ReplicationCredentials } from './credentials.js';
import { ReplicationReceiver } from './receiver.js';
import type { IncomingConfig, IncomingStatus } from './receiver.js';
import { ReplicationLink, splitHostPort } from './sender.js';
import type { OutgoingConfig, OutgoingStatus } from './sender.js';

const FORMAT_VERSION = 1;
const FILE = 'replication.json';
const DEFAULT_RPO_SECONDS = 60;

interface RegistryFile {
  formatVersion: number;
  outgoing: OutgoingConfig[];
  incoming: IncomingConfig[];
}

export interface ReplicateRequest {
  volume: string;
  to: string;
  as?: string;
  identity?: string;
  /** Bytes per second, or a size such as "50M" (per second). */
  bandwidth?: number | string | null;
  rpoSeconds?: number;
  /** The first sync: `image` (default) or `history` (every record from seq 1). */
  initial?: 'image' | 'history';
}

export interface ReplicationServiceOptions {
  dataDir: string;
  volumes: VolumeManager;
  log: Logger;
  pskFile: string;
  /** X.509 credentials (QEMU layout) instead of the PSK file. */
  certificatesDir?: string;
  /** NBD clients attached to an export. */
  clients: (exportName: string) => number;
}

export class ReplicationService {
  private readonly links = new Map<string, ReplicationLink>();
  private incoming: IncomingConfig[] = [];
  private readonly receiver: ReplicationReceiver;
  private readonly credentials: ReplicationCredentials;
  /** Changes one at a time, in order (a failed one does not stop the next). */
  private readonly serialise = pLimit(1);
  private saving: Promise<void> = Promise.resolve();
  bound: { host: string; port: number } | null = null;

  private constructor(private readonly options: ReplicationServiceOptions, credentials: ReplicationCredentials, registry: RegistryFile) {
    this.credentials = credentials;
    this.incoming = registry.incoming;
    this.receiver = new ReplicationReceiver({
      volumes: options.volumes, credentials, log: options.log.child({ component: 'replication' }),
      incoming: (volume) => this.incoming.find((entry) => entry.volume === volume),
      clients: options.clients,
    });
    for (const config of registry.outgoing) this.links.set(config.volume, this.newLink(config));
    options.volumes.historyRunsBelow = (volume) => this.links.get(volume)?.runsBelow();
    options.volumes.rollbackGuard = (volume, seq) => {
      const config = this.links.get(volume)?.config;
      if (!config?.imageSeq || seq >= config.imageSeq || (config.imageKept ?? []).includes(seq)) return;
      throw new HindsightError('POINT_NOT_REPLICATED', `seq ${seq} of volume "${volume}" never reached its replica at ${config.to} (its first sync was the image at seq ${config.imageSeq}): after a rollback there it could not follow; roll back to seq ${config.imageSeq} or later (or a bookmark sent with the image), or replication remove ${volume} and replicate it again with --initial history`);
    };
  }

  static load(options: ReplicationServiceOptions): ReplicationService {
    const credentials = options.certificatesDir ? new X509Credentials(options.certificatesDir) : PskFile.ensure(options.pskFile);
    const bytes = nodeFileLayer.readFile(path.join(options.dataDir, FILE));
    let registry: RegistryFile = { formatVersion: FORMAT_VERSION, outgoing: [], incoming: [] };
    if (bytes) {
      try {
        registry = JSON.parse(bytes.toString('utf8')) as RegistryFile;
      } catch {
        throw new HindsightError('CONFIG_INVALID', `${path.join(options.dataDir, FILE)} is not valid JSON`);
      }
      if (registry.formatVersion !== FORMAT_VERSION || !Array.isArray(registry.outgoing) || !Array.isArray(registry.incoming)) {
        throw new HindsightError('CONFIG_INVALID', `${path.join(options.dataDir, FILE)} has an unknown format`);
      }
    }
    return new ReplicationService(options, credentials, registry);
  }

  /** Binds the listener, then starts the outgoing links. */
  async start(host: string, port: number): Promise<{ host: string; port: number }> {
    try {
      this.bound = await this.receiver.listen(host, port);
    } catch (err) {
      throw new HindsightError('ADDRESS_IN_USE', `cannot listen for replication on ${host}:${port}: ${(err as Error).message}`, { cause: err });
    }
    for (const link of this.links.values()) link.start();
    return this.bound;
  }

  async close(): Promise<void> {
    await Promise.all([...this.links.values()].map((link) => link.stop()));
    await this.receiver.close();
  }

  /** This site's identity (what it presents when sending). */
  get identity(): string {
    return this.credentials.own().identity;
  }

  list(): { identity: string; listen: { host: string; port: number } | null; outgoing: OutgoingStatus[]; incoming: IncomingStatus[] } {
    return {
      identity: this.identity,
      listen: this.bound,
      outgoing: [...this.links.values()].map((link) => link.status()).sort((a, b) => a.volume.localeCompare(b.volume)),
      incoming: this.incoming.map((config) => this.receiver.status(config)).sort((a, b) => a.volume.localeCompare(b.volume)),
    };
  }

  replicate(request: ReplicateRequest): Promise<OutgoingStatus> {
    return this.serialise(async () => {
      const volume = validateVolumeName(request.volume);
      const view = this.options.volumes.replicationView(volume);
      if (view.replica) throw new HindsightError('IS_REPLICA', `volume "${volume}" is itself a replica; fail it over first`);
      if (this.links.has(volume)) throw new HindsightError('REPLICATION_EXISTS', `volume "${volume}" is already replicated (to ${this.links.get(volume)!.config.to}); replication remove ${volume} first`);
      splitHostPort(request.to);
      if (request.identity !== undefined) this.credentials.own(validateIdentity(request.identity));
      const rpoSeconds = rpoOf(request.rpoSeconds ?? DEFAULT_RPO_SECONDS);
      // The first sync's image stands for now: every point from here on reaches the receiver.
      let imageSeq: number | undefined;
      let imageKept: number[] | undefined;
      if ((request.initial ?? 'image') === 'image') {
        await view.device.syncThrough(view.device.lastSeq);
        imageSeq = view.device.durableSeq;
        imageKept = [...new Set(view.bookmarks.list().map((bookmark) => bookmark.seq).filter((seq) => seq < imageSeq!))].sort((a, b) => a - b);
      }
      const config: OutgoingConfig = {
        volume, to: request.to.trim(), as: validateVolumeName(request.as ?? volume), ...(request.identity !== undefined ? { identity: request.identity } : {}),
        bandwidthBytesPerSecond: bandwidthOf(request.bandwidth), rpoSeconds, initial: request.initial ?? 'image', ...(imageSeq ? { imageSeq, imageKept } : {}), paused: false, createdAt: new Date().toISOString(),
      };
      const link = this.newLink(config);
      this.links.set(volume, link);
      try {
        await this.save();
      } catch (err) {
        this.links.delete(volume);
        throw err;
      }
      link.start();
      return link.status();
    });
  }

  setPaused(volume: string, paused: boolean): Promise<OutgoingStatus> {
    return this.serialise(async () => {
      const link = this.link(volume);
      link.setPaused(paused);
      await this.save();
      return link.status();
    });
  }

  /** Changes a link's bandwidth limit (null: none) or RPO target; effective at once. */
  update(volume: string, changes: { bandwidth?: number | string | null; rpoSeconds?: number }): Promise<OutgoingStatus> {
    return this.serialise(async () => {
      const link = this.link(volume);
      const next = { ...link.config };
      if (changes.bandwidth !== undefined) next.bandwidthBytesPerSecond = bandwidthOf(changes.bandwidth);
      if (changes.rpoSeconds !== undefined) next.rpoSeconds = rpoOf(changes.rpoSeconds);
      const before = link.config;
      link.config = next;
      try {
        await this.save();
      } catch (err) {
        // Only what this changed (the link may have updated its own bookkeeping meanwhile).
        link.config = { ...link.config, bandwidthBytesPerSecond: before.bandwidthBytesPerSecond, rpoSeconds: before.rpoSeconds };
        throw err;
      }
      return link.status();
    });
  }

  remove(volume: string): Promise<OutgoingStatus> {
    return this.serialise(async () => {
      const link = this.link(volume);
      // Its receiver may be linked again (a new address, identity): what it holds stays out
      // of retention's runs meanwhile (VolumeRecord.runsBelow).
      await this.options.volumes.setHistoryRunsBelow(volume, link.runsBelow());
      this.links.delete(volume);
      await link.stop();
      await this.save();
      return link.status();
    });
  }

  /**
   * Receive `volume` from `from`. An existing live volume of that name is refused, unless
   * `failback`: then the first link from `from` turns it into the replica (keeping what
   * diverged as another volume; VolumeManager.convertToReplica).
   */
  accept(volume: string, from: string, failback = false): Promise<IncomingStatus> {
    return this.serialise(async () => {
      const config: IncomingConfig = { volume: validateVolumeName(volume), from: validateIdentity(from), ...(failback ? { failback: true } : {}), createdAt: new Date().toISOString() };
      if (this.incoming.some((entry) => entry.volume === volume)) throw new HindsightError('REPLICATION_EXISTS', `volume "${volume}" is already accepted from ${this.incoming.find((entry) => entry.volume === volume)!.from}; replication refuse ${volume} first`);
      if (this.options.volumes.names().includes(volume)) {
        const view = this.options.volumes.replicationView(volume);
        if (!view.replica && !failback) throw new HindsightError('VOLUME_EXISTS', `volume "${volume}" exists here and is not a replica; pass --failback to make it ${from}'s replica (what it holds beyond the history both share is kept as another volume)`);
      }
      this.incoming.push(config);
      await this.save();
      return this.receiver.status(config);
    });
  }

  /** Stops receiving `volume` (the replica stays, read-only, as received). */
  refuse(volume: string): Promise<IncomingStatus> {
    return this.serialise(() => this.refuseNow(volume));
  }

  private async refuseNow(volume: string): Promise<IncomingStatus> {
    const config = this.incoming.find((entry) => entry.volume === volume);
    if (!config) throw new HindsightError('REPLICATION_NOT_FOUND', `volume "${volume}" is not received here`);
    this.incoming = this.incoming.filter((entry) => entry !== config);
    await this.save();
    await this.receiver.disconnect(volume);
    return this.receiver.status(config);
  }

  /**
   * Failover: stops receiving the replica (its sender is refused from now on) and makes it a
   * live volume; with `at`, rolled back to that point as a new branch.
   */
  failover(volume: string, at: string | undefined, clients: () => number, detach: (exportName: string) => Promise<void>): Promise<VolumeInfo> {
    return this.serialise(async () => {
      // A point that does not resolve stops nothing.
      if (at !== undefined) this.options.volumes.resolve(volume, at);
      if (this.incoming.some((entry) => entry.volume === volume)) await this.refuseNow(volume);
      await this.receiver.disconnect(volume);
      return this.options.volumes.promote(volume, at, clients, detach);
    });
  }

  private link(volume: string): ReplicationLink {
    const link = this.links.get(volume);
    if (!link) throw new HindsightError('REPLICATION_NOT_FOUND', `volume "${volume}" is not replicated from here`);
    return link;
  }

  private newLink(config: OutgoingConfig): ReplicationLink {
    return new ReplicationLink(config, { volumes: this.options.volumes, credentials: this.credentials, log: this.options.log.child({ component: 'replication' }), persist: () => this.save() });
  }

  /**
   * Writes replication.json as things are when the write starts. Queued (a link saves its
   * image bookkeeping outside the command queue: two writes must not share the temporary
   * file), never through `serialise` (a command waiting for a link to stop would wait on it).
   */
  private save(): Promise<void> {
    const next = this.saving.catch(() => undefined).then(() => {
      const content: RegistryFile = { formatVersion: FORMAT_VERSION, outgoing: [...this.links.values()].map((link) => link.config), incoming: this.incoming };
      return nodeFileLayer.writeFileAtomic(path.join(this.options.dataDir, FILE), Buffer.from(`${JSON.stringify(content, null, 2)}\n`));
    });
    this.saving = next;
    return next;
  }
}

function rpoOf(seconds: number): number {
  if (!(Number.isFinite(seconds) && seconds > 0 && seconds <= 86_400 * 7)) throw new HindsightError('INVALID_ARGUMENT', '--rpo is seconds, more than 0 and at most a week');
  return seconds;
}

function bandwidthOf(value: number | string | null | undefined): number | null {
  if (value === undefined || value === null || value === '' || value === 0 || value === '0') return null;
  const bytes = typeof value === 'number' ? value : parseSize(value.replace(/\/s$/i, ''));
  if (!(Number.isSafeInteger(bytes) && bytes >= 64 * 1024)) throw new HindsightError('INVALID_ARGUMENT', '--bandwidth is bytes per second, at least 64K (e.g. 50M)');
  return bytes;
}
