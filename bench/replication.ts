/**
 * Replication between two daemons on loopback (issue 6), same machine, same run:
 * (c) initial sync of a volume filled with random data, vs `nbdcopy` of the same volume
 *     (to a raw file on the same disk, and to null:);
 * (a) bytes on the wire for a day-like workload — 10,000 random 4 KiB updates each changing
 *     one 512-byte sector, plus a 100 MiB sequential rewrite of identical data — vs a full
 *     image copy and vs a QEMU-style dirty-bitmap incremental backup at 64 KiB granularity
 *     (the bytes such a backup reads: every 64 KiB block the workload wrote, computed exactly
 *     from the workload's offsets — a bitmap marks writes, not changes);
 * (b) replication lag (age of the oldest write the receiver does not hold durably, sampled
 *     every 100 ms from the sender's API) under a sustained 50 MB/s random-write stream
 *     (fio, nbd engine, 64 KiB random data).
 * Markdown to stderr, JSON to stdout (and --out FILE).
 *
 *   node --import tsx bench/replication.ts [--size-gib 2] [--updates 10000] [--rewrite-mib 100] [--lag-seconds 60] [--rate-mb 50] [--build head]
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startHindsightDaemon } from './lib/pit-servers.js';
import type { HindsightDaemon } from './lib/pit-servers.js';
import { runCommand, sleep } from './lib/proc.js';
import { buildRecord, log, prepareBuild, runMain, withBenchRun, writeReport } from './lib/run.js';
import type { BuildMode } from './lib/snapshot.js';

const MiB = 1024 * 1024;

function option(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at === -1 ? fallback : process.argv[at + 1];
}

const sizeBytes = Number(option('size-gib', '2')) * 1024 * MiB;
const updates = Number(option('updates', '10000'));
const rewriteBytes = Number(option('rewrite-mib', '100')) * MiB;
const lagSeconds = Number(option('lag-seconds', '60'));
const rateMb = Number(option('rate-mb', '50'));
const out = option('out', '');
const buildMode = option('build', 'worktree') as BuildMode;

interface Link {
  state: string; seqAcknowledged: number; seqSource: number; bytesOnWire: number; recordBytesSent: number; recordsSent: number;
  lag: { records: number; bytes: number; seconds: number };
}

async function link(daemon: HindsightDaemon, volume: string): Promise<Link> {
  const list = (await daemon.api.request<{ outgoing: Link[] & Array<{ volume: string }> }>('GET', '/replication')).body;
  const found = (list.outgoing as Array<Link & { volume: string }>).find((entry) => entry.volume === volume);
  if (!found) throw new Error(`no link for ${volume}`);
  return found;
}

async function caughtUp(daemon: HindsightDaemon, volume: string, timeoutMs: number): Promise<Link> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await link(daemon, volume);
    const info = (await daemon.api.request<{ seqLast: number }>('GET', `/volumes/${volume}`)).body;
    if (status.seqAcknowledged === info.seqLast && status.lag.records === 0) return status;
    if (Date.now() > deadline) throw new Error(`replication of ${volume} did not catch up: ${JSON.stringify(status)}`);
    await sleep(50);
  }
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

/** nbdsh script: one-sector changes in random 4 KiB blocks, then an identical rewrite; prints the written offsets' 64 KiB blocks. */
function workloadScript(file: string): void {
  fs.writeFileSync(file, `
import os, random, sys
random.seed(6)
size = ${sizeBytes}
blocks = set()
for i in range(${updates}):
    off = random.randrange(size // 4096) * 4096
    buf = bytearray(h.pread(4096, off))
    s = random.randrange(8) * 512
    buf[s:s + 512] = os.urandom(512)
    h.pwrite(bytes(buf), off)
    blocks.add(off // 65536)
start = ${Math.floor(sizeBytes / 3 / MiB) * MiB}
for off in range(start, start + ${rewriteBytes}, 1048576):
    h.pwrite(h.pread(1048576, off), off)
    for b in range(off // 65536, (off + 1048576) // 65536):
        blocks.add(b)
h.flush()
print(len(blocks))
`);
}

