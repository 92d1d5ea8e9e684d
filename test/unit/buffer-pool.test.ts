/**
 * The NBD buffer pool: views of the length asked for, reuse across lengths of one size
 * class, idle bytes bounded, foreign buffers ignored.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BufferPool } from '../../src/nbd/buffer-pool.js';

const KiB = 1024;

test('the buffer pool reuses one class for many lengths and keeps at most its bound idle', () => {
  const pool = new BufferPool(64 * KiB, 1024 * KiB);
  const small = pool.acquire(100);
  assert.equal(small.length, 100);
  pool.release(small);
  assert.equal(pool.idleBytes, 0, 'small buffers are not pooled');

  const a = pool.acquire(64 * KiB + 16);
  assert.equal(a.length, 64 * KiB + 16);
  a.fill(1);
  pool.release(a);
  assert.equal(pool.idleBytes, 128 * KiB);
  // Another length of the same class gets the same memory back.
  const b = pool.acquire(100 * KiB);
  assert.equal(b.length, 100 * KiB);
  assert.equal(b[0], 1, 'the class buffer was reused');
  assert.equal(pool.idleBytes, 0);
  pool.release(b);
  pool.release(b);
  assert.equal(pool.idleBytes, 128 * KiB, 'a second release of one view changes nothing');
  pool.release(Buffer.alloc(128 * KiB));
  assert.equal(pool.idleBytes, 128 * KiB, 'buffers it did not hand out are not kept');

  // Lengths of every size: the idle bytes never pass the bound.
  const held = [];
  for (let length = 64 * KiB; length <= 512 * KiB; length += 4 * KiB + 7) held.push(pool.acquire(length));
  for (const buffer of held) pool.release(buffer);
  assert.ok(pool.idleBytes <= 1024 * KiB, `idle ${pool.idleBytes}`);
});
