/**
 * A deliberately dumb NBD client over a raw socket: tests send exact bytes and read exact
 * replies, so they can exercise malformed input the real clients would never send.
 */
import net from 'node:net';
import type { Chunk, OptionReply, SimpleReply } from './frames.js';
import { clientFlags, goData, option } from './frames.js';

export class RawClient {
  /** Received bytes not yet read, as chunks (concatenating on every chunk is quadratic). */
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | null = null;
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.wake();
    });
    this.closed = new Promise((resolve) => socket.once('close', () => {
      this.ended = true;
      this.wake();
      resolve();
    }));
    socket.on('error', () => undefined);
  }

  static async connect(port: number): Promise<RawClient> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  /** Connects, reads the greeting, sends flags, and GOes to `name` (with structured replies if asked). */
  static async open(port: number, name: string, opts: { structured?: boolean; baseAllocation?: boolean } = {}): Promise<RawClient> {
    const client = await RawClient.connect(port);
    await client.readGreeting();
    client.send(clientFlags());
    if (opts.structured) {
      client.send(option(8));
      await client.readOptionReply();
    }
    if (opts.baseAllocation) {
      const { metaContextData } = await import('./frames.js');
      client.send(option(10, metaContextData(name, ['base:allocation'])));
      while ((await client.readOptionReply()).type !== 1);
    }
    client.send(option(7, goData(name)));
    for (;;) {
      const reply = await client.readOptionReply();
      if (reply.type === 1) break;
      if (reply.type >= 0x80000000) throw new Error(`GO refused: ${reply.type.toString(16)} ${reply.data.toString()}`);
    }
    return client;
  }

  send(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  async read(n: number): Promise<Buffer> {
    while (this.buffered < n) {
      if (this.ended) throw new Error(`connection closed while waiting for ${n} bytes (have ${this.buffered})`);
      await new Promise<void>((resolve) => { this.waiter = resolve; });
    }
    const whole = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = whole.subarray(0, n);
    const rest = whole.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }

  async readGreeting(): Promise<{ flags: number }> {
    const greeting = await this.read(18);
    if (greeting.toString('latin1', 0, 8) !== 'NBDMAGIC') throw new Error('bad greeting');
    return { flags: greeting.readUInt16BE(16) };
  }

  async readOptionReply(): Promise<OptionReply> {
    const header = await this.read(20);
    if (header.readBigUInt64BE(0) !== 0x3e889045565a9n) throw new Error('bad option reply magic');
    const length = header.readUInt32BE(16);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: Buffer.from(await this.read(length)) };
  }

  /** Reads one simple reply or one structured chunk; `readLength` is the data a simple READ reply carries. */
  async readReply(readLength = 0): Promise<SimpleReply | Chunk | { kind: 'simple-read'; error: number; cookie: bigint; data: Buffer }> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === 0x67446698) {
      const rest = await this.read(12);
      const error = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      if (readLength > 0 && error === 0) return { kind: 'simple-read', error, cookie, data: Buffer.from(await this.read(readLength)) };
      return { kind: 'simple', error, cookie };
    }
    if (magic === 0x668e33ef) {
      const rest = await this.read(16);
      const length = rest.readUInt32BE(12);
      return { kind: 'chunk', flags: rest.readUInt16BE(0), type: rest.readUInt16BE(2), cookie: rest.readBigUInt64BE(4), payload: Buffer.from(await this.read(length)) };
    }
    throw new Error(`bad reply magic 0x${magic.toString(16)}`);
  }

  get isClosed(): boolean {
    return this.ended;
  }

  close(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }
}
