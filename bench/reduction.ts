/**
 * Stored bytes per byte written (issue 5's workloads), measured on the journal itself: a
 * JournaledDevice driven in this process (the daemon's code and options, no NBD in the way),
 * the journal's size before and after each workload. Compressible data is also given to
 * `zstd -1` for reference. Prints a Markdown table to stderr and JSON to stdout.
 *
 *   node --import tsx bench/reduction.ts [--scale-mib 1024] [--updates 10000]
 */
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { LIMITS } from '../src/core/index.js';
import { SEGMENT_HEADER_BYTES, nodeFileLayer } from '../src/journal/index.js';
import { JournaledDevice } from '../src/volume/journaled-device.js';
import { reclaimSpace } from '../src/volume/retention.js';

const MiB = 1024 * 1024;

function option(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at === -1 ? fallback : Number(process.argv[at + 1]);
}

const scaleBytes = option('scale-mib', 1024) * MiB;
const updates = option('updates', 10_000);
const tmpRoot = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/var/tmp', 'hindsight-reduction-'));

function openDevice(name: string, sizeBytes: number): JournaledDevice {
  const directory = path.join(tmpRoot, name);
  fs.mkdirSync(directory, { recursive: true });
  return JournaledDevice.open({
    name, directory, sizeBytes, volumeId: Buffer.from(randomUUID().replace(/-/g, ''), 'hex'), files: nodeFileLayer,
    readOnly: false, syncEveryWrite: false, segmentBytesMax: LIMITS.journalSegmentBytesMax, checkpointEveryBytes: LIMITS.indexCheckpointEveryBytes,
    nowUs: () => Date.now() * 1000, idleCheckpointMs: 0,
  });
}

/** Text-like bytes: words from a small vocabulary, random order (compresses like logs or documents). */
function textLike(bytes: number): Buffer {
  const words = 'the of and to in is that for it as with was on be by this are from or at which an have not they but were his her can all their one has more will would there other been its about when into some only than time also such most over after these two new first any may used many years'.split(' ');
  const out = Buffer.alloc(bytes);
  const picks = randomBytes(bytes / 2);
  let at = 0;
  for (let i = 0; at < bytes; i += 1) {
    const pick = picks[i % picks.length];
    const word = `${words[pick % words.length]}${pick % 17 === 0 ? '.\n' : ' '}`;
    const wrote = out.write(word, at);
    if (wrote === 0) break;
    at += wrote;
  }
  return out;
}

interface Line {
  workload: string;
  writtenBytes: number;
  storedBytes: number;
  ratio: number;
  target: string;
  met: boolean | null;
  seconds: number;
}

