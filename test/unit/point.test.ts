/** The point grammar: every accepted form, strict rejection with POINT_INVALID, formatting. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { describePoint, formatTimeUs, parsePoint, type PointSpec } from '../../src/core/point.js';

const NOW_MS = Date.UTC(2026, 10, 25, 12, 0, 0, 0); // 2026-11-25T12:00:00.000Z
const NOW_US = NOW_MS * 1000;

const utcUs = (iso: string): number => Date.parse(iso) * 1000; // only for well-formed test fixtures
const timeOf = (text: string): number => {
  const spec = parsePoint(text, NOW_MS);
  assert.equal(spec.kind, 'time', text);
  return (spec as Extract<PointSpec, { kind: 'time' }>).timeUs;
};
const rejects = (text: string, message?: RegExp): void => {
  assert.throws(
    () => parsePoint(text, NOW_MS),
    (err: unknown) => {
      assert.equal((err as { code?: string }).code, 'POINT_INVALID', `code for ${JSON.stringify(text)}`);
      assert.equal((err as Error).name, 'HindsightError');
      if (message) assert.match((err as Error).message, message, text);
      return true;
    },
    text,
  );
};

test('latest and now, case-insensitive and trimmed', () => {
  for (const text of ['latest', 'LATEST', 'Latest', 'now', 'NOW', '  latest\t', '\nnow ']) {
    assert.deepEqual(parsePoint(text, NOW_MS), { kind: 'latest' }, text);
  }
  rejects('latest now');
  rejects('late st');
});

test('seq:N accepts positive plain decimal safe integers', () => {
  assert.deepEqual(parsePoint('seq:1', NOW_MS), { kind: 'seq', seq: 1 });
  assert.deepEqual(parsePoint('seq:12', NOW_MS), { kind: 'seq', seq: 12 });
  assert.deepEqual(parsePoint('SEQ:42', NOW_MS), { kind: 'seq', seq: 42 });
  assert.deepEqual(parsePoint(' Seq:7 ', NOW_MS), { kind: 'seq', seq: 7 });
  assert.deepEqual(parsePoint(`seq:${Number.MAX_SAFE_INTEGER}`, NOW_MS), { kind: 'seq', seq: Number.MAX_SAFE_INTEGER });
});

test('seq:N rejects zero, signs, exponents, leading zeros and junk', () => {
  for (const bad of [
    'seq:0', 'seq:-1', 'seq:+1', 'seq:1e3', 'seq:01', 'seq:00', 'seq:', 'seq:1.0', 'seq:1.5', 'seq: 1',
    'seq:0x10', 'seq:abc', 'seq:Infinity', 'seq:1_000', `seq:${Number.MAX_SAFE_INTEGER + 1}`,
    'seq:99999999999999999999', 'seq::1', 'seq 1', 'seq=1',
  ]) {
    rejects(bad);
  }
  rejects('seq:0', /^invalid point "seq:0": .*positive whole number/);
});

test('bookmark:NAME keeps the name as typed', () => {
  assert.deepEqual(parsePoint('bookmark:before-upgrade', NOW_MS), { kind: 'bookmark', name: 'before-upgrade' });
  assert.deepEqual(parsePoint('BOOKMARK:Nightly_2026.11.25', NOW_MS), { kind: 'bookmark', name: 'Nightly_2026.11.25' });
  assert.deepEqual(parsePoint('bookmark:x', NOW_MS), { kind: 'bookmark', name: 'x' });
  assert.deepEqual(parsePoint('bookmark:0', NOW_MS), { kind: 'bookmark', name: '0' });
  const longest = 'a'.repeat(64);
  assert.deepEqual(parsePoint(`bookmark:${longest}`, NOW_MS), { kind: 'bookmark', name: longest });
});

test('bookmark:NAME rejects bad names', () => {
  for (const bad of [
    'bookmark:', 'bookmark:-x', 'bookmark:.x', 'bookmark:_x', `bookmark:${'a'.repeat(65)}`, 'bookmark:a b',
    'bookmark:a/b', 'bookmark:a:b', 'bookmark:é', 'bookmark: x', 'bookmark',
  ]) {
    rejects(bad);
  }
  rejects('bookmark:', /^invalid point "bookmark:": .*bookmark name/);
});

test('RFC 3339 times with Z', () => {
  assert.equal(timeOf('2026-11-25T10:15:03.250Z'), utcUs('2026-11-25T10:15:03.250Z'));
  assert.equal(timeOf('2026-11-25T10:15:03Z'), utcUs('2026-11-25T10:15:03.000Z'));
  assert.equal(timeOf('2026-11-25t10:15:03z'), utcUs('2026-11-25T10:15:03.000Z'));
  assert.equal(timeOf('2026-11-25 10:15:03Z'), utcUs('2026-11-25T10:15:03.000Z'));
  assert.equal(timeOf('  2026-11-25T10:15:03Z  '), utcUs('2026-11-25T10:15:03.000Z'));
  assert.equal(timeOf('1970-01-01T00:00:00Z'), 0);
  assert.equal(timeOf('1970-01-01T00:00:00.000001Z'), 1);
  assert.equal(timeOf('2026-12-31T23:59:59.999999Z'), utcUs('2027-01-01T00:00:00Z') - 1);
});

test('fractions keep microseconds and truncate beyond', () => {
  const base = utcUs('2026-11-25T10:15:03Z');
  assert.equal(timeOf('2026-11-25T10:15:03.2Z'), base + 200_000);
  assert.equal(timeOf('2026-11-25T10:15:03.25Z'), base + 250_000);
  assert.equal(timeOf('2026-11-25T10:15:03.123456Z'), base + 123_456);
  assert.equal(timeOf('2026-11-25T10:15:03.1234567Z'), base + 123_456);
  assert.equal(timeOf('2026-11-25T10:15:03.123456789Z'), base + 123_456);
  assert.equal(timeOf('2026-11-25T10:15:03.999999999Z'), base + 999_999);
  assert.equal(timeOf('2026-11-25T10:15:03.000000001Z'), base);
  rejects('2026-11-25T10:15:03.1234567890Z', /9 fraction digits/);
  rejects('2026-11-25T10:15:03.Z');
  rejects('2026-11-25T10:15:03,5Z');
});

test('offsets convert to UTC', () => {
  assert.equal(timeOf('2026-11-25T15:45:03.250+05:30'), utcUs('2026-11-25T10:15:03.250Z'));
  assert.equal(timeOf('2026-11-25T02:15:03-08:00'), utcUs('2026-11-25T10:15:03Z'));
  assert.equal(timeOf('2026-11-24T23:15:03-11:00'), utcUs('2026-11-25T10:15:03Z'));
  assert.equal(timeOf('2026-11-25T10:15:03+00:00'), utcUs('2026-11-25T10:15:03Z'));
  assert.equal(timeOf('2026-11-25T10:15:03-00:00'), utcUs('2026-11-25T10:15:03Z'));
  assert.equal(timeOf('2027-01-01T01:00:00+02:00'), utcUs('2026-12-31T23:00:00Z'));
  assert.equal(timeOf('1969-12-31T19:00:00-05:00'), 0);
  for (const bad of [
    '2026-11-25T10:15:03+24:00', '2026-11-25T10:15:03+05:60', '2026-11-25T10:15:03+0530', '2026-11-25T10:15:03+05',
    '2026-11-25T10:15:03 +05:30', '2026-11-25T10:15:03UTC', '2026-11-25T10:15:03GMT',
  ]) {
    rejects(bad);
  }
});

test('a time without a zone is rejected, never guessed', () => {
  rejects('2026-11-25T10:15:03', /^invalid point "2026-11-25T10:15:03": .*'Z'.*offset/);
  rejects('2026-11-25 10:15:03.250', /'Z'/);
});

test('calendar ranges are strict', () => {
  assert.equal(timeOf('2028-02-29T00:00:00Z'), utcUs('2028-02-29T00:00:00Z'));
  assert.equal(timeOf('2000-02-29T12:00:00Z'), utcUs('2000-02-29T12:00:00Z'));
  assert.equal(timeOf('2026-04-30T00:00:00Z'), utcUs('2026-04-30T00:00:00Z'));
  assert.equal(timeOf('2026-11-25T23:59:59Z'), utcUs('2026-11-25T23:59:59Z'));
  for (const bad of [
    '2026-02-29T00:00:00Z', '2100-02-29T00:00:00Z', '2026-02-30T00:00:00Z', '2026-04-31T00:00:00Z',
    '2026-00-10T00:00:00Z', '2026-13-01T00:00:00Z', '2026-11-00T00:00:00Z', '2026-11-32T00:00:00Z',
    '2026-11-25T24:00:00Z', '2026-11-25T10:60:00Z', '2026-11-25T10:15:61Z', '2026-11-25T10:15:99Z',
  ]) {
    rejects(bad);
  }
});

test('leap seconds are rejected with a clear message', () => {
  rejects('2026-12-31T23:59:60Z', /leap second/);
  rejects('2016-12-31T23:59:60.5Z', /leap second/);
});

test('malformed date-times are rejected', () => {
  for (const bad of [
    '2026-11-25', '2026-11-25T10:15Z', '2026-1-25T10:15:03Z', '26-11-25T10:15:03Z', '2026-11-25T1:15:03Z',
    '2026-11-25  10:15:03Z', '2026-11-25_10:15:03Z', '+2026-11-25T10:15:03Z', '2026-11-25T10:15:03Zjunk',
    '12026-11-25T10:15:03Z', '２０２６-11-25T10:15:03Z',
  ]) {
    rejects(bad);
  }
});

test('times before 1970 or beyond what a number holds exactly are rejected', () => {
  rejects('1969-12-31T23:59:59.999999Z', /before 1970/);
  rejects('1969-12-31T19:00:00-04:59', /before 1970/);
  rejects('1900-01-01T00:00:00Z', /before 1970/);
  rejects('0070-01-01T00:00:00Z', /before 1970/);
  rejects('0000-01-01T00:00:00Z', /before 1970/);
  rejects('9999-12-31T23:59:59Z', /after/);
  rejects('2255-06-05T23:47:34.740992Z', /after/);
  assert.equal(timeOf('2255-06-05T23:47:34.740991Z'), Number.MAX_SAFE_INTEGER);
  assert.equal(timeOf('2200-01-01T00:00:00Z'), utcUs('2200-01-01T00:00:00Z'));
});

test('relative times subtract from now', () => {
  assert.equal(timeOf('-5m'), NOW_US - 5 * 60e6);
  assert.equal(timeOf('-90s'), NOW_US - 90e6);
  assert.equal(timeOf('-2h'), NOW_US - 2 * 3600e6);
  assert.equal(timeOf('-250ms'), NOW_US - 250e3);
  assert.equal(timeOf('-3d'), NOW_US - 3 * 86400e6);
  assert.equal(timeOf('-1w'), NOW_US - 7 * 86400e6);
  assert.equal(timeOf('-1h30m'), NOW_US - 90 * 60e6);
  assert.equal(timeOf('-30m1h'), NOW_US - 90 * 60e6);
  assert.equal(timeOf('-1w2d3h4m5s6ms'), NOW_US - (9 * 86400e6 + 3 * 3600e6 + 4 * 60e6 + 5e6 + 6e3));
  assert.equal(timeOf('-1m500ms'), NOW_US - 60.5e6);
  assert.equal(timeOf('-1ms1m'), NOW_US - 60e6 - 1e3);
  assert.equal(timeOf(' -5m '), NOW_US - 5 * 60e6);
  assert.equal(timeOf('-0s'), NOW_US);
  assert.equal(timeOf('-0m0s'), NOW_US);
  assert.equal(timeOf('-05m'), NOW_US - 5 * 60e6);
});

test('relative times reject duplicates, decimals, bad units and overflow', () => {
  rejects('-5m5m', /'m'.*more than once/);
  rejects('-1h2m3h', /'h'.*more than once/);
  rejects('-1ms2ms', /'ms'.*more than once/);
  rejects('-1.5h', /whole numbers/);
  rejects('-0.5s', /whole numbers/);
  for (const bad of [
    '-', '-5', '-m', '-5x', '-5M', '-5H', '-5 m', '-5m 3s', '--5m', '-5m-3s', '+5m', '5m', '-5y', '-5mo',
    '-5min', '-5sec', '-1h30', '-5us', '-1e3s', '-99999999999999999999w',
  ]) {
    rejects(bad);
  }
  rejects('-3000w', /before 1970/);
  rejects('-99999999999999999999w', /too long/);
  assert.throws(() => parsePoint('-1ms', 0), { code: 'POINT_INVALID', message: /before 1970/ });
  assert.deepEqual(parsePoint('-0s', 0), { kind: 'time', timeUs: 0 });
});

test('anything else is rejected with the list of accepted forms', () => {
  const forms =
    'use an RFC 3339 time with a zone (2026-11-25T10:15:03.250Z), a relative time (-5m, -90s, -2h), seq:N, bookmark:NAME or latest';
  assert.throws(() => parsePoint('yesterday', NOW_MS), {
    name: 'HindsightError',
    code: 'POINT_INVALID',
    message: `invalid point "yesterday": ${forms}`,
  });
  for (const bad of ['', '   ', 'yesterday', '12', '1732530000', 'latest!', 'seq', 'today', 'tag:x', '@-5m']) {
    rejects(bad, /^invalid point ".*": use an RFC 3339 time/);
  }
});

test('empty and over-long inputs are rejected', () => {
  rejects('', /^invalid point "": /);
  rejects(' \t\n ', /^invalid point "": /);
  rejects(`bookmark:${'a'.repeat(300)}`, /at most 256 characters/);
  rejects(' '.repeat(251) + 'latest', /at most 256 characters/);
  assert.deepEqual(parsePoint(' '.repeat(250) + 'latest', NOW_MS), { kind: 'latest' }); // exactly 256 is fine
});

test('messages quote the input safely and briefly', () => {
  assert.throws(() => parsePoint('say "hi"\n', NOW_MS), (err: Error) => err.message.startsWith('invalid point "say \\"hi\\"": '));
  assert.throws(() => parsePoint('x'.repeat(200), NOW_MS), (err: Error) => err.message.length < 300 && err.message.includes('…'));
});

test('formatTimeUs is RFC 3339 UTC with three fraction digits, floored to ms', () => {
  assert.equal(formatTimeUs(utcUs('2026-11-25T10:15:03.250Z')), '2026-11-25T10:15:03.250Z');
  assert.equal(formatTimeUs(utcUs('2026-11-25T10:15:03.250Z') + 999), '2026-11-25T10:15:03.250Z');
  assert.equal(formatTimeUs(0), '1970-01-01T00:00:00.000Z');
  assert.equal(formatTimeUs(999), '1970-01-01T00:00:00.000Z');
  assert.equal(formatTimeUs(1000), '1970-01-01T00:00:00.001Z');
  assert.equal(formatTimeUs(Number.MAX_SAFE_INTEGER), '2255-06-05T23:47:34.740Z');
});

test('parse(format(x)) is x floored to the millisecond', () => {
  let seed = 12345;
  const next = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const samples = [0, 1, 999, 1000, 1001, NOW_US, NOW_US + 123_456, Number.MAX_SAFE_INTEGER];
  for (let i = 0; i < 2000; i += 1) samples.push(Math.floor(next() * next() * Number.MAX_SAFE_INTEGER));
  for (const x of samples) {
    const text = formatTimeUs(x);
    assert.match(text, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.equal(timeOf(text), Math.floor(x / 1000) * 1000, `${x} -> ${text}`);
  }
});

test('describePoint', () => {
  assert.equal(describePoint({ kind: 'latest' }), 'latest');
  assert.equal(describePoint({ kind: 'seq', seq: 12 }), 'seq:12');
  assert.equal(describePoint({ kind: 'bookmark', name: 'x' }), 'bookmark:x');
  assert.equal(describePoint({ kind: 'time', timeUs: utcUs('2026-11-25T10:15:03.250Z') + 7 }), '2026-11-25T10:15:03.250Z');
  for (const text of ['latest', 'seq:12', 'bookmark:before-upgrade', '2026-11-25T10:15:03.250Z']) {
    assert.equal(describePoint(parsePoint(text, NOW_MS)), text, 'describe round-trips canonical forms');
  }
  assert.equal(describePoint(parsePoint('now', NOW_MS)), 'latest');
  assert.equal(describePoint(parsePoint('-5m', NOW_MS)), '2026-11-25T11:55:00.000Z');
  assert.equal(describePoint(parsePoint('2026-11-25T15:45:03.250+05:30', NOW_MS)), '2026-11-25T10:15:03.250Z');
});
