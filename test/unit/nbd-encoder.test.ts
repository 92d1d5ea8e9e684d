/**
 * Server frames round-trip through an independent, incremental parser written from the
 * spec (test-side), fed whole and split at every byte offset.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  encodeBlockStatusChunk, encodeErrorChunk, encodeHoleChunk, encodeNoneChunk, encodeOptionReply, encodeSimpleReply,
  writeDataChunkHeader, DATA_CHUNK_PREFIX_BYTES, encodeGreeting,
} from '../../src/nbd/encoder.js';

type Frame =
  | { kind: 'simple'; error: number; cookie: bigint }
  | { kind: 'chunk'; flags: number; type: number; cookie: bigint; payload: string };

/** Parses transmission-phase server frames from pieces; returns frames once complete. */
function parseFrames(pieces: Buffer[]): Frame[] {
  let buffer = Buffer.alloc(0);
  const frames: Frame[] = [];
  for (const piece of pieces) {
    buffer = Buffer.concat([buffer, piece]);
    for (;;) {
      if (buffer.length < 4) break;
      const magic = buffer.readUInt32BE(0);
      if (magic === 0x67446698) {
        if (buffer.length < 16) break;
        frames.push({ kind: 'simple', error: buffer.readUInt32BE(4), cookie: buffer.readBigUInt64BE(8) });
        buffer = buffer.subarray(16);
      } else if (magic === 0x668e33ef) {
        if (buffer.length < 20) break;
        const length = buffer.readUInt32BE(16);
        if (buffer.length < 20 + length) break;
        frames.push({ kind: 'chunk', flags: buffer.readUInt16BE(4), type: buffer.readUInt16BE(6), cookie: buffer.readBigUInt64BE(8), payload: buffer.subarray(20, 20 + length).toString('hex') });
        buffer = buffer.subarray(20 + length);
      } else {
        throw new Error(`bad magic ${magic.toString(16)}`);
      }
    }
  }
  assert.equal(buffer.length, 0, 'no trailing bytes');
  return frames;
}

test('every reply frame round-trips, whole and split at every byte', () => {
  const data = Buffer.from('hello, block device');
  const dataChunk = Buffer.alloc(DATA_CHUNK_PREFIX_BYTES + data.length);
  writeDataChunkHeader(dataChunk, 0, 0x0102030405060708n, 1, 2 ** 45, data.length);
  data.copy(dataChunk, DATA_CHUNK_PREFIX_BYTES);
  const stream = Buffer.concat([
    encodeSimpleReply(5n, 0),
    encodeSimpleReply(0xffffffffffffffffn, 28),
    dataChunk,
    encodeHoleChunk(6n, 0, 4096, 65536),
    encodeErrorChunk(7n, 1, 22, 'bad range'),
    encodeBlockStatusChunk(8n, 1, 1, [{ lengthBytes: 4096, flags: 0 }, { lengthBytes: 1 << 30, flags: 3 }]),
    encodeNoneChunk(9n, 1),
  ]);
  const whole = parseFrames([stream]);
  assert.equal(whole.length, 7);
  assert.deepEqual(whole[0], { kind: 'simple', error: 0, cookie: 5n });
  assert.deepEqual(whole[1], { kind: 'simple', error: 28, cookie: 0xffffffffffffffffn });
  const dataFrame = whole[2];
  assert.ok(dataFrame.kind === 'chunk' && dataFrame.type === 1 && dataFrame.flags === 1);
  const payload = Buffer.from(dataFrame.payload, 'hex');
  assert.equal(Number(payload.readBigUInt64BE(0)), 2 ** 45);
  assert.equal(payload.subarray(8).toString(), 'hello, block device');
  const hole = whole[3];
  assert.ok(hole.kind === 'chunk' && hole.type === 2);
  assert.deepEqual([Number(Buffer.from(hole.payload, 'hex').readBigUInt64BE(0)), Buffer.from(hole.payload, 'hex').readUInt32BE(8)], [4096, 65536]);
  const error = whole[4];
  assert.ok(error.kind === 'chunk' && error.type === 0x8001);
  const errorPayload = Buffer.from(error.payload, 'hex');
  assert.equal(errorPayload.readUInt32BE(0), 22);
  assert.equal(errorPayload.toString('utf8', 6, 6 + errorPayload.readUInt16BE(4)), 'bad range');
  const status = whole[5];
  assert.ok(status.kind === 'chunk' && status.type === 5);
  const statusPayload = Buffer.from(status.payload, 'hex');
  assert.deepEqual([statusPayload.readUInt32BE(0), statusPayload.readUInt32BE(4), statusPayload.readUInt32BE(8), statusPayload.readUInt32BE(12), statusPayload.readUInt32BE(16)], [1, 4096, 0, 1 << 30, 3]);
  assert.deepEqual(whole[6], { kind: 'chunk', flags: 1, type: 0, cookie: 9n, payload: '' });
  for (let split = 1; split < stream.length; split += 1) {
    assert.deepEqual(parseFrames([stream.subarray(0, split), stream.subarray(split)]), whole, `split at ${split}`);
  }
});

test('greeting and option replies have the spec layout', () => {
  const greeting = encodeGreeting();
  assert.equal(greeting.toString('latin1', 0, 8), 'NBDMAGIC');
  assert.equal(greeting.toString('latin1', 8, 16), 'IHAVEOPT');
  assert.equal(greeting.readUInt16BE(16), 3, 'FIXED_NEWSTYLE | NO_ZEROES');
  const reply = encodeOptionReply(7, 0x80000006, Buffer.from('x'));
  assert.equal(reply.readBigUInt64BE(0), 0x3e889045565a9n);
  assert.deepEqual([reply.readUInt32BE(8), reply.readUInt32BE(12), reply.readUInt32BE(16), reply.toString('latin1', 20)], [7, 0x80000006, 1, 'x']);
});
