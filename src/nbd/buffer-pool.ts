/**
 * Reuses the large buffers of READ replies and WRITE payloads. Allocating a fresh 1 MiB
 * buffer per request made V8 spend a quarter of its time in GC under sequential I/O; here a
 * buffer goes back to the pool once the socket has flushed it (replies) or the device call
 * has settled (payloads: BlockDevice.write does not keep `data`). Small buffers stay with
 * Node's own slab allocator.
 *
 * Buffers come in size classes (multiples of `classBytes`) and callers get a view of the
 * requested length: with one list per exact length, clients of many request sizes filled
 * the pool with buffers never asked for again (a soak's RSS grew for 40 minutes). Bounded:
 * at most `pooledBytesMax` bytes are kept idle.
 */
export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;
  /** The class buffer behind each view handed out: only those come back into the pool. */
  private readonly parents = new WeakMap<Buffer, Buffer>();

  constructor(private readonly minimumBytes: number, private readonly pooledBytesMax: number, private readonly classBytes = 64 * 1024) {}

  acquire(lengthBytes: number): Buffer {
    if (lengthBytes < this.minimumBytes) return Buffer.allocUnsafe(lengthBytes);
    const classLength = Math.ceil(lengthBytes / this.classBytes) * this.classBytes;
    let parent = this.free.get(classLength)?.pop();
    if (parent) this.pooledBytes -= classLength;
    else parent = Buffer.allocUnsafeSlow(classLength);
    const view = parent.subarray(0, lengthBytes);
    this.parents.set(view, parent);
    return view;
  }

  /** Gives a buffer back; the caller must hold no other reference to it. */
  release(view: Buffer): void {
    const parent = this.parents.get(view);
    if (!parent) return;
    this.parents.delete(view);
    if (this.pooledBytes + parent.length > this.pooledBytesMax) return;
    let list = this.free.get(parent.length);
    if (!list) this.free.set(parent.length, (list = []));
    list.push(parent);
    this.pooledBytes += parent.length;
  }

  /** Bytes kept idle now. */
  get idleBytes(): number {
    return this.pooledBytes;
  }
}
