/** Shared pieces of the BlockDevice model tests: random ranges and the probe after each step. */
import assert from 'node:assert/strict';
import type { BlockDevice } from '../../src/core/index.js';
import type { Random } from './random.js';

/** A random range: a third 4 KiB-aligned, the rest at any byte; sometimes large. */
export function randomRange(rng: Random, sizeBytes: number, largeBytes: number): { offset: number; length: number } {
  const aligned = rng.int(3) === 0;
  const unit = aligned ? 4096 : 1;
  const offset = Math.min(sizeBytes - 1, rng.int(Math.floor(sizeBytes / unit)) * unit);
  const maxLength = Math.min(sizeBytes - offset, rng.int(4) === 0 ? largeBytes : 12 * 1024);
  const length = Math.max(1, Math.min(maxLength, aligned ? (1 + rng.int(8)) * 4096 : 1 + rng.int(maxLength)));
  return { offset, length };
}

/** Reads a random range and checks it against the oracle; block status never calls data zero. */
export async function probeAgainstOracle(device: BlockDevice, oracle: Buffer, rng: Random, largeBytes: number, step: number): Promise<void> {
  const probe = randomRange(rng, oracle.length, largeBytes);
  const got = Buffer.alloc(probe.length);
  await device.read(probe.offset, got);
  assert.ok(got.equals(oracle.subarray(probe.offset, probe.offset + probe.length)), `step ${step}: read ${probe.offset}+${probe.length}`);
  const extents = await device.blockStatus(probe.offset, probe.length, 1000);
  let at = probe.offset;
  for (const extent of extents) {
    if (extent.zero) assert.ok(oracle.subarray(at, at + extent.lengthBytes).every((b) => b === 0), `step ${step}: extent at ${at} claims zero`);
    at += extent.lengthBytes;
  }
  assert.equal(at, probe.offset + probe.length, 'extents cover the range');
}
