/**
 * The oracle of crash tests: every version of a volume's content, one per journal seq.
 * Seq N's change is kept (not the image), and an image is rebuilt on demand by replay.
 */
import { Random } from './random.js';

/** What one journal record did to the content (null: a flush, nothing). */
export type Change = { offsetBytes: number; data: Buffer } | { offsetBytes: number; zeroBytes: number } | null;

export class VolumeHistory {
  private readonly changes: Change[] = [];

  constructor(readonly sizeBytes: number) {}

  /** The seq of the last recorded change. */
  get seqLast(): number {
    return this.changes.length;
  }

  record(change: Change): void {
    this.changes.push(change);
  }

  /** Forgets every version after `seq` (the journal was cut there). */
  cut(seq: number): void {
    this.changes.length = seq;
  }

  imageAt(seq: number): Buffer {
    const image = Buffer.alloc(this.sizeBytes);
    for (const change of this.changes.slice(0, seq)) apply(image, change);
    return image;
  }

  /** Every seq in [0, seqMax] whose image equals `image` (diagnostics). */
  seqsMatching(image: Buffer, seqMax: number): number[] {
    const current = Buffer.alloc(this.sizeBytes);
    const found: number[] = [];
    for (let seq = 0; seq <= Math.min(seqMax, this.changes.length); seq += 1) {
      if (seq > 0) apply(current, this.changes[seq - 1]);
      if (current.equals(image)) found.push(seq);
    }
    return found;
  }
}

function apply(image: Buffer, change: Change): void {
  if (change === null) return;
  if ('data' in change) change.data.copy(image, change.offsetBytes);
  else image.fill(0, change.offsetBytes, change.offsetBytes + change.zeroBytes);
}

/** The first offset where two buffers differ, or -1. */
export function firstDifference(a: Buffer, b: Buffer): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i += 1) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : length;
}

/**
 * A random range of a volume: a third 4 KiB-aligned, the rest at any byte; mostly small,
 * one in six up to `lengthMax`.
 */
export function randomRange(rng: Random, sizeBytes: number, lengthMax: number): { offsetBytes: number; lengthBytes: number } {
  const aligned = rng.int(3) === 0;
  const limit = rng.int(6) === 0 ? lengthMax : Math.min(lengthMax, 16 * 1024);
  const offsetBytes = aligned ? rng.int(Math.floor(sizeBytes / 4096)) * 4096 : rng.int(sizeBytes);
  const wanted = aligned ? (1 + rng.int(Math.max(1, limit / 4096))) * 4096 : 1 + rng.int(limit);
  return { offsetBytes, lengthBytes: Math.max(1, Math.min(wanted, sizeBytes - offsetBytes)) };
}
