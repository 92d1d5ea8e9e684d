/**
 * One client connection: the only NBD file that touches a socket. It feeds bytes to the
 * decoder, hands options to the Negotiation and requests to the transmission executor, and
 * applies back-pressure so one client can never make the daemon buffer without bound:
 * decoding stops while `nbdInflightPerConnectionMax` requests run, or while the reply bytes
 * queued on the socket plus those reserved by running requests (a READ reserves its whole
 * reply, a WRITE holds its payload) exceed `nbdReplyQueueBytesMax`. Any protocol violation
 * closes this connection only.
 *
 * Endings: DISC, or the client half-closing (libnbd shuts down its write side right after
 * DISC), end gracefully: every request already decoded is answered, then we end our side.
 * Server shutdown answers decoded-but-unstarted requests with ESHUTDOWN.
 */
import type { Socket } from 'node:net';
import tls from 'node:tls';
import { LIMITS } from '../core/index.js';
import { Cmd, Errno, Opt, Rep } from './constants.js';
import { BufferPool } from './buffer-pool.js';
import { ClientDecoder } from './decoder.js';
import type { RequestMessage } from './decoder.js';
import { encodeGreeting, encodeOptionError, encodeOptionReply } from './encoder.js';
import { Negotiation } from './negotiation.js';
import type { Agreement, ExportAccess, ExportCatalog } from './negotiation.js';
import { encodeErrorReply, executeRequest, validateRequest } from './transmission.js';

export interface SessionLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

/** TLS for NBD_OPT_STARTTLS: 'on' offers it, 'require' refuses everything else first. */
export interface SessionTls {
  mode: 'on' | 'require';
  /**
   * A TLS server (never listening) to hand a connection to after STARTTLS: Node's server
   * path does the checks (client certificates, PSK) and sets `authorized`.
   */
  server: () => tls.Server;
  /** Who the client proved to be once TLS is up (verified certificate CN, PSK identity), or null. */
  identify?: (socket: tls.TLSSocket) => string | null;
}

export interface SessionEvents {
  onAttach(session: NbdSession, exportName: string): void;
  onClose(session: NbdSession): void;
}

/** Large READ replies and WRITE payloads are recycled through one pool per process. */
const pool = new BufferPool(64 * 1024, LIMITS.nbdBufferPoolBytesMax);

/** Bytes a running request pins until its reply is written. */
const REPLY_OVERHEAD_BYTES = 64;

export class NbdSession {
  readonly id: number;
  private readonly decoder = new ClientDecoder({
    optionBytesMax: LIMITS.nbdOptionBytesMax,
    payloadBytesMax: LIMITS.nbdRequestBytesMax,
    allocate: (lengthBytes) => pool.acquire(lengthBytes),
  });
  private readonly negotiation: Negotiation;
  private agreement: Agreement | null = null;
  private inflight = 0;
  private reservedBytes = 0;
  private readingPaused = false;
  /** No new requests start: DISC, client EOF, or server shutdown. */
  private draining = false;
  /** Server shutdown: decoded requests are answered ESHUTDOWN instead of run. */
  private refusing = false;
  private closed = false;
  private handshakeTimer: NodeJS.Timeout | null;
  private idleWaiters: Array<() => void> = [];
  private readonly closedPromise: Promise<void>;
  /** Replies finishing in one event-loop turn leave in one writev (see onReply). */
  private replyBatchOpen = false;

  constructor(
    id: number,
    private socket: Socket,
    catalog: ExportCatalog,
    private readonly events: SessionEvents,
    private readonly log: SessionLogger,
    handshakeTimeoutMs: number,
    private readonly tlsConfig: SessionTls | null = null,
    access: ExportAccess | null = null,
  ) {
    this.id = id;
    this.negotiation = new Negotiation(catalog, tlsConfig?.mode ?? 'off', access);
    socket.setNoDelay(true);
    this.closedPromise = new Promise((resolve) => socket.once('close', () => {
      this.onClosed();
      resolve();
    }));
    this.listen(socket);
    socket.on('error', (err) => this.log.info({ session: id, err: err.message }, 'nbd connection error'));
    this.handshakeTimer = setTimeout(() => this.abort('handshake timed out'), handshakeTimeoutMs);
    this.handshakeTimer.unref();
    socket.write(encodeGreeting());
  }

