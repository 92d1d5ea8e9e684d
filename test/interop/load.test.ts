/**
 * Load: 32 NBD connections over 8 volumes of a real daemon, each a loop of writes (512 B to
 * 256 KiB, random data, FUA now and then), reads checked at once against an oracle, and
 * flushes — each connection in its own quarter of its volume, so the oracle is exact —
 * plus a slow client that asks for 64 MiB of reads and takes 5 s before reading any reply,
 * and clients that hang up in the middle of a WRITE payload or before their READ reply.
 * Afterwards every volume is copied out with nbdcopy (a client no one here wrote) and must
 * equal its oracle byte for byte; the daemon's RSS and open descriptors are reported (and
 * descriptors must be back to where they were).
 *
 * HINDSIGHT_LOAD_SECONDS (default 60: the CI variant) runs longer; the throughput and latency lines it
 * prints are what docs/BENCHMARKS.md ("load") records.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { request } from '../helpers/frames.js';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';
import { RawClient } from '../helpers/raw-client.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;
const VOLUMES = 8;
const PER_VOLUME = 4;
const SIZE = 64 * MiB;
const SECONDS = Number(process.env.HINDSIGHT_LOAD_SECONDS ?? 60);
const SOAK_AFTER_SECONDS = 600;
/** A soak's total write rate: 8 MiB/s over the 32 connections (the load test is unthrottled). */
const SOAK_WRITE_BYTES_PER_WORKER_PER_SECOND = (8 * MiB) / (VOLUMES * PER_VOLUME);

interface Stats {
  ops: number;
  bytesRead: number;
  bytesWritten: number;
  latenciesUs: number[];
}

function daemonProcess(pid: number): { rssMiB: number; fds: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024;
  return { rssMiB: Math.round(rss), fds: fs.readdirSync(`/proc/${pid}/fd`).length };
}

async function worker(port: number, volume: string, quarter: number, oracle: Buffer, deadline: number, seed: number, stats: Stats): Promise<void> {
  const rng = new Random(seed);
  const client = await RawClient.open(port, volume);
  const base = quarter * (SIZE / PER_VOLUME);
  const span = SIZE / PER_VOLUME;
  let cookie = 1n;
  const begun = Date.now();
  let written = 0;
  try {
    while (Date.now() < deadline) {
      // A soak writes at a steady rate the background retention can keep up with (the load
      // test writes flat out): hours of it must fit on the disk.
      if (SECONDS > SOAK_AFTER_SECONDS) {
        const aheadMs = (written / SOAK_WRITE_BYTES_PER_WORKER_PER_SECOND) * 1000 - (Date.now() - begun);
        if (aheadMs > 0) await new Promise((resolve) => setTimeout(resolve, aheadMs));
      }
      const action = rng.int(10);
      const length = 512 * (1 + rng.int(rng.int(4) === 0 ? 512 : 16));
      const offset = base + 512 * rng.int((span - length) / 512);
      const started = process.hrtime.bigint();
      if (action < 5) {
        const data = rng.bytes(length, rng.int(4) === 0);
        const fua = rng.int(10) === 0 ? 1 : 0;
        client.send(request({ type: 1, flags: fua, cookie, offset, length }, data));
        const reply = await client.readReply();
        assert.ok(reply.kind === 'simple' && reply.error === 0, `${volume}: write answered without error`);
        data.copy(oracle, offset);
        stats.bytesWritten += length;
        written += length;
      } else if (action < 9) {
        client.send(request({ type: 0, cookie, offset, length }));
        const reply = await client.readReply(length);
        assert.ok(reply.kind === 'simple-read', `${volume}: read answered`);
        if (!reply.data.equals(oracle.subarray(offset, offset + length))) assert.fail(`${volume}: read ${offset}+${length} differs from what was written`);
        stats.bytesRead += length;
      } else {
        client.send(request({ type: 3, cookie }));
        const reply = await client.readReply();
        assert.ok(reply.kind === 'simple' && reply.error === 0, `${volume}: flush answered`);
      }
      stats.latenciesUs.push(Number(process.hrtime.bigint() - started) / 1000);
      stats.ops += 1;
      cookie += 1n;
    }
  } finally {
    client.socket.destroy();
  }
}