async function measure(workload: string, target: string, check: ((ratio: number) => boolean) | null, device: JournaledDevice, work: () => Promise<number>): Promise<Line> {
  await device.flush();
  const before = device.stats().bytes;
  const started = process.hrtime.bigint();
  const writtenBytes = await work();
  await device.flush();
  const storedBytes = device.stats().bytes - before;
  const ratio = storedBytes / writtenBytes;
  return { workload, writtenBytes, storedBytes, ratio, target, met: check ? check(ratio) : null, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
}

async function main(): Promise<void> {
  const lines: Line[] = [];
  const chunk = 1 * MiB;

  // Random data, 1 MiB writes, then the identical rewrite of all of it.
  const random = openDevice('random', scaleBytes);
  const blocks: Buffer[] = [];
  lines.push(await measure(`random data, ${scaleBytes / MiB} MiB in 1 MiB writes`, '<= 1.01', (r) => r <= 1.01, random, async () => {
    for (let at = 0; at < scaleBytes; at += chunk) {
      const block = randomBytes(chunk);
      blocks.push(block);
      await random.write(at, block, { fua: false });
    }
    return scaleBytes;
  }));
  lines.push(await measure(`identical rewrite of those ${scaleBytes / MiB} MiB`, '~ 0', (r) => r < 0.001, random, async () => {
    for (let at = 0, i = 0; at < scaleBytes; at += chunk, i += 1) await random.write(at, blocks[i], { fua: false });
    return scaleBytes;
  }));
  blocks.length = 0;

  // Random data in 4 KiB writes (the per-record overhead shows).
  const small = openDevice('small', 256 * MiB);
  lines.push(await measure('random data, 256 MiB in 4 KiB writes', '<= 1.01', (r) => r <= 1.01, small, async () => {
    for (let at = 0; at < 256 * MiB; at += 4096) await small.write(at, randomBytes(4096), { fua: false });
    return 256 * MiB;
  }));
  // The same once compaction packed them (pack.ts: a 28-byte entry and a 4-byte chunk CRC
  // per write instead of a 56-byte header, a CRC and padding). Sealed segments hold no
  // table of contents once packed, so the segments are all there is.
  await small.seal();
  {
    const started = process.hrtime.bigint();
    await reclaimSpace(small, { sliceMs: 50 });
    const storedBytes = small.stats().bytes - SEGMENT_HEADER_BYTES * small.stats().segments;
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    lines.push({ workload: `random data, 256 MiB in 4 KiB writes, after compaction (packed, ${(256 / seconds).toFixed(0)} MiB/s)`, writtenBytes: 256 * MiB, storedBytes, ratio: storedBytes / (256 * MiB), target: '<= 1.01', met: storedBytes / (256 * MiB) <= 1.01, seconds });
  }

  // Database-like page updates: each 4 KiB page rewritten with one 512-byte sector changed.
  lines.push(await measure(`${updates} 4 KiB page updates changing one sector`, '<= 0.15', (r) => r <= 0.15, small, async () => {
    const page = Buffer.alloc(4096);
    for (let i = 0; i < updates; i += 1) {
      const at = Math.floor(Math.random() * (256 * MiB / 4096)) * 4096;
      await small.read(at, page);
      randomBytes(512).copy(page, Math.floor(Math.random() * 8) * 512);
      await small.write(at, page, { fua: false });
    }
    return updates * 4096;
  }));

  // Zeroes written as data (e.g. a guest zero-filling free space).
  lines.push(await measure('256 MiB of zero bytes written as data', '~ 0', (r) => r < 0.001, small, async () => {
    const zeroes = Buffer.alloc(chunk);
    for (let at = 0; at < 256 * MiB; at += chunk) await small.write(at, zeroes, { fua: false });
    return 256 * MiB;
  }));

  // Compressible, text-like data; zstd -1 of the same bytes for reference.
  const textBytes = Math.min(scaleBytes, 256 * MiB);
  const text = textLike(textBytes);
  const textFile = path.join(tmpRoot, 'text.txt');
  fs.writeFileSync(textFile, text);
  const zstdBytes = Number(execFileSync('sh', ['-c', `zstd -1 -c ${textFile} | wc -c`]).toString().trim());
  const compressible = openDevice('text', textBytes);
  const textLine = await measure(`text-like data, ${textBytes / MiB} MiB in 1 MiB writes`, `zstd -1: ${(zstdBytes / textBytes).toFixed(3)}`, null, compressible, async () => {
    for (let at = 0; at < textBytes; at += chunk) await compressible.write(at, text.subarray(at, at + chunk), { fua: false });
    return textBytes;
  });
  lines.push(textLine);

  // Compaction compresses sealed segments (the daemon does it within a minute of a segment
  // sealing): what the same data costs then, and how fast compaction goes.
  for (const [label, device, written, target, check] of [
    [`text-like data, ${textBytes / MiB} MiB, after compaction`, compressible, textBytes, `zstd -1: ${(zstdBytes / textBytes).toFixed(3)}`, null],
    [`random data, ${scaleBytes / MiB} MiB + identical rewrite, after compaction`, random, scaleBytes, '<= 1.01', (r: number) => r <= 1.01],
  ] as const) {
    await device.seal();
    const started = process.hrtime.bigint();
    const before = device.stats().bytes;
    const report = await reclaimSpace(device, { sliceMs: 50 });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const storedBytes = device.stats().bytes - SEGMENT_HEADER_BYTES * device.stats().segments;
    lines.push({ workload: `${label} (${report.recordsCompressed} payloads compressed, ${(before / MiB / seconds).toFixed(0)} MiB/s)`, writtenBytes: written, storedBytes, ratio: storedBytes / written, target, met: check ? check(storedBytes / written) : null, seconds });
    // Reading it back decompresses: the whole volume once, checked against what was written.
    if (device === compressible) {
      const back = Buffer.alloc(chunk);
      const readStarted = process.hrtime.bigint();
      for (let at = 0; at < textBytes; at += chunk) {
        await device.read(at, back);
        if (!back.equals(text.subarray(at, at + chunk))) throw new Error(`text read back differs at ${at}`);
      }
      const readSeconds = Number(process.hrtime.bigint() - readStarted) / 1e9;
      process.stderr.write(`read back ${textBytes / MiB} MiB of compressed text in 1 MiB reads: ${(textBytes / MiB / readSeconds).toFixed(0)} MiB/s\n`);
    }
  }

  for (const device of [random, small, compressible]) await device.close();
  fs.rmSync(tmpRoot, { recursive: true, force: true });
  const table = ['| workload | written | stored | stored / written | target | met |', '| --- | --- | --- | --- | --- | --- |',
    ...lines.map((l) => `| ${l.workload} | ${(l.writtenBytes / MiB).toFixed(0)} MiB | ${(l.storedBytes / MiB).toFixed(2)} MiB | ${l.ratio.toFixed(4)} | ${l.target} | ${l.met === null ? '-' : l.met ? 'yes' : '**no**'} |`)];
  process.stderr.write(`${table.join('\n')}\n`);
  process.stdout.write(`${JSON.stringify({ benchmark: 'reduction', date: new Date().toISOString(), host: os.hostname(), zstdBytes, lines }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  fs.rmSync(tmpRoot, { recursive: true, force: true });
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(3);
});
