/**
 * One outgoing replication link: a volume's journal records, in seq order, to a receiver
 * (docs/PROTOCOL.md). Only records durable here are sent (a crash could otherwise cut a
 * record the receiver already holds and give its seq to another write), so the link asks
 * for a sync itself (at most every SYNC_EVERY_MS) instead of waiting for clients' flushes.
 * Records go as they are stored (reduced, and compressed if compaction got to them), in
 * batches compressed on the wire; up to WINDOW_BYTES wait for acknowledgement. After any
 * failure the link reconnects with backoff and continues from what the receiver holds.
 */
import tls from 'node:tls';
import type { Logger } from 'pino';
import { HindsightError, formatTimeUs } from '../core/index.js';
import { RECORD_HEADER_BYTES, RecordFlag, RecordType, crcSeedFor, decodeRecordHeader, recordSpan } from '../journal/index.js';
import { encodeRecordHeader } from '../journal/record.js';
import { isZero } from '../index/index.js';
import type { VolumeManager } from '../volume/index.js';
import { Channel } from './channel.js';
import type { ReplicationCredentials } from './credentials.js';
import { fingerprint } from './fingerprint.js';
import { FrameType, PROTOCOL_VERSION, decodeAck, encodeFrame, jsonFrame, parseJson, recordsBody } from './frames.js';

const BATCH_BYTES = 1024 * 1024;
/** The image's visibility is computed this much of the volume at a time. */
const IMAGE_SLICE_BYTES = 256 * 1024 * 1024;
/** After a batch that did not compress, this many go uncompressed before trying again. */
const COMPRESSION_RETRY_FRAMES = 8;
const WINDOW_BYTES = 16 * 1024 * 1024;
const SYNC_EVERY_MS = 20;
const IDLE_POLL_MS = 10;
const HEARTBEAT_MS = 2000;
/** The receiver's durable seq is saved (replication.json) at most this often: retention's runs stay below it. */
const ACK_SAVE_MS = 60_000;
/** No frame from the receiver for this long: the link is dead (it ACKs heartbeats). */
const RECEIVE_TIMEOUT_MS = 30_000;
const CONNECT_TIMEOUT_MS = 10_000;
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 30_000;

export interface OutgoingConfig {
  /** The local volume. */
  volume: string;
  /** host:port of the receiver's replication listener. */
  to: string;
  /** The volume's name at the receiver. */
  as: string;
  /** The PSK identity presented (default: the first of the PSK file). */
  identity?: string;
  bandwidthBytesPerSecond: number | null;
  rpoSeconds: number;
  /**
   * What a receiver without any record gets first: `image` (default) the data the volume
   * and its bookmarks show now (earlier points arrive expired), `history` every record as
   * stored.
   */
  initial?: 'image' | 'history';
  /** initial: image — the seq the image stands for (the source's last when the link was made): every later point is sent. */
  imageSeq?: number;
  /** initial: image — the earlier points the image also holds (the bookmarks then). */
  imageKept?: number[];
  /** The image began to be sent (to a receiver holding nothing): a restart goes on with the same one. */
  imageStarted?: boolean;
  /**
   * The receiver's durable seq, saved at most every minute: retention's runs (pack.ts) stay
   * below it, also after a restart before a session says more.
   */
  acknowledged?: number;
  paused: boolean;
  createdAt: string;
}

export type LinkState = 'connecting' | 'streaming' | 'paused' | 'retrying' | 'stopped';

export interface OutgoingStatus extends OutgoingConfig {
  direction: 'outgoing';
  state: LinkState;
  /** ok, or warning (the lag is past the RPO target, or the link fails and retries). */
  health: 'ok' | 'warning';
  seqSource: number;
  /** Highest seq sent, and highest the receiver holds durably. */
  seqSent: number;
  seqAcknowledged: number;
  lag: { records: number; bytes: number; seconds: number; oldestUnsent: string | null };
  bytesOnWire: number;
  recordBytesSent: number;
  recordsSent: number;
  connects: number;
  connectedSince: string | null;
  lastError: string | null;
}

export interface SenderDeps {
  volumes: VolumeManager;
  credentials: ReplicationCredentials;
  log: Logger;
  /** Saves the links' configs (replication.json), after this link's changed. */
  persist: () => Promise<void>;
}

