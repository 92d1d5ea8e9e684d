/**
 * The "point" grammar: how a user names an instant in a volume's history, after `--at` on the
 * command line or in an API body. Pure parsing, no I/O. Surrounding whitespace is ignored and
 * keywords are case-insensitive.
 *
 *   latest | now                      the newest write
 *   seq:N                             a journal sequence number, N >= 1, plain decimal digits
 *   bookmark:NAME                     NAME = [A-Za-z0-9][A-Za-z0-9._-]{0,63} (case kept)
 *   2026-11-25T10:15:03.250Z          RFC 3339 with a mandatory zone: 'Z' or ±HH:MM; 'T' may be
 *   2026-11-25 10:15:03+05:30         't' or one space; 1–9 fraction digits, kept to the µs
 *   -5m  -90s  -2h  -1h30m  -250ms    before now: whole numbers with units ms s m h d w
 *                                     (lowercase, each unit at most once, any order)
 *
 * A time without a zone is rejected rather than read in some local zone, and so is second 60:
 * Hindsight does not represent leap seconds. Times resolve to µs since the Unix epoch and must
 * lie between 1970-01-01T00:00:00Z and the last µs a JavaScript number holds exactly
 * (2255-06-05T23:47:34.740991Z), well short of year 9999. Every rejection is POINT_INVALID.
 */
import { HindsightError } from './errors.js';

export type PointSpec =
  | { kind: 'latest' }
  | { kind: 'seq'; seq: number }
  | { kind: 'bookmark'; name: string }
  | { kind: 'time'; timeUs: number }; // absolute, µs since the Unix epoch

const MAX_INPUT_CHARS = 256;
const FORMS =
  'use an RFC 3339 time with a zone (2026-11-25T10:15:03.250Z), a relative time (-5m, -90s, -2h), seq:N, bookmark:NAME or latest';
const BOOKMARK_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})?$/;
const RELATIVE = /^-(?:\d+(?:ms|s|m|h|d|w))+$/;
const RELATIVE_GROUP = /(\d+)(ms|s|m|h|d|w)/g;
const UNIT_US: Record<string, number> = {
  ms: 1_000,
  s: 1_000_000,
  m: 60_000_000,
  h: 3_600_000_000,
  d: 86_400_000_000,
  w: 604_800_000_000,
};

/** Parses a point; `nowMs` (ms since the epoch, e.g. Date.now()) anchors relative times. */
export function parsePoint(text: string, nowMs: number): PointSpec {
  if (typeof text !== 'string') throw invalid(String(text), FORMS);
  if (text.length > MAX_INPUT_CHARS) throw invalid(text, `a point is at most ${MAX_INPUT_CHARS} characters`);
  const input = text.trim();
  const lower = input.toLowerCase();
  if (lower === 'latest' || lower === 'now') return { kind: 'latest' };
  if (lower.startsWith('seq:')) return parseSeq(input, input.slice(4));
  if (lower.startsWith('bookmark:')) return parseBookmark(input, input.slice(9));
  if (/^-\d/.test(input)) return { kind: 'time', timeUs: parseRelative(input, nowMs) };
  if (/^\d{4}-\d{2}-\d{2}/.test(input)) return { kind: 'time', timeUs: parseDateTime(input) };
  throw invalid(input, FORMS);
}

/** RFC 3339 in UTC with exactly three fraction digits (floored to the millisecond). */
export function formatTimeUs(timeUs: number): string {
  if (!Number.isFinite(timeUs)) throw new HindsightError('INVALID_ARGUMENT', `cannot format time ${timeUs}`);
  return new Date(Math.floor(timeUs / 1000)).toISOString();
}

/** A point as messages show it: 'latest', 'seq:12', 'bookmark:x' or an RFC 3339 time. */
export function describePoint(spec: PointSpec): string {
  switch (spec.kind) {
    case 'latest':
      return 'latest';
    case 'seq':
      return `seq:${spec.seq}`;
    case 'bookmark':
      return `bookmark:${spec.name}`;
    case 'time':
      return formatTimeUs(spec.timeUs);
  }
}

function parseSeq(input: string, digits: string): PointSpec {
  const seq = Number(digits);
  if (!/^[1-9]\d*$/.test(digits) || !Number.isSafeInteger(seq)) {
    throw invalid(input, `a sequence number is a positive whole number in plain digits, e.g. seq:42`);
  }
  return { kind: 'seq', seq };
}

