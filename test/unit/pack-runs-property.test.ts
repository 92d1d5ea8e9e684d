/**
 * Runs (journal/pack.ts): compaction's packing loop over random record sequences, packed
 * again and again with random limits (`below`, `exact`), random barriers (records too large
 * to pack, segment ends), time steps up to the 2^32 µs an entry holds, and more records than a
 * pack takes: every record a run may not change — at or above the limit, the failover's, any
 * that changed content — keeps its replication fingerprint; times never go back; every record
 * keeps its seq and a payload position. HINDSIGHT_RUNS_SEEDS runs more.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RecordFlag, RecordType, crcSeedFor } from '../../src/journal/index.js';
import { PackBuilder, decodePack, packable, standaloneRecord } from '../../src/journal/pack.js';
import type { PackInput, RunPolicy } from '../../src/journal/pack.js';
import { decodeRecordHeader, unfit } from '../../src/journal/record.js';
import type { RecordHeader } from '../../src/journal/record.js';
import { encodeChunkTable } from '../../src/journal/chunk-crc.js';
import { fingerprint } from '../../src/replication/fingerprint.js';
import { Random } from '../helpers/random.js';

const SEED = crcSeedFor(Buffer.from('9ac69ac69ac69ac60123456789abcdef', 'hex'));
const RUNNABLE = [RecordType.THINNED, RecordType.FLUSH, RecordType.UNCHANGED] as number[];

/** Compaction's loop (compaction.ts settle/flushPack) over `inputs`, then read back. */
function compact(inputs: PackInput[], runs: RunPolicy | undefined, rng: Random): PackInput[] {
  const out: PackInput[] = [];
  const pack = new PackBuilder(runs);
  let position = 4096;
  const readBack = (buffers: Buffer[], at: number) => {
    const bytes = Buffer.concat(buffers);
    const decoded = decodeRecordHeader(bytes);
    assert.ok(decoded.ok, 'header decodes');
    if (decoded.header.type !== RecordType.PACK) {
      assert.equal(unfit(decoded.header), null);
      out.push({ header: decoded.header, table: null, payload: null });
      return;
    }
    const entries = bytes.subarray(56, 56 + decoded.header.lengthBytes * 28);
    const pk = decodePack(decoded.header, Buffer.from(entries), at);
    assert.ok(pk.ok, pk.ok ? '' : pk.reason);
    for (const r of pk.records) {
      out.push({ header: { ...r.header, flags: r.header.flags & ~RecordFlag.PACKED }, table: null, payload: null });
    }
  };
  const flush = () => {
    if (pack.count === 1) {
      const one = pack.drain()[0];
      const s = standaloneRecord(one, SEED);
      readBack(s.buffers, position);
      position += s.span;
    } else if (pack.count > 1) {
      const n = pack.count;
      const { buffers, span, payloadPositions } = pack.take(position, SEED);
      assert.equal(payloadPositions.length, n, 'a payload position per record');
      readBack(buffers, position);
      position += span;
    }
  };
  for (const input of inputs) {
    // Random barriers: a record too large to pack, a segment boundary.
    if (rng.int(50) === 0) flush();
    const record = { ...input, header: { ...input.header } };
    if (record.header.payloadBytes > 0) {
      const payload = Buffer.alloc(record.header.payloadBytes, 7);
      record.payload = payload;
      record.table = encodeChunkTable(payload, SEED);
    }
    assert.ok(packable(record.header));
    if (!pack.add(record)) {
      flush();
      assert.ok(pack.add(record), 'fits an empty pack');
    }
  }
  flush();
  return out;
}

const key = (h: RecordHeader) => fingerprint({ ...h, segment: 0, payloadPosition: 0 } as never);

test('runs change only the records they may: below the limit, not the failover\'s, records that changed nothing', () => {
  const seeds = Number(process.env.HINDSIGHT_RUNS_SEEDS ?? 200);
  for (let seed = 1; seed <= seeds; seed += 1) {
    const rng = new Random(seed);
    const n = 20 + rng.int(seed % 10 === 0 ? 9000 : 300);
    let timeUs = 1e15;
    const records: PackInput[] = [];
    for (let seq = 1; seq <= n; seq += 1) {
      const step = rng.int(8);
      timeUs += step < 3 ? 0 : step < 6 ? rng.int(5000) : step < 7 ? 2 ** 32 - 1 - rng.int(3) : 2 ** 31 + rng.int(2 ** 31);
      const kind = rng.int(10);
      const type = kind < 4 ? RecordType.THINNED : kind < 6 ? RecordType.FLUSH : kind < 7 ? RecordType.UNCHANGED : kind < 8 ? RecordType.ZERO : RecordType.WRITE;
      const payloadBytes = type === RecordType.WRITE ? 512 * (1 + rng.int(8)) : 0;
      records.push({ header: { type, flags: 0, seq, timeUs, offsetBytes: type === RecordType.FLUSH ? 0 : 4096 * rng.int(100), lengthBytes: type === RecordType.FLUSH ? 0 : 4096, payloadBytes, seqDurable: seq, payloadSkip: 0 }, table: null, payload: null });
    }
    let current = records;
    for (let round = 0; round < 5; round += 1) {
      const below = [0, Infinity, 1 + rng.int(n + 1)][rng.int(3)];
      const exact = rng.int(2) === 0 ? 1 + rng.int(n) : undefined;
      const next = compact(current, { below, exact }, rng);
      assert.equal(next.length, current.length, `seed ${seed} round ${round}: every record`);
      for (let i = 0; i < next.length; i += 1) {
        const before = current[i].header;
        const after = next[i].header;
        assert.equal(after.seq, before.seq);
        if (i > 0) assert.ok(after.timeUs >= next[i - 1].header.timeUs, 'times never go back');
        const mayChange = before.seq < below && before.seq !== exact && RUNNABLE.includes(before.type);
        if (!mayChange) {
          assert.equal(key(after), key(before), `seed ${seed} round ${round} below ${below} exact ${exact}: seq ${before.seq} fingerprint kept (${JSON.stringify(before)} -> ${JSON.stringify(after)})`);
        }
      }
      current = next.map((r) => (r.header.type === RecordType.WRITE ? { ...r, header: { ...r.header } } : r));
    }
  }
});
