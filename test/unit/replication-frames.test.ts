/**
 * The replication frame codec: round trips (plain and compressed, fed a byte at a time),
 * and every refusal — bad magic, type, flags, checksum, oversize lengths, compressed bodies
 * that do not declare their size, declare too much, or hide a second zstd frame that would
 * inflate without bound (a decompression bomb: refused before any of it is inflated).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { crc32c } from '@node-rs/crc32';
import { CompressStream, Compressor } from 'zstd-napi';
import { FRAME_BODY_BYTES_MAX, FrameDecoder, FrameType, decodeRecords, encodeFrame, recordsBody } from '../../src/replication/frames.js';

function rawFrame(type: number, flags: number, body: Buffer, length = body.length): Buffer {
  const header = Buffer.alloc(16);
  header.writeUInt32LE(0x50525348, 0);
  header.writeUInt8(type, 4);
  header.writeUInt8(flags, 5);
  header.writeUInt32LE(length, 8);
  header.writeUInt32LE(crc32c(body, crc32c(header.subarray(0, 12))), 12);
  return Buffer.concat([header, body]);
}

function streamCompress(chunks: number, chunkBytes: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    const stream = new CompressStream({ compressionLevel: 3 });
    stream.on('data', (part: Buffer) => parts.push(part));
    stream.on('end', () => resolve(Buffer.concat(parts)));
    for (let i = 0; i < chunks; i += 1) stream.write(Buffer.alloc(chunkBytes));
    stream.end();
  });
}

test('frames round-trip, plain and compressed, whatever the pieces they arrive in', () => {
  const bodies = [Buffer.alloc(0), Buffer.from('{"a":1}'), Buffer.alloc(300_000, 7), Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 251))];
  const wire = Buffer.concat(bodies.flatMap((body, i) => encodeFrame(FrameType.RECORDS, body, i % 2 === 0)));
  const decoder = new FrameDecoder();
  const frames = [];
  for (let at = 0; at < wire.length; at += 1) frames.push(...decoder.push(wire.subarray(at, at + 1)));
  assert.deepEqual(frames.map((frame) => frame.body), bodies);
  assert.equal(frames.reduce((sum, frame) => sum + frame.wireBytes, 0), wire.length);
  assert.equal(decoder.pendingBytes, 0);
  const compressed = encodeFrame(FrameType.RECORDS, Buffer.alloc(300_000, 7), true);
  assert.ok(compressed[1].length < 1000 && compressed[0].readUInt8(5) === 1, 'compressible bodies go compressed');
});

test('damaged frames are refused: magic, type, flags, checksum, oversize', () => {
  const good = Buffer.concat(encodeFrame(FrameType.HEARTBEAT, Buffer.from('{}')));
  const cases: Array<[string, Buffer, RegExp]> = [
    ['magic', Buffer.concat([Buffer.from('XXXX'), good.subarray(4)]), /bad magic/],
    ['type', rawFrame(99, 0, Buffer.from('{}')), /unknown frame type/],
    ['flags', rawFrame(FrameType.HEARTBEAT, 6, Buffer.from('{}')), /unknown flags/],
    ['checksum', Buffer.concat([good.subarray(0, good.length - 1), Buffer.from('x')]), /checksum/],
    ['oversize', rawFrame(FrameType.RECORDS, 0, Buffer.alloc(0), FRAME_BODY_BYTES_MAX + 1), /announces/],
  ];
  for (const [what, bytes, pattern] of cases) assert.throws(() => new FrameDecoder().push(bytes), pattern, what);
});

test('compressed bodies: no declared size, too large a size, or a second hidden zstd frame (a bomb) are refused before inflating', async () => {
  const compressor = new Compressor();
  compressor.setParameters({ compressionLevel: 1 });
  const small = compressor.compress(Buffer.alloc(10));
  // 256 MiB of zeroes streamed: a frame that does not declare its size.
  const undeclared = await streamCompress(16, 16 * 1024 * 1024);
  const rssBefore = process.memoryUsage().rss;
  assert.throws(() => new FrameDecoder().push(rawFrame(FrameType.RECORDS, 1, undeclared)), /declare a content size/);
  assert.throws(() => new FrameDecoder().push(rawFrame(FrameType.RECORDS, 1, Buffer.concat([small, undeclared]))), /exactly one zstd frame/);
  assert.throws(() => new FrameDecoder().push(rawFrame(FrameType.RECORDS, 1, Buffer.concat([small, small]))), /exactly one zstd frame/);
  // A single frame declaring more than the limit.
  const huge = compressor.compress(Buffer.alloc(FRAME_BODY_BYTES_MAX + 1));
  assert.throws(() => new FrameDecoder().push(rawFrame(FrameType.RECORDS, 1, huge)), /declare a content size within the limit/);
  assert.throws(() => new FrameDecoder().push(rawFrame(FrameType.RECORDS, 1, Buffer.from('not zstd at all'))), /declare a content size/);
  assert.ok(process.memoryUsage().rss - rssBefore < 128 * 1024 * 1024, 'nothing was inflated');
});

test('RECORDS bodies: counts and lengths must add up exactly', () => {
  const records = [Buffer.alloc(56, 1), Buffer.alloc(100, 2)];
  assert.deepEqual(decodeRecords(recordsBody(records)), records);
  const body = recordsBody(records);
  assert.throws(() => decodeRecords(body.subarray(0, body.length - 1)), /truncated|impossible/);
  assert.throws(() => decodeRecords(Buffer.concat([body, Buffer.alloc(1)])), /bytes after/);
  const lying = Buffer.from(body);
  lying.writeUInt32LE(1_000_000, 0);
  assert.throws(() => decodeRecords(lying), /truncated|impossible/);
  const tiny = recordsBody([Buffer.alloc(10)]);
  assert.throws(() => decodeRecords(tiny), /impossible length/);
});
