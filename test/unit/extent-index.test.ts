/** Model test: random extent updates against a per-byte oracle of (segment, position). */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ExtentIndex, REGION_BYTES, SEGMENT_ZERO, SEGMENT_ZERO_ALLOCATED } from '../../src/index/extent-index.js';
import { Random } from '../helpers/random.js';

const SIZE = REGION_BYTES * 3 + 12345;

for (const seed of [11, 12, 13]) {
  test(`extent index matches a per-byte oracle (seed ${seed})`, () => {
    const rng = new Random(seed);
    const index = new ExtentIndex(SIZE);
    const segments = new Int32Array(SIZE).fill(-1);
    const positions = new Float64Array(SIZE);
    let nextPosition = 1000;
    for (let step = 0; step < 600; step += 1) {
      const offset = rng.int(SIZE);
      const length = 1 + rng.int(Math.min(SIZE - offset, rng.int(5) === 0 ? REGION_BYTES * 2 : 20000));
      const kind = rng.int(6);
      if (kind < 4) {
        const segment = 1 + rng.int(3);
        index.setData(offset, length, segment, nextPosition);
        for (let i = 0; i < length; i += 1) {
          segments[offset + i] = segment;
          positions[offset + i] = nextPosition + i;
        }
        nextPosition += length + 56;
      } else {
        const allocated = kind === 5;
        index.setZero(offset, length, allocated);
        segments.fill(allocated ? SEGMENT_ZERO_ALLOCATED | 0 : SEGMENT_ZERO, offset, offset + length);
      }
      const probeOffset = rng.int(SIZE);
      const probeLength = 1 + rng.int(Math.min(SIZE - probeOffset, REGION_BYTES + 5000));
      let at = probeOffset;
      index.lookup(probeOffset, probeLength, (piece) => {
        assert.equal(piece.startBytes, at, 'pieces are consecutive');
        assert.ok(piece.endBytes > piece.startBytes);
        for (const i of [piece.startBytes, piece.endBytes - 1, (piece.startBytes + piece.endBytes) >>> 1]) {
          const expected = segments[i];
          assert.equal(piece.segment | 0, expected, `step ${step}: segment at ${i}`);
          if (expected > 0) assert.equal(piece.payloadPosition + piece.delta + (i - piece.startBytes), positions[i], `step ${step}: position at ${i}`);
        }
        at = piece.endBytes;
      });
      assert.equal(at, probeOffset + probeLength, 'pieces cover the probe');
    }
    let checkpointExtents = 0;
    const copy = new ExtentIndex(SIZE);
    for (const { regionIndex, entries } of index.regionsForCheckpoint()) {
      checkpointExtents += entries.length / 6;
      copy.loadRegion(regionIndex, entries.slice());
    }
    assert.equal(checkpointExtents, index.extentCount);
    const seen: string[] = [];
    const again: string[] = [];
    index.lookup(0, SIZE, (p) => seen.push(`${p.startBytes}-${p.endBytes}:${p.segment}:${p.payloadPosition}:${p.delta}`));
    copy.lookup(0, SIZE, (p) => again.push(`${p.startBytes}-${p.endBytes}:${p.segment}:${p.payloadPosition}:${p.delta}`));
    assert.deepEqual(again, seen, 'a reloaded checkpoint answers the same');
  });
}

test('sequential writes stay one extent each, however many', () => {
  const index = new ExtentIndex(1 << 30);
  for (let i = 0; i < 1024; i += 1) index.setData(i * 1048576, 1048576, 1, i * (1048576 + 56));
  assert.equal(index.extentCount, 1024);
});
