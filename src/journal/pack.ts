/**
 * Packs (docs/FORMAT.md, "Packed records"): in a compacted segment, consecutive small records
 * share one PACK record. Its 56-byte header (type PACK, the first record's seq and time, the
 * count of entries in `length` and of records in `payload bytes` when runs make them differ,
 * the bytes after the header in `offset`, the highest `seqDurable` of the records) is
 * followed by a table of 28-byte entries, one per record or run (below), then every record's
 * body — chunk table, then payload — back to back, with no padding between them. The header's
 * CRC covers the entry table; each body's chunk table covers its payload as in a record of
 * its own. So a read finds a packed payload's chunk CRCs right before it, as everywhere, and
 * a 4 KiB write costs 32 bytes of metadata instead of 64.
 *
 * Entry, 28 bytes: `u32` offset (low 32 bits), `u32` offset high 18 bits | flags << 18 |
 * type << 26, `u32` time since the previous record's (µs; the first record's: since the
 * pack's, so 0), `u32` length, `u32` payload bytes, `u32` payload skip, `u32` logical bytes
 * (a COMPRESSED WRITE: the bytes its container stands for; 0 otherwise). A run entry (flag
 * RUN, THINNED): `length` records of folded history that changed nothing, the first at its
 * time, the others `logical bytes` µs later (RunPolicy, PackBuilder).
 */
import { assert } from '../core/index.js';
import {
  PACK_BYTES_MAX, PACK_ENTRY_BYTES, PACK_RECORDS_MAX, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RecordFlag, RecordType, bodyBytes, encodeRecordHeader, payloadOffset, recordCount, recordSpan, unfit, isCompressedWrite } from './record.js';
import type { RecordHeader, RecordTypeValue } from './record.js';
import { chunkTableBytes } from './chunk-crc.js';

const OFFSET_HIGH_BITS = 18;
const OFFSET_HIGH_MASK = (1 << OFFSET_HIGH_BITS) - 1;
const TIME_DELTA_MAX = 0xffffffff;
const PADDING = Buffer.alloc(RECORD_ALIGN_BYTES);
/** Records with a longer body stand alone: packing them would save next to nothing. */
export const PACKED_BODY_BYTES_MAX = 64 * 1024 + 64;

/** A record to pack: its header and body (null without payload). */
export interface PackInput {
  header: RecordHeader;
  table: Buffer | null;
  payload: Buffer | null;
  logicalBytes?: number;
}

/** A record read from a pack: its header (flag PACKED set), where its payload is. */
export interface PackedRecord {
  header: RecordHeader;
  payloadPosition: number;
  logicalBytes?: number;
  /** Read with `wholeRuns`: a run of this many records (2 or more) from `header` (the first's). */
  runCount?: number;
  /** ...the last of which is at this time (the others after the first too). */
  runTimeLastUs?: number;
}

/** Whether a record may go into a pack at all. */
export function packable(header: RecordHeader): boolean {
  return header.type !== RecordType.PACK && bodyBytes(header.payloadBytes) <= PACKED_BODY_BYTES_MAX && header.offsetBytes < 2 ** 50;
}

/**
 * Which records may share a run entry (docs/FORMAT.md, "Packed records"): records of a run already
 * (flag RUN) keep their run's times; others that changed no content join one only below
 * `below` (folded history every replica holds past: their own times and ranges are lost),
 * never the one at `exact` (a failover's seq: failback finds the common seq by it).
 */
export interface RunPolicy {
  below: number;
  exact?: number;
}

/** Types of records that changed no content: a run may take them. */
const RUNNABLE = new Set<number>([RecordType.THINNED, RecordType.FLUSH, RecordType.UNCHANGED]);

/** Collects records for one pack: `add` says false when one more would not fit. */
export class PackBuilder {
  private readonly records: PackInput[] = [];
  /** The pack's entries: each stands for `count` records from `first` (a run if it is one). */
  private readonly slots: Array<{ first: number; count: number; run: boolean; allRun: boolean; allFree: boolean }> = [];
  private bodies = 0;

