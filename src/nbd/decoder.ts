/**
 * Incremental, bounded decoder of the client-to-server byte stream. Pure: bytes in, typed
 * messages out, no sockets. Chunks of any size may be pushed; a message split at any byte
 * offset decodes the same as a whole one.
 *
 * Memory is bounded: an option larger than optionBytesMax and a WRITE payload larger than
 * payloadBytesMax are consumed and discarded (the message says so) instead of buffered, so
 * a client lying in a length field costs nothing but its own bandwidth.
 */
import { assert } from '../core/index.js';
import { IHAVEOPT, OPTION_HEADER_BYTES, REQUEST_HEADER_BYTES, REQUEST_MAGIC, Cmd } from './constants.js';

export interface ClientFlagsMessage {
  kind: 'clientFlags';
  flags: number;
}

export interface OptionMessage {
  kind: 'option';
  option: number;
  lengthBytes: number;
  /** null when the option was larger than optionBytesMax and was skipped. */
  data: Buffer | null;
}

export interface RequestMessage {
  kind: 'request';
  flags: number;
  type: number;
  cookie: bigint;
  /** Exact below 2^53; larger wire values compare greater than any export size. */
  offsetBytes: number;
  lengthBytes: number;
  /** The WRITE payload; null for other commands and for skipped (oversize) payloads. */
  payload: Buffer | null;
  payloadSkipped: boolean;
}

export interface ProtocolErrorMessage {
  kind: 'protocolError';
  reason: string;
}

export type ClientMessage = ClientFlagsMessage | OptionMessage | RequestMessage | ProtocolErrorMessage;

export type DecoderPhase = 'clientFlags' | 'options' | 'transmission' | 'failed';

export interface DecoderLimits {
  optionBytesMax: number;
  payloadBytesMax: number;
  /** Where WRITE payloads that span socket chunks are gathered (default: a fresh buffer). */
  allocate?: (lengthBytes: number) => Buffer;
}

export class ClientDecoder {
  private phase: DecoderPhase = 'clientFlags';
  private readonly chunks: Buffer[] = [];
  private headOffset = 0;
  private bufferedBytes = 0;
  private discardBytes = 0;
  /** A request header whose WRITE payload is still arriving. */
  private pendingRequest: RequestMessage | null = null;
  /** An oversize WRITE whose payload is being discarded; emitted once it is all consumed, so
   * the reply never overtakes the payload (clients match replies only after sending it). */
  private skippedRequest: RequestMessage | null = null;

  constructor(private readonly limits: DecoderLimits) {}

  get currentPhase(): DecoderPhase {
    return this.phase;
  }

  /** Bytes held waiting for a complete message (bounded by the limits). */
  get bufferedByteCount(): number {
    return this.bufferedBytes;
  }

