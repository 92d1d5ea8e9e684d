/**
 * Model test of the History itself (issue 5: folding, thinning and collapsing records out of
 * memory), driven directly against a model that knows every block's writer at every seq:
 * random appends (writes, zeroes, flushes, unchanged writes, bookmarks, rollbacks to kept
 * points), expiries, compactions that thin what no kept point shows (relocateSegment, which
 * collapses), collapses of any segment range, restarts (a History loaded again as a start
 * loads it), and folds that yield while records keep arriving. Checked at every step it
 * applies and every 500 steps: the spans' bookkeeping (slots, totals, counts, times,
 * segments), every record's type, time and segment, segment ranges and starts, times and
 * changes resolving, flush points, and kept points' content block by block.
 *
 * HISTORY_MODEL_SEEDS=FIRST:COUNT and HISTORY_MODEL_STEPS run more (a soak); HISTORY_MODEL_ALL=1
 * checks every kept point instead of a sample.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RecordType } from '../../src/journal/index.js';
import { History, SEGMENT_DROPPED, SEGMENT_ZERO } from '../../src/index/index.js';
import type { HistoryEntry } from '../../src/index/index.js';
import { Random } from '../helpers/random.js';

const BLOCK = 256 * 1024;
const BLOCKS = Number(48);
const SIZE = BLOCK * BLOCKS;
/** What the test reads of History's private spans (their bookkeeping is checked whole). */
interface SpansView {
  length: number;
  total: number;
  first: Float64Array;
  count: Uint32Array;
  segment: Uint32Array;
  slot: Float64Array;
  timeFirst: Float64Array;
  timeLast: Float64Array;
  thinned: Uint32Array;
  writes: Uint32Array;
  bytesWritten: Float64Array;
  flushes: Uint32Array;
  end(k: number): number;
}

const changes = (t: number) => t === RecordType.WRITE || t === RecordType.ZERO || t === RecordType.TRIM || t === RecordType.REVERT;

