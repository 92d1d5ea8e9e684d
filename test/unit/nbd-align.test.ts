/** Block-status alignment: aligned interior boundaries, never claiming more than the truth. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { alignDescriptors } from '../../src/nbd/transmission.js';
import { Random } from '../helpers/random.js';

test('aligned descriptors are safe, aligned and cover the request', () => {
  const rng = new Random(77);
  const block = 4096;
  for (let round = 0; round < 2000; round += 1) {
    const offset = rng.int(3) === 0 ? rng.int(20000) : rng.int(5) * block;
    const exact = [];
    let total = 0;
    const pieces = 1 + rng.int(8);
    for (let i = 0; i < pieces; i += 1) {
      const lengthBytes = 1 + rng.int(rng.int(2) ? 300 : 12000);
      exact.push({ lengthBytes, flags: [0, 3, 2][rng.int(3)] });
      total += lengthBytes;
    }
    const complete = rng.int(4) !== 0;
    const requestBytes = complete ? total : total + 1 + rng.int(5000);
    const out = alignDescriptors(offset, exact, requestBytes, block);
    assert.ok(out.length > 0);
    const flagsAt = (descriptors: typeof exact, at: number) => {
      let cursor = offset;
      for (const d of descriptors) {
        if (at < cursor + d.lengthBytes) return d.flags;
        cursor += d.lengthBytes;
      }
      return -1;
    };
    let cursor = offset;
    out.forEach((d, i) => {
      assert.ok(d.lengthBytes > 0);
      cursor += d.lengthBytes;
      const isLast = i === out.length - 1;
      if (!isLast) assert.equal(cursor % block, 0, `round ${round}: interior boundary ${cursor} aligned`);
    });
    const outTotal = cursor - offset;
    assert.ok(outTotal <= total, 'never past what the device described');
    if (complete) assert.equal(outTotal, total, 'a complete list is fully covered');
    for (let probe = 0; probe < 50; probe += 1) {
      const at = offset + rng.int(outTotal);
      const claimed = flagsAt(out, at);
      const truth = flagsAt(exact, at);
      assert.equal(claimed & ~truth, 0, `round ${round}: byte ${at} claims ${claimed} but is ${truth}`);
    }
  }
});