  private listen(socket: Socket): void {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('drain', () => this.pump());
  }

  /** Who the client proved to be over TLS, or null. */
  identity: string | null = null;

  /** TLS is on for this connection (NBD_OPT_STARTTLS done). */
  get secure(): boolean {
    return this.socket instanceof tls.TLSSocket;
  }

  get exportName(): string | null {
    return this.agreement?.export.name ?? null;
  }

  get remoteAddress(): string {
    return `${this.socket.remoteAddress ?? '?'}:${this.socket.remotePort ?? '?'}`;
  }

  get requestsInflight(): number {
    return this.inflight;
  }

  /** Hard close: the client is gone or misbehaved. In-flight device calls finish on their own. */
  abort(reason: string): void {
    if (this.closed) return;
    this.log.info({ session: this.id, reason }, 'closing nbd connection');
    this.socket.destroy();
  }

  /**
   * Server-initiated graceful close: requests already decoded are refused with ESHUTDOWN
   * (options with ERR_SHUTDOWN), running ones finish and are answered, then the connection
   * ends. Resolves when the socket is closed; the caller bounds the wait.
   */
  shutdown(): Promise<void> {
    if (!this.closed && !this.refusing) {
      this.refusing = true;
      this.pump();
      void this.finish();
    }
    return this.closedPromise;
  }

  private onData(chunk: Buffer): void {
    // Our side is ended: what still comes is read (to see the peer close) and dropped.
    if (this.socket.writableEnded) return;
    if (this.draining && !this.refusing) return;
    if (this.startingTls && !this.secure) {
      this.abort('client sent data after NBD_OPT_STARTTLS before the TLS handshake');
      return;
    }
    this.decoder.push(chunk);
    this.pump();
  }

  /** Client half-closed: answer what was already asked, then end our side. */
  private onEnd(): void {
    if (this.agreement === null) {
      this.endOurSide();
      return;
    }
    void this.finish();
  }

  /** Stops starting requests, waits for the running ones, then ends the connection. */
  private async finish(): Promise<void> {
    this.draining = true;
    this.updateReading();
    await this.waitIdle();
    if (!this.closed) this.endOurSide();
  }

  /**
   * Ends our side, then keeps reading (and dropping) what comes so the peer's close is seen
   * — a paused socket never notices its peer has gone — and cuts the connection if the peer
   * does not close within nbdCloseLingerMs.
   */
  private endOurSide(): void {
    if (this.ending) return;
    this.ending = true;
    // The peer gets nbdCloseLingerMs once every reply has gone out ('finish'): replies still
    // queued for a slow reader are not cut short (the write-stall check covers a dead one).
    this.socket.once('finish', () => {
      this.lingerTimer = setTimeout(() => this.abort('peer did not close after the end of the session'), LIMITS.nbdCloseLingerMs);
      this.lingerTimer.unref();
    });
    this.socket.end();
    this.readingPaused = false;
    this.socket.resume();
    this.watchStall();
  }

  private ending = false;
  private lingerTimer: NodeJS.Timeout | null = null;

  /** Decodes and starts as many buffered messages as the limits allow, replies batched. */
  private pump(): void {
    if (this.closed || this.startingTls || this.socket.writableEnded) return;
    this.socket.cork();
    try {
      this.drainMessages();
    } finally {
      this.socket.uncork();
    }
    // STARTTLS acknowledged (the ACK went out with the uncork): the handshake starts now.
    if (this.startingTls) this.startTls();
    else this.updateReading();
  }

  /** NBD_OPT_STARTTLS was acknowledged: the socket is wrapped; option haggling goes on over TLS. */
  private startingTls = false;