  push(chunk: Buffer): void {
    if (this.phase === 'failed' || chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
  }

  /** Option haggling is over: what follows are transmission requests. */
  startTransmission(): void {
    assert(this.phase === 'options', 'transmission starts after options');
    this.phase = 'transmission';
  }

  /** The next complete message, or null until more bytes arrive. */
  next(): ClientMessage | null {
    this.skipDiscarded();
    if (this.discardBytes > 0) return null;
    if (this.skippedRequest) {
      const skipped = this.skippedRequest;
      this.skippedRequest = null;
      return skipped;
    }
    switch (this.phase) {
      case 'clientFlags':
        return this.nextClientFlags();
      case 'options':
        return this.nextOption();
      case 'transmission':
        return this.nextRequest();
      case 'failed':
        return null;
    }
  }

  private nextClientFlags(): ClientMessage | null {
    if (this.bufferedBytes < 4) return null;
    const flags = this.take(4).readUInt32BE(0);
    this.phase = 'options';
    return { kind: 'clientFlags', flags };
  }

  private nextOption(): ClientMessage | null {
    if (this.bufferedBytes < OPTION_HEADER_BYTES) return null;
    const header = this.peek(OPTION_HEADER_BYTES);
    if (header.readBigUInt64BE(0) !== IHAVEOPT) return this.fail('option does not start with IHAVEOPT');
    const option = header.readUInt32BE(8);
    const lengthBytes = header.readUInt32BE(12);
    if (lengthBytes > this.limits.optionBytesMax) {
      this.take(OPTION_HEADER_BYTES);
      this.discardBytes = lengthBytes;
      this.skipDiscarded();
      return { kind: 'option', option, lengthBytes, data: null };
    }
    if (this.bufferedBytes < OPTION_HEADER_BYTES + lengthBytes) return null;
    this.take(OPTION_HEADER_BYTES);
    const data = lengthBytes === 0 ? Buffer.alloc(0) : Buffer.from(this.take(lengthBytes));
    return { kind: 'option', option, lengthBytes, data };
  }

  private nextRequest(): ClientMessage | null {
    if (this.pendingRequest) return this.completePayload();
    if (this.bufferedBytes < REQUEST_HEADER_BYTES) return null;
    const header = this.take(REQUEST_HEADER_BYTES);
    if (header.readUInt32BE(0) !== REQUEST_MAGIC) return this.fail('request does not start with the request magic');
    const request: RequestMessage = {
      kind: 'request',
      flags: header.readUInt16BE(4),
      type: header.readUInt16BE(6),
      cookie: header.readBigUInt64BE(8),
      offsetBytes: header.readUInt32BE(16) * 4294967296 + header.readUInt32BE(20),
      lengthBytes: header.readUInt32BE(24),
      payload: null,
      payloadSkipped: false,
    };
    if (request.type !== Cmd.WRITE || request.lengthBytes === 0) return request;
    if (request.lengthBytes > this.limits.payloadBytesMax) {
      request.payloadSkipped = true;
      this.discardBytes = request.lengthBytes;
      this.skippedRequest = request;
      return this.next();
    }
    this.pendingRequest = request;
    return this.completePayload();
  }

  private completePayload(): ClientMessage | null {
    const request = this.pendingRequest;
    assert(request !== null, 'a payload belongs to a pending request');
    if (this.bufferedBytes < request.lengthBytes) return null;
    request.payload = this.take(request.lengthBytes, this.limits.allocate);
    this.pendingRequest = null;
    return request;
  }

  private fail(reason: string): ProtocolErrorMessage {
    this.phase = 'failed';
    this.chunks.length = 0;
    this.bufferedBytes = 0;
    this.headOffset = 0;
    return { kind: 'protocolError', reason };
  }

  private skipDiscarded(): void {
    while (this.discardBytes > 0 && this.bufferedBytes > 0) {
      const head = this.chunks[0];
      const available = head.length - this.headOffset;
      const skipped = Math.min(available, this.discardBytes);
      this.consumeHead(skipped);
      this.discardBytes -= skipped;
    }
  }

  /** The first n buffered bytes without consuming them (n is small: headers only). */
  private peek(n: number): Buffer {
    assert(n <= this.bufferedBytes, 'peek within buffered bytes');
    const head = this.chunks[0];
    if (head.length - this.headOffset >= n) return head.subarray(this.headOffset, this.headOffset + n);
    return this.gather(n, false);
  }

  /** Consumes n bytes; zero-copy when they sit in one chunk, one copy otherwise. */
  private take(n: number, allocate?: (lengthBytes: number) => Buffer): Buffer {
    assert(n <= this.bufferedBytes, 'take within buffered bytes');
    const head = this.chunks[0];
    if (head.length - this.headOffset >= n) {
      const out = head.subarray(this.headOffset, this.headOffset + n);
      this.consumeHead(n);
      return out;
    }
    return this.gather(n, true, allocate);
  }

  private gather(n: number, consume: boolean, allocate?: (lengthBytes: number) => Buffer): Buffer {
    const out = allocate ? allocate(n) : Buffer.allocUnsafe(n);
    let copied = 0;
    let index = 0;
    let offset = this.headOffset;
    while (copied < n) {
      const chunk = this.chunks[index];
      const count = Math.min(chunk.length - offset, n - copied);
      chunk.copy(out, copied, offset, offset + count);
      copied += count;
      index += 1;
      offset = 0;
    }
    if (consume) {
      let remaining = n;
      while (remaining > 0) {
        const head = this.chunks[0];
        const count = Math.min(head.length - this.headOffset, remaining);
        this.consumeHead(count);
        remaining -= count;
      }
    }
    return out;
  }

  private consumeHead(n: number): void {
    this.headOffset += n;
    this.bufferedBytes -= n;
    if (this.headOffset === this.chunks[0].length) {
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}
