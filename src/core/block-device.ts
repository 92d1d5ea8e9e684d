/**
 * The one storage interface the NBD server sees. A live volume and (later) a point-in-time
 * view are both BlockDevices. Callers validate ranges before calling; implementations assert.
 */
export interface BlockDeviceCapabilities {
  readOnly: boolean;
  /** FLUSH makes every completed write durable, whichever connection sent it. */
  flush: boolean;
  fua: boolean;
  trim: boolean;
  writeZeroes: boolean;
  /** writeZeroes can promise to be fast (FAST_ZERO) when holes are allowed. */
  fastZero: boolean;
  cache: boolean;
  /** Flushes and reads are consistent across connections (NBD_FLAG_CAN_MULTI_CONN). */
  multiConn: boolean;
}

export interface WriteOptions {
  /** Force unit access: durable before the call resolves. */
  fua: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The range may be deallocated (NBD: NO_HOLE not set). */
  mayTrim: boolean;
  /** Fail with NOT_SUPPORTED instead of doing slow work (NBD FAST_ZERO). */
  fastOnly: boolean;
}

export interface Extent {
  lengthBytes: number;
  /** Not allocated: reads return zeroes and cost nothing. */
  hole: boolean;
  /** Known to read as zeroes. */
  zero: boolean;
}

export interface BlockDevice {
  readonly name: string;
  readonly sizeBytes: number;
  readonly capabilities: BlockDeviceCapabilities;
  /** Fills `into` (exactly lengthBytes long) with the content at offsetBytes. */
  read(offsetBytes: number, into: Buffer): Promise<void>;
  /** `data` may be reused by the caller once the promise settles: do not keep it. */
  write(offsetBytes: number, data: Buffer, options: WriteOptions): Promise<void>;
  flush(): Promise<void>;
  trim(offsetBytes: number, lengthBytes: number, options: WriteOptions): Promise<void>;
  writeZeroes(offsetBytes: number, lengthBytes: number, options: ZeroOptions): Promise<void>;
  /** Allocation extents covering at least the start of the range, in order, without gaps. */
  blockStatus(offsetBytes: number, lengthBytes: number, extentsMax: number): Promise<Extent[]>;
  cache(offsetBytes: number, lengthBytes: number): Promise<void>;
}