function run(seed: number, steps: number): Promise<{ collapsed: number; folds: number; thinned: number; compared: number }> {
  const rng = new Random(seed);
  const recs: HistoryEntry[] = [undefined as unknown as HistoryEntry];
  const states: Int32Array[] = [new Int32Array(BLOCKS)];
  let h = new History(SIZE);
  const h2 = new History(SIZE);
  const liveOf = (r: number) => h2.regionAt(r, h2.seqLast);
  let segment = 1;
  let segLeft = 30 + rng.int(100);
  let position = 100;
  let time = 1_000_000;
  const thinnedSeqs = new Set<number>();
  let folds = 0;
  let maxSpans = 0;
  const byPayload = new Map<string, number>();
  const expiredOf = (seq: number) => h.expiredRunOf(seq) !== null;
  const live = () => h.indexAt(h.seqLast);

  const append = (kind: number) => {
    const seq = h.seqLast + 1;
    if (segLeft-- <= 0) {
      segment += 1;
      segLeft = 30 + rng.int(100);
      position = 100;
    }
    time += 1 + rng.int(3);
    position += 64;
    let e: HistoryEntry;
    const state = states[seq - 1].slice();
    if (kind === RecordType.WRITE || kind === RecordType.ZERO) {
      const b = rng.int(BLOCKS);
      const n = 1 + rng.int(Math.min(3, BLOCKS - b));
      e = { seq, type: kind, flags: 0, offsetBytes: b * BLOCK, lengthBytes: n * BLOCK, timeUs: time, segment, payloadPosition: position, payloadBytes: kind === RecordType.WRITE ? n * BLOCK : 0, payloadSkip: 0, logicalBytes: kind === RecordType.WRITE ? n * BLOCK : 0 };
      if (kind === RecordType.WRITE) position += n * BLOCK;
      for (let i = b; i < b + n; i += 1) state[i] = kind === RecordType.WRITE ? seq : -1;
      if (kind === RecordType.WRITE) byPayload.set(`${segment}:${e.payloadPosition}`, seq);
    } else if (kind === RecordType.REVERT) {
      // target: a kept seq >= first - 1
      const cands: number[] = [];
      for (let s = Math.max(0, h.seqFirst - 1); s < seq; s += 1) if ((s === 0 && h.seqFirst === 1) || (s >= h.seqFirst && !expiredOf(s))) cands.push(s);
      const target = cands[rng.int(cands.length)];
      e = { seq, type: kind, flags: 0, offsetBytes: target, lengthBytes: 0, timeUs: time, segment, payloadPosition: position, payloadBytes: 0, payloadSkip: 0, logicalBytes: 0 };
      state.set(states[target]);
    } else {
      const b = rng.int(BLOCKS);
      e = { seq, type: kind, flags: 0, offsetBytes: kind === RecordType.UNCHANGED ? b * BLOCK : 0, lengthBytes: kind === RecordType.UNCHANGED ? BLOCK : 0, timeUs: time, segment, payloadPosition: position, payloadBytes: 0, payloadSkip: 0, logicalBytes: 0 };
    }
    recs.push(e);
    states.push(state);
    h.append({ ...e });
    h2.append({ ...e });
    if (e.type === RecordType.REVERT) h.snapshotFromLive(liveOf, 'all');
    else if (e.type === RecordType.WRITE || e.type === RecordType.ZERO) h.snapshotFromLive(liveOf, { offsetBytes: e.offsetBytes, lengthBytes: e.lengthBytes });
    if (rng.int(20) === 0) h.snapshotFromLive(liveOf, 'all', 1 + rng.int(5));
  };

  const randomKind = () => {
    const x = rng.int(100);
    if (x < 45) return RecordType.WRITE;
    if (x < 75) return RecordType.FLUSH;
    if (x < 85) return RecordType.UNCHANGED;
    if (x < 90) return RecordType.ZERO;
    if (x < 93) return RecordType.BOOKMARK;
    if (x < 95) return RecordType.REVERT;
    return RecordType.FLUSH;
  };

  let compared = 0;
  const checkPoint = (P: number, label: string) => {
    const idx = h.indexAt(P);
    const want = states[P];
    idx.lookup(0, SIZE, (p) => {
      for (let o = p.startBytes; o < p.endBytes; o += BLOCK) {
        const b = Math.floor(o / BLOCK);
        let got: number;
        if (p.segment === -1) got = 0;
        else if (p.segment === SEGMENT_ZERO || p.segment === 0xffffffff) got = -1;
        else if (p.segment === SEGMENT_DROPPED) got = -999;
        else got = byPayload.get(`${p.segment}:${p.payloadPosition}`) ?? -777;
        compared += 1;
        if (got !== want[b]) throw new Error(`${label}: point ${P} block ${b}: got ${got} want ${want[b]} (seed ${seed})`);
      }
    });
  };

  const checkSpans = (label: string) => {
    const sp = (h as unknown as { spans: SpansView }).spans;
    let total = 0;
    for (let k = 0; k < sp.length; k += 1) {
      assert.ok(sp.count[k] >= 1, `${label}: span ${k} count`);
      if (k > 0) assert.ok(sp.first[k] > sp.end(k - 1), `${label}: spans ascending ${k}`);
      total += sp.count[k];
      const want = sp.first[k] + sp.count[k] - h.seqFirst - total;
      assert.equal(sp.slot[k], want, `${label}: slot of span ${k}`);
      for (let s = sp.first[k]; s <= sp.end(k); s += 1) assert.equal(recs[s].segment, sp.segment[k], `${label}: span ${k} segment`);
      let th = 0, fl = 0, wr = 0, by = 0;
      for (let s = sp.first[k]; s <= sp.end(k); s += 1) { const t = thinnedSeqs.has(s) ? RecordType.THINNED : recs[s].type; if (t === RecordType.THINNED) th++; if (t === RecordType.FLUSH) fl++; if (t === RecordType.THINNED || t === RecordType.UNCHANGED) { wr++; by += recs[s].lengthBytes; } }
      assert.deepEqual([sp.thinned[k], sp.flushes[k], sp.writes[k], sp.bytesWritten[k], sp.timeFirst[k], sp.timeLast[k]], [th, fl, wr, by, recs[sp.first[k]].timeUs, recs[sp.end(k)].timeUs], `${label}: span ${k} stats`);
      if (k > 0 && sp.end(k - 1) + 1 === sp.first[k]) assert.notEqual(sp.segment[k - 1], sp.segment[k], `${label}: adjacent spans in one segment ${k}`);
    }
    assert.equal(sp.total, total, `${label}: total`);
    assert.ok(sp.first.length >= sp.length);
    maxSpans = Math.max(maxSpans, sp.length);
  };
  const checkAll = (label: string) => {
    checkSpans(label);
    assert.equal(h.seqLast, recs.length - 1, label);
    assert.equal(h.thinnedNotExpired(), 0, label);
    let prevTime = -Infinity;
    const segFirst = new Map<number, number>();
    const segLast = new Map<number, number>();
    const segCollapsed = new Map<number, boolean>();
    for (let s = h.seqFirst; s <= h.seqLast; s += 1) {
      const r = recs[s];
      const type = thinnedSeqs.has(s) ? RecordType.THINNED : r.type;
      const t = h.typeOf(s);
      if (!segFirst.has(r.segment)) segFirst.set(r.segment, s);
      segLast.set(r.segment, s);
      if (t === 0) {
        segCollapsed.set(r.segment, true);
        assert.ok(h.isCollapsed(s), `${label}: ${s}`);
        assert.ok(expiredOf(s) && !changes(type), `${label}: collapsed ${s} type ${type}`);
        assert.equal(h.segmentOf(s), r.segment, `${label} segmentOf ${s}`);
      } else {
        assert.equal(t, type, `${label}: type of ${s}`);
        const e = h.entry(s);
        assert.equal(e.timeUs, r.timeUs, `${label} time ${s}`);
        assert.equal(e.segment, r.segment, `${label} seg ${s}`);
        assert.equal(e.offsetBytes, r.offsetBytes, `${label} off ${s}`);
        assert.equal(h.timeOf(s), r.timeUs);
      }
      const tm = h.timeOf(s);
      assert.ok(tm >= prevTime, `${label}: time monotone at ${s}`);
      prevTime = tm;
      if (!expiredOf(s)) assert.equal(h.lastSeqAtOrBefore(r.timeUs), s, `${label}: lastSeqAtOrBefore kept ${s}`);
    }
    // segmentRecords / segmentStarts
    const starts = h.segmentStarts();
    assert.deepEqual(starts.map((x) => x.segment), [...segFirst.keys()], `${label}: segmentStarts segments`);
    assert.deepEqual(starts.map((x) => x.seqFirst), [...segFirst.values()], `${label}: segmentStarts seqs`);
    for (const [seg, first] of segFirst) {
      const sr = h.segmentRecords(seg)!;
      assert.equal(sr.seqFirst, first, `${label}: segmentRecords ${seg} first`);
      assert.equal(sr.seqLast, segLast.get(seg), `${label}: segmentRecords ${seg} last`);
      assert.equal(sr.complete, !segCollapsed.get(seg), `${label}: complete ${seg}`);
      assert.equal(sr.timeFirstUs, recs[first].timeUs, `${label}: timeFirst ${seg}`);
      for (const e of sr.entries) assert.ok(!h.isCollapsed(e.seq));
      assert.equal(sr.entries.length, segLast.get(seg)! - first + 1 - [...Array(segLast.get(seg)! - first + 1).keys()].filter((i) => h.isCollapsed(first + i)).length);
    }
    // change seqs
    for (let k = 0; k < 5; k += 1) {
      const s = h.seqFirst + rng.int(h.seqLast - h.seqFirst + 1);
      let want = 0;
      for (let x = s; x >= h.seqFirst; x -= 1) if (changes(thinnedSeqs.has(x) ? RecordType.THINNED : recs[x].type)) { want = x; break; }
      assert.equal(h.lastChangeAtOrBefore(s), want, `${label}: lastChangeAtOrBefore ${s}`);
    }
    // flush points
    const expected: number[] = [];
    for (let s = h.seqFirst; s <= h.seqLast; s += 1) {
      const ty = (x: number) => thinnedSeqs.has(x) ? RecordType.THINNED : recs[x].type;
      if (ty(s) === RecordType.FLUSH && !expiredOf(s) && (s === h.seqFirst || ty(s - 1) !== RecordType.FLUSH || expiredOf(s - 1))) expected.push(s);
    }
    assert.deepEqual(h.seqsOfType(RecordType.FLUSH, 0, Number.MAX_SAFE_INTEGER, 1e9), expected, `${label}: flushes`);
    // points
    const kept: number[] = [];
    for (let s = h.seqFirst; s <= h.seqLast; s += 1) if (!expiredOf(s)) kept.push(s);
    if (process.env.HISTORY_MODEL_ALL) for (const P of kept) checkPoint(P, label); else for (let k = 0; k < 25 && kept.length > 0; k += 1) checkPoint(kept[rng.int(kept.length)], label);
    checkPoint(h.seqLast, label);
  };

  const thinSegment = () => {
    const starts = h.segmentStarts().filter((x) => x.segment < segment && !h.foldedSegment(x.segment));
    if (starts.length === 0) return;
    const pick = starts[rng.int(starts.length)];
    let first = 0;
    let last = 0;
    for (let s = h.seqFirst; s <= h.seqLast; s += 1) if (recs[s].segment === pick.segment) { if (!first) first = s; last = s; }
    const kept: number[] = [];
    for (let s = h.seqFirst; s <= h.seqLast; s += 1) if (!expiredOf(s)) kept.push(s);
    kept.push(h.seqLast);
    const visible = new Set<number>();
    for (const P of kept) for (const w of states[P]) if (w > 0) visible.add(w);
    const thinned = new Set<number>();
    for (let s = first; s <= last; s += 1) {
      if (recs[s].type === RecordType.WRITE && !thinnedSeqs.has(s) && expiredOf(s) && !visible.has(s) && rng.int(5) !== 0) thinned.add(s);
    }
    const moved = [];
    for (let s = first; s <= last; s += 1) {
      const r = recs[s];
      moved.push({ payloadPosition: r.payloadPosition, payloadBytes: r.type === RecordType.WRITE && !thinnedSeqs.has(s) && !thinned.has(s) ? r.payloadBytes : 0, compressed: false, packed: false });
    }
    h.relocateSegment(pick.segment, first, moved, thinned, live());
    for (const s of thinned) thinnedSeqs.add(s);
    checkSpans('relocate');
  };

  const expireSome = () => {
    const lo = h.seqFirst;
    const hi = h.seqLast - 1;
    if (hi < lo) return;
    const runs: Array<[number, number]> = [];
    for (let k = 0; k < 3; k += 1) {
      const a = lo + rng.int(hi - lo + 1);
      const b = Math.min(hi, a + rng.int(seed % 3 === 0 ? 80 : 12));
      runs.push([a, b]);
    }
    if (rng.int(4) === 0) runs.push([lo, Math.min(hi, lo + rng.int(300))]);
    runs.sort((x, y) => x[0] - y[0]);
    h.expire(runs);
  };

  const reload = () => {
    const fresh = new History(SIZE);
    const foldAt = h.seqFirst;
    for (let s = 1; s < recs.length; s += 1) {
      if (s === foldAt && foldAt > 1) fresh.fold(foldAt);
      const r = recs[s];
      const e = { ...r };
      if (thinnedSeqs.has(s)) Object.assign(e, { type: RecordType.THINNED, payloadBytes: 0, logicalBytes: 0 });
      fresh.append(e, true);
    }
    if (foldAt > fresh.seqLast && foldAt > 1) fresh.fold(foldAt);
    fresh.expire(h.expired.map(([a, b]) => [a, b] as [number, number]));
    assert.equal(fresh.thinnedNotExpired(), 0);
    fresh.collapseSegments(0, segment - 1);
    h = fresh;
    h.snapshotFromLive(liveOf, 'all', 1 + rng.int(100));
  };

  const fold = async () => {
    const starts = h.segmentStarts().map((x) => x.seqFirst).filter((s) => s > h.seqFirst);
    const oldest = h.oldestKept();
    let at = 0;
    for (const s of starts) if (s <= oldest) at = s;
    if (at === 0 || h.foldLimit(at) !== at) return;
    const p = h.foldAsync(at, 0);
    let done = false;
    void p.then(() => { done = true; });
    while (!done) {
      if (rng.int(3) === 0) {
        let k = randomKind();
        if (k === RecordType.REVERT) k = RecordType.WRITE;
        append(k);
      }
      await new Promise((r) => setImmediate(r));
    }
    if (await p) folds += 1;
  };

  return (async () => {
    for (let step = 0; step < steps; step += 1) {
      const x = rng.int(1000);
      if (x < 900) append(randomKind());
      else if (x < (seed % 2 ? 915 : 940)) expireSome();
      else if (x < 975) thinSegment();
      else if (x < 985) { if (rng.int(3) === 0) h.collapseSegments(0, segment - 1); else { const a = 1 + rng.int(segment); const b = a + rng.int(Math.max(1, segment - a)); h.collapseSegments(a, Math.min(b, segment - 1)); } checkSpans(`collapse step ${step}`); }
      else if (x < 990) reload();
      else if (x < 994) await fold();
      else if (x < 997) { const kept: number[] = []; for (let s = h.seqFirst; s <= h.seqLast; s += 1) if (!expiredOf(s)) kept.push(s); if (kept.length) checkPoint(kept[rng.int(kept.length)], `step ${step}`); }
      if (step % 500 === 499) checkAll(`step ${step}`);
    }
    checkAll('end');
    if (process.env.HISTORY_MODEL_VERBOSE) console.log(`seed ${seed}: seqs ${h.seqLast} first ${h.seqFirst} rows ${h.recordCount} collapsed ${h.collapsedCount} thinned ${thinnedSeqs.size} expired ${h.expired.length} folds ${folds} maxSpans ${maxSpans} compared ${compared}`);
    return { collapsed: h.collapsedCount, folds, thinned: thinnedSeqs.size, compared };
  })();
}