  /** Without `runs`, only runs already made are kept as they are. */
  constructor(private readonly runs: RunPolicy = { below: 0 }) {}

  get count(): number {
    return this.records.length;
  }

  /** The headers of the records collected so far. */
  get headers(): RecordHeader[] {
    return this.records.map((record) => record.header);
  }

  add(record: PackInput): boolean {
    assert(packable(record.header), 'only packable records are packed');
    const { header } = record;
    const last = this.records[this.records.length - 1];
    if (last) {
      const stepUs = header.timeUs - last.header.timeUs;
      if (header.seq !== last.header.seq + 1 || stepUs < 0 || stepUs > TIME_DELTA_MAX) return false;
    }
    const slot = this.slots[this.slots.length - 1];
    const inRun = (header.flags & RecordFlag.RUN) !== 0;
    // Free: a record whose own fields may go (below the limit, not the failover's).
    const free = header.seq < this.runs.below && header.seq !== this.runs.exact;
    const runnable = inRun || (free && RUNNABLE.has(header.type));
    // A record joins the run before it if every record of both may lose its fields, or as
    // it was in a run made before: the first of a run has the run's first time, every other
    // the run's last time — so it continues a run of one, or one whose last time is its own.
    const joins = slot !== undefined && slot.run && runnable && header.timeUs - this.records[slot.first].header.timeUs <= TIME_DELTA_MAX &&
      ((free && slot.allFree) || (inRun && slot.allRun && (slot.count === 1 || header.timeUs === last.header.timeUs)));
    if (!joins && last) {
      if (this.slots.length >= PACK_RECORDS_MAX) return false;
      if ((this.slots.length + 1) * PACK_ENTRY_BYTES + this.bodies + bodyBytes(header.payloadBytes) > PACK_BYTES_MAX) return false;
    }
    this.records.push(record);
    if (joins) {
      slot.count += 1;
      slot.allRun &&= inRun;
      slot.allFree &&= free;
    } else {
      this.slots.push({ first: this.records.length - 1, count: 1, run: runnable, allRun: inRun, allFree: free });
    }
    this.bodies += bodyBytes(header.payloadBytes);
    return true;
  }

  /** Empties the builder: its records, to be written some other way. */
  drain(): PackInput[] {
    this.bodies = 0;
    this.slots.length = 0;
    return this.records.splice(0);
  }

