/**
 * `hindsight serve`: one process holding the volumes, the NBD server and the HTTP API.
 * Start order: lock the data dir, open volumes, bind NBD, bind the API, write ports.json.
 * Stop order is the reverse, and every volume is flushed before the process exits.
 */
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import type { Logger } from 'pino';
import { HindsightError, checkLimits } from '../core/index.js';
import { TokenStore, buildApi } from '../api/index.js';
import { NbdServer } from '../nbd/index.js';
import { ReplicationService } from '../replication/index.js';
import type { ExportCatalog, NbdExport } from '../nbd/index.js';
import { JobRegistry, VolumeManager } from '../volume/index.js';
import { formatAddress, isLoopback } from './address.js';
import type { ListenAddress } from './address.js';
import type { DaemonConfig } from './config.js';
import { DataDirLock } from './lock.js';
import { authenticatesClients, loadNbdTls, parseAccess } from './tls.js';
import { VERSION } from './version.js';

export interface BoundPorts {
  nbd: ListenAddress;
  api: ListenAddress;
  replication: ListenAddress;
}

export class Daemon {
  private stopping: Promise<void> | null = null;

  private constructor(
    readonly config: DaemonConfig,
    readonly ports: BoundPorts,
    readonly log: Logger,
    private readonly lock: DataDirLock,
    private readonly volumes: VolumeManager,
    private readonly nbd: NbdServer,
    private readonly api: ReturnType<typeof buildApi>,
    private readonly jobs: JobRegistry,
    private readonly replication: ReplicationService,
  ) {}

  static async start(config: DaemonConfig, log: Logger = pino({ level: config.logLevel }, pino.destination(2))): Promise<Daemon> {
    checkLimits();
    refuseInsecureBinds(config);
    fs.mkdirSync(config.dataDir, { recursive: true });
    const lock = DataDirLock.acquire(config.dataDir);
    const volumes = new VolumeManager({ dataDir: config.dataDir, syncEveryWrite: config.syncEveryWrite, retentionIntervalMs: config.retentionIntervalMs });
    volumes.onRetentionEvent = (name, level, message, details) => log[level]({ volume: name, ...details }, message);
    let nbd: NbdServer | null = null;
    let replication: ReplicationService | null = null;
    try {
      await volumes.open();
      for (const initial of config.initialVolumes) {
        if (!volumes.names().includes(initial.name)) {
          await volumes.create(initial.name, initial.sizeBytes);
          log.info({ volume: initial.name, sizeBytes: initial.sizeBytes }, 'created initial volume');
        }
      }
      for (const name of volumes.names()) {
        const info = await volumes.info(name);
        if (info.error) log.error({ volume: name, error: info.error }, 'volume failed to open and is not served');
      }
      nbd = new NbdServer({ ...config.nbd, catalog: catalogOf(volumes), log: log.child({ component: 'nbd' }), tls: loadNbdTls(config.tls), access: parseAccess(config.nbdAllow) });
      const nbdBound = await nbd.listen();
      const server = nbd;
      volumes.onVolumeFailed = (name, error) => {
        log.error({ volume: name, error: error.message }, 'volume refused: damaged journal data');
        void server.disconnectExport(name).catch(() => undefined);
      };
      const nbdServer = nbd;
      replication = ReplicationService.load({ dataDir: config.dataDir, volumes, log, pskFile: config.replicationPskFile ?? path.join(config.dataDir, 'replication.psk'), certificatesDir: config.replicationCertificates, clients: (name) => nbdServer.connectionCount(name) });
      const replicationBound = await replication.start(config.replication.host, config.replication.port);
      const ports: BoundPorts = { nbd: nbdBound, api: { ...config.api }, replication: replicationBound };
      const startedAt = new Date();
      const jobs = new JobRegistry();
      // Beyond loopback the API always wants a token; on loopback when asked to.
      const auth = { required: config.requireToken || !isLoopback(config.api.host), tokens: new TokenStore(config.dataDir) };
      const api = buildApi({
        volumes, nbd, jobs, version: VERSION, startedAt, dataDir: config.dataDir, log: log.child({ component: 'api' }),
        ports: () => ({ nbd: ports.nbd, api: ports.api, replication: ports.replication }), auth, https: readApiTls(config), replication,
      });
      try {
        await api.listen({ host: config.api.host, port: config.api.port });
      } catch (err) {
        throw new HindsightError('ADDRESS_IN_USE', `cannot listen for the API on ${formatAddress(config.api)}: ${(err as Error).message}`, { cause: err });
      }
      const apiAddress = api.server.address();
      if (apiAddress && typeof apiAddress === 'object') ports.api = { host: apiAddress.address, port: apiAddress.port };
      writePortsFile(config.dataDir, ports);
      if (!isLoopback(config.api.host) && !config.apiTls) {
        log.warn({ api: formatAddress(ports.api) }, 'the API listens beyond loopback over plain HTTP: tokens travel in clear; use --api-tls-cert/--api-tls-key');
      }
      volumes.startRetention();
      log.info({ nbd: formatAddress(ports.nbd), api: formatAddress(ports.api), replication: formatAddress(ports.replication), identity: replication.identity, dataDir: config.dataDir, volumes: volumes.names() }, 'hindsight ready');
      return new Daemon(config, ports, log, lock, volumes, nbd, api, jobs, replication);
    } catch (err) {
      await replication?.close().catch(() => undefined);
      await nbd?.close().catch(() => undefined);
      await volumes.close().catch(() => undefined);
      lock.release();
      throw err;
    }
  }