function parseBookmark(input: string, name: string): PointSpec {
  if (!BOOKMARK_NAME.test(name)) {
    throw invalid(
      input,
      `a bookmark name is 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  return { kind: 'bookmark', name };
}

function parseRelative(input: string, nowMs: number): number {
  if (input.includes('.')) {
    throw invalid(input, `relative times take whole numbers only; write e.g. -1h30m instead of -1.5h`);
  }
  if (!RELATIVE.test(input)) {
    throw invalid(input, `a relative time is '-' then whole numbers with units ms, s, m, h, d or w, e.g. -5m, -1h30m`);
  }
  const seen = new Set<string>();
  let totalUs = 0;
  for (const [, amount, unit] of input.matchAll(RELATIVE_GROUP)) {
    if (seen.has(unit)) throw invalid(input, `the unit '${unit}' appears more than once`);
    seen.add(unit);
    totalUs += Number(amount) * UNIT_US[unit];
  }
  if (!Number.isSafeInteger(totalUs)) throw invalid(input, 'that duration is too long');
  return checkRange(input, Math.floor(nowMs * 1000) - totalUs);
}

function parseDateTime(input: string): number {
  const m = DATE_TIME.exec(input);
  if (!m) {
    throw invalid(input, `expected an RFC 3339 time such as 2026-11-25T10:15:03.250Z or 2026-11-25T10:15:03+05:30`);
  }
  const [, y, mo, d, h, mi, s, fraction, zone] = m;
  const [year, month, day, hour, minute, second] = [y, mo, d, h, mi, s].map(Number);
  if (zone === undefined) {
    throw invalid(input, `add 'Z' for UTC or an offset such as +01:00; a time without a zone is ambiguous`);
  }
  if (fraction !== undefined && fraction.length > 9) throw invalid(input, 'at most 9 fraction digits');
  if (month < 1 || month > 12) throw invalid(input, `month ${mo} is not 01–12`);
  if (day < 1 || day > daysInMonth(year, month)) throw invalid(input, `day ${d} does not exist in ${y}-${mo}`);
  if (hour > 23) throw invalid(input, `hour ${h} is not 00–23`);
  if (minute > 59) throw invalid(input, `minute ${mi} is not 00–59`);
  if (second === 60) {
    throw invalid(input, 'leap seconds (second 60) are not supported; use second 59 or the next minute');
  }
  if (second > 59) throw invalid(input, `second ${s} is not 00–59`);
  let offsetMinutes = 0;
  if (zone.toUpperCase() !== 'Z') {
    const offsetHours = Number(zone.slice(1, 3));
    const offsetMins = Number(zone.slice(4, 6));
    if (offsetHours > 23 || offsetMins > 59) throw invalid(input, `offset ${zone} is not a valid ±HH:MM`);
    offsetMinutes = (zone[0] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMins);
  }
  // Years below 100 would be misread by Date.UTC; anything before 1969 is before 1970 in any zone.
  if (year < 1969) throw invalid(input, 'times before 1970-01-01T00:00:00Z are not supported');
  const micros = Number((fraction ?? '').padEnd(6, '0').slice(0, 6));
  const ms = Date.UTC(year, month - 1, day, hour, minute, second) - offsetMinutes * 60_000;
  return checkRange(input, ms * 1000 + micros);
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0 ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

function checkRange(input: string, timeUs: number): number {
  if (timeUs < 0) throw invalid(input, 'times before 1970-01-01T00:00:00Z are not supported');
  if (!Number.isSafeInteger(timeUs)) {
    throw invalid(input, `times after ${formatMaxTime()} are not supported`);
  }
  return timeUs;
}

function formatMaxTime(): string {
  const us = Number.MAX_SAFE_INTEGER;
  return new Date(Math.floor(us / 1000)).toISOString().replace('Z', `${String(us % 1000).padStart(3, '0')}Z`);
}

function invalid(input: string, reason: string): HindsightError {
  const shown = input.length > 64 ? `${input.slice(0, 64)}…` : input;
  return new HindsightError('POINT_INVALID', `invalid point ${JSON.stringify(shown)}: ${reason}`);
}
