/**
 * Frames over one TLS socket, both ways: `send` waits while the socket's buffer is full
 * (nothing buffers without bound), `next` takes the next frame (with a timeout). Any
 * protocol damage, timeout or close ends the channel with that error; the socket is
 * destroyed, and every waiter is told.
 */
import type { Socket } from 'node:net';
import { HindsightError } from '../core/index.js';
import { FrameDecoder, FrameType, jsonFrame } from './frames.js';
import type { Frame, FrameTypeValue } from './frames.js';

/** Frames received but not yet taken: the peer cannot make us hold more than this. */
const QUEUED_BYTES_MAX = 64 * 1024 * 1024;

export class Channel {
  private readonly decoder = new FrameDecoder();
  private readonly queue: Frame[] = [];
  private queuedBytes = 0;
  private waiter: { resolve: (frame: Frame) => void; reject: (err: Error) => void; timer: NodeJS.Timeout | null } | null = null;
  private failure: Error | null = null;
  bytesIn = 0;
  bytesOut = 0;

  constructor(readonly socket: Socket) {
    socket.on('data', (bytes: Buffer) => {
      this.bytesIn += bytes.length;
      let frames: Frame[];
      try {
        frames = this.decoder.push(bytes);
      } catch (err) {
        this.fail(err as Error);
        return;
      }
      for (const frame of frames) this.deliver(frame);
      if (this.queuedBytes + this.decoder.pendingBytes > QUEUED_BYTES_MAX) socket.pause();
    });
    socket.on('error', (err) => this.fail(new HindsightError('IO_ERROR', `replication link: ${err.message}`)));
    socket.on('close', () => this.fail(new HindsightError('IO_ERROR', 'replication link closed by the peer')));
  }

  get closed(): boolean {
    return this.failure !== null;
  }

  get error(): Error | null {
    return this.failure;
  }

  /** The next frame; ERROR frames from the peer become a thrown REPLICATION_REFUSED. */
  next(timeoutMs: number | null = null): Promise<Frame> {
    if (this.failure) return Promise.reject(this.failure);
    const queued = this.queue.shift();
    if (queued) {
      this.queuedBytes -= queued.body.length;
      if (this.socket.isPaused() && this.queuedBytes < QUEUED_BYTES_MAX / 2) this.socket.resume();
      return Promise.resolve(queued);
    }
    return new Promise((resolve, reject) => {
      const timer = timeoutMs === null ? null : setTimeout(() => this.fail(new HindsightError('IO_ERROR', `replication link: nothing received for ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
      this.waiter = { resolve, reject, timer };
    });
  }

  /** The next frame, which must be of `type` (or the peer's ERROR, thrown). */
  async expect(type: FrameTypeValue, timeoutMs: number | null): Promise<Frame> {
    const frame = await this.next(timeoutMs);
    if (frame.type !== type) {
      const error = new HindsightError('PROTOCOL_ERROR', `expected a frame of type ${type}, got ${frame.type}`);
      this.fail(error);
      throw error;
    }
    return frame;
  }

  async send(buffers: Buffer[]): Promise<void> {
    if (this.failure) throw this.failure;
    let ok = true;
    for (const buffer of buffers) {
      this.bytesOut += buffer.length;
      ok = this.socket.write(buffer);
    }
    if (ok) return;
    await new Promise<void>((resolve, reject) => {
      const done = () => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        if (this.failure) reject(this.failure);
        else resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  /** Tells the peer why (best effort), then closes. */
  async refuse(code: string, message: string): Promise<void> {
    if (!this.failure) {
      this.socket.end(Buffer.concat(jsonFrame(FrameType.ERROR, { code, message })));
      setTimeout(() => this.socket.destroy(), 2000).unref();
    }
    this.fail(new HindsightError('REPLICATION_REFUSED', message));
  }

  close(): void {
    this.fail(new HindsightError('SHUTTING_DOWN', 'replication link closed'));
  }

  private deliver(frame: Frame): void {
    if (frame.type === FrameType.ERROR) {
      let message = 'the peer ended the link';
      try {
        const parsed = JSON.parse(frame.body.toString('utf8')) as { code?: unknown; message?: unknown };
        message = `the peer refused: ${String(parsed.code)}: ${String(parsed.message).slice(0, 500)}`;
      } catch {
        // keep the generic message
      }
      this.fail(new HindsightError('REPLICATION_REFUSED', message));
      return;
    }
    if (this.waiter) {
      const { resolve, timer } = this.waiter;
      this.waiter = null;
      if (timer) clearTimeout(timer);
      resolve(frame);
      return;
    }
    this.queue.push(frame);
    this.queuedBytes += frame.body.length;
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.socket.destroy();
    this.queue.length = 0;
    if (this.waiter) {
      const { reject, timer } = this.waiter;
      this.waiter = null;
      if (timer) clearTimeout(timer);
      reject(err);
    }
  }
}