interface Image {
  seq: number;
  kept: number[];
  /** WRITE records some kept point shows; null: the image's seq expired here, nothing is thinned. */
  visible: Set<number> | null;
  /** The points before `seq` the image does not hold. */
  expired: Array<[number, number]>;
  crcSeed: number;
}

export class ReplicationLink {
  private state: LinkState = 'connecting';
  private stopped = false;
  private channel: Channel | null = null;
  private wake: (() => void) | null = null;
  private running: Promise<void> | null = null;
  private seqSent = 0;
  private seqAcknowledged = 0;
  /** A session got as far as streaming since the daemon started: the acknowledged seq is the receiver's. */
  private streamed = false;
  private ackSavedMs = 0;
  /** A failback's common seq, until the receiver acknowledges records after it. */
  private failbackCommon: number | null = null;
  private seqReceived = 0;
  private inflight: Array<{ seq: number; bytes: number }> = [];
  private inflightBytes = 0;
  private bytesOnWire = 0;
  private recordBytesSent = 0;
  private recordsSent = 0;
  private connects = 0;
  private connectedSince: string | null = null;
  private lastError: string | null = null;
  private windowWaiter: (() => void) | null = null;
  /** The first sync's image (initial: image), kept while it is being sent. */
  private image: Image | null = null;

  constructor(public config: OutgoingConfig, private readonly deps: SenderDeps) {}

  start(): void {
    this.running ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.state = 'stopped';
    this.channel?.close();
    this.wake?.();
    await this.running;
  }

  setPaused(paused: boolean): void {
    this.config = { ...this.config, paused };
    if (paused) this.channel?.close();
    this.wake?.();
  }

