import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BlockDevice } from '../../src/core/index.js';
import type { OptionMessage } from '../../src/nbd/decoder.js';
import { Negotiation } from '../../src/nbd/negotiation.js';
import type { ExportCatalog, NbdExport } from '../../src/nbd/negotiation.js';
import { goData, metaContextData } from '../helpers/frames.js';

function fakeDevice(name: string, sizeBytes: number, readOnly = false): BlockDevice {
  const notUsed = async () => { throw new Error('not used in negotiation'); };
  return {
    name, sizeBytes,
    capabilities: { readOnly, flush: true, fua: true, trim: true, writeZeroes: true, fastZero: true, cache: true, multiConn: true },
    read: notUsed, write: notUsed, flush: notUsed, trim: notUsed, writeZeroes: notUsed, blockStatus: notUsed, cache: notUsed,
  };
}

function catalog(): ExportCatalog {
  const exports: NbdExport[] = [
    { name: 'disk0', description: 'first', device: fakeDevice('disk0', 1 << 30) },
    { name: 'ro', description: '', device: fakeDevice('ro', 1 << 20, true) },
  ];
  return { list: () => exports, find: (name) => exports.find((entry) => entry.name === name) };
}

function opt(option: number, data: Buffer = Buffer.alloc(0)): OptionMessage {
  return { kind: 'option', option, lengthBytes: data.length, data };
}

interface ParsedReply { option: number; type: number; data: Buffer }

function parse(replies: Buffer[]): ParsedReply[] {
  return replies.map((reply) => {
    assert.equal(reply.readBigUInt64BE(0), 0x3e889045565a9n);
    assert.equal(reply.readUInt32BE(16), reply.length - 20);
    return { option: reply.readUInt32BE(8), type: reply.readUInt32BE(12), data: reply.subarray(20) };
  });
}

function started(): Negotiation {
  const negotiation = new Negotiation(catalog());
  assert.equal(negotiation.acceptClientFlags(3), null);
  return negotiation;
}

test('LIST names every export then ACKs', () => {
  const step = started().handle(opt(3));
  const replies = parse(step.replies);
  assert.equal(step.kind, 'continue');
  assert.deepEqual(replies.map((r) => r.type), [2, 2, 1]);
  const first = replies[0].data;
  assert.equal(first.toString('utf8', 4, 4 + first.readUInt32BE(0)), 'disk0');
  assert.equal(first.toString('utf8', 4 + first.readUInt32BE(0)), 'first');
});

test('INFO describes the export without leaving the handshake; GO enters transmission', () => {
  const negotiation = started();
  const info = negotiation.handle(opt(6, goData('disk0', [1, 2])));
  assert.equal(info.kind, 'continue');
  const replies = parse(info.replies);
  assert.deepEqual(replies.map((r) => [r.type, r.data.length > 0 ? r.data.readUInt16BE(0) : -1]), [[3, 0], [3, 1], [3, 2], [3, 3], [1, -1]]);
  const exportInfo = replies[0].data;
  assert.equal(Number(exportInfo.readBigUInt64BE(2)), 1 << 30);
  const flags = exportInfo.readUInt16BE(10);
  assert.equal(flags & 1, 1, 'HAS_FLAGS');
  assert.equal(flags & 2, 0, 'writable');
  assert.equal(flags & (1 << 7), 0, 'no DF without structured replies');
  assert.ok(flags & (1 << 8), 'CAN_MULTI_CONN');
  const blockSize = replies[3].data;
  assert.deepEqual([blockSize.readUInt32BE(2), blockSize.readUInt32BE(6), blockSize.readUInt32BE(10)], [1, 4096, 32 * 1024 * 1024]);
  const go = negotiation.handle(opt(7, goData('disk0')));
  assert.equal(go.kind, 'transmission');
  assert.ok(go.kind === 'transmission' && !go.agreement.structuredReplies && !go.agreement.baseAllocation);
});

test('read-only exports advertise READ_ONLY and no write-side commands', () => {
  const go = started().handle(opt(7, goData('ro')));
  assert.ok(go.kind === 'transmission');
  const flags = go.agreement.transmissionFlags;
  assert.ok(flags & 2, 'READ_ONLY');
  for (const bit of [3, 5, 6, 11]) assert.equal(flags & (1 << bit), 0, `bit ${bit} clear`);
});