  /**
   * The pack as buffers to write at `position` (padding included), and where each record's
   * payload lands; the builder is empty after.
   */
  take(position: number, crcSeed: number): { buffers: Buffer[]; span: number; payloadPositions: number[] } {
    const bodies = this.bodies;
    const slots = this.slots.splice(0);
    const records = this.drain();
    assert(records.length > 0, 'a pack holds records');
    const entries = Buffer.alloc(slots.length * PACK_ENTRY_BYTES);
    const buffers: Buffer[] = [Buffer.alloc(RECORD_HEADER_BYTES), entries];
    const payloadPositions: number[] = [];
    let at = position + RECORD_HEADER_BYTES + entries.length;
    let previousUs = records[0].header.timeUs;
    let seqDurable = 0;
    slots.forEach(({ first, count, run }, i) => {
      const record = records[first];
      const { header } = record;
      const e = i * PACK_ENTRY_BYTES;
      for (let k = first; k < first + count; k += 1) seqDurable = Math.max(seqDurable, records[k].header.seqDurable);
      if (run && (count > 1 || (header.flags & RecordFlag.RUN) !== 0)) {
        // A run: its first record's time, how much later its last one's is, and its count.
        const lastUs = records[first + count - 1].header.timeUs;
        entries.writeUInt32LE(((RecordFlag.RUN << OFFSET_HIGH_BITS) | (RecordType.THINNED << 26)) >>> 0, e + 4);
        entries.writeUInt32LE(header.timeUs - previousUs, e + 8);
        entries.writeUInt32LE(count, e + 12);
        entries.writeUInt32LE(lastUs - header.timeUs, e + 24);
        previousUs = lastUs;
        for (let k = 0; k < count; k += 1) payloadPositions.push(at);
        return;
      }
      const flags = header.flags & ~RecordFlag.PACKED;
      entries.writeUInt32LE(header.offsetBytes % 0x100000000, e);
      entries.writeUInt32LE((Math.floor(header.offsetBytes / 0x100000000) | (flags << OFFSET_HIGH_BITS) | (header.type << 26)) >>> 0, e + 4);
      entries.writeUInt32LE(header.timeUs - previousUs, e + 8);
      entries.writeUInt32LE(header.lengthBytes, e + 12);
      entries.writeUInt32LE(header.payloadBytes, e + 16);
      entries.writeUInt32LE(header.payloadSkip ?? 0, e + 20);
      entries.writeUInt32LE(record.logicalBytes ?? 0, e + 24);
      previousUs = header.timeUs;
      if (header.payloadBytes > 0) {
        assert(record.table !== null && record.payload !== null && record.payload.length === header.payloadBytes, 'a payload comes with its chunk table');
        buffers.push(record.table, record.payload);
        at += record.table.length;
        payloadPositions.push(at);
        at += header.payloadBytes;
      } else {
        payloadPositions.push(at);
      }
    });
    const first = records[0].header;
    const bodyEnd = RECORD_HEADER_BYTES + entries.length + bodies;
    const span = Math.ceil(bodyEnd / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
    encodeRecordHeader(buffers[0], {
      type: RecordType.PACK, flags: 0, seq: first.seq, timeUs: first.timeUs, offsetBytes: entries.length + bodies, lengthBytes: slots.length,
      payloadBytes: records.length === slots.length ? 0 : records.length, seqDurable, payloadSkip: 0,
    }, entries, crcSeed);
    if (span > bodyEnd) buffers.push(Buffer.alloc(span - bodyEnd));
    return { buffers, span, payloadPositions };
  }
}

/** One record on its own (not packed): header (flag PACKED dropped), chunk table, payload, padding. */
export function standaloneRecord(record: PackInput, crcSeed: number): { buffers: Buffer[]; span: number } {
  const head = Buffer.alloc(RECORD_HEADER_BYTES);
  const header = { ...record.header, flags: record.header.flags & ~RecordFlag.PACKED };
  encodeRecordHeader(head, header, record.table, crcSeed);
  const buffers: Buffer[] = [head];
  if (record.table && record.payload) buffers.push(record.table, record.payload);
  const span = recordSpan(header.payloadBytes);
  const padding = span - payloadOffset(header.payloadBytes) - header.payloadBytes;
  if (padding > 0) buffers.push(PADDING.subarray(0, padding));
  return { buffers, span };
}

/**
 * A packed record as a record of its own, from its header and its body as stored (chunk
 * table, then payload): what replication sends, and what a failback's cut inside a pack keeps.
 */
export function unpackedRecord(header: RecordHeader, body: Buffer, crcSeed: number): Buffer {
  const tableBytes = chunkTableBytes(header.payloadBytes);
  assert(body.length === tableBytes + header.payloadBytes, 'the body of this record');
  const hasPayload = header.payloadBytes > 0;
  return Buffer.concat(standaloneRecord({ header, table: hasPayload ? body.subarray(0, tableBytes) : null, payload: hasPayload ? body.subarray(tableBytes) : null }, crcSeed).buffers);
}

/**
 * The records of the PACK whose (checked) header is `pack`, at `position`, from its entry
 * table (whose CRC the caller checked with the header): each entry checked as a record
 * header would be, and the bodies must fill the pack exactly.
 */
export function decodePack(pack: RecordHeader, entries: Buffer, position: number, wholeRuns = false): { ok: true; records: PackedRecord[] } | { ok: false; reason: string } {
  assert(pack.type === RecordType.PACK && entries.length === pack.lengthBytes * PACK_ENTRY_BYTES, 'the entry table of this pack');
  const records: PackedRecord[] = [];
  let at = position + RECORD_HEADER_BYTES + entries.length;
  const end = position + RECORD_HEADER_BYTES + pack.offsetBytes;
  let timeUs = pack.timeUs;
  let seq = pack.seq;
  for (let i = 0; i < pack.lengthBytes; i += 1) {
    const e = i * PACK_ENTRY_BYTES;
    const high = entries.readUInt32LE(e + 4);
    const type = high >>> 26;
    const flags = (high >>> OFFSET_HIGH_BITS) & 0xff;
    const stepUs = entries.readUInt32LE(e + 8);
    if (i === 0 && stepUs !== 0) return { ok: false, reason: 'the first packed record is not at the pack\'s time' };
    timeUs += stepUs;
    const offsetBytes = (high & OFFSET_HIGH_MASK) * 0x100000000 + entries.readUInt32LE(e);
    const lengthBytes = entries.readUInt32LE(e + 12);
    const payloadBytes = entries.readUInt32LE(e + 16);
    const payloadSkip = entries.readUInt32LE(e + 20);
    const logical = entries.readUInt32LE(e + 24);
    if ((flags & RecordFlag.RUN) !== 0) {
      // A run: `length` thinned records, the first at the entry's time, the others `logical` µs later.
      if (type !== RecordType.THINNED || flags !== RecordFlag.RUN || offsetBytes !== 0 || payloadBytes !== 0 || payloadSkip !== 0 || lengthBytes < 1 || (lengthBytes === 1 && logical !== 0)) {
        return { ok: false, reason: `packed run ${i} is unsound` };
      }
      const member = (k: number): RecordHeader => ({
        type: RecordType.THINNED, flags: RecordFlag.RUN | RecordFlag.PACKED, seq: seq + k, timeUs: k === 0 ? timeUs : timeUs + logical,
        offsetBytes: 0, lengthBytes: 0, payloadBytes: 0, seqDurable: pack.seqDurable, payloadSkip: 0,
      });
      // (`wholeRuns`: one record standing for them all — a start loads it as one span.)
      if (wholeRuns && lengthBytes > 1) records.push({ header: member(0), payloadPosition: at, runCount: lengthBytes, runTimeLastUs: timeUs + logical });
      else for (let k = 0; k < lengthBytes; k += 1) records.push({ header: member(k), payloadPosition: at });
      seq += lengthBytes;
      timeUs += logical;
      continue;
    }
    const header: RecordHeader = {
      type: type as RecordTypeValue, flags: flags | RecordFlag.PACKED, seq, timeUs, offsetBytes, lengthBytes, payloadBytes, seqDurable: pack.seqDurable, payloadSkip,
    };
    seq += 1;
    if (type < RecordType.WRITE || type >= RecordType.PACK || (flags & RecordFlag.PACKED) !== 0) return { ok: false, reason: `packed record ${i} has type ${type}, flags ${flags}` };
    const why = unfit(header);
    if (why !== null) return { ok: false, reason: `packed record ${i}: ${why}` };
    const compressed = isCompressedWrite(type, flags);
    if (compressed !== (logical > 0) || (compressed && payloadSkip + logical > lengthBytes)) {
      return { ok: false, reason: `packed record ${i} has unsound logical bytes` };
    }
    at += chunkTableBytes(payloadBytes);
    records.push({ header, payloadPosition: at, logicalBytes: compressed ? logical : undefined });
    at += payloadBytes;
    if (at > end) return { ok: false, reason: 'packed bodies overrun the pack' };
  }
  if (at !== end) return { ok: false, reason: 'packed bodies do not fill the pack' };
  if (seq - pack.seq !== recordCount(pack)) return { ok: false, reason: `the pack holds ${seq - pack.seq} records, its header says ${recordCount(pack)}` };
  return { ok: true, records };
}
