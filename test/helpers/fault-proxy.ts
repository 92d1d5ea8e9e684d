/**
 * A TCP proxy that misbehaves on purpose, seeded (reproducible): between a replication
 * sender and its receiver it cuts connections after a random number of bytes, cuts one
 * mid-chunk (a truncated frame), delays chunks, and flips a byte. Counts what it did.
 */
import net from 'node:net';
import { Random } from './random.js';

export interface FaultOptions {
  seed: number;
  /** Chance per chunk (sender to receiver) of each fault. */
  cut?: number;
  truncate?: number;
  delay?: number;
  flip?: number;
}

export class FaultProxy {
  readonly counts = { connections: 0, cuts: 0, truncations: 0, delays: 0, flips: 0, bytes: 0 };
  /** Faults happen only while true (a quiet period lets the link catch up). */
  active = true;
  private readonly server: net.Server;
  private readonly random: Random;
  private readonly sockets = new Set<net.Socket>();

  private constructor(private readonly target: { host: string; port: number }, private readonly options: FaultOptions) {
    this.random = new Random(options.seed);
    this.server = net.createServer((client) => this.relay(client));
  }

  static async start(target: { host: string; port: number }, options: FaultOptions): Promise<FaultProxy & { port: number }> {
    const proxy = new FaultProxy(target, options);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', () => resolve()));
    return Object.assign(proxy, { port: (proxy.server.address() as net.AddressInfo).port });
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private relay(client: net.Socket): void {
    this.counts.connections += 1;
    const upstream = net.connect(this.target.port, this.target.host);
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => undefined);
    }
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
    upstream.on('data', (chunk: Buffer) => client.write(chunk));
    // Sender to receiver: where the faults go (in order, one chunk at a time).
    let queue = Promise.resolve();
    client.on('data', (chunk: Buffer) => {
      queue = queue.then(async () => {
        if (upstream.destroyed) return;
        this.counts.bytes += chunk.length;
        const chance = (p: number | undefined) => this.active && p !== undefined && this.random.next() / 2 ** 32 < p;
        if (chance(this.options.delay)) {
          this.counts.delays += 1;
          await new Promise((resolve) => setTimeout(resolve, 20 + this.random.int(200)));
        }
        if (chance(this.options.truncate) && chunk.length > 1) {
          this.counts.truncations += 1;
          upstream.write(chunk.subarray(0, 1 + this.random.int(chunk.length - 1)));
          end();
          return;
        }
        if (chance(this.options.flip)) {
          this.counts.flips += 1;
          const copy = Buffer.from(chunk);
          copy[this.random.int(copy.length)] ^= 1 << this.random.int(8);
          upstream.write(copy);
          return;
        }
        if (chance(this.options.cut)) {
          this.counts.cuts += 1;
          end();
          return;
        }
        upstream.write(chunk);
      });
    });
  }
}
