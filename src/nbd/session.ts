/**
 * One client connection: the only NBD file that touches a socket. It feeds bytes to the
 * decoder, hands options to the Negotiation and requests to the transmission executor, and
 * applies back-pressure: it stops reading while too many requests are in flight or too many
 * reply bytes wait for a slow reader, so one client can never make the daemon buffer without
 * bound. Any protocol violation closes this connection only.
 */
import type { Socket } from 'node:net';
import { LIMITS } from '../core/index.js';
import { Cmd } from './constants.js';
import { ClientDecoder } from './decoder.js';
import type { RequestMessage } from './decoder.js';
import { encodeGreeting } from './encoder.js';
import { Negotiation } from './negotiation.js';
import type { Agreement, ExportCatalog } from './negotiation.js';
import { encodeErrorReply, executeRequest, validateRequest } from './transmission.js';

export interface SessionLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface SessionEvents {
  onAttach(session: NbdSession, exportName: string): void;
  onClose(session: NbdSession): void;
}

export class NbdSession {
  readonly id: number;
  private readonly decoder = new ClientDecoder({
    optionBytesMax: LIMITS.nbdOptionBytesMax,
    payloadBytesMax: LIMITS.nbdRequestBytesMax,
  });
  private readonly negotiation: Negotiation;
  private agreement: Agreement | null = null;
  private inflight = 0;
  private readingPaused = false;
  private disconnecting = false;
  private closed = false;
  private handshakeTimer: NodeJS.Timeout | null;
  private idleWaiters: Array<() => void> = [];

  constructor(
    id: number,
    private readonly socket: Socket,
    catalog: ExportCatalog,
    private readonly events: SessionEvents,
    private readonly log: SessionLogger,
    handshakeTimeoutMs: number,
  ) {
    this.id = id;
    this.negotiation = new Negotiation(catalog);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.pump());
    socket.on('error', (err) => this.log.info({ session: id, err: err.message }, 'nbd connection error'));
    socket.on('close', () => this.onClosed());
    this.handshakeTimer = setTimeout(() => this.abort('handshake timed out'), handshakeTimeoutMs);
    this.handshakeTimer.unref();
    socket.write(encodeGreeting());
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

  /** Graceful close: stop taking requests, let in-flight ones reply, then hang up. */
  async shutdown(): Promise<void> {
    this.disconnecting = true;
    this.updateReading();
    await this.waitIdle();
    this.socket.end();
  }

  private onData(chunk: Buffer): void {
    if (this.disconnecting) return;
    this.decoder.push(chunk);
    this.pump();
  }

  /** Decodes and starts as many buffered messages as the limits allow, replies batched. */
  private pump(): void {
    this.socket.cork();
    try {
      this.drainMessages();
    } finally {
      this.socket.uncork();
    }
    this.updateReading();
  }

  /** Too much in flight or queued for this client: take nothing more until it settles. */
  private mustWait(): boolean {
    return this.inflight >= LIMITS.nbdInflightPerConnectionMax
      || this.socket.writableLength > LIMITS.nbdReplyQueueBytesMax;
  }

  private drainMessages(): void {
    while (!this.closed && !this.disconnecting && !this.mustWait()) {
      const message = this.decoder.next();
      if (message === null) return;
      switch (message.kind) {
        case 'clientFlags': {
          const refusal = this.negotiation.acceptClientFlags(message.flags);
          if (refusal !== null) return this.abort(refusal);
          break;
        }
        case 'option': {
          const step = this.negotiation.handle(message);
          for (const reply of step.replies) this.socket.write(reply);
          if (step.kind === 'close') {
            this.log.info({ session: this.id, reason: step.reason }, 'nbd handshake ended');
            this.disconnecting = true;
            this.socket.end();
            return;
          }
          if (step.kind === 'transmission') this.startTransmission(step.agreement);
          break;
        }
        case 'request':
          this.onRequest(message);
          break;
        case 'protocolError':
          return this.abort(message.reason);
      }
    }
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
      void this.shutdown();
      return;
    }
    const error = validateRequest(request, agreement);
    if (error !== null) {
      this.socket.write(encodeErrorReply(request, agreement, error));
      return;
    }
    this.inflight += 1;
    void executeRequest(request, agreement).then((reply) => this.onReply(reply));
  }

  private onReply(reply: Buffer): void {
    const wasWaiting = this.mustWait();
    this.inflight -= 1;
    if (!this.closed) this.socket.write(reply);
    if (wasWaiting && !this.mustWait()) this.pump();
    if (this.inflight === 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const resolve of waiters) resolve();
    }
  }

  private waitIdle(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private updateReading(): void {
    if (this.closed) return;
    const shouldPause = this.disconnecting || this.mustWait();
    if (shouldPause && !this.readingPaused) {
      this.readingPaused = true;
      this.socket.pause();
    } else if (!shouldPause && this.readingPaused) {
      this.readingPaused = false;
      this.socket.resume();
    }
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.events.onClose(this);
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    // In-flight device calls still resolve; their replies are dropped.
    if (this.inflight === 0) for (const resolve of waiters) resolve();
    else this.idleWaiters = waiters;
  }
}
