/**
 * The replication listener (default 127.0.0.1:10810): TLS with a pre-shared key only, so
 * both ends prove who they are before a byte of the protocol flows. A sender is then
 * accepted only for a volume this site was told to receive from that identity
 * (`hindsight replication accept NAME --from IDENTITY`); anything else is refused with a
 * reason, logged, and touches nothing. Records are appended with the source's seq and time;
 * acknowledged as received at once and as durable after a sync (at most SYNC_DELAY_MS later,
 * or before the acknowledgement when the batch holds a flush or FUA write, as the source's
 * client asked).
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { HindsightError, isHindsightError } from '../core/index.js';
import { RecordFlag, RecordType } from '../journal/index.js';
import type { Bookmark, JournaledDevice, VolumeManager } from '../volume/index.js';
import { validateVolumeName, validateVolumeSize } from '../volume/index.js';
import { Channel } from './channel.js';
import type { ReplicationCredentials } from './credentials.js';
import { fingerprint } from './fingerprint.js';
import { FrameType, PROTOCOL_VERSION, ackFrame, decodeRecords, jsonFrame, parseJson } from './frames.js';

const HANDSHAKE_TIMEOUT_MS = 10_000;
/** A sender heartbeats every 2 s: silence this long means it is gone. */
const IDLE_TIMEOUT_MS = 60_000;
const SYNC_DELAY_MS = 20;
const EXPIRY_SAVE_EVERY_MS = 1000;
const CONNECTIONS_MAX = 64;
/** TLS handshakes in progress from one address (each may take up to HANDSHAKE_TIMEOUT_MS). */
const HANDSHAKES_PER_ADDRESS_MAX = 8;

/**
 * What limits count a peer by: an IPv4 address (also one mapped into IPv6) as it is, an IPv6
 * address by its /64 — one host, or one customer, usually gets a whole /64.
 */
export function addressGroup(address: string): string {
  const bare = address.split('%')[0];
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  if (mapped) return mapped[1];
  if (!net.isIPv6(bare)) return address;
  const groups = (part: string) => (part === '' ? [] : part.split(':').flatMap((group) => (group.includes('.') ? ['0', '0'] : [group])));
  const [head, tail] = bare.includes('::') ? bare.split('::') : [bare, ''];
  const before = groups(head);
  const after = groups(tail);
  const full = [...before, ...Array<string>(8 - before.length - after.length).fill('0'), ...after];
  return `${full.slice(0, 4).map((group) => parseInt(group, 16).toString(16)).join(':')}::/64`;
}

export interface IncomingConfig {
  volume: string;
  /** The PSK identity allowed to send it. */
  from: string;
  /** A live volume of that name may be turned into the replica (failback). */
  failback?: boolean;
  createdAt: string;
}

export interface IncomingStatus extends IncomingConfig {
  direction: 'incoming';
  state: 'waiting' | 'receiving';
  peer: string | null;
  seqLast: number | null;
  seqDurable: number | null;
  /** Where the source said it was (heartbeats), and when the sender was last heard. */
  seqSource: number | null;
  lastContact: string | null;
  /** The lag the sender reported at its last heartbeat (every 2 s). */
  lag: { records: number; bytes: number; seconds: number } | null;
  /** warning: the reported lag is past the sender's RPO target, or nothing heard for 30 s. */
  health: 'ok' | 'warning';
  recordsReceived: number;
  bytesOnWire: number;
  lastError: string | null;
}

export interface ReceiverDeps {
  volumes: VolumeManager;
  credentials: ReplicationCredentials;
  log: Logger;
  incoming: (volume: string) => IncomingConfig | undefined;
  /** NBD clients attached to an export (a failback waits for none). */
  clients: (exportName: string) => number;
}

interface Session {
  channel: Channel;
  peer: string;
  done: Promise<void>;
}


interface ReceiveStats {
  recordsReceived: number;
  bytesOnWire: number;
  seqSource: number | null;
  lastContact: string | null;
  lastError: string | null;
  lag: { records: number; bytes: number; seconds: number } | null;
  rpoSeconds: number | null;
}