  status(): OutgoingStatus {
    let seqSource = 0;
    let lag = { records: 0, bytes: 0, seconds: 0, oldestUnsent: null as string | null };
    try {
      const { device } = this.deps.volumes.replicationView(this.config.volume);
      seqSource = device.lastSeq;
      const behind = seqSource - this.seqAcknowledged;
      if (behind > 0) {
        const oldest = this.seqAcknowledged + 1;
        // (Its time: from memory unless folded away; a collapsed record's is near enough.)
        const first = { timeUs: oldest >= device.history.seqFirst ? device.history.timeOf(oldest) : device.entryAt(oldest).timeUs };
        // Bytes: those of up to 100k records the history holds, scaled to all (records
        // folded out of memory are not read back from disk for an estimate).
        let bytes = 0;
        const from = Math.max(this.seqAcknowledged + 1, device.history.seqFirst);
        const counted = Math.min(seqSource - from + 1, 100_000);
        for (let seq = from; seq < from + counted; seq += 1) bytes += recordSpan(device.history.payloadBytesOf(seq));
        lag = { records: behind, bytes: Math.round(bytes * (behind / Math.max(1, counted))), seconds: Math.max(0, (Date.now() * 1000 - first.timeUs) / 1e6), oldestUnsent: formatTimeUs(first.timeUs) };
      }
    } catch {
      // the volume is gone or failed: shown by the state and last error
    }
    return {
      direction: 'outgoing', ...this.config, state: this.config.paused ? 'paused' : this.state,
      // Behind the RPO target, or failing (refused, unreachable) even with nothing to send.
      health: lag.seconds > this.config.rpoSeconds || (this.state === 'retrying' && !this.config.paused) ? 'warning' : 'ok',
      seqSource, seqSent: this.seqSent, seqAcknowledged: this.seqAcknowledged, lag,
      bytesOnWire: this.bytesOnWire, recordBytesSent: this.recordBytesSent, recordsSent: this.recordsSent,
      connects: this.connects, connectedSince: this.connectedSince, lastError: this.lastError,
    };
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      if (this.config.paused) {
        this.state = 'paused';
        await this.sleep(1000);
        continue;
      }
      this.state = 'connecting';
      const ackedBefore = this.seqAcknowledged;
      const startedMs = Date.now();
      try {
        await this.session();
      } catch (err) {
        if (this.stopped) break;
        const message = (err as Error).message;
        if (message !== this.lastError) this.deps.log.warn({ volume: this.config.volume, to: this.config.to, err: message }, 'replication link down; retrying');
        this.lastError = message;
      } finally {
        this.channel?.close();
        this.channel = null;
        this.connectedSince = null;
        this.inflight = [];
        this.inflightBytes = 0;
        this.windowWaiter?.();
      }
      if (this.stopped) break;
      // A link that got records acknowledged (or held up a minute) starts its backoff again;
      // one refused after the handshake (every time) backs off like one that cannot connect.
      failures = this.seqAcknowledged > ackedBefore || Date.now() - startedMs > 60_000 ? 1 : failures + 1;
      this.state = 'retrying';
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(failures - 1, 10));
      await this.sleep(delay * (0.75 + Math.random() * 0.5));
    }
    this.state = 'stopped';
  }

  private connect(): Promise<tls.TLSSocket> {
    const { host, port } = splitHostPort(this.config.to);
    const options = this.deps.credentials.clientOptions(host, this.config.identity);
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ ...options, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new HindsightError('IO_ERROR', `replication: no TLS connection to ${this.config.to} within ${CONNECT_TIMEOUT_MS / 1000} s`));
      }, CONNECT_TIMEOUT_MS);
      socket.once('secureConnect', () => {
        clearTimeout(timer);
        socket.setNoDelay(true);
        socket.setKeepAlive(true, 10_000);
        resolve(socket);
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        socket.destroy();
        reject(new HindsightError('IO_ERROR', `replication: cannot connect to ${this.config.to}: ${err.message}`));
      });
    });
  }

  /**
   * Below this seq the volume's folded history may share run entries (pack.ts): the receiver
   * holds every record before it durably, so it never asks for the fingerprint of one (the
   * handshake compares the record at the receiver's last seq). Until a session says, what
   * was saved (replication.json `acknowledged`).
   */
  runsBelow(): number {
    return this.streamed ? this.seqAcknowledged : this.config.acknowledged ?? 0;
  }

  private async session(): Promise<void> {
    const socket = await this.connect();
    if (this.stopped || this.config.paused) {
      socket.destroy();
      return;
    }
    const channel = new Channel(socket);
    this.channel = channel;
    this.connects += 1;
    const view = this.deps.volumes.replicationView(this.config.volume);
    const { device } = view;
    await channel.send(jsonFrame(FrameType.HELLO, {
      protocol: PROTOCOL_VERSION, volume: this.config.as, sourceVolume: this.config.volume, volumeId: view.id, sizeBytes: view.sizeBytes,
      seqLast: device.lastSeq, timeLastUs: device.stats().timeLastUs, promotedSeq: view.promoted?.seq ?? null,
    }));
    const welcome = parseJson(await channel.expect(FrameType.WELCOME, RECEIVE_TIMEOUT_MS));
    const held = welcome.seqLast;
    const heldDurable = welcome.seqDurable;
    if (welcome.protocol !== PROTOCOL_VERSION || !Number.isSafeInteger(held) || !Number.isSafeInteger(heldDurable)) throw new HindsightError('PROTOCOL_ERROR', 'the receiver answered with an unknown WELCOME');
    let seqHeld = held as number;
    if (Array.isArray(welcome.candidates)) {
      // A failback offer: the highest seq whose record both sites hold is where they part.
      const offered = welcome.candidates as Array<{ seq?: unknown; fingerprint?: unknown }>;
      const common = offered.find((candidate) => Number.isSafeInteger(candidate.seq) && (candidate.seq as number) <= device.lastSeq
        && ((candidate.seq as number) === 0 || fingerprint(device.entryAt(candidate.seq as number)) === candidate.fingerprint));
      if (!common) throw new HindsightError('REPLICATION_REFUSED', 'failback: the receiver offered no seq whose record this volume holds too');
      seqHeld = common.seq as number;
      await channel.send(jsonFrame(FrameType.STATE, { commonSeq: seqHeld }));
      this.deps.log.warn({ volume: this.config.volume, to: this.config.to, commonSeq: seqHeld }, 'failback: the receiver becomes the replica from the last seq both hold');
    }
    if (seqHeld > device.lastSeq) {
      throw new HindsightError('REPLICATION_REFUSED', `the receiver holds seq ${seqHeld}, beyond this volume's last (${device.lastSeq}): the two have diverged`);
    }
    if (!Array.isArray(welcome.candidates) && seqHeld > 0) {
      const ours = device.entryAt(seqHeld);
      if (fingerprint(ours) !== welcome.fingerprint) {
        throw new HindsightError('REPLICATION_REFUSED', (ours.flags & RecordFlag.RUN) !== 0
          ? `the receiver holds up to seq ${seqHeld}, in history this volume has since packed into runs (their records' own times are gone), so it cannot tell whether the two agree: the receiver lost records it had acknowledged, or was linked before another receiver; delete the volume there and replicate again`
          : `the receiver's record at seq ${seqHeld} is not this volume's: the two have diverged`);
      }
    }
    this.seqReceived = seqHeld;
    this.seqSent = seqHeld;
    // After a failback offer the receiver holds the common records durably (synced before).
    this.seqAcknowledged = Array.isArray(welcome.candidates) ? seqHeld : heldDurable as number;
    // A receiver holding less than it acknowledged before (made again, restored): what was
    // saved for runs (runsBelow) comes down with it before anything else.
    if ((this.config.acknowledged ?? 0) > this.seqAcknowledged) {
      this.config = { ...this.config, acknowledged: this.seqAcknowledged };
      await this.deps.persist();
    }
    this.failbackCommon = Array.isArray(welcome.candidates) ? seqHeld : null;
    this.state = 'streaming';
    this.streamed = true;
    this.connectedSince = new Date().toISOString();
    this.lastError = null;
    this.deps.log.info({ volume: this.config.volume, to: this.config.to, as: this.config.as, from: seqHeld + 1 }, 'replication link up');
    const reader = this.readAcks(channel);
    try {
      const theirs = welcome.image as { seq?: unknown; kept?: unknown } | null | undefined;
      const theirImage = theirs && Number.isSafeInteger(theirs.seq) && Array.isArray(theirs.kept) && theirs.kept.every((seq) => Number.isSafeInteger(seq)) ? { seq: theirs.seq as number, kept: theirs.kept as number[] } : null;
      await this.stream(channel, seqHeld + 1, theirImage);
    } finally {
      channel.close();
      await reader;
    }
  }

  private async readAcks(channel: Channel): Promise<void> {
    while (!channel.closed) {
      let frame;
      try {
        frame = await channel.next(RECEIVE_TIMEOUT_MS);
      } catch {
        break;
      }
      if (frame.type !== FrameType.ACK) {
        await channel.refuse('PROTOCOL_ERROR', `unexpected frame type ${frame.type}`);
        break;
      }
      let ack;
      try {
        ack = decodeAck(frame.body);
      } catch (err) {
        await channel.refuse('PROTOCOL_ERROR', (err as Error).message);
        break;
      }
      this.seqReceived = Math.max(this.seqReceived, ack.seqReceived);
      this.seqAcknowledged = Math.max(this.seqAcknowledged, ack.seqDurable);
      if (this.failbackCommon !== null && ack.seqDurable > this.failbackCommon) {
        // The old source took this volume's records after the common seq: the failback is
        // done, and its candidates no longer hold runs back (VolumeRecord promoted.runsBelow).
        this.failbackCommon = null;
        this.deps.volumes.failedBack(this.config.volume).catch((err: unknown) => this.deps.log.warn({ volume: this.config.volume, err: (err as Error).message }, 'failback: could not note it done'));
      }
      if (this.seqAcknowledged > (this.config.acknowledged ?? 0) && Date.now() - this.ackSavedMs >= ACK_SAVE_MS) {
        this.ackSavedMs = Date.now();
        const before = this.config.acknowledged;
        const saving = this.seqAcknowledged;
        this.config = { ...this.config, acknowledged: saving };
        // Not saved: the value on disk stays lower (safe), and the next acknowledgement a
        // minute on (a heartbeat's, idle) tries again.
        this.deps.persist().catch(() => {
          if (this.config.acknowledged === saving) this.config = { ...this.config, acknowledged: before };
        });
      }
      while (this.inflight.length > 0 && this.inflight[0].seq <= this.seqReceived) this.inflightBytes -= this.inflight.shift()!.bytes;
      this.windowWaiter?.();
    }
    this.wake?.();
    this.windowWaiter?.();
  }

  private async stream(channel: Channel, from: number, theirImage: { seq: number; kept: number[] } | null): Promise<void> {
    let cursor = from;
    let lastSyncMs = 0;
    let lastHeartbeatMs = 0;
    // Every 2 s, busy or not (even while an image is worked out): where the source is and the
    // lag it sees (the receiver shows it; and it answers, so neither side times out).
    const heartbeat = async () => {
      if (Date.now() - lastHeartbeatMs < HEARTBEAT_MS || channel.closed) return;
      const { device } = this.deps.volumes.replicationView(this.config.volume);
      const { lag, rpoSeconds } = this.status();
      await channel.send(jsonFrame(FrameType.HEARTBEAT, { seqLast: device.lastSeq, timeLastUs: device.stats().timeLastUs, nowUs: Date.now() * 1000, lag, rpoSeconds }));
      lastHeartbeatMs = Date.now();
    };
    const image = await this.imageFor(from, theirImage, heartbeat);
    if (image) await channel.send(jsonFrame(FrameType.STATE, { image: { seq: image.seq, kept: image.kept } }));
    const expiry = new ExpirySent();
    let sentBookmarks = '';
    let sentFoldBefore = 0;
    let skipCompression = 0;
    let nextSendMs = 0;
    while (!this.stopped && !this.config.paused) {
      if (channel.closed) throw channel.error ?? new HindsightError('IO_ERROR', 'replication link closed');
      const { device, bookmarks } = this.deps.volumes.replicationView(this.config.volume);
      if (device.durableSeq < device.lastSeq && Date.now() - lastSyncMs >= SYNC_EVERY_MS) {
        lastSyncMs = Date.now();
        await device.syncThrough(device.lastSeq);
      }
      const target = device.durableSeq;
      await heartbeat();
      // How far the receiver may fold its history: no rollback it has not received, made or
      // to come, goes back before it (idle too: a restarted receiver hears it again).
      const foldBefore = device.foldLimitForReplicas(cursor - 1);
      if (foldBefore > sentFoldBefore) {
        await channel.send(jsonFrame(FrameType.STATE, { foldBefore }));
        sentFoldBefore = foldBefore;
      }
      if (cursor > target) {
        await this.sleep(IDLE_POLL_MS);
        continue;
      }
      while (this.inflightBytes > WINDOW_BYTES && !channel.closed) await new Promise<void>((resolve) => { this.windowWaiter = resolve; });
      if (channel.closed) continue;
      const records = await device.recordsFrom(cursor, target, BATCH_BYTES);
      const batchLast = cursor + records.length - 1;
      // Expiry before the records: the receiver must know a point is gone before records
      // without payload (thinned) arrive. Bookmarks after: it keeps only bookmarks of
      // records it holds.
      for (const runs of expiry.newRuns(device.history, image && cursor <= image.seq ? image.expired : null)) {
        await channel.send(encodeFrame(FrameType.STATE, Buffer.from(JSON.stringify({ expired: runs })), true));
      }
      if (image?.visible && cursor <= image.seq) {
        for (let i = 0; i < records.length && cursor + i <= image.seq; i += 1) {
          if (!image.visible.has(cursor + i)) records[i] = thinnedCopy(records[i], image.crcSeed);
        }
      }
      // Incompressible data (random, or compressed already): not tried again for a while.
      const frame = encodeFrame(FrameType.RECORDS, recordsBody(records), skipCompression === 0);
      if (skipCompression > 0) skipCompression -= 1;
      else if (frame[1].length >= 512 && frame[0].readUInt8(5) === 0) skipCompression = COMPRESSION_RETRY_FRAMES;
      const wire = frame[0].length + frame[1].length;
      const rate = this.config.bandwidthBytesPerSecond;
      if (rate) {
        const now = Date.now();
        // Paced: wait for the frame's turn, still heartbeating (the receiver shows the lag).
        while (Date.now() < nextSendMs && !this.stopped && !channel.closed) {
          await this.sleep(Math.min(nextSendMs - Date.now(), HEARTBEAT_MS));
          if (!channel.closed) await heartbeat();
        }
        nextSendMs = Math.max(now, nextSendMs) + (wire * 1000) / rate;
      }
      this.inflight.push({ seq: batchLast, bytes: wire });
      this.inflightBytes += wire;
      await channel.send(frame);
      this.seqSent = batchLast;
      this.bytesOnWire += wire;
      this.recordsSent += records.length;
      for (const record of records) this.recordBytesSent += record.length;
      cursor = batchLast + 1;
      // Bookmarks of points the receiver holds: not those before an image it was not sent.
      const imageSeq = this.image?.seq ?? this.config.imageSeq ?? 0;
      const imageKept = this.image?.kept ?? this.config.imageKept ?? [];
      const marks = JSON.stringify({ bookmarks: bookmarks.list().filter((bookmark) => bookmark.seq <= batchLast && (bookmark.seq >= imageSeq || imageKept.includes(bookmark.seq))) });
      if (marks !== sentBookmarks) {
        await channel.send(encodeFrame(FrameType.STATE, Buffer.from(marks), true));
        sentBookmarks = marks;
      }

    }
  }

  /**
   * The image this session sends first, if any.
   * - The receiver says its first sync was an image (and holds some of it): that image goes on
   *   (the records it thins are a function of its seq and points), whatever this link was told
   *   or remembers — a link made again, a sender restarted; and this link's rollback guard
   *   knows it.
   * - The receiver holds nothing: the image at the seq the link was made (taken anew only if
   *   retention removed that point before anything arrived), remembered in replication.json.
   * - The receiver holds records and no image: none (it was sent history).
   */
  private async imageFor(from: number, theirs: { seq: number; kept: number[] } | null, tick: () => Promise<void>): Promise<Image | null> {
    const { device } = this.deps.volumes.replicationView(this.config.volume);
    if (theirs && from > 1) {
      if (this.config.imageSeq !== theirs.seq || (this.config.imageKept ?? []).join() !== theirs.kept.join() || !this.config.imageStarted) {
        await this.remember({ imageSeq: theirs.seq, imageKept: theirs.kept, imageStarted: true });
      }
      if (from > theirs.seq) return null;
      if (!this.image || this.image.seq !== theirs.seq) this.image = await this.takeImage(false, tick);
      return this.image;
    }
    if (from === 1 && (this.config.initial ?? 'image') === 'image') {
      if (!this.image || device.history.expiredRunOf(this.image.seq) !== null) this.image = await this.takeImage(true, tick);
      if (this.image && (!this.config.imageStarted || this.config.imageSeq !== this.image.seq)) {
        await this.remember({ imageSeq: this.image.seq, imageKept: this.image.kept, imageStarted: true });
      }
      return this.image;
    }
    this.image = null;
    if (this.config.imageSeq !== undefined || this.config.imageStarted) await this.remember({ imageSeq: undefined, imageKept: undefined, imageStarted: undefined });
    return null;
  }

  /** Changes this link's image bookkeeping and saves it; undone if the save fails. */
  private async remember(changes: Pick<OutgoingConfig, 'imageSeq' | 'imageKept' | 'imageStarted'>): Promise<void> {
    const before = this.config;
    const next: OutgoingConfig = { ...before, ...changes };
    for (const key of ['imageSeq', 'imageKept', 'imageStarted'] as const) if (next[key] === undefined) delete next[key];
    this.config = next;
    try {
      await this.deps.persist();
    } catch (err) {
      this.config = { ...this.config, imageSeq: before.imageSeq, imageKept: before.imageKept, imageStarted: before.imageStarted };
      throw err;
    }
  }

  /**
   * The first sync as an image at the link's seq S (or, with `retake`, now if S is gone): only
   * the WRITE records whose data point S or a kept bookmark shows keep their payload; the
   * others go as THINNED headers (seq, time, range: the timeline stays whole), and every other
   * point up to S arrives expired.
   */
  private async takeImage(retake: boolean, tick: () => Promise<void>): Promise<Image | null> {
    const { device, bookmarks, id } = this.deps.volumes.replicationView(this.config.volume);
    let seq = this.config.imageSeq ?? 0;
    const gone = seq === 0 || seq > device.durableSeq || device.history.expiredRunOf(seq) !== null;
    if (gone && retake) {
      await device.syncThrough(device.lastSeq);
      seq = device.durableSeq;
    }
    if (seq === 0) return null;
    // The points the image holds: those named when the link was made (so every reconnection
    // sends the same image), or the bookmarks now if it is taken anew.
    const earlier = seq === this.config.imageSeq ? this.config.imageKept ?? [] : bookmarks.list().map((bookmark) => bookmark.seq);
    const kept = [...new Set([...earlier.filter((at) => at <= seq), seq])].sort((x, y) => x - y);
    let visible: Set<number> | null = null;
    let unknown = false;
    if (!gone || retake) {
      visible = new Set<number>();
      for (const point of kept) {
        let index;
        try {
          index = device.pointIndex(point);
        } catch {
          continue; // expired: nothing of it is kept anyway
        }
        // A slice at a time, yielding between: a large volume does not stall the daemon.
        for (let at = 0; at < device.sizeBytes; at += IMAGE_SLICE_BYTES) {
          index.lookup(at, Math.min(IMAGE_SLICE_BYTES, device.sizeBytes - at), (piece) => {
            if (piece.segment < 0 || isZero(piece.segment)) return;
            const shown = device.history.seqOfPayload(piece.segment, piece.payloadPosition);
            if (shown === 0) unknown = true;
            visible!.add(shown);
          });
          await new Promise((resolve) => setImmediate(resolve));
          await tick();
        }
        index.close();
      }
    }
    // A data extent that names no record (it cannot happen): thin nothing rather than guess.
    if (unknown) visible = null;
    const expired: Array<[number, number]> = [];
    let previous = 0;
    for (const point of kept) {
      if (point - 1 > previous) expired.push([previous + 1, point - 1]);
      previous = point;
    }
    this.deps.log.info({ volume: this.config.volume, seq, recordsWithData: visible?.size ?? null, pointsKept: kept.length }, 'replication: the first sync sends the image at seq S (and bookmarks), not every earlier point');
    return { seq, kept, visible, expired, crcSeed: crcSeedFor(Buffer.from(id.replace(/-/g, ''), 'hex')) };
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = null;
        resolve();
      }, ms);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
    });
  }
}