/** Asks for 64 MiB of reads, reads nothing for 5 s, then every reply (checked). */
async function slowClient(port: number, oracle: Buffer): Promise<void> {
  const client = await RawClient.open(port, 'load0');
  const count = 64;
  for (let i = 0; i < count; i += 1) client.send(request({ type: 0, cookie: BigInt(i + 1), offset: (i % 16) * MiB, length: MiB }));
  await new Promise((resolve) => setTimeout(resolve, 5000));
  for (let i = 0; i < count; i += 1) {
    const reply = await client.readReply(MiB);
    assert.ok(reply.kind === 'simple-read', 'the slow client gets its replies');
    // Quarter 0 of load0 is being written meanwhile: only the cookie and length are checked.
    assert.equal(reply.data.length, MiB);
  }
  client.socket.destroy();
  void oracle;
}

/** Hangs up halfway through a WRITE payload, and before a READ reply: nothing of them lands. */
async function quitters(port: number, rng: Random): Promise<number> {
  let sessions = 0;
  for (let i = 0; i < 20; i += 1) {
    const client = await RawClient.open(port, 'quit');
    const offset = MiB * rng.int(8);
    if (i % 2 === 0) {
      const frame = request({ type: 1, cookie: 1n, offset, length: MiB }, Buffer.alloc(MiB, 0xee));
      client.send(frame.subarray(0, 28 + rng.int(MiB)));
    } else {
      client.send(request({ type: 0, cookie: 1n, offset, length: MiB }));
    }
    await new Promise((resolve) => setTimeout(resolve, rng.int(20)));
    client.socket.destroy();
    sessions += 1;
  }
  return sessions;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0;
}