  private startTls(): void {
    if (this.decoder.bufferedByteCount > 0) {
      this.abort('client sent data after NBD_OPT_STARTTLS before the TLS handshake');
      return;
    }
    const raw = this.socket;
    raw.removeAllListeners('data');
    raw.removeAllListeners('end');
    raw.removeAllListeners('drain');
    let server: tls.Server;
    try {
      server = this.tlsConfig!.server();
    } catch (err) {
      this.log.warn({ session: this.id, err: (err as Error).message }, 'nbd TLS could not start');
      raw.destroy();
      return;
    }
    server.once('secureConnection', (secure: tls.TLSSocket) => {
      this.socket = secure;
      this.listen(secure);
      secure.on('error', (err) => this.log.info({ session: this.id, err: err.message }, 'nbd TLS connection error'));
      this.startingTls = false;
      this.identity = this.tlsConfig!.identify?.(secure) ?? null;
      this.negotiation.tlsStarted(this.identity);
      this.log.info({ session: this.id, protocol: secure.getProtocol(), cipher: secure.getCipher()?.name, identity: this.identity }, 'nbd TLS started');
      this.pump();
    });
    server.once('tlsClientError', (err: Error) => {
      this.log.warn({ session: this.id, remote: this.remoteAddress, err: err.message }, 'nbd TLS handshake failed');
      raw.destroy();
    });
    server.emit('connection', raw);
  }

  /**
   * Too much in flight or queued for this client — or for all clients together: take
   * nothing more until it settles.
   */
  private mustWait(): boolean {
    if (this.inflight >= LIMITS.nbdInflightPerConnectionMax || this.socket.writableLength + this.reservedBytes > LIMITS.nbdReplyQueueBytesMax) return true;
    // (Options never wait for other clients' I/O: a handshake must not time out behind it.)
    if (this.agreement !== null && NbdSession.inflightTotal >= LIMITS.nbdInflightTotalMax) {
      NbdSession.waitingForCapacity.add(this);
      return true;
    }
    return false;
  }

  /** Requests running on every session, and the sessions waiting for that to go down. */
  private static inflightTotal = 0;
  private static readonly waitingForCapacity = new Set<NbdSession>();

  /** A request finished somewhere: sessions held back by the total limit may go on. */
  private static capacityFreed(): void {
    if (NbdSession.inflightTotal >= LIMITS.nbdInflightTotalMax || NbdSession.waitingForCapacity.size === 0) return;
    const waiting = [...NbdSession.waitingForCapacity];
    NbdSession.waitingForCapacity.clear();
    for (const session of waiting) session.pump();
  }

  private drainMessages(): void {
    while (!this.closed && !this.startingTls && (this.refusing || (!this.draining && !this.mustWait()))) {
      const message = this.decoder.next();
      if (message === null) return;
      switch (message.kind) {
        case 'clientFlags': {
          const refusal = this.negotiation.acceptClientFlags(message.flags);
          if (refusal !== null) return this.abort(refusal);
          break;
        }
        case 'option':
          if (this.refusing) return this.refuseOption(message.option);
          this.onOption(message);
          break;
        case 'request':
          if (this.refusing) {
            if (message.type !== Cmd.DISC) this.socket.write(encodeErrorReply(message, this.agreement as Agreement, { errno: Errno.ESHUTDOWN, message: 'server is shutting down' }));
            break;
          }
          this.onRequest(message);
          break;
        case 'protocolError':
          return this.abort(message.reason);
      }
    }
  }

  private onOption(message: Parameters<Negotiation['handle']>[0]): void {
    const step = this.negotiation.handle(message);
    for (const reply of step.replies) this.socket.write(reply);
    if (step.kind === 'continue' && step.refused) this.log.warn({ session: this.id, remote: this.remoteAddress, identity: this.identity, reason: step.refused }, 'nbd export access refused');
    if (step.kind === 'starttls') {
      this.startingTls = true;
      return;
    }
    if (step.kind === 'close') {
      this.log.info({ session: this.id, reason: step.reason }, 'nbd handshake ended');
      this.draining = true;
      this.endOurSide();
      return;
    }
    if (step.kind === 'transmission') this.startTransmission(step.agreement);
  }