  /** Stops accepting, lets in-flight requests finish, flushes every volume. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.log.info('hindsight stopping');
      await this.api.close().catch((err: Error) => this.log.warn({ err: err.message }, 'closing API'));
      try {
        await this.jobs.stop();
        await this.replication.close();
        await this.nbd.close();
        await this.volumes.close();
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'error while stopping; some volume may not have closed cleanly');
      } finally {
        fs.rmSync(path.join(this.config.dataDir, 'ports.json'), { force: true });
        this.lock.release();
      }
      this.log.info('hindsight stopped');
    })();
    return this.stopping;
  }
}

export function catalogOf(volumes: VolumeManager): ExportCatalog {
  const toExport = (name: string): NbdExport | undefined => {
    const device = volumes.device(name);
    if (!device) return undefined;
    return { name, description: volumes.exportDescription(name), device };
  };
  return {
    list: () => volumes.exportNames().map(toExport).filter((entry): entry is NbdExport => entry !== undefined),
    find: toExport,
  };
}

/**
 * Nothing listens beyond loopback without protection unless the user insists: the API
 * requires tokens there (always); NBD only with `--tls require` and clients that prove who
 * they are (a PSK, or certificates with --tls-verify-peer).
 */
function refuseInsecureBinds(config: DaemonConfig): void {
  if (config.insecure || authenticatesClients(config.tls)) return;
  if (!isLoopback(config.nbd.host)) {
    throw new HindsightError(
      'INSECURE_BIND',
      `refusing to expose NBD on ${formatAddress(config.nbd)} without TLS that authenticates clients (--tls require with --tls-psk-file, or --tls-certificates with --tls-verify-peer); bind to loopback or pass --insecure`,
    );
  }
}

function writePortsFile(dataDir: string, ports: BoundPorts): void {
  const file = path.join(dataDir, 'ports.json');
  const temporary = `${file}.tmp`;
  fs.writeFileSync(temporary, `${JSON.stringify({ pid: process.pid, ...ports }, null, 2)}\n`);
  fs.renameSync(temporary, file);
}

function readApiTls(config: DaemonConfig): { cert: Buffer; key: Buffer } | null {
  if (!config.apiTls) return null;
  try {
    return { cert: fs.readFileSync(config.apiTls.cert), key: fs.readFileSync(config.apiTls.key) };
  } catch (err) {
    throw new HindsightError('CONFIG_INVALID', `API TLS: ${(err as Error).message}`);
  }
}
