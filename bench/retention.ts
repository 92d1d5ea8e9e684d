/**
 * Retention over a simulated week: a volume written the way a small database server writes
 * (page updates over a hot working set, log appends, now and then a bulk rewrite), its clock
 * moved on by the benchmark, the default policy (all:24h,1m:7d,1h:30d,1d:1y) applied every
 * simulated hour — as the daemon does every minute — with compaction compressing and
 * thinning sealed segments. Reported per simulated day: bytes written by the client, journal
 * bytes with retention, what the same journal would be without it, points kept, and the time
 * retention took. Markdown to stderr, JSON to stdout.
 *
 *   node --import tsx bench/retention.ts [--days 7] [--writes-per-minute 20] [--keep POLICY]
 *
 * Also reported: the memory the history holds (records before the oldest kept point are
 * folded out of it: with a policy shorter than the run, it levels off).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DEFAULT_RETENTION, parseRetention } from '../src/core/index.js';
import { nodeFileLayer } from '../src/journal/index.js';
import { JournaledDevice } from '../src/volume/journaled-device.js';
import { applyRetention } from '../src/volume/retention.js';

const MiB = 1024 * 1024;
const MINUTE = 60e6;

function option(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at === -1 ? fallback : Number(process.argv[at + 1]);
}

const days = option('days', 7);
const perMinute = option('writes-per-minute', 20);
const keepAt = process.argv.indexOf('--keep');
const keep = keepAt === -1 ? DEFAULT_RETENTION : process.argv[keepAt + 1];
const SIZE = 4096 * MiB;
const tmpRoot = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/var/tmp', 'hindsight-retention-'));

function text(bytes: number): Buffer {
  const words = 'select insert update where from order group index table value commit rollback page log row key'.split(' ');
  const out = Buffer.alloc(bytes);
  const picks = randomBytes(bytes);
  let at = 0;
  for (let i = 0; at < bytes; i += 1) {
    const wrote = out.write(`${words[picks[i % picks.length] % words.length]} ${picks[i % picks.length]}\n`, at);
    if (wrote === 0) break;
    at += wrote;
  }
  return out;
}

async function main(): Promise<void> {
  const clock = { us: Date.UTC(2026, 10, 1) * 1000 };
  const device = JournaledDevice.open({
    name: 'week', directory: tmpRoot, sizeBytes: SIZE, volumeId: Buffer.from(randomUUID().replace(/-/g, ''), 'hex'), files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 64 * MiB, checkpointEveryBytes: 256 * MiB, idleCheckpointMs: 0, nowUs: () => clock.us,
  });
  const policy = parseRetention(keep);
  let written = 0;
  let withoutRetention = 0;
  let retentionMs = 0;
  const rows: Array<Record<string, number>> = [];
  let logAt = 3 * 1024 * MiB;
  // Text made once (generating it is slower than writing it); picked at random.
  const logs = Array.from({ length: 64 }, () => text(64 * 1024));
  const tables = Array.from({ length: 16 }, () => text(512 * 1024));
  const page = Buffer.alloc(4096);
  for (let minute = 1; minute <= days * 24 * 60; minute += 1) {
    for (let i = 0; i < perMinute; i += 1) {
      clock.us += Math.floor(MINUTE / perMinute);
      const kind = Math.random();
      const before = device.stats().bytes;
      if (kind < 0.7) {
        // A page update in a 256 MiB working set: the page with one or two sectors changed.
        const at = Math.floor(Math.random() * 65536) * 4096;
        await device.read(at, page);
        randomBytes(512).copy(page, Math.floor(Math.random() * 8) * 512);
        await device.write(at, page, { fua: false });
        written += 4096;
      } else if (kind < 0.95) {
        // A log append (compressible text), 64 KiB, wrapping in a 512 MiB area.
        const data = logs[Math.floor(Math.random() * logs.length)];
        await device.write(logAt, data, { fua: false });
        logAt = logAt + data.length >= 3.5 * 1024 * MiB ? 3 * 1024 * MiB : logAt + data.length;
        written += data.length;
      } else {
        // A bulk rewrite of 1 MiB of table data (half compressible).
        const at = 256 * MiB + Math.floor(Math.random() * 1024) * MiB;
        const data = Buffer.concat([tables[Math.floor(Math.random() * tables.length)], randomBytes(512 * 1024)]);
        await device.write(at, data, { fua: false });
        written += data.length;
      }
      withoutRetention += device.stats().bytes - before;
    }
    if (minute % 10 === 0) await device.flush();
    if (minute % 60 === 0) {
      const started = performance.now();
      await applyRetention(device, policy, { pins: () => [], nowUs: clock.us, sliceMs: 20 });
      retentionMs += performance.now() - started;
    }
    if (minute % (24 * 60) === 0) {
      const history = device.history;
      const expired = history.expired.reduce((sum, [a, b]) => sum + b - a + 1, 0);
      rows.push({
        day: minute / (24 * 60), writtenMiB: written / MiB, withoutRetentionMiB: withoutRetention / MiB, journalMiB: device.stats().bytes / MiB,
        records: history.seqLast, pointsKept: history.seqLast - expired, retentionSeconds: retentionMs / 1000,
        compressed: device.retention.recordsCompressed, thinned: device.retention.recordsThinned,
        historyMiB: history.memoryBytes / MiB, recordsInMemory: history.seqLast - history.seqFirst + 1,
      });
      process.stderr.write(`day ${rows.length}: ${JSON.stringify(rows[rows.length - 1])}\n`);
    }
  }
  await device.close();
  fs.rmSync(tmpRoot, { recursive: true, force: true });
  const table = ['| day | written | journal without retention | journal with retention | points kept | records compressed | records thinned | history memory (records in it) | retention time (cumulative) |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.day} | ${r.writtenMiB.toFixed(0)} MiB | ${r.withoutRetentionMiB.toFixed(0)} MiB | ${r.journalMiB.toFixed(0)} MiB (${(r.journalMiB / r.writtenMiB).toFixed(3)} of written) | ${r.pointsKept} of ${r.records} | ${r.compressed} | ${r.thinned} | ${r.historyMiB.toFixed(1)} MiB (${r.recordsInMemory}) | ${r.retentionSeconds.toFixed(1)} s |`)];
  process.stderr.write(`${table.join('\n')}\n`);
  process.stdout.write(`${JSON.stringify({ benchmark: 'retention', date: new Date().toISOString(), host: os.hostname(), days, perMinute, policy: keep, rows }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  fs.rmSync(tmpRoot, { recursive: true, force: true });
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(3);
});