  private refuseOption(option: number): void {
    if (option === Opt.ABORT) this.socket.write(encodeOptionReply(option, Rep.ACK));
    else this.socket.write(encodeOptionError(option, Rep.ERR_SHUTDOWN, 'server is shutting down'));
    this.endOurSide();
  }

  private startTransmission(agreement: Agreement): void {
    this.agreement = agreement;
    this.decoder.startTransmission();
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.events.onAttach(this, agreement.export.name);
  }

  private onRequest(request: RequestMessage): void {
    const agreement = this.agreement as Agreement;
    if (request.type === Cmd.DISC) {
      void this.finish();
      return;
    }
    const error = validateRequest(request, agreement);
    if (error !== null) {
      this.socket.write(encodeErrorReply(request, agreement, error));
      return;
    }
    const reserved = REPLY_OVERHEAD_BYTES + (request.type === Cmd.READ || request.type === Cmd.WRITE ? request.lengthBytes : 0);
    this.inflight += 1;
    NbdSession.inflightTotal += 1;
    this.reservedBytes += reserved;
    void executeRequest(request, agreement, pool).then((reply) => {
      // The device call has settled: the payload is no longer referenced.
      if (request.payload) pool.release(request.payload);
      this.onReply(reply, reserved);
    });
  }

  private onReply(reply: Buffer, reserved: number): void {
    const wasWaiting = this.mustWait();
    this.inflight -= 1;
    NbdSession.inflightTotal -= 1;
    this.reservedBytes -= reserved;
    if (!this.closed) {
      if (!this.replyBatchOpen) {
        this.replyBatchOpen = true;
        this.socket.cork();
        setImmediate(() => {
          this.replyBatchOpen = false;
          this.socket.uncork();
        });
      }
      this.socket.write(reply, () => pool.release(reply));
    }
    // Sessions waiting for the total limit go first, so a busy one cannot keep the slot.
    NbdSession.capacityFreed();
    if (wasWaiting && !this.mustWait()) this.pump();
    this.watchStall();
    if (this.inflight === 0) this.wakeIdle();
  }

  private waitIdle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private wakeIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  private updateReading(): void {
    if (this.closed || this.socket.writableEnded) return;
    const shouldPause = (this.draining && !this.refusing) || this.mustWait();
    if (shouldPause && !this.readingPaused) {
      this.readingPaused = true;
      this.socket.pause();
    } else if (!shouldPause && this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
    }
    this.watchStall();
  }

  /**
   * A client that takes none of its queued replies for nbdWriteStallMs may be gone (a paused
   * socket, or one we ended, tells us nothing): it is cut off. Any progress re-arms the check.
   */
  private stallTimer: NodeJS.Timeout | null = null;
  private stallMark = 0;

  private watchStall(): void {
    if (this.closed || this.stallTimer !== null || this.socket.writableLength === 0) return;
    this.stallMark = this.socket.bytesWritten;
    this.stallTimer = setTimeout(() => {
      this.stallTimer = null;
      if (this.closed || this.socket.writableLength === 0) return;
      if (this.socket.bytesWritten === this.stallMark) {
        this.abort(`client took none of its replies for ${LIMITS.nbdWriteStallMs} ms`);
        return;
      }
      this.watchStall();
    }, LIMITS.nbdWriteStallMs);
    this.stallTimer.unref();
  }

  private onClosed(): void {
    this.closed = true;
    NbdSession.waitingForCapacity.delete(this);
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    if (this.stallTimer) clearTimeout(this.stallTimer);
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.events.onClose(this);
    // Device calls still running resolve later; their replies are dropped.
    this.wakeIdle();
  }
}