/** Runs in one STATE frame (about 2.5 MB of JSON at most). */
const RUNS_PER_FRAME = 100_000;

/**
 * What of the source's expiry (and the image's) one session has sent: only what is new.
 * Whole runs, even past the records sent so far: a receiver saves what it has before any
 * thinned record lands, and a thinned record is hidden at later points too — those must be
 * expired (durably) by then. (Runs past a replica's last record are clipped when it opens and
 * when it is failed over.)
 */
class ExpirySent {
  private sent: Array<[number, number]> = [];
  private version = -1;

  /** Frames' worth of runs to send now; none when nothing changed. */
  newRuns(history: { expired: ReadonlyArray<readonly [number, number]>; expiredVersion: number }, imageRuns: Array<[number, number]> | null): Array<Array<[number, number]>> {
    const version = history.expiredVersion * 2 + (imageRuns ? 1 : 0);
    if (version === this.version) return [];
    this.version = version;
    const all = mergeRuns([...(imageRuns ?? []), ...history.expired.map(([a, b]) => [a, b] as [number, number])]);
    const fresh = subtractRuns(all, this.sent);
    this.sent = mergeRuns([...this.sent, ...fresh]);
    const frames: Array<Array<[number, number]>> = [];
    for (let at = 0; at < fresh.length; at += RUNS_PER_FRAME) frames.push(fresh.slice(at, at + RUNS_PER_FRAME));
    return frames;
  }
}