test(`32 connections over 8 volumes for ${SECONDS} s, a slow client and quitters: every byte as the oracle says`, { timeout: (SECONDS + 180) * 1000 }, async (t) => {
  const dataDir = makeTempDir('hindsight-load-');
  // A soak (longer than SOAK_AFTER_SECONDS) writes more than a disk holds: the volumes keep
  // 2 minutes of history (HINDSIGHT_SOAK_KEEP: another policy, e.g. tiers that thin and
  // collapse), applied every 30 s, so the journals stay bounded as in production.
  const soak = SECONDS > SOAK_AFTER_SECONDS;
  const configFile = path.join(dataDir, 'soak.yaml');
  if (soak) fs.writeFileSync(configFile, 'retentionIntervalSeconds: 30\n');
  const daemon = await startDaemon({ dataDir, volumes: [...Array.from({ length: VOLUMES }, (_, i) => `load${i}:${SIZE}`), 'quit:16M'], extraArgs: soak ? ['--config', configFile] : [] });
  if (soak) {
    for (let v = 0; v < VOLUMES; v += 1) {
      const response = await fetch(`${daemon.apiUrl}/api/v1/volumes/load${v}`, { method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ keep: process.env.HINDSIGHT_SOAK_KEEP ?? 'all:2m', maxSize: '3G' }) });
      assert.equal(response.status, 200, await response.text());
    }
  }
  // The daemon first (it may be compacting in the background), then its directory.
  t.after(async () => {
    await daemon.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  const pid = daemon.process.pid!;
  const before = daemonProcess(pid);
  const oracles = Array.from({ length: VOLUMES }, () => Buffer.alloc(SIZE));
  const stats: Stats = { ops: 0, bytesRead: 0, bytesWritten: 0, latenciesUs: [] };
  const started = Date.now();
  const deadline = started + SECONDS * 1000;
  const workers: Array<Promise<unknown>> = [];
  for (let v = 0; v < VOLUMES; v += 1) {
    for (let q = 0; q < PER_VOLUME; q += 1) {
      workers.push(worker(daemon.nbdPort, `load${v}`, q, oracles[v], deadline, 1000 + v * 10 + q, stats));
    }
  }
  workers.push(slowClient(daemon.nbdPort, oracles[0]));
  const quit = quitters(daemon.nbdPort, new Random(7));
  workers.push(quit);
  // Memory over time: RSS, and RSS less what the volumes' history holds (which grows with
  // every write by design until retention folds it): the rest must not grow after warm-up.
  // Each sample also notes what the daemon-wide caches hold and the heap, so growth can be
  // told apart: caches fill up to their budgets once compaction has compressed something.
  const samples: Array<{ rssMiB: number; historyMiB: number; fds: number; journalMiB: number; compacted: boolean; heapMiB: number; externalMiB: number; cachesMiB: number }> = [];
  const sample = async () => {
    const proc = daemonProcess(pid);
    let history = 0;
    let journal = 0;
    let compacted = false;
    for (let v = 0; v < VOLUMES; v += 1) {
      const response = await fetch(`${daemon.apiUrl}/api/v1/volumes/load${v}`);
      const info = (await response.json()) as { historyBytes: number; journalBytes: number; retention: { lastRun: { segmentsCompacted: number } | null; bytesReclaimed: number } };
      history += info.historyBytes;
      journal += info.journalBytes;
      if ((info.retention.lastRun?.segmentsCompacted ?? 0) > 0 || info.retention.bytesReclaimed > 0) compacted = true;
    }
    const status = (await (await fetch(`${daemon.apiUrl}/api/v1/status`)).json()) as { memory: Record<string, number> };
    const memory = status.memory;
    samples.push({
      rssMiB: proc.rssMiB, historyMiB: Math.round(history / MiB), fds: proc.fds, journalMiB: Math.round(journal / MiB),
      compacted: compacted || samples.some((entry) => entry.compacted),
      heapMiB: Math.round(memory.heapUsedBytes / MiB), externalMiB: Math.round(memory.externalBytes / MiB),
      cachesMiB: Math.round((memory.frameCacheBytes + memory.regionCacheBytes) / MiB),
    });
    if (soak) console.log(`# sample ${JSON.stringify(samples[samples.length - 1])}`);
  };
  const sampler = setInterval(() => void sample(), Math.max(1000, Math.min(60_000, (SECONDS * 1000) / 30)));
  const results = await Promise.allSettled(workers);
  clearInterval(sampler);
  const failed = results.find((result) => result.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  const seconds = (Date.now() - started) / 1000;
  const during = daemonProcess(pid);

  // Every volume, copied out by nbdcopy, equals its oracle.
  for (let v = 0; v < VOLUMES; v += 1) {
    const file = path.join(dataDir, `copy${v}.img`);
    await run('nbdcopy', [`nbd://127.0.0.1:${daemon.nbdPort}/load${v}`, file]);
    const copy = fs.readFileSync(file);
    if (!copy.equals(oracles[v])) {
      let at = 0;
      while (copy[at] === oracles[v][at]) at += 1;
      assert.fail(`volume load${v} differs from its oracle at offset ${at}`);
    }
    fs.rmSync(file);
  }
  // The quitters' writes never landed: their volume is all zeroes.
  const quitFile = path.join(dataDir, 'quit.img');
  await run('nbdcopy', [`nbd://127.0.0.1:${daemon.nbdPort}/quit`, quitFile]);
  assert.ok(fs.readFileSync(quitFile).every((byte) => byte === 0), 'no half-sent WRITE landed');

  await new Promise((resolve) => setTimeout(resolve, 500));
  const afterwards = daemonProcess(pid);
  const latencies = stats.latenciesUs.sort((a, b) => a - b);
  const rest = samples.map((entry) => entry.rssMiB - entry.historyMiB);
  // Warm-up ends a third of the way in, or after the first compaction if that comes later
  // (a soak: the caches of compressed data start filling only then). The check looks at the
  // last third after that.
  const firstCompacted = samples.findIndex((entry) => entry.compacted);
  const warmAt = Math.max(Math.floor(rest.length / 3), firstCompacted === -1 ? 0 : Math.min(rest.length - 2, firstCompacted + 1));
  // Peaks against peaks (compaction and folding come in cycles): the highest after warm-up
  // up to two thirds, and the highest in the last third.
  const lastThird = Math.max(warmAt + 1, Math.floor((2 * rest.length) / 3));
  const warm = Math.max(...rest.slice(warmAt, lastThird));
  const late = Math.max(...rest.slice(lastThird));
  const line = `${stats.ops} ops in ${seconds.toFixed(1)} s (${Math.round(stats.ops / seconds)} ops/s), ` +
    `${(stats.bytesWritten / MiB / seconds).toFixed(1)} MiB/s written, ${(stats.bytesRead / MiB / seconds).toFixed(1)} MiB/s read, ` +
    `latency p50 ${(percentile(latencies, 0.5) / 1000).toFixed(2)} ms, p99 ${(percentile(latencies, 0.99) / 1000).toFixed(2)} ms, max ${(latencies[latencies.length - 1] / 1000).toFixed(1)} ms; ` +
    `daemon RSS ${before.rssMiB} -> ${during.rssMiB} -> ${afterwards.rssMiB} MiB (history ${samples[samples.length - 1]?.historyMiB ?? 0} MiB; RSS less history at most ${warm} MiB after warm-up, at most ${late} MiB in the last third; ` +
    `heap ${samples[warmAt]?.heapMiB} -> ${samples[samples.length - 1]?.heapMiB} MiB, external ${samples[warmAt]?.externalMiB} -> ${samples[samples.length - 1]?.externalMiB} MiB, caches ${samples[warmAt]?.cachesMiB} -> ${samples[samples.length - 1]?.cachesMiB} MiB), ` +
    `descriptors ${before.fds} -> ${during.fds} -> ${afterwards.fds} (at most ${Math.max(...samples.map((entry) => entry.fds))} during), ` +
    `journals ${samples[samples.length - 1]?.journalMiB ?? 0} MiB at the end (at most ${Math.max(0, ...samples.map((entry) => entry.journalMiB))} MiB)${soak ? ', soak: 2 minutes of history kept' : ''}`;
  t.diagnostic(line);
  console.log(`# load: ${line}`);
  assert.ok(stats.ops > 100, 'the clients got work done');
  // Sealed journal segments stay open for reads (an LRU per volume): those may remain.
  let sealed = 0;
  for (let v = 0; v < VOLUMES; v += 1) sealed += Math.max(0, fs.readdirSync(path.join(dataDir, 'volumes', `load${v}`, 'journal')).filter((name) => name.endsWith('.seg')).length - 1);
  // A background compaction (retention, every minute) holds two more while it runs: wait.
  let fds = afterwards.fds;
  for (const deadline = Date.now() + 30_000; fds > before.fds + 2 + sealed && Date.now() < deadline;) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    fds = daemonProcess(pid).fds;
  }
  assert.ok(fds <= before.fds + 2 + sealed, `descriptors are back (${before.fds} before, ${fds} after, ${sealed} sealed segments may stay open)`);
  assert.ok(samples.length >= 3 && late <= warm + 128, `memory other than history does not grow after warm-up (${warm} MiB, then up to ${late} MiB)`);
  if (soak) {
    // Two minutes of history kept: what is older is folded out of memory (History.fold).
    const warmHistory = Math.max(...samples.slice(warmAt, lastThird).map((entry) => entry.historyMiB));
    const lateHistory = Math.max(...samples.slice(lastThird).map((entry) => entry.historyMiB));
    assert.ok(lateHistory <= warmHistory * 1.5 + 16, `the history's memory stays bounded (${warmHistory} MiB after warm-up, then up to ${lateHistory} MiB)`);
  }
});
