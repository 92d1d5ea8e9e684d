/**
 * A volume as it was at one seq, as a read-only BlockDevice. Creating one copies nothing: it
 * remembers the seq, and each region a client reads is materialised from the history on
 * first use (History, PointIndex). Reads are verified like the live volume's. A writable
 * clone is a JournaledDevice of its own whose base is one of these.
 */
import { HindsightError, assert } from '../core/index.js';
import type { BlockDevice, BlockDeviceCapabilities, Extent } from '../core/index.js';
import type { PointIndex } from '../index/index.js';
import type { JournaledDevice } from './journaled-device.js';

export class PointView implements BlockDevice {
  readonly sizeBytes: number;
  readonly capabilities: BlockDeviceCapabilities = {
    readOnly: true, flush: true, fua: false, trim: false, writeZeroes: false, fastZero: false, cache: true, multiConn: true,
  };
  private readonly point: PointIndex;

  constructor(readonly name: string, private readonly source: JournaledDevice, readonly seq: number) {
    this.sizeBytes = source.sizeBytes;
    this.point = source.pointIndex(seq);
  }

  async read(offsetBytes: number, into: Buffer): Promise<void> {
    this.assertRange(offsetBytes, into.length);
    await this.source.readAt(this.point, offsetBytes, into);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number, extentsMax: number): Promise<Extent[]> {
    this.assertRange(offsetBytes, lengthBytes);
    return this.source.blockStatusAt(this.point, offsetBytes, lengthBytes, extentsMax);
  }

  async write(): Promise<void> {
    throw readOnly(this.name);
  }

  async trim(): Promise<void> {
    throw readOnly(this.name);
  }

  async writeZeroes(): Promise<void> {
    throw readOnly(this.name);
  }

  /** Frees the regions this view cached (the mount or restore is over). Reads after it still work. */
  close(): void {
    this.point.close();
  }

  /** Nothing here changes, so nothing needs to become durable. */
  async flush(): Promise<void> {}

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.assertRange(offsetBytes, lengthBytes);
  }

  private assertRange(offsetBytes: number, lengthBytes: number): void {
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0 && lengthBytes >= 0, 'range is non-negative');
    assert(offsetBytes + lengthBytes <= this.sizeBytes, 'range within the device (validated at the edge)');
  }
}

function readOnly(name: string): HindsightError {
  return new HindsightError('READ_ONLY', `${name} is a read-only view of an earlier point`);
}