test('structured replies and base:allocation are agreed per export', () => {
  const negotiation = started();
  assert.equal(parse(negotiation.handle(opt(8)).replies)[0].type, 1);
  const list = parse(negotiation.handle(opt(9, metaContextData('disk0', []))).replies);
  assert.deepEqual(list.map((r) => r.type), [4, 1]);
  assert.equal(list[0].data.toString('utf8', 4), 'base:allocation');
  const set = parse(negotiation.handle(opt(10, metaContextData('disk0', ['base:allocation', 'qemu:dirty-bitmap:x']))).replies);
  assert.deepEqual(set.map((r) => r.type), [4, 1]);
  assert.notEqual(set[0].data.readUInt32BE(0), 0, 'a non-zero context id');
  const goOther = started();
  goOther.handle(opt(8));
  goOther.handle(opt(10, metaContextData('ro', ['base:allocation'])));
  const other = goOther.handle(opt(7, goData('disk0')));
  assert.ok(other.kind === 'transmission' && !other.agreement.baseAllocation, 'context set for another export does not carry over');
  const go = negotiation.handle(opt(7, goData('disk0')));
  assert.ok(go.kind === 'transmission' && go.agreement.structuredReplies && go.agreement.baseAllocation);
  assert.ok(go.agreement.transmissionFlags & (1 << 7), 'DF offered with structured replies');
});

test('unmatched meta context queries select nothing', () => {
  const negotiation = started();
  negotiation.handle(opt(8));
  const set = parse(negotiation.handle(opt(10, metaContextData('disk0', ['qemu:allocation-depth']))).replies);
  assert.deepEqual(set.map((r) => r.type), [1]);
  const go = negotiation.handle(opt(7, goData('disk0')));
  assert.ok(go.kind === 'transmission' && !go.agreement.baseAllocation);
});

test('EXPORT_NAME replies size and flags, with or without the 124 zero bytes', () => {
  const withZeroes = new Negotiation(catalog());
  withZeroes.acceptClientFlags(1);
  const a = withZeroes.handle(opt(1, Buffer.from('disk0')));
  assert.ok(a.kind === 'transmission');
  assert.equal(a.replies[0].length, 134);
  const b = started().handle(opt(1, Buffer.from('disk0')));
  assert.equal(b.replies[0].length, 10);
  assert.equal(Number(b.replies[0].readBigUInt64BE(0)), 1 << 30);
  assert.equal(started().handle(opt(1, Buffer.from('nope'))).kind, 'close');
});

test('ABORT is acknowledged then closes; an endless option stream is cut off', () => {
  const abort = started().handle(opt(2));
  assert.equal(abort.kind, 'close');
  assert.equal(parse(abort.replies)[0].type, 1);
  const negotiation = started();
  let last = negotiation.handle(opt(3));
  for (let i = 0; i < 1000 && last.kind === 'continue'; i += 1) last = negotiation.handle(opt(3));
  assert.equal(last.kind, 'close');
});

test('client flags: unknown bits or no fixed newstyle are refused', () => {
  assert.notEqual(new Negotiation(catalog()).acceptClientFlags(4), null);
  assert.notEqual(new Negotiation(catalog()).acceptClientFlags(0), null);
  assert.equal(new Negotiation(catalog()).acceptClientFlags(1), null);
});

test('a failed SET_META_CONTEXT drops the earlier selection', () => {
  for (const failing of [
    (n: Negotiation) => n.handle(opt(10, Buffer.concat([metaContextData('disk0', ['base:allocation']), Buffer.from([0])]))),
    (n: Negotiation) => n.handle(opt(10, metaContextData('missing', ['base:allocation']))),
    (n: Negotiation) => n.handle({ kind: 'option', option: 10, lengthBytes: 1 << 20, data: null }),
  ]) {
    const negotiation = started();
    negotiation.handle(opt(8));
    negotiation.handle(opt(10, metaContextData('disk0', ['base:allocation'])));
    const refused = parse(failing(negotiation).replies);
    assert.ok(refused[0].type >= 0x80000000, 'the bad SET is refused');
    const go = negotiation.handle(opt(7, goData('disk0')));
    assert.ok(go.kind === 'transmission' && !go.agreement.baseAllocation);
  }
});

test('ABORT is acknowledged even with oversize data', () => {
  const step = started().handle({ kind: 'option', option: 2, lengthBytes: 1 << 20, data: null });
  assert.equal(step.kind, 'close');
  assert.equal(parse(step.replies)[0].type, 1);
});

