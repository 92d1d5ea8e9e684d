/** A small seeded PRNG (xorshift32) so randomized tests are reproducible from their seed. */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = (seed >>> 0) || 0x9e3779b9;
  }

  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }

  /** 0 <= n < bound */
  int(bound: number): number {
    return this.next() % bound;
  }

  /** Random bytes, or a repeated byte when `compressible`. */
  bytes(length: number, compressible = false): Buffer {
    const out = Buffer.allocUnsafe(length);
    if (compressible) return out.fill(this.int(256));
    for (let i = 0; i < length; i += 1) out[i] = this.next() & 0xff;
    return out;
  }
}