/** A receiving site hearing nothing from its sender for this long shows a warning. */
const SILENCE_WARNING_MS = 30_000;

export class ReplicationReceiver {
  private server: tls.Server | null = null;
  private readonly sessions = new Map<string, Session>();
  private readonly stats = new Map<string, ReceiveStats>();
  private readonly sockets = new Set<net.Socket>();
  private readonly handshaking = new Map<string, number>();
  private readonly handshakeDone = new Map<string, () => void>();

  constructor(private readonly deps: ReceiverDeps) {}

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = tls.createServer({ ...this.deps.credentials.serverOptions(), handshakeTimeout: HANDSHAKE_TIMEOUT_MS });
    server.maxConnections = CONNECTIONS_MAX;
    server.on('connection', (socket: net.Socket) => {
      // Handshakes not finished yet, per address (an IPv6 host's whole /64: it has that
      // many addresses): one host cannot take every slot.
      const address = addressGroup(socket.remoteAddress ?? '');
      const pending = this.handshaking.get(address) ?? 0;
      if (pending >= HANDSHAKES_PER_ADDRESS_MAX) {
        socket.destroy();
        return;
      }
      this.handshaking.set(address, pending + 1);
      let counted = true;
      const done = () => {
        if (!counted) return;
        counted = false;
        const left = (this.handshaking.get(address) ?? 1) - 1;
        if (left > 0) this.handshaking.set(address, left);
        else this.handshaking.delete(address);
      };
      const key = `${address}:${socket.remotePort}`;
      this.handshakeDone.set(key, done);
      this.sockets.add(socket);
      socket.once('close', () => {
        done();
        this.handshakeDone.delete(key);
        this.sockets.delete(socket);
      });
    });
    server.on('tlsClientError', (err, socket) => {
      this.deps.log.warn({ peer: `${socket.remoteAddress}:${socket.remotePort}`, err: err.message }, 'replication: TLS handshake refused (unknown identity, wrong key or certificate?)');
      socket.destroy();
    });
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      this.handshakeDone.get(`${socket.remoteAddress}:${socket.remotePort}`)?.();
      this.accept(socket);
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // An accept that fails later (EMFILE) is logged, not a crash.
    server.on('error', (err) => this.deps.log.error({ err: err.message }, 'replication listener error'));
    const address = server.address() as net.AddressInfo;
    return { host: address.address, port: address.port };
  }

  async close(): Promise<void> {
    // server.close() only calls back once every connection is gone: end them first.
    const closed = new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    const sessions = [...this.sessions.values()].map((session) => {
      session.channel.close();
      return session.done;
    });
    for (const socket of this.sockets) socket.destroy();
    await Promise.all(sessions);
    await closed;
  }

  /** Ends the session receiving `volume`, if any (failover, acceptance removed). */
  async disconnect(volume: string): Promise<void> {
    const session = this.sessions.get(volume);
    if (!session) return;
    session.channel.close();
    await session.done;
  }

  status(config: IncomingConfig): IncomingStatus {
    const session = this.sessions.get(config.volume);
    const stats = this.stats.get(config.volume);
    let seqLast: number | null = null;
    let seqDurable: number | null = null;
    try {
      const { device } = this.deps.volumes.replicationView(config.volume);
      seqLast = device.lastSeq;
      seqDurable = device.durableSeq;
    } catch {
      // not created yet (nothing received), or failed
    }
    const silentMs = stats?.lastContact ? Date.now() - Date.parse(stats.lastContact) : Infinity;
    const behind = stats?.lag && stats.rpoSeconds !== null && stats.lag.seconds > stats.rpoSeconds;
    return {
      direction: 'incoming', ...config, state: session ? 'receiving' : 'waiting', peer: session?.peer ?? null, seqLast, seqDurable,
      seqSource: stats?.seqSource ?? null, lastContact: stats?.lastContact ?? null, lag: stats?.lag ?? null,
      health: behind || (stats?.lastContact && silentMs > SILENCE_WARNING_MS) ? 'warning' : 'ok',
      recordsReceived: stats?.recordsReceived ?? 0, bytesOnWire: stats?.bytesOnWire ?? 0, lastError: stats?.lastError ?? null,
    };
  }

  private accept(socket: tls.TLSSocket): void {
    const identity = this.deps.credentials.identify(socket);
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    const channel = new Channel(socket);
    if (!identity) {
      void channel.refuse('REPLICATION_REFUSED', 'no identity proven');
      return;
    }
    void this.serve(channel, identity, peer).catch(() => undefined);
  }

  private async serve(channel: Channel, identity: string, peer: string): Promise<void> {
    const log = this.deps.log.child({ peer, identity });
    let hello: Record<string, unknown>;
    try {
      hello = parseJson(await channel.expect(FrameType.HELLO, HANDSHAKE_TIMEOUT_MS));
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'replication: no valid HELLO; connection closed');
      channel.close();
      return;
    }
    let volume: string;
    let prepared: { device: JournaledDevice; failbackCandidates: number[] | null };
    try {
      volume = this.checkHello(hello, identity);
      prepared = await this.prepare(volume, hello, identity, log);
    } catch (err) {
      const error = err instanceof HindsightError ? err : new HindsightError('PROTOCOL_ERROR', String(err));
      log.warn({ volume: typeof hello.volume === 'string' ? hello.volume.slice(0, 100) : undefined, code: error.code, err: error.message }, 'replication: sender refused');
      await channel.refuse(error.code, error.message);
      return;
    }
    // One sender per volume: a reconnection replaces a session whose death was not seen yet.
    const previous = this.sessions.get(volume);
    if (previous) {
      previous.channel.close();
      await previous.done;
      // Meanwhile a failover (or refuse) may have ended the acceptance, or another
      // connection taken the volume.
      if (!this.deps.incoming(volume) || this.sessions.has(volume)) {
        await channel.refuse('REPLICATION_REFUSED', `volume "${volume}" is no longer received here`);
        return;
      }
    }
    let finish!: () => void;
    const done = new Promise<void>((resolve) => { finish = resolve; });
    const session: Session = { channel, peer, done };
    this.sessions.set(volume, session);
    const stats = this.stats.get(volume) ?? { recordsReceived: 0, bytesOnWire: 0, seqSource: null, lastContact: null, lastError: null, lag: null, rpoSeconds: null };
    this.stats.set(volume, stats);
    try {
      let { device } = prepared;
      let welcomed = false;
      if (prepared.failbackCandidates !== null) {
        // Failback: the sender picks the highest candidate whose record it holds too (the
        // last seq both histories share) and names it; only then does this volume become
        // the replica.
        const candidates = prepared.failbackCandidates;
        await channel.send(jsonFrame(FrameType.WELCOME, {
          protocol: PROTOCOL_VERSION, seqLast: 0, seqDurable: 0, fingerprint: null,
          candidates: candidates.map((seq) => ({ seq, fingerprint: seq > 0 ? fingerprint(device.entryAt(seq)) : null })),
        }));
        const chosen = parseJson(await channel.expect(FrameType.STATE, HANDSHAKE_TIMEOUT_MS * 3));
        const common = chosen.commonSeq;
        if (typeof common !== 'number' || !candidates.includes(common)) throw new HindsightError('PROTOCOL_ERROR', 'failback: the sender named no offered common seq');
        const { diverged } = await this.deps.volumes.convertToReplica(volume, common, identity, () => this.deps.clients(volume));
        log.warn({ volume, commonSeq: common, diverged }, diverged ? 'failback: the volume is now a replica; its records after the common seq are kept in the volume named by "diverged"' : 'failback: the volume is now a replica (nothing had diverged)');
        device = this.deps.volumes.replicationView(volume).device;
        welcomed = true;
      }
      await this.receive(channel, volume, device, stats, log.child({ volume }), welcomed);
    } catch (err) {
      const error = err as Error;
      if (!channel.closed || !isHindsightError(err, 'SHUTTING_DOWN')) {
        stats.lastError = error.message;
        log.warn({ volume, err: error.message }, 'replication: receiving stopped');
      }
      if (!channel.closed) await channel.refuse(isHindsightError(err) ? err.code : 'INTERNAL', error.message);
    } finally {
      channel.close();
      if (this.sessions.get(volume) === session) this.sessions.delete(volume);
      finish();
    }
  }

  /** The volume a HELLO may send here, or why not. */
  private checkHello(hello: Record<string, unknown>, identity: string): string {
    if (hello.protocol !== PROTOCOL_VERSION) throw new HindsightError('PROTOCOL_ERROR', `protocol version ${String(hello.protocol)} is not spoken here (${PROTOCOL_VERSION} is)`);
    const volume = validateVolumeName(hello.volume);
    if (typeof hello.volumeId !== 'string' || typeof hello.sizeBytes !== 'number' || !Number.isSafeInteger(hello.seqLast)) throw new HindsightError('PROTOCOL_ERROR', 'HELLO lacks volumeId, sizeBytes or seqLast');
    validateVolumeSize(hello.sizeBytes);
    const accepted = this.deps.incoming(volume);
    if (!accepted) throw new HindsightError('REPLICATION_REFUSED', `this site was not told to receive volume "${volume}" (hindsight replication accept ${volume} --from ${identity})`);
    if (accepted.from !== identity) throw new HindsightError('REPLICATION_REFUSED', `volume "${volume}" is received here from "${accepted.from}" only`);
    return volume;
  }

  /**
   * The replica `volume` (made on first contact), if it is the one the HELLO names; or, for
   * a failback, the live volume and the last seq both sites share.
   */
  private async prepare(volume: string, hello: Record<string, unknown>, identity: string, log: Logger): Promise<{ device: JournaledDevice; failbackCandidates: number[] | null }> {
    const volumes = this.deps.volumes;
    if (!volumes.names().includes(volume)) {
      await volumes.createReplica(volume, hello.sizeBytes as number, hello.volumeId as string, identity);
      log.info({ volume, sizeBytes: hello.sizeBytes }, 'replication: replica volume created');
    }
    const view = volumes.replicationView(volume);
    if (view.id !== hello.volumeId) throw new HindsightError('REPLICATION_REFUSED', `another volume named "${volume}" lives here (id ${view.id})`);
    if (view.sizeBytes !== hello.sizeBytes) throw new HindsightError('REPLICATION_REFUSED', `volume "${volume}" is ${view.sizeBytes} bytes here, ${String(hello.sizeBytes)} at the source`);
    if (view.replica) return { device: view.device, failbackCandidates: null };
    if (!this.deps.incoming(volume)?.failback) {
      throw new HindsightError('REPLICATION_REFUSED', `volume "${volume}" is a live volume here${view.promoted ? ` (failed over at seq ${view.promoted.seq})` : ''}, not a replica; to fail back onto it: hindsight replication accept ${volume} --from ${identity} --failback`);
    }
    // Where the histories may part, highest first: the end of the shorter one; the sender's
    // promotion (it wrote its own records after); this volume's promotion (it wrote its own
    // after, unless it sent them since); nothing in common. The sender picks the highest
    // whose record it holds too.
    const shorter = Math.min(view.device.lastSeq, hello.seqLast as number);
    const senderPromoted = Number.isSafeInteger(hello.promotedSeq) ? hello.promotedSeq as number : Infinity;
    // Each as the last point this volume keeps at or before it: the volume goes on from the
    // common seq's state, exact only at a kept point (retention may have thinned what an
    // expired one showed). Both histories agree up to any seq before a common one.
    const history = view.device.history;
    const candidates = [shorter, Math.min(shorter, senderPromoted), Math.min(shorter, view.promoted?.seq ?? Infinity), 0].map((seq) => history.keptAtOrBefore(seq));
    return { device: view.device, failbackCandidates: [...new Set(candidates)].sort((x, y) => y - x) };
  }

  private async receive(channel: Channel, volume: string, device: JournaledDevice, stats: ReceiveStats, log: Logger, welcomed: boolean): Promise<void> {
    const volumes = this.deps.volumes;
    const held = device.lastSeq;
    if (!welcomed) {
      await channel.send(jsonFrame(FrameType.WELCOME, {
        protocol: PROTOCOL_VERSION, seqLast: held, seqDurable: device.durableSeq, fingerprint: held > 0 ? fingerprint(device.entryAt(held)) : null,
        image: volumes.replicationView(volume).replica?.image ?? null,
      }));
    }
    log.info({ from: held + 1 }, 'replication: receiving');
    let syncTimer: NodeJS.Timeout | null = null;
    let lastExpirySaveMs = Date.now();
    let syncing: Promise<void> | null = null;
    const ack = () => channel.send(ackFrame(device.lastSeq, Math.min(device.durableSeq, device.lastSeq))).catch(() => undefined);
    const syncSoon = () => {
      if (syncTimer || syncing) return;
      syncTimer = setTimeout(() => {
        syncTimer = null;
        syncing = device.sync().then(ack, (err: Error) => channel.refuse('IO_ERROR', err.message)).then(async () => {
          // Other expiry is saved now and then (a crash forgets at most a little of it; the
          // sender sends it all again on reconnection).
          if (device.retention.unsaved && Date.now() - lastExpirySaveMs >= EXPIRY_SAVE_EVERY_MS) {
            lastExpirySaveMs = Date.now();
            await volumes.saveReplicatedExpiry(volume).catch(() => undefined);
          }
        }).finally(() => { syncing = null; });
      }, SYNC_DELAY_MS);
    };
    try {
      for (;;) {
        const frame = await channel.next(IDLE_TIMEOUT_MS);
        if (device.retention.unsaved && Date.now() - lastExpirySaveMs >= EXPIRY_SAVE_EVERY_MS) {
          lastExpirySaveMs = Date.now();
          await volumes.saveReplicatedExpiry(volume);
        }
        stats.bytesOnWire += frame.wireBytes;
        stats.lastContact = new Date().toISOString();
        switch (frame.type) {
          case FrameType.RECORDS: {
            // Failed over (or refused) while this session was going: nothing more lands.
            if (!this.deps.incoming(volume) || !volumes.replicationView(volume).replica) throw new HindsightError('REPLICATION_REFUSED', `volume "${volume}" is no longer received here`);
            let durableAsked = false;
            const batch = decodeRecords(frame.body);
            // Thinned records only ever reach the disk inside expired runs already saved.
            if (device.retention.unsaved && batch.some((raw) => raw.length >= 5 && raw.readUInt8(4) === RecordType.THINNED)) {
              await volumes.saveReplicatedExpiry(volume);
              lastExpirySaveMs = Date.now();
            }
            for (const raw of batch) {
              // Data goes only with its points: a thinned record must lie in an expired run
              // (the replica would not open again otherwise).
              if (raw.length >= 5 && raw.readUInt8(4) === RecordType.THINNED && raw.length >= 16 && device.history.expiredRunOf(Number(raw.readBigUInt64LE(8))) === null) {
                throw new HindsightError('RECORD_INVALID', `a thinned record (seq ${raw.readBigUInt64LE(8)}) arrived outside the points its source expired`);
              }
              // A rollback made after the image, to a point before it the image does not hold,
              // could only be followed with data this replica never got: stop. (Rollbacks in
              // the image's past are part of what it shows; points the source itself expired
              // keep their data there as here.)
              const image = volumes.replicationView(volume).replica?.image;
              if (image && raw.length >= 32 && raw.readUInt8(4) === RecordType.REVERT) {
                const seq = Number(raw.readBigUInt64LE(8));
                const target = Number(raw.readBigUInt64LE(24));
                if (seq > image.seq && target < image.seq && !image.kept.includes(target)) {
                  throw new HindsightError('RECORD_INVALID', `the source rolled back to seq ${target}, before the image this replica started from (seq ${image.seq}); delete this replica and replicate again with --initial history`);
                }
              }
              const record = device.appendReplicated(raw);
              stats.recordsReceived += 1;
              if (record.type === RecordType.FLUSH || (record.flags & RecordFlag.FUA) !== 0) durableAsked = true;
            }
            stats.seqSource = Math.max(stats.seqSource ?? 0, device.lastSeq);
            if (durableAsked) {
              await device.sync();
              await ack();
            } else {
              await ack();
              syncSoon();
            }
            break;
          }
          case FrameType.STATE: {
            const state = parseJson(frame);
            if (state.expired !== undefined) volumes.expireReplicated(volume, checkRuns(state.expired));
            if (state.image !== undefined) await volumes.setReplicaImage(volume, checkImage(state.image));
            if (state.bookmarks !== undefined) await volumes.bookmarksReplicated(volume, checkBookmarks(state.bookmarks));
            if (state.foldBefore !== undefined) {
              if (!Number.isSafeInteger(state.foldBefore) || (state.foldBefore as number) < 0) throw new HindsightError('PROTOCOL_ERROR', 'STATE: foldBefore is not a seq');
              volumes.foldLimitReplicated(volume, state.foldBefore as number);
            }
            break;
          }
          case FrameType.HEARTBEAT: {
            const beat = parseJson(frame);
            if (Number.isSafeInteger(beat.seqLast)) stats.seqSource = beat.seqLast as number;
            const lag = beat.lag as { records?: unknown; bytes?: unknown; seconds?: unknown } | undefined;
            if (lag && typeof lag === 'object' && [lag.records, lag.bytes, lag.seconds].every((value) => typeof value === 'number' && Number.isFinite(value) && value >= 0)) {
              stats.lag = { records: lag.records as number, bytes: lag.bytes as number, seconds: lag.seconds as number };
            }
            if (typeof beat.rpoSeconds === 'number' && beat.rpoSeconds > 0) stats.rpoSeconds = beat.rpoSeconds;
            await ack();
            break;
          }
          default:
            throw new HindsightError('PROTOCOL_ERROR', `unexpected frame type ${frame.type}`);
        }
      }
    } finally {
      if (syncTimer) clearTimeout(syncTimer);
      await syncing;
      // What arrived is made durable whatever ended the link; the expiry too.
      await device.sync().catch(() => undefined);
      await volumes.saveReplicatedExpiry(volume).catch(() => undefined);
    }
  }
}

