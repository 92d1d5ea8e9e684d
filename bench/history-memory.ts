/**
 * History memory over simulated hours of a busy database volume (issue 5: memory should follow
 * the points the policy keeps, not the writes). Page updates (4 KiB, one sector changed) over a
 * hot set, a FLUSH after every few (commits), now and then a rewrite of the same bytes; the
 * clock moved on by the benchmark and the policy applied every simulated 10 minutes, as the
 * daemon does every minute. Reported per simulated hour: records written, points kept, the
 * history's memory, its table rows, and bytes per record kept in the span (fold aside).
 * Markdown to stderr, JSON to stdout.
 *
 *   node --import tsx bench/history-memory.ts [--hours 12] [--writes-per-second 20] [--hot-pages 2048] [--keep all:1h,1m:3h,1h:2d] [--runs 1]
 *
 * `--runs 0` compacts folded history without runs (pack.ts: one entry per record, as before
 * runs). At the end the volume is closed and opened again: the time a start takes.
 *
 * Runs against any commit's src/ (fields a commit lacks read as 0), so the same script A/Bs.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseRetention } from '../src/core/index.js';
import { nodeFileLayer } from '../src/journal/index.js';
import { JournaledDevice } from '../src/volume/journaled-device.js';
import { applyRetention } from '../src/volume/retention.js';

const MiB = 1024 * 1024;
const SECOND = 1e6;

function option(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at === -1 ? fallback : Number(process.argv[at + 1]);
}

const hours = option('hours', 12);
const perSecond = option('writes-per-second', 20);
const hotPages = option('hot-pages', 2048);
const keepAt = process.argv.indexOf('--keep');
const keep = keepAt === -1 ? 'all:1h,1m:3h,1h:2d' : process.argv[keepAt + 1];
const runs = { below: option('runs', 1) ? Infinity : 0 };
const tmpRoot = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/var/tmp', 'hindsight-history-memory-'));

async function main(): Promise<void> {
  const clock = { us: Date.UTC(2026, 10, 1) * 1000 };
  const deviceOptions = {
    name: 'db', directory: tmpRoot, sizeBytes: 1024 * MiB, volumeId: Buffer.from(randomUUID().replace(/-/g, ''), 'hex'), files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 16 * MiB, checkpointEveryBytes: 256 * MiB, idleCheckpointMs: 0, nowUs: () => clock.us,
  };
  const device = JournaledDevice.open(deviceOptions);
  const policy = parseRetention(keep);
  // The longest single collapse (synchronous: it holds the event loop), where the commit has one.
  let collapseMaxMs = 0;
  const history = device.history as JournaledDevice['history'] & { collapseSegments?: (from: number, to: number) => void };
  const collapse = history.collapseSegments?.bind(history);
  if (collapse) {
    history.collapseSegments = (from: number, to: number) => {
      const t = performance.now();
      collapse(from, to);
      collapseMaxMs = Math.max(collapseMaxMs, performance.now() - t);
    };
  }
  const pages = Array.from({ length: hotPages }, () => randomBytes(4096));
  const rows: Array<Record<string, number>> = [];
  const started = performance.now();
  let retentionMs = 0;
  for (let second = 1; second <= hours * 3600; second += 1) {
    for (let i = 0; i < perSecond; i += 1) {
      clock.us += Math.floor(SECOND / perSecond);
      const at = Math.floor(Math.random() * hotPages);
      // One write in eight rewrites the page as it is (an UNCHANGED record); the others change a sector.
      if (Math.random() >= 0.125) randomBytes(512).copy(pages[at], Math.floor(Math.random() * 8) * 512);
      await device.write(at * 4096, pages[at], { fua: false });
      if (i % 4 === 3) await device.flush();
    }
    if (second % 600 === 0) {
      const t = performance.now();
      await applyRetention(device, policy, { pins: () => [], nowUs: clock.us, sliceMs: 20, runs });
      retentionMs += performance.now() - t;
    }
    if (second % 3600 === 0) {
      const history = device.history as JournaledDevice['history'] & { collapsedCount?: number };
      const expired = history.expired.reduce((sum, [a, b]) => sum + b - a + 1, 0);
      const span = history.seqLast - history.seqFirst + 1;
      rows.push({
        hour: second / 3600, records: history.seqLast, folded: history.seqFirst - 1, pointsKept: history.seqLast - expired, recordsInSpan: span,
        rows: history.recordCount, collapsed: history.collapsedCount ?? 0, historyMiB: history.memoryBytes / MiB,
        bytesPerRecordInSpan: history.memoryBytes / span, journalMiB: device.stats().bytes / MiB, retentionSeconds: retentionMs / 1000,
        elapsedSeconds: (performance.now() - started) / 1000, collapseMaxMs,
      });
      process.stderr.write(`hour ${rows.length}: ${JSON.stringify(rows[rows.length - 1])}\n`);
    }
  }
  await device.close();
  const opening = performance.now();
  const reopened = JournaledDevice.open(deviceOptions);
  const startSeconds = (performance.now() - opening) / 1000;
  await reopened.close();
  if (process.env.HINDSIGHT_BENCH_KEEP_DIR) process.stderr.write(`kept: ${tmpRoot} (volume id ${deviceOptions.volumeId.toString('hex')})\n`);
  else fs.rmSync(tmpRoot, { recursive: true, force: true });
  process.stderr.write(`start (close, open again): ${startSeconds.toFixed(2)} s\n`);
  const table = ['| hour | records | folded | points kept | records in the span | table rows | history memory | bytes per record in the span | journal | retention time (cumulative) | longest collapse |', '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map((r) => `| ${r.hour} | ${r.records} | ${r.folded} | ${r.pointsKept} | ${r.recordsInSpan} | ${r.rows} | ${r.historyMiB.toFixed(1)} MiB | ${r.bytesPerRecordInSpan.toFixed(1)} | ${r.journalMiB.toFixed(1)} MiB | ${r.retentionSeconds.toFixed(1)} s | ${r.collapseMaxMs.toFixed(1)} ms |`)];
  process.stderr.write(`${table.join('\n')}\n`);
  process.stdout.write(`${JSON.stringify({ benchmark: 'history-memory', date: new Date().toISOString(), host: os.hostname(), hours, perSecond, hotPages, policy: keep, runs: runs.below > 0, startSeconds, rows }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  fs.rmSync(tmpRoot, { recursive: true, force: true });
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(3);
});