test('too many meta context queries is ERR_TOO_BIG', () => {
  const negotiation = started();
  negotiation.handle(opt(8));
  const queries = Array.from({ length: 100 }, (_, i) => `base:q${i}`);
  assert.equal(parse(negotiation.handle(opt(9, metaContextData('disk0', queries))).replies)[0].type, 0x80000009);
});

test('STARTTLS: unsupported without TLS; under require every other option is ERR_TLS_REQD and EXPORT_NAME hangs up; ACK once, then ERR_INVALID', () => {
  const STARTTLS = 5;
  const ERR_UNSUP = 0x80000001;
  const ERR_INVALID = 0x80000003;
  const ERR_TLS_REQD = 0x80000005;
  assert.equal(parse(started().handle(opt(STARTTLS)).replies)[0].type, ERR_UNSUP, 'no TLS configured: unsupported');

  const forced = new Negotiation(catalog(), 'require');
  assert.equal(forced.acceptClientFlags(3), null);
  for (const [option, data] of [[3, Buffer.alloc(0)], [7, goData('disk0')], [6, goData('disk0')], [8, Buffer.alloc(0)]] as const) {
    const step = forced.handle(opt(option, data));
    assert.equal(step.kind, 'continue');
    assert.deepEqual(parse(step.replies).map((r) => r.type), [ERR_TLS_REQD], `option ${option} before TLS`);
  }
  assert.equal(forced.handle(opt(STARTTLS, Buffer.from([1]))).kind, 'continue', 'STARTTLS with data is refused, not started');
  const start = forced.handle(opt(STARTTLS));
  assert.equal(start.kind, 'starttls');
  assert.deepEqual(parse(start.replies).map((r) => r.type), [1], 'ACK');
  forced.tlsStarted();
  assert.deepEqual(parse(forced.handle(opt(STARTTLS)).replies).map((r) => r.type), [ERR_INVALID], 'a second STARTTLS');
  assert.equal(forced.handle(opt(7, goData('disk0'))).kind, 'transmission', 'after TLS, GO works');

  const plainExportName = new Negotiation(catalog(), 'require');
  assert.equal(plainExportName.acceptClientFlags(3), null);
  assert.equal(plainExportName.handle(opt(1, Buffer.from('disk0'))).kind, 'close', 'EXPORT_NAME cannot be refused: the session ends');
  const abort = new Negotiation(catalog(), 'require');
  assert.equal(abort.acceptClientFlags(3), null);
  assert.equal(abort.handle(opt(2)).kind, 'close', 'ABORT is allowed before TLS');
});

test('export access: a denied export is ERR_POLICY for INFO/GO and meta contexts, left out of LIST, and EXPORT_NAME hangs up', () => {
  const ERR_POLICY = 0x80000002;
  const access = { allows: (identity: string | null, name: string) => identity === 'alice' && name === 'disk0' };
  const negotiation = new Negotiation(catalog(), 'on', access);
  assert.equal(negotiation.acceptClientFlags(3), null);
  const anonymous = negotiation.handle(opt(7, goData('disk0')));
  assert.deepEqual(parse(anonymous.replies).map((r) => r.type), [ERR_POLICY], 'no identity: refused');
  assert.equal(anonymous.kind === 'continue' && anonymous.refused !== undefined, true, 'the refusal is flagged for the log');
  negotiation.tlsStarted('alice');
  const listed = parse(negotiation.handle(opt(3)).replies);
  assert.deepEqual(listed.map((r) => r.type), [2, 1], 'LIST shows only disk0');
  assert.deepEqual(parse(negotiation.handle(opt(6, goData('ro'))).replies).map((r) => r.type), [ERR_POLICY]);
  assert.equal(negotiation.handle(opt(8)).kind, 'continue');
  assert.deepEqual(parse(negotiation.handle(opt(10, metaContextData('ro', ['base:allocation']))).replies).map((r) => r.type), [ERR_POLICY]);
  assert.equal(negotiation.handle(opt(7, goData('disk0'))).kind, 'transmission', 'alice opens disk0');
  const other = new Negotiation(catalog(), 'on', access);
  assert.equal(other.acceptClientFlags(3), null);
  other.tlsStarted('alice');
  assert.equal(other.handle(opt(1, Buffer.from('ro'))).kind, 'close');
});
