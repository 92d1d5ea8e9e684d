/**
 * What background compaction (compression, thinning) costs the clients of the same daemon:
 * 4 KiB random writes (in-process, queue depth 16, the daemon's code without NBD) on one
 * volume for a fixed time, alone and while another volume's sealed segments (1 GiB of
 * text-like data) are compacted by the retention code; medians of 3 alternating runs.
 * Markdown to stderr, JSON to stdout.
 *
 *   node --import tsx bench/compaction-impact.ts [--seconds 8] [--gib 1] [--source text|random4k]
 *
 * `--source random4k`: the compacted volume holds 4 KiB random writes instead (small records,
 * nothing compresses: what the copy itself costs per record).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { nodeFileLayer } from '../src/journal/index.js';
import { JournaledDevice } from '../src/volume/journaled-device.js';
import { reclaimSpace } from '../src/volume/retention.js';

const MiB = 1024 * 1024;

function option(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at === -1 ? fallback : Number(process.argv[at + 1]);
}

const seconds = option('seconds', 8);
const gib = option('gib', 1);
const sourceAt = process.argv.indexOf('--source');
const sourceKind = sourceAt === -1 ? 'text' : process.argv[sourceAt + 1];
const tmpRoot = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/var/tmp', 'hindsight-compaction-'));

function open(name: string, sizeBytes: number): JournaledDevice {
  const directory = path.join(tmpRoot, name);
  fs.mkdirSync(directory, { recursive: true });
  return JournaledDevice.open({
    name, directory, sizeBytes, volumeId: Buffer.from(randomUUID().replace(/-/g, ''), 'hex'), files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: 256 * MiB, checkpointEveryBytes: 256 * MiB, idleCheckpointMs: 0,
    nowUs: () => Date.now() * 1000,
  });
}

function text(bytes: number): Buffer {
  const words = 'select insert update where from order group index table value commit rollback page log row key'.split(' ');
  const out = Buffer.alloc(bytes);
  const picks = randomBytes(bytes);
  for (let at = 0, i = 0; at < bytes; i += 1) at += out.write(`${words[picks[i] % words.length]} `, at) || bytes;
  return out;
}

/** 4 KiB random writes at depth 16 for `seconds`: IOPS. */
async function writeLoad(device: JournaledDevice): Promise<number> {
  const deadline = performance.now() + seconds * 1000;
  const blocks = device.sizeBytes / 4096;
  const buffers = Array.from({ length: 64 }, () => randomBytes(4096));
  let done = 0;
  await Promise.all(Array.from({ length: 16 }, async (_, lane) => {
    for (let i = lane; performance.now() < deadline; i += 16) {
      await device.write(Math.floor(Math.random() * blocks) * 4096, buffers[i % buffers.length], { fua: false });
      done += 1;
      if (done % 256 === 0) await new Promise((resolve) => setImmediate(resolve));
    }
  }));
  return done / seconds;
}

async function main(): Promise<void> {
  const target = open('target', 4096 * MiB);
  const rows: Array<{ run: number; alone: number; during: number; compactedMiBs: number }> = [];
  for (let run = 1; run <= 3; run += 1) {
    const alone = await writeLoad(target);
    // A volume with `gib` GiB of text in sealed segments, compacted while the load runs.
    const source = open(`source${run}`, gib * 1024 * MiB);
    if (sourceKind === 'random4k') {
      const blocks = Array.from({ length: 256 }, () => randomBytes(4096));
      for (let at = 0, i = 0; at < gib * 1024 * MiB; at += 4096, i += 1) await source.write(at, blocks[i % blocks.length], { fua: false });
    } else {
      const chunk = text(4 * MiB);
      for (let at = 0; at < gib * 1024 * MiB; at += chunk.length) await source.write(at, chunk, { fua: false });
    }
    await source.seal();
    const before = source.stats().bytes;
    const started = performance.now();
    const compacting = reclaimSpace(source, {});
    const during = await writeLoad(target);
    await compacting;
    const compactedMiBs = before / MiB / ((performance.now() - started) / 1000);
    rows.push({ run, alone, during, compactedMiBs });
    process.stderr.write(`run ${run}: ${Math.round(alone)} IOPS alone, ${Math.round(during)} while compacting (${compactedMiBs.toFixed(0)} MiB/s compacted)\n`);
    await source.close();
    fs.rmSync(path.join(tmpRoot, `source${run}`), { recursive: true, force: true });
  }
  await target.close();
  fs.rmSync(tmpRoot, { recursive: true, force: true });
  const median = (values: number[]) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const alone = median(rows.map((r) => r.alone));
  const during = median(rows.map((r) => r.during));
  process.stderr.write(`| 4 KiB random writes, depth 16 | alone | while compacting | during / alone |\n| --- | --- | --- | --- |\n| IOPS (median of 3) | ${Math.round(alone)} | ${Math.round(during)} | ${(during / alone).toFixed(2)} |\n`);
  process.stdout.write(`${JSON.stringify({ benchmark: 'compaction-impact', date: new Date().toISOString(), host: os.hostname(), seconds, gib, source: sourceKind, rows }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  fs.rmSync(tmpRoot, { recursive: true, force: true });
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(3);
});
