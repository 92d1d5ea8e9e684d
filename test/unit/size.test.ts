import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseSize, formatSize } from '../../src/core/index.js';

test('parseSize reads binary units', () => {
  assert.equal(parseSize('20G'), 20 * 2 ** 30);
  assert.equal(parseSize('512m'), 512 * 2 ** 20);
  assert.equal(parseSize('1.5K'), 1536);
  assert.equal(parseSize('4096'), 4096);
  assert.equal(parseSize('1TiB'), 2 ** 40);
});

test('parseSize rejects garbage with INVALID_SIZE', () => {
  for (const bad of ['', 'G', '12X', '-1G', '1.3', '20 GB extra']) {
    assert.throws(() => parseSize(bad), { code: 'INVALID_SIZE' }, bad);
  }
});

test('formatSize is human', () => {
  assert.equal(formatSize(512), '512 B');
  assert.equal(formatSize(20 * 2 ** 30), '20.0 GiB');
});
