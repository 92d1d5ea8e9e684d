/**
 * Reuses the large buffers of READ replies and WRITE payloads. Allocating a fresh 1 MiB
 * buffer per request made V8 spend a quarter of its time in GC under sequential I/O; here a
 * buffer goes back to the pool once the socket has flushed it (replies) or the device call
 * has settled (payloads: BlockDevice.write does not keep `data`). Small buffers stay with
 * Node's own slab allocator. Bounded: at most `pooledBytesMax` bytes are kept idle.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;
  /** Only buffers this pool handed out come back into it. */
  private readonly owned = new WeakSet<Buffer>();

  constructor(private readonly minimumBytes: number, private readonly pooledBytesMax: number) {}

  acquire(lengthBytes: number): Buffer {
    if (lengthBytes < this.minimumBytes) return Buffer.allocUnsafe(lengthBytes);
    const list = this.free.get(lengthBytes);
    const reused = list?.pop();
    if (reused) {
      this.pooledBytes -= lengthBytes;
      return reused;
    }
    const fresh = Buffer.allocUnsafeSlow(lengthBytes);
    this.owned.add(fresh);
    return fresh;
  }

  /** Gives a buffer back; the caller must hold no other reference to it. */
  release(buffer: Buffer): void {
    const lengthBytes = buffer.length;
    if (!this.owned.has(buffer)) return;
    if (this.pooledBytes + lengthBytes > this.pooledBytesMax) return;
    let list = this.free.get(lengthBytes);
    if (!list) this.free.set(lengthBytes, (list = []));
    list.push(buffer);
    this.pooledBytes += lengthBytes;
  }
}
