/**
 * What identifies a record across sites: its seq, time, range, type and flags — not what
 * each site's storage made of it (its durable mark, thinning, compression). Two sites whose
 * records at a seq share a fingerprint hold the same history up to there (times are in µs,
 * and a diverged site wrote its own records at other times).
 */
import { crc32c } from '@node-rs/crc32';
import type { HistoryEntry } from '../index/index.js';
import { RecordFlag, RecordType } from '../journal/index.js';

export function fingerprint(entry: HistoryEntry): string {
  const bytes = Buffer.alloc(40);
  bytes.writeDoubleLE(entry.seq, 0);
  bytes.writeDoubleLE(entry.timeUs, 8);
  bytes.writeDoubleLE(entry.offsetBytes, 16);
  bytes.writeDoubleLE(entry.lengthBytes, 24);
  bytes.writeUInt8(entry.type === RecordType.THINNED ? RecordType.WRITE : entry.type, 32);
  bytes.writeUInt8(entry.flags & ~(RecordFlag.COMPRESSED | RecordFlag.PACKED), 33);
  return `${entry.seq}:${crc32c(bytes).toString(16).padStart(8, '0')}`;
}