/** The seqs in `runs` and not in `minus` (both ascending, disjoint), as runs. */
export function subtractRuns(runs: Array<[number, number]>, minus: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let j = 0;
  for (const [a, b] of runs) {
    let start = a;
    while (j < minus.length && minus[j][1] < start) j += 1;
    let k = j;
    while (start <= b) {
      if (k >= minus.length || minus[k][0] > b) {
        out.push([start, b]);
        break;
      }
      const [x, y] = minus[k];
      if (x > start) out.push([start, x - 1]);
      start = Math.max(start, y + 1);
      k += 1;
    }
  }
  return out;
}

/** A WRITE record as its THINNED header (no payload; CRC with the volume's seed); other records as they are. */
export function thinnedCopy(raw: Buffer, crcSeed: number): Buffer {
  const decoded = decodeRecordHeader(raw);
  if (!decoded.ok || decoded.header.type !== RecordType.WRITE) return raw;
  const out = Buffer.alloc(RECORD_HEADER_BYTES);
  encodeRecordHeader(out, { ...decoded.header, type: RecordType.THINNED, flags: decoded.header.flags & ~RecordFlag.COMPRESSED, payloadBytes: 0, payloadSkip: 0 }, null, crcSeed);
  return out;
}

export function mergeRuns(runs: Array<[number, number]>): Array<[number, number]> {
  const merged: Array<[number, number]> = [];
  for (const [a, b] of runs.sort((x, y) => x[0] - y[0])) {
    const last = merged[merged.length - 1];
    if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
    else merged.push([a, b]);
  }
  return merged;
}

export function splitHostPort(text: string): { host: string; port: number } {
  const match = /^\[?([^\]]+?)\]?:(\d{1,5})$/.exec(text.trim());
  const port = match ? Number(match[2]) : NaN;
  if (!match || !(port >= 1 && port <= 65535)) throw new HindsightError('INVALID_ARGUMENT', `"${text}" is not HOST:PORT (e.g. dr-site:10810)`);
  return { host: match[1], port };
}