function checkRuns(value: unknown): Array<[number, number]> {
  if (!Array.isArray(value)) throw new HindsightError('PROTOCOL_ERROR', 'STATE: expired is not a list');
  let previous = 0;
  return value.map((run) => {
    if (!Array.isArray(run) || run.length !== 2 || !Number.isSafeInteger(run[0]) || !Number.isSafeInteger(run[1]) || run[0] <= previous || run[1] < run[0]) {
      throw new HindsightError('PROTOCOL_ERROR', 'STATE: expired runs are not ascending, disjoint seq ranges');
    }
    previous = run[1];
    return [run[0], run[1]] as [number, number];
  });
}

function checkImage(value: unknown): { seq: number; kept: number[] } {
  const image = value as { seq?: unknown; kept?: unknown };
  if (typeof image !== 'object' || image === null || !Number.isSafeInteger(image.seq) || !Array.isArray(image.kept) || image.kept.length > 10_000 || !image.kept.every((seq) => Number.isSafeInteger(seq))) {
    throw new HindsightError('PROTOCOL_ERROR', 'STATE: image is not {seq, kept}');
  }
  return { seq: image.seq as number, kept: image.kept as number[] };
}

function checkBookmarks(value: unknown): Bookmark[] {
  if (!Array.isArray(value) || value.length > 10_000) throw new HindsightError('PROTOCOL_ERROR', 'STATE: bookmarks is not a list');
  return value.map((entry) => {
    const bookmark = entry as Partial<Bookmark>;
    if (typeof bookmark !== 'object' || bookmark === null || typeof bookmark.name !== 'string' || !Number.isSafeInteger(bookmark.seq) || !Number.isSafeInteger(bookmark.timeUs) || typeof bookmark.createdAt !== 'string') {
      throw new HindsightError('PROTOCOL_ERROR', 'STATE: a bookmark lacks name, seq, timeUs or createdAt');
    }
    return { name: bookmark.name, seq: bookmark.seq!, timeUs: bookmark.timeUs!, createdAt: bookmark.createdAt.slice(0, 64) };
  });
}