test('the history against a model: folds, thinning, collapses, restarts, folds with records arriving; kept points block by block', { timeout: 600_000 }, async () => {
  const [a, n] = (process.env.HISTORY_MODEL_SEEDS ?? '1:40').split(':').map(Number);
  const steps = Number(process.env.HISTORY_MODEL_STEPS ?? 3000);
  const totals = { collapsed: 0, folds: 0, thinned: 0, compared: 0 };
  for (let seed = a; seed < a + n; seed += 1) {
    try {
      const result = await run(seed, steps);
      for (const key of Object.keys(totals) as Array<keyof typeof totals>) totals[key] += result[key];
    } catch (err) {
      console.log(`# replay: HISTORY_MODEL_SEEDS=${seed}:1`);
      throw err;
    }
  }
  // It must have done what it claims: collapsed, folded, thinned, and compared content.
  assert.ok(totals.collapsed > 10 * n && totals.folds > n / 4 && totals.thinned > 20 * n && totals.compared > 1000 * n, `the model did real work: ${JSON.stringify(totals)}`);
});

test('a snapshot taken right after a write that is later thinned and collapsed is not the state at the kept point before that write', () => {
  const h = new History(4 * 1024 * 1024);
  const live = new History(4 * 1024 * 1024);
  let position = 100;
  const add = (type: number, block: number, segment: number) => {
    const seq = h.seqLast + 1;
    position += 1000;
    const write = type === RecordType.WRITE;
    const entry: HistoryEntry = { seq, type, flags: 0, offsetBytes: write ? block * BLOCK : 0, lengthBytes: write ? BLOCK : 0, timeUs: seq * 10, segment, payloadPosition: position, payloadBytes: write ? BLOCK : 0, payloadSkip: 0, logicalBytes: write ? BLOCK : 0 };
    h.append(entry);
    live.append({ ...entry });
    return entry;
  };
  const records: HistoryEntry[] = [];
  for (let i = 0; i < 70; i += 1) records.push(add(RecordType.WRITE, 0, 1));
  records.push(add(RecordType.WRITE, 1, 1)); // seq 71: overwritten before the next kept point
  h.snapshotFromLive((regionIndex) => live.regionAt(regionIndex, live.seqLast), 'all', 1); // shows seq 71
  records.push(add(RecordType.FLUSH, 0, 1)); // 72
  records.push(add(RecordType.WRITE, 1, 2)); // 73 overwrites 71
  records.push(add(RecordType.FLUSH, 0, 2)); // 74
  h.expire([[71, 72]]);
  const moved = records.filter((r) => r.segment === 1).map((r) => ({ payloadPosition: r.payloadPosition, payloadBytes: r.seq === 71 ? 0 : r.payloadBytes, compressed: false, packed: false }));
  h.relocateSegment(1, 1, moved, new Set([71]), h.indexAt(h.seqLast));
  assert.ok(h.isCollapsed(71) && h.isCollapsed(72), 'seqs 71 and 72 collapsed');
  const pieces: string[] = [];
  h.indexAt(70).lookup(0, 2 * BLOCK, (piece) => pieces.push(piece.segment === SEGMENT_DROPPED ? 'dropped' : `segment ${piece.segment}`));
  assert.ok(!pieces.includes('dropped'), `kept point 70 shows no reclaimed data (${pieces.join(', ')})`);
});
