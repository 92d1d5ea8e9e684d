import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientDecoder } from '../../src/nbd/decoder.js';
import type { ClientMessage } from '../../src/nbd/decoder.js';
import { clientFlags, goData, option, request } from '../helpers/frames.js';

const LIMITS = { optionBytesMax: 1024, payloadBytesMax: 64 * 1024 };

/** A whole session's worth of client bytes: flags, options, then requests incl. writes. */
function sampleStream(): { optionPart: Buffer; transmissionPart: Buffer } {
  const optionPart = Buffer.concat([clientFlags(3), option(8), option(7, goData('disk0', [1, 3]))]);
  const payload = Buffer.alloc(5000, 0x5a);
  const transmissionPart = Buffer.concat([
    request({ type: 0, cookie: 7n, offset: 4096, length: 512 }),
    request({ type: 1, flags: 1, cookie: 8n, offset: 2 ** 40, length: payload.length }, payload),
    request({ type: 3, cookie: 0xffffffffffffffffn }),
    request({ type: 6, flags: 0x12, cookie: 9n, offset: 0, length: 1 << 20 }),
  ]);
  return { optionPart, transmissionPart };
}

/** Feeds the stream in the given pieces, switching to transmission after the GO option. */
function decodeInPieces(pieces: Buffer[]): ClientMessage[] {
  const decoder = new ClientDecoder(LIMITS);
  const messages: ClientMessage[] = [];
  for (const piece of pieces) {
    decoder.push(piece);
    for (let message = decoder.next(); message !== null; message = decoder.next()) {
      messages.push(message);
      if (message.kind === 'option' && message.option === 7) decoder.startTransmission();
    }
  }
  return messages;
}

function normalise(messages: ClientMessage[]): unknown[] {
  return messages.map((message) => {
    if (message.kind === 'request') return { ...message, payload: message.payload ? Buffer.from(message.payload).toString('hex') : null };
    if (message.kind === 'option') return { ...message, data: message.data ? Buffer.from(message.data).toString('hex') : null };
    return message;
  });
}

test('decodes a whole stream into the expected messages', () => {
  const { optionPart, transmissionPart } = sampleStream();
  const messages = decodeInPieces([Buffer.concat([optionPart, transmissionPart])]);
  assert.deepEqual(messages.map((m) => m.kind), ['clientFlags', 'option', 'option', 'request', 'request', 'request', 'request']);
  const write = messages[4];
  assert.ok(write.kind === 'request');
  assert.equal(write.type, 1);
  assert.equal(write.flags, 1);
  assert.equal(write.cookie, 8n);
  assert.equal(write.offsetBytes, 2 ** 40);
  assert.equal(write.payload?.length, 5000);
  assert.ok(write.payload?.every((byte) => byte === 0x5a));
  const flush = messages[5];
  assert.ok(flush.kind === 'request');
  assert.equal(flush.cookie, 0xffffffffffffffffn);
});

test('a stream split at every byte offset decodes identically', () => {
  const { optionPart, transmissionPart } = sampleStream();
  const whole = Buffer.concat([optionPart, transmissionPart]);
  const expected = normalise(decodeInPieces([whole]));
  for (let split = 1; split < whole.length; split += 1) {
    const got = normalise(decodeInPieces([whole.subarray(0, split), whole.subarray(split)]));
    assert.deepEqual(got, expected, `split at ${split}`);
  }
});

test('a stream fed one byte at a time decodes identically', () => {
  const { optionPart, transmissionPart } = sampleStream();
  const whole = Buffer.concat([optionPart, transmissionPart]);
  const pieces = [...whole].map((byte) => Buffer.from([byte]));
  assert.deepEqual(normalise(decodeInPieces(pieces)), normalise(decodeInPieces([whole])));
});

test('an oversize option is skipped without buffering and the stream stays in sync', () => {
  const huge = Buffer.alloc(5000, 1);
  const bytes = Buffer.concat([clientFlags(), option(3, huge), option(8)]);
  for (const pieces of [[bytes], [...bytes].map((b) => Buffer.from([b]))]) {
    const decoder = new ClientDecoder(LIMITS);
    const messages: ClientMessage[] = [];
    for (const piece of pieces) {
      decoder.push(piece);
      assert.ok(decoder.bufferedByteCount <= LIMITS.optionBytesMax + 16 + piece.length, 'buffer stays bounded');
      for (let m = decoder.next(); m !== null; m = decoder.next()) messages.push(m);
    }
    assert.deepEqual(messages.map((m) => (m.kind === 'option' ? [m.option, m.data === null] : m.kind)), ['clientFlags', [3, true], [8, false]]);
  }
});

test('an oversize write payload is skipped, flagged, and the next request still decodes', () => {
  const decoder = new ClientDecoder(LIMITS);
  decoder.push(Buffer.concat([clientFlags(), option(7, goData('x'))]));
  decoder.next();
  decoder.next();
  decoder.startTransmission();
  const big = LIMITS.payloadBytesMax + 1;
  decoder.push(request({ type: 1, cookie: 5n, length: big }));
  // The request surfaces only once its payload is consumed, so its (error) reply can never
  // overtake the payload the client is still sending.
  let header = decoder.next();
  for (let sent = 0; sent < big; sent += 4096) {
    assert.equal(header, null, 'not before the whole payload is consumed');
    decoder.push(Buffer.alloc(Math.min(4096, big - sent)));
    header = decoder.next();
    assert.ok(decoder.bufferedByteCount === 0, 'skipped bytes are not kept');
  }
  assert.ok(header?.kind === 'request' && header.payloadSkipped && header.payload === null && header.cookie === 5n);
  decoder.push(request({ type: 3, cookie: 6n }));
  const next = decoder.next();
  assert.ok(next?.kind === 'request' && next.type === 3 && next.cookie === 6n);
});

test('a bad option magic or request magic is a protocol error and nothing more decodes', () => {
  const badOption = new ClientDecoder(LIMITS);
  badOption.push(Buffer.concat([clientFlags(), Buffer.alloc(16, 0xee)]));
  assert.equal(badOption.next()?.kind, 'clientFlags');
  assert.equal(badOption.next()?.kind, 'protocolError');
  badOption.push(option(8));
  assert.equal(badOption.next(), null);

  const badRequest = new ClientDecoder(LIMITS);
  badRequest.push(Buffer.concat([clientFlags(), option(7, goData('x'))]));
  badRequest.next();
  badRequest.next();
  badRequest.startTransmission();
  badRequest.push(request({ type: 0, length: 512, magic: 0x12345678 }));
  assert.equal(badRequest.next()?.kind, 'protocolError');
});

test('offsets above 2^53 still compare larger than any export', () => {
  const decoder = new ClientDecoder(LIMITS);
  decoder.push(Buffer.concat([clientFlags(), option(7, goData('x'))]));
  decoder.next();
  decoder.next();
  decoder.startTransmission();
  decoder.push(request({ type: 0, offset: 0xfffffffffffffe00n, length: 512 }));
  const message = decoder.next();
  assert.ok(message?.kind === 'request');
  assert.ok(message.offsetBytes > 2 ** 60);
});