async function main(): Promise<number> {
  return withBenchRun({ tmpBase: option('tmp-dir', '/var/tmp'), deadlineMinutes: Number(option('deadline-minutes', '40')) }, 'hindsight-repl-bench-', async ({ tmpRoot, facts }) => {
    const snapshot = await prepareBuild(tmpRoot, buildMode);
    const keyA = crypto.randomBytes(32).toString('hex');
    fs.writeFileSync(path.join(tmpRoot, 'a.psk'), `siteA:${keyA}\n`, { mode: 0o600 });
    fs.writeFileSync(path.join(tmpRoot, 'b.psk'), `siteB:${crypto.randomBytes(32).toString('hex')}\nsiteA:${keyA}\n`, { mode: 0o600 });
    const start = (name: string) => startHindsightDaemon({ root: snapshot.root, dataDir: path.join(tmpRoot, name), extraArgs: ['--replication-psk-file', path.join(tmpRoot, `${name}.psk`)] });
    const a = await start('a');
    const b = await start('b');
    const nbd = (daemon: HindsightDaemon, name: string) => `nbd://127.0.0.1:${daemon.nbdPort}/${name}`;
    try {
      // The volume, full of random data (the 4 KiB updates then change one sector of data).
      await a.api.request('POST', '/volumes', { name: 'day', size: sizeBytes });
      const random = path.join(tmpRoot, 'random.img');
      await runCommand('bash', ['-c', `head -c ${sizeBytes} /dev/urandom > ${random}`], { timeoutMs: 600_000 });
      log(`filling ${sizeBytes / MiB} MiB`);
      await runCommand('nbdcopy', ['--flush', random, nbd(a, 'day')], { timeoutMs: 1_200_000 });
      fs.rmSync(random);

      // (c) Initial sync vs nbdcopy of the same volume.
      const copies: Record<string, number> = {};
      for (const [label, target] of [['nbdcopy-to-file', path.join(tmpRoot, 'copy.img')], ['nbdcopy-to-null', 'null:']] as const) {
        await runCommand('sync', [], { timeoutMs: 120_000 });
        const began = process.hrtime.bigint();
        await runCommand('nbdcopy', ['--flush', nbd(a, 'day'), target], { timeoutMs: 1_200_000 });
        if (target !== 'null:') await runCommand('sync', [target], { timeoutMs: 120_000 });
        copies[label] = sizeBytes / MiB / (Number(process.hrtime.bigint() - began) / 1e9);
        if (target !== 'null:') fs.rmSync(target);
        log(`${label}: ${copies[label].toFixed(1)} MiB/s`);
      }
      await runCommand('sync', [], { timeoutMs: 120_000 });
      await b.api.request('POST', '/replication/incoming', { volume: 'day', from: 'siteA' });
      const syncBegan = process.hrtime.bigint();
      await a.api.request('POST', '/replication', { volume: 'day', to: `127.0.0.1:${b.replicationPort}` });
      const synced = await caughtUp(a, 'day', 1_800_000);
      const syncSeconds = Number(process.hrtime.bigint() - syncBegan) / 1e9;
      const syncMiBs = sizeBytes / MiB / syncSeconds;
      log(`initial sync: ${syncSeconds.toFixed(1)} s, ${syncMiBs.toFixed(1)} MiB/s, ${synced.bytesOnWire} bytes on the wire`);

      // (a) A day-like workload: bytes on the wire vs a full copy and a 64 KiB dirty bitmap.
      const script = path.join(tmpRoot, 'day.py');
      workloadScript(script);
      const before = synced.bytesOnWire;
      const journalBefore = (await a.api.request<{ journalBytes: number }>('GET', '/volumes/day')).body.journalBytes;
      // nbdsh runs the system python (with libnbd's module), whatever python is first on PATH.
      const ran = await runCommand('bash', ['-c', `PATH=/usr/bin:$PATH nbdsh -u '${nbd(a, 'day')}' -c "exec(open('${script}').read())"`], { timeoutMs: 1_200_000 });
      const dirtyBlocks = Number(ran.stdout.trim().split('\n').pop());
      const day = await caughtUp(a, 'day', 600_000);
      const wire = day.bytesOnWire - before;
      const journalGrowth = (await a.api.request<{ journalBytes: number }>('GET', '/volumes/day')).body.journalBytes - journalBefore;
      const bitmapBytes = dirtyBlocks * 64 * 1024;
      log(`day: ${wire} bytes on the wire (journal +${journalGrowth}); full copy ${sizeBytes}; dirty bitmap ${bitmapBytes} (${dirtyBlocks} blocks)`);
      const hashes = await Promise.all([a, b].map(async (daemon) => (await runCommand('bash', ['-c', `nbdcopy '${nbd(daemon, 'day')}' - | sha256sum`], { timeoutMs: 600_000 })).stdout.split(' ')[0]));
      if (hashes[0] !== hashes[1]) throw new Error(`the replica differs from the source: ${hashes.join(' ')}`);

      // (b) Lag under a sustained write stream.
      const samples: number[] = [];
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          samples.push((await link(a, 'day')).lag.seconds);
          await sleep(100);
        }
      })();
      const streamBegan = process.hrtime.bigint();
      await runCommand('fio', [
        '--name=stream', '--ioengine=nbd', `--uri=${nbd(a, 'day')}`, '--rw=randwrite', '--bs=64k', '--iodepth=8', `--rate=${rateMb}m`,
        '--time_based', `--runtime=${lagSeconds}`, `--size=${sizeBytes}`, '--refill_buffers', '--randrepeat=0', '--output-format=json', `--output=${path.join(tmpRoot, 'fio.json')}`,
      ], { timeoutMs: (lagSeconds + 120) * 1000 });
      const streamSeconds = Number(process.hrtime.bigint() - streamBegan) / 1e9;
      const drained = await caughtUp(a, 'day', 600_000);
      sampling = false;
      await sampler;
      const written = (JSON.parse(fs.readFileSync(path.join(tmpRoot, 'fio.json'), 'utf8')) as { jobs: Array<{ write: { io_bytes: number; bw_bytes: number } }> }).jobs[0].write;
      const sorted = [...samples].sort((x, y) => x - y);
      const lag = { samples: samples.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1] ?? 0 };
      log(`stream: ${(written.bw_bytes / 1e6).toFixed(1)} MB/s for ${streamSeconds.toFixed(0)} s; lag p50 ${lag.p50.toFixed(3)} s, p99 ${lag.p99.toFixed(3)} s, max ${lag.max.toFixed(3)} s`);

      const fullRatio = wire / sizeBytes;
      const bitmapRatio = wire / bitmapBytes;
      const rows = [
        ['initial sync (c)', `${syncMiBs.toFixed(1)} MiB/s`, `nbdcopy to a file ${copies['nbdcopy-to-file'].toFixed(1)} MiB/s (${(syncMiBs / copies['nbdcopy-to-file']).toFixed(2)}x), to null: ${copies['nbdcopy-to-null'].toFixed(1)} MiB/s (${(syncMiBs / copies['nbdcopy-to-null']).toFixed(2)}x)`, '-'],
        ['day-like workload on the wire (a)', `${(wire / MiB).toFixed(2)} MiB`, `full copy ${(sizeBytes / MiB).toFixed(0)} MiB: ${fullRatio.toFixed(4)}`, fullRatio <= 0.1 ? 'met (<= 1/10)' : 'MISSED (<= 1/10)'],
        ['', '', `64 KiB dirty bitmap ${(bitmapBytes / MiB).toFixed(1)} MiB: ${bitmapRatio.toFixed(4)}`, bitmapRatio <= 0.5 ? 'met (<= 1/2)' : 'MISSED (<= 1/2)'],
        ['lag under a write stream (b)', `p50 ${lag.p50.toFixed(3)} s, p99 ${lag.p99.toFixed(3)} s, max ${lag.max.toFixed(3)} s`, `${(written.bw_bytes / 1e6).toFixed(1)} MB/s of 64 KiB random writes for ${lagSeconds} s, ${lag.samples} samples`, lag.p99 <= 1 ? 'met (p99 <= 1 s)' : 'MISSED (p99 <= 1 s)'],
      ];
      process.stderr.write(`\n| measure | Hindsight | compared with | target |\n| --- | --- | --- | --- |\n${rows.map((row) => `| ${row.join(' | ')} |`).join('\n')}\n\n`);
      writeReport({
        benchmark: 'replication', build: buildRecord(snapshot), machine: facts, sizeBytes, updates, rewriteBytes,
        initialSync: { seconds: syncSeconds, mibPerSecond: syncMiBs, bytesOnWire: synced.bytesOnWire, recordBytes: synced.recordBytesSent, nbdcopyMiBPerSecond: copies },
        day: { bytesOnWire: wire, journalGrowth, fullCopyBytes: sizeBytes, dirtyBlocks64k: dirtyBlocks, bitmapBytes, fullRatio, bitmapRatio },
        lag: { ...lag, writeBytesPerSecond: written.bw_bytes, seconds: lagSeconds, drainedBytesOnWire: drained.bytesOnWire },
      }, out || null);
      return fullRatio <= 0.1 && bitmapRatio <= 0.5 && lag.p99 <= 1 ? 0 : 1;
    } finally {
      await a.stop().catch(() => undefined);
      await b.stop().catch(() => undefined);
    }
  });
}

runMain('replication', main);
