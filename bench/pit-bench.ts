/**
 * Point in time: how fast a point in a volume's history becomes usable, how fast it reads,
 * and how fast it restores, against qemu-nbd and nbdkit on the same bytes, same machine,
 * same run.
 *
 *   (a) mount latency on a big volume with a long history (default 64 GiB, 1,000,000 journaled
 *       4 KiB writes): POST /api/v1/mounts wall time (client) and the server's mountMs, then a
 *       libnbd client connects to the new export and reads one 4 KiB block (time to first
 *       byte) and 64 MiB sequentially; unmount. 100 points: `latest`, random seq:N and random
 *       times. Every block read is checked against the history model. Also: daemon start-up
 *       time on that data dir (warm and cold page cache), the background scrub after it, a
 *       few mounts during that scrub, and RSS (/proc/PID/status).
 *   (b) sequential read of an old point (a mount) vs the live volume vs qemu-nbd and nbdkit's
 *       file plugin exporting a raw file holding the old point's bytes (made by
 *       `hindsight restore`): fio nbd `rw=read bs=1M iodepth=16` and `nbdcopy … null:`;
 *       servers take turns, medians of --runs.
 *   (c) `hindsight restore` of the old point (4 GiB, fully written) to a file vs
 *       `qemu-img convert -t writeback -f raw -O raw nbd://…` from qemu-nbd and from nbdkit on
 *       the raw file (plus, for information, qemu-img from the Hindsight mount, a local
 *       qemu-img copy, and qemu-img's default `-t unsafe`, which never syncs the image);
 *       `sync` before each, output deleted (and synced away) after each.
 *
 * The histories are written in this process through the snapshot's own JournaledDevice (the
 * daemon creates each volume through its API first and is stopped meanwhile): a million
 * writes over NBD would take longer than the rest of the benchmark.
 *
 *   node --import tsx bench/pit-bench.ts [--build worktree|head|dist] [--out FILE]
 *        [--size-gib 64] [--writes 1000000] [--points 100] [--seq-size-gib 4] [--runs 3]
 *        [--parts a,b,c] ...      (smoke run: --writes 20000 --size-gib 4 --points 10 --runs 1)
 *
 * JSON on stdout (and --out), progress and Markdown tables on stderr. Exit 0 = every target
 * met, 1 = one missed or a read returned wrong data, 3 = the benchmark failed.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { formatSummary, summariseProfile } from './cpuprofile-top.js';
import { NbdProbe, decodeStamps } from './lib/nbd-probe.js';
import { STAMP_MAGIC, Random, buildPitHistory, buildSeqVolume, expectedBlockSeq, expectedStamps, loadHindsightModules, seqAtTime, treeFiles, writesUpTo } from './lib/pit-history.js';
import type { HindsightModules, PitHistory, PitHistoryShape, SeqVolume } from './lib/pit-history.js';
import { procMemory, startHindsightDaemon, waitForQuiet } from './lib/pit-servers.js';
import type { HindsightDaemon, ProcMemory } from './lib/pit-servers.js';
import { runCommand } from './lib/proc.js';
import { buildRecord, log, prepareBuild, runMain, withBenchRun, writeReport } from './lib/run.js';
import { startPeerOn } from './lib/servers.js';
import { BUILD_MODES } from './lib/snapshot.js';
import type { BuildMode, HindsightSnapshot } from './lib/snapshot.js';
import { median } from './lib/summary.js';
import { LINES } from './lib/workloads.js';
import type { LineSpec, TurnContext } from './lib/workloads.js';

const GIB = 2 ** 30;
const MIB = 2 ** 20;
const KIB4 = 4096;
const MOUNT_TARGET_MS = 100;
const READ_TARGET_RATIO = 0.8;
const PARTS = ['a', 'b', 'c'] as const;
type Part = (typeof PARTS)[number];

/** The history of (a) (--size-gib, --writes, --flush-every, --hot-*, --history-hours, --seed) and the rest. */
interface Config extends PitHistoryShape {
  build: BuildMode;
  parts: Part[];
  points: number;
  scrubPoints: number;
  seqReadBytes: number;
  coldStart: boolean;
  seqSizeBytes: number;
  runs: number;
  seconds: number;
  rampSeconds: number;
  python: string;
  tmpBase: string;
  out: string | null;
  cpuProfDir: string | null;
  deadlineMinutes: number;
}

function parseConfig(argv: string[]): Config {
  const { values } = parseArgs({
    args: argv,
    options: {
      build: { type: 'string', default: 'worktree' },
      parts: { type: 'string', default: PARTS.join(',') },
      'size-gib': { type: 'string', default: '64' },
      writes: { type: 'string', default: '1000000' },
      'flush-every': { type: 'string', default: '100' },
      'hot-zones': { type: 'string', default: '4' },
      'hot-zone-mib': { type: 'string', default: '64' },
      'hot-fraction': { type: 'string', default: '0.3' },
      'history-hours': { type: 'string', default: '24' },
      points: { type: 'string', default: '100' },
      'scrub-points': { type: 'string', default: '10' },
      'seq-read-mib': { type: 'string', default: '64' },
      'no-cold-start': { type: 'boolean', default: false },
      'seq-size-gib': { type: 'string', default: '4' },
      runs: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '10' },
      ramp: { type: 'string', default: '2' },
      seed: { type: 'string', default: '1' },
      python: { type: 'string', default: '/usr/bin/python3' },
      'tmp-dir': { type: 'string', default: '/var/tmp' },
      out: { type: 'string' },
      'cpu-prof-dir': { type: 'string' },
      'deadline-minutes': { type: 'string', default: '40' },
    },
  });
  if (!(BUILD_MODES as readonly string[]).includes(values.build)) throw new Error(`--build takes ${BUILD_MODES.join('|')}`);
  const parts = values.parts.split(',').map((part) => {
    if (!(PARTS as readonly string[]).includes(part)) throw new Error(`unknown part ${part}; pick from ${PARTS.join(',')}`);
    return part as Part;
  });
  const config: Config = {
    build: values.build as BuildMode, parts,
    sizeBytes: Math.round(Number(values['size-gib']) * GIB), writes: Number(values.writes), flushEvery: Number(values['flush-every']),
    hotZones: Number(values['hot-zones']), hotZoneBytes: Number(values['hot-zone-mib']) * MIB, hotFraction: Number(values['hot-fraction']),
    historyHours: Number(values['history-hours']), points: Number(values.points), scrubPoints: Number(values['scrub-points']),
    seqReadBytes: Number(values['seq-read-mib']) * MIB, coldStart: !values['no-cold-start'],
    seqSizeBytes: Math.round(Number(values['seq-size-gib']) * GIB), runs: Number(values.runs), seconds: Number(values.seconds),
    rampSeconds: Number(values.ramp), seed: Number(values.seed), python: values.python, tmpBase: values['tmp-dir'],
    out: values.out ?? null, cpuProfDir: values['cpu-prof-dir'] ?? null, deadlineMinutes: Number(values['deadline-minutes']),
  };
  if (config.sizeBytes % MIB !== 0 || config.seqSizeBytes % MIB !== 0) throw new Error('sizes must be whole MiB');
  if (!(config.writes >= 1 && config.points >= 1 && config.runs >= 1 && config.flushEvery >= 1)) throw new Error('--writes, --points, --runs and --flush-every must be >= 1');
  if (config.seqReadBytes % MIB !== 0 || config.seqReadBytes > config.sizeBytes) throw new Error('--seq-read-mib must be whole and fit the volume');
  if (config.hotZoneBytes % KIB4 !== 0 || config.hotZoneBytes > config.sizeBytes) throw new Error('--hot-zone-mib must fit the volume');
  return config;
}

// ---- statistics ----

function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

interface Stat {
  n: number;
  median: number;
  p99: number;
  min: number;
  max: number;
}

function stat(values: number[]): Stat {
  const r = (v: number) => Math.round(v * 100) / 100;
  if (values.length === 0) return { n: 0, median: NaN, p99: NaN, min: NaN, max: NaN };
  return { n: values.length, median: r(median(values)), p99: r(percentile(values, 99)), min: r(Math.min(...values)), max: r(Math.max(...values)) };
}

const ms = (since: bigint) => Number(process.hrtime.bigint() - since) / 1e6;
const round1 = (v: number) => Math.round(v * 10) / 10;

async function sync(): Promise<number> {
  const started = process.hrtime.bigint();
  await runCommand('sync', [], { timeoutMs: 300_000 });
  return ms(started);
}

/** Creates one volume through a freshly started daemon's API, stops the daemon, returns its id and the empty start-up time. */
async function createVolume(root: string, dataDir: string, name: string, sizeBytes: number): Promise<{ volumeDir: string; id: string; emptyReadyMs: number }> {
  const daemon = await startHindsightDaemon({ root, dataDir });
  try {
    await daemon.api.request('POST', '/volumes', { name, size: sizeBytes });
  } finally {
    await daemon.stop();
  }
  const volumeDir = path.join(dataDir, 'volumes', name);
  const record = JSON.parse(fs.readFileSync(path.join(volumeDir, 'volume.json'), 'utf8')) as { id: string; sizeBytes: number };
  if (record.sizeBytes !== sizeBytes) throw new Error(`volume ${name} has size ${record.sizeBytes}, wanted ${sizeBytes}`);
  return { volumeDir, id: record.id, emptyReadyMs: daemon.readyMs };
}

async function cachedBytes(files: string[]): Promise<number> {
  try {
    const { stdout } = await runCommand('fincore', ['--bytes', '--noheadings', '--raw', '-o', 'RES', ...files], { timeoutMs: 30_000 });
    return stdout.split('\n').filter(Boolean).reduce((sum, line) => sum + Number(line.trim()), 0);
  } catch {
    return -1;
  }
}

/** Drops one directory's files from the page cache (after sync; `dd iflag=nocache count=0`). */
async function evictFromPageCache(directory: string): Promise<{ cachedBeforeMiB: number; cachedAfterMiB: number }> {
  await sync();
  const files = treeFiles(directory);
  const before = await cachedBytes(files);
  for (const file of files) await runCommand('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none'], { timeoutMs: 60_000 });
  const after = await cachedBytes(files);
  return { cachedBeforeMiB: round1(before / MIB), cachedAfterMiB: round1(after / MIB) };
}

function profileArgs(config: Config, name: string): string[] {
  if (!config.cpuProfDir) return [];
  fs.mkdirSync(config.cpuProfDir, { recursive: true });
  return ['--cpu-prof', `--cpu-prof-dir=${config.cpuProfDir}`, `--cpu-prof-name=${name}`];
}

function summariseProfileFile(config: Config, name: string): unknown {
  if (!config.cpuProfDir) return null;
  const file = path.join(config.cpuProfDir, name);
  if (!fs.existsSync(file)) return null;
  const summary = summariseProfile(file);
  process.stderr.write(`\n== CPU profile ${file}\n${formatSummary(summary, 25)}\n\n`);
  return { file, wallMs: summary.wallMs, categories: summary.categories, top: summary.functions.slice(0, 25) };
}

// ---- (a) mount latency on a long history ----

interface MountView {
  export: string;
  uri: string;
  seq: number;
  time: string;
  mountMs: number;
}

interface PointChoice {
  at: string;
  kind: 'latest' | 'seq' | 'time';
  expectedSeq: number;
}

interface PointSample {
  phase: 'during-scrub' | 'steady';
  at: string;
  kind: PointChoice['kind'];
  seq: number;
  mountMs: number;
  serverMountMs: number;
  connectMs: number;
  firstReadMs: number;
  ttfbMs: number;
  mountToFirstByteMs: number;
  seqReadKind: 'hot' | 'cold';
  seqReadOffset: number;
  seqReadMs: number;
  seqReadMiBps: number;
  seqReadBlocksWithData: number;
  unmountMs: number;
  problems: string[];
}

function formatTimeMicros(us: number): string {
  const iso = new Date(Math.floor(us / 1000)).toISOString();
  return `${iso.slice(0, -1)}${String(Math.floor(us % 1000)).padStart(3, '0')}Z`;
}

function choosePoints(history: PitHistory, count: number, random: Random): PointChoice[] {
  const points: PointChoice[] = [{ at: 'latest', kind: 'latest', expectedSeq: history.seqLast }];
  for (let i = 1; i < count; i += 1) {
    if (i % 2 === 1) {
      const seq = history.seqFirstWrite + random.int(history.seqLast - history.seqFirstWrite + 1);
      points.push({ at: `seq:${seq}`, kind: 'seq', expectedSeq: seq });
    } else {
      const timeUs = Math.floor(history.timeFirstUs + random.next() * (history.timeLastUs - history.timeFirstUs));
      points.push({ at: formatTimeMicros(timeUs), kind: 'time', expectedSeq: seqAtTime(history, timeUs) });
    }
  }
  return points;
}

async function probePoint(
  daemon: HindsightDaemon, probe: NbdProbe, history: PitHistory, config: Config, random: Random,
  point: PointChoice, phase: PointSample['phase'], seqReadKind: PointSample['seqReadKind'],
): Promise<PointSample> {
  const problems: string[] = [];
  const mount = await daemon.api.request<MountView>('POST', '/mounts', { volume: 'pit', at: point.at });
  const seq = mount.body.seq;
  // `latest` is the newest record or the last write before it (same content: only flush
  // markers follow), depending on the version.
  const lastWriteSeq = history.seqs[history.writes - 1];
  const resolvedOk = point.kind === 'latest' ? seq === history.seqLast || seq === lastWriteSeq : seq === point.expectedSeq;
  if (!resolvedOk) problems.push(`${point.at} resolved to seq ${seq}, expected ${point.expectedSeq}`);
  // One 4 KiB block some write before the point touched (a random written block).
  const writes = writesUpTo(history, seq);
  const firstOffset = writes > 0 ? history.offsets[random.int(writes)] : 0;
  const seqReadOffset = seqReadKind === 'hot' && history.hotZoneStarts.length > 0
    ? Math.min(history.hotZoneStarts[random.int(history.hotZoneStarts.length)], config.sizeBytes - config.seqReadBytes)
    : random.int((config.sizeBytes - config.seqReadBytes) / KIB4 + 1) * KIB4;
  const answer = await probe.probe({
    uri: mount.body.uri, offset: firstOffset, seqOffset: seqReadOffset, seqBytes: config.seqReadBytes, chunkBytes: MIB, depth: 16, stamps: true,
  });
  const unmount = await daemon.api.request('DELETE', `/mounts/${encodeURIComponent(mount.body.export)}?force=true`);
  // Check what was read against the model of the history.
  const head = Buffer.from(answer.head, 'hex');
  const wantFirst = expectedBlockSeq(history, firstOffset, seq);
  const gotFirst = head.readUInt32LE(0) === STAMP_MAGIC ? head.readUInt32LE(4) : 0;
  if (gotFirst !== wantFirst || (gotFirst !== 0 && head.readDoubleLE(8) !== firstOffset)) {
    problems.push(`block ${firstOffset} at seq ${seq}: got the write of seq ${gotFirst} (offset ${head.readDoubleLE(8)}), expected seq ${wantFirst}`);
  }
  if (gotFirst === 0 && !head.equals(Buffer.alloc(head.length))) problems.push(`block ${firstOffset} at seq ${seq}: expected zeroes, got ${answer.head}`);
  if (answer.sizeBytes !== config.sizeBytes) problems.push(`export size ${answer.sizeBytes}, expected ${config.sizeBytes}`);
  const want = expectedStamps(history, seqReadOffset, config.seqReadBytes, seq);
  const got = decodeStamps(answer.stamps ?? '');
  let mismatches = 0;
  let withData = 0;
  for (let i = 0; i < want.length; i += 1) {
    if (want[i] !== 0) withData += 1;
    if (got[i] !== want[i]) mismatches += 1;
  }
  if (mismatches > 0 || got.length !== want.length) problems.push(`sequential read at ${seqReadOffset}, seq ${seq}: ${mismatches} of ${want.length} blocks differ from the model`);
  const seqReadMs = answer.seqMs ?? NaN;
  return {
    phase, at: point.at, kind: point.kind, seq, mountMs: mount.ms, serverMountMs: mount.body.mountMs,
    connectMs: answer.connectMs, firstReadMs: answer.firstReadMs, ttfbMs: answer.connectMs + answer.firstReadMs,
    mountToFirstByteMs: mount.ms + answer.connectMs + answer.firstReadMs,
    seqReadKind, seqReadOffset, seqReadMs, seqReadMiBps: config.seqReadBytes / MIB / (seqReadMs / 1000), seqReadBlocksWithData: withData,
    unmountMs: unmount.ms, problems,
  };
}

function summarisePoints(samples: PointSample[]): Record<string, Stat> {
  const pick = (f: (s: PointSample) => number, filter: (s: PointSample) => boolean = () => true) => stat(samples.filter(filter).map(f));
  return {
    mountMs: pick((s) => s.mountMs),
    serverMountMs: pick((s) => s.serverMountMs),
    connectMs: pick((s) => s.connectMs),
    firstReadMs: pick((s) => s.firstReadMs),
    ttfbMs: pick((s) => s.ttfbMs),
    mountToFirstByteMs: pick((s) => s.mountToFirstByteMs),
    seqReadMs: pick((s) => s.seqReadMs),
    seqReadHotMs: pick((s) => s.seqReadMs, (s) => s.seqReadKind === 'hot'),
    seqReadColdMs: pick((s) => s.seqReadMs, (s) => s.seqReadKind === 'cold'),
    seqReadMiBps: pick((s) => s.seqReadMiBps),
    unmountMs: pick((s) => s.unmountMs),
    mountMsLatest: pick((s) => s.mountMs, (s) => s.kind === 'latest'),
    mountMsSeq: pick((s) => s.mountMs, (s) => s.kind === 'seq'),
    mountMsTime: pick((s) => s.mountMs, (s) => s.kind === 'time'),
  };
}

interface StartupSample {
  kind: string;
  readyMs: number;
  /** After the ready line: until the daemon's CPU went quiet (the background scrub). */
  busyAfterReadyMs: number | null;
  busyCpuSeconds: number | null;
  rssAtReady: ProcMemory | null;
  rssAfterScrub: ProcMemory | null;
  stopMs: number | null;
  eviction?: { cachedBeforeMiB: number; cachedAfterMiB: number };
}

/** One start of the daemon on a data dir: ready time and RSS; with `waitScrub`, also until its CPU goes quiet. */
async function measureStartup(root: string, dataDir: string, kind: string, options: { waitScrub: boolean; eviction?: StartupSample['eviction']; nodeArgs?: string[] }): Promise<StartupSample> {
  const daemon = await startHindsightDaemon({ root, dataDir, nodeArgs: options.nodeArgs });
  try {
    const rssAtReady = procMemory(daemon.pid);
    const quiet = options.waitScrub ? await waitForQuiet(daemon.pid, { maxMs: 600_000 }) : null;
    const rssAfterScrub = options.waitScrub ? procMemory(daemon.pid) : null;
    const stopMs = await daemon.stop();
    return { kind, readyMs: daemon.readyMs, busyAfterReadyMs: quiet?.ms ?? null, busyCpuSeconds: quiet?.cpuSeconds ?? null, rssAtReady, rssAfterScrub, stopMs, eviction: options.eviction };
  } finally {
    await daemon.stop();
  }
}

async function partA(config: Config, snapshot: HindsightSnapshot, modules: HindsightModules, probe: NbdProbe, tmpRoot: string) {
  const dataDir = path.join(tmpRoot, 'data-a');
  log(`(a) creating a ${config.sizeBytes / GIB} GiB volume through the API`);
  const created = await createVolume(snapshot.root, dataDir, 'pit', config.sizeBytes);
  log(`(a) writing ${config.writes} journaled 4 KiB writes in-process (JournaledDevice of the snapshot)`);
  const history = await buildPitHistory(modules, {
    volumeDir: created.volumeDir, volumeName: 'pit', volumeIdHex: created.id, sizeBytes: config.sizeBytes, writes: config.writes,
    flushEvery: config.flushEvery, hotZones: config.hotZones, hotZoneBytes: config.hotZoneBytes, hotFraction: config.hotFraction,
    historyHours: config.historyHours, seed: config.seed, log,
  });
  const syncMs = await sync();
  const journalBytes = treeFiles(created.volumeDir).reduce((sum, file) => sum + fs.statSync(file).size, 0);
  log(`(a) history: ${history.writes} writes + ${history.flushes} flushes (seq 1..${history.seqLast}) in ${(history.buildMs / 1000).toFixed(1)} s, close ${history.closeMs.toFixed(0)} ms, sync ${(syncMs / 1000).toFixed(1)} s; ${(journalBytes / GIB).toFixed(2)} GiB on disk`);

  const startups: StartupSample[] = [{ kind: 'empty data dir', readyMs: created.emptyReadyMs, busyAfterReadyMs: null, busyCpuSeconds: null, rssAtReady: null, rssAfterScrub: null, stopMs: null }];
  for (let i = 1; i <= 3; i += 1) {
    // The first waits for the background scrub; the others stop as soon as they are ready.
    const sample = await measureStartup(snapshot.root, dataDir, `warm page cache #${i}${i === 1 ? ', then the scrub' : ''}`, { waitScrub: i === 1 });
    startups.push(sample);
    log(`(a) start-up ${sample.kind}: ready after ${sample.readyMs.toFixed(0)} ms${i === 1 ? `, busy ${sample.busyAfterReadyMs} ms more` : ''}, RSS ${sample.rssAtReady?.vmRssMiB} MiB`);
  }
  if (config.coldStart) {
    const eviction = await evictFromPageCache(created.volumeDir);
    const cold = await measureStartup(snapshot.root, dataDir, 'cold page cache, then the scrub', { waitScrub: true, eviction });
    startups.push(cold);
    log(`(a) start-up, cold page cache (volume files evicted: ${eviction.cachedBeforeMiB} -> ${eviction.cachedAfterMiB} MiB cached): ready after ${cold.readyMs.toFixed(0)} ms, busy ${cold.busyAfterReadyMs} ms more`);
  }
  let startupProfile: unknown = null;
  if (config.cpuProfDir) {
    // Profiled separately (and left out of the figures): start to ready, nothing else.
    await measureStartup(snapshot.root, dataDir, 'profiled', { waitScrub: false, nodeArgs: profileArgs(config, 'pit-a-startup.cpuprofile') });
    startupProfile = summariseProfileFile(config, 'pit-a-startup.cpuprofile');
  }

  log(`(a) start-up for the mounts (warm), then ${config.scrubPoints} mounts during the scrub and ${config.points} after it`);
  const random = new Random(config.seed + 17);
  const daemon = await startHindsightDaemon({ root: snapshot.root, dataDir, nodeArgs: profileArgs(config, 'pit-a.cpuprofile') });
  const samples: PointSample[] = [];
  const memory: Record<string, ProcMemory> = {};
  let scrub;
  let info: unknown;
  let stopMs = NaN;
  try {
    const readyAt = Date.now();
    const measured: StartupSample = { kind: 'warm page cache #4 (the daemon measured below), with mounts during the scrub', readyMs: daemon.readyMs, busyAfterReadyMs: null, busyCpuSeconds: null, rssAtReady: procMemory(daemon.pid), rssAfterScrub: null, stopMs: null };
    startups.push(measured);
    memory.atReady = measured.rssAtReady as ProcMemory;
    await daemon.api.request('GET', '/health');
    for (const point of choosePoints(history, config.scrubPoints, random)) {
      samples.push(await probePoint(daemon, probe, history, config, random, point, 'during-scrub', samples.length % 2 === 0 ? 'hot' : 'cold'));
    }
    scrub = await waitForQuiet(daemon.pid, { maxMs: 600_000 });
    memory.afterScrub = procMemory(daemon.pid);
    // Ready to quiet, the mounts during the scrub included.
    measured.busyAfterReadyMs = Math.max(0, Date.now() - readyAt - 500);
    measured.rssAfterScrub = memory.afterScrub;
    info = (await daemon.api.request('GET', '/volumes/pit')).body;
    const points = choosePoints(history, config.points, random);
    for (let i = 0; i < points.length; i += 1) {
      const sample = await probePoint(daemon, probe, history, config, random, points[i], 'steady', i % 2 === 0 ? 'hot' : 'cold');
      samples.push(sample);
      if (sample.problems.length > 0) log(`    WRONG DATA: ${sample.problems.join('; ')}`);
      if ((i + 1) % 20 === 0) log(`    ${i + 1}/${points.length} points: last mount ${sample.mountMs.toFixed(1)} ms, ttfb ${sample.ttfbMs.toFixed(1)} ms, 64 MiB in ${sample.seqReadMs.toFixed(0)} ms`);
    }
    memory.afterMounts = procMemory(daemon.pid);
  } finally {
    stopMs = await daemon.stop();
  }
  startups[startups.length - 1].stopMs = stopMs;
  const profile = summariseProfileFile(config, 'pit-a.cpuprofile');
  fs.rmSync(dataDir, { recursive: true, force: true });
  const steady = samples.filter((s) => s.phase === 'steady');
  const duringScrub = samples.filter((s) => s.phase === 'during-scrub');
  const summary = summarisePoints(steady);
  return {
    volume: {
      sizeBytes: config.sizeBytes, seqReadMiB: config.seqReadBytes / MIB, writes: history.writes, flushes: history.flushes, records: history.seqLast,
      hotZoneStarts: history.hotZoneStarts, hotZoneBytes: config.hotZoneBytes, hotFraction: config.hotFraction,
      historySpan: `${formatTimeMicros(history.timeFirstUs)} .. ${formatTimeMicros(history.timeLastUs)}`,
      buildSeconds: round1(history.buildMs / 1000), closeMs: round1(history.closeMs), syncSeconds: round1(syncMs / 1000),
      bytesOnDisk: journalBytes, deviceStatsAfterBuild: history.deviceStats, volumeInfoAfterStart: info,
    },
    startup: startups,
    startupSummary: {
      emptyDataDirReadyMs: round1(created.emptyReadyMs),
      warmReadyMs: stat(startups.filter((x) => x.kind.startsWith('warm')).map((x) => x.readyMs)),
      coldReadyMs: startups.find((x) => x.kind.startsWith('cold'))?.readyMs ?? null,
      scrubAfterWarmStartMs: startups.find((x) => x.kind.startsWith('warm page cache #1'))?.busyAfterReadyMs ?? null,
    },
    startupProfile,
    scrubAfterMainStart: scrub,
    memory,
    stopMs: round1(stopMs),
    points: summary,
    pointsDuringScrub: summarisePoints(duringScrub),
    target: {
      mountMs: MOUNT_TARGET_MS,
      medianMet: summary.mountMs.median <= MOUNT_TARGET_MS,
      p99Met: summary.mountMs.p99 <= MOUNT_TARGET_MS,
    },
    wrongData: samples.filter((s) => s.problems.length > 0).map((s) => ({ at: s.at, seq: s.seq, problems: s.problems })),
    profile,
    samples: samples.map((s) => ({ ...s, mountMs: round1(s.mountMs), serverMountMs: round1(s.serverMountMs), connectMs: round1(s.connectMs), firstReadMs: round1(s.firstReadMs), ttfbMs: round1(s.ttfbMs), mountToFirstByteMs: round1(s.mountToFirstByteMs), seqReadMs: round1(s.seqReadMs), seqReadMiBps: round1(s.seqReadMiBps), unmountMs: round1(s.unmountMs) })),
  };
}

// ---- (b) sequential read, (c) restore ----

const READ_SERVERS = ['hs-point', 'hs-live', 'qemu-nbd', 'nbdkit'] as const;
type ReadServer = (typeof READ_SERVERS)[number];
/**
 * Every qemu-img line writes with `-t writeback`, so that it ends with an fdatasync of the
 * image as `hindsight restore` does (qemu-img convert's default destination cache mode is
 * `unsafe`: no sync at all); the `-t unsafe` line shows what the default costs.
 */
const RESTORE_LINES = ['hindsight-restore', 'qemu-img<-qemu-nbd', 'qemu-img<-nbdkit', 'qemu-img<-hindsight-mount', 'qemu-img-local', 'qemu-img<-qemu-nbd -t unsafe'] as const;
type RestoreLine = (typeof RESTORE_LINES)[number];
const RESTORE_INFO_ONLY: RestoreLine[] = ['qemu-img<-hindsight-mount', 'qemu-img-local', 'qemu-img<-qemu-nbd -t unsafe'];

function rotate<T>(items: readonly T[], by: number): T[] {
  const shift = by % items.length;
  return [...items.slice(shift), ...items.slice(0, shift)];
}

interface ReadSample {
  server: ReadServer;
  line: string;
  repetition: number;
  value: number;
  detail: Record<string, number>;
}

interface RestoreSample {
  line: RestoreLine;
  repetition: number;
  seconds: number;
  mibPerSec: number;
  jobSeconds?: number;
  sha256Ok?: boolean;
}

async function restoreCli(daemon: HindsightDaemon, root: string, seq: number, target: string): Promise<{ wallMs: number; result: { sha256: string; seconds: number; dataBytes: number } }> {
  const { stdout, elapsedMs } = await runCommand(process.execPath, [
    path.join(root, 'bin', 'hindsight.js'), 'restore', 'seq', '--at', `seq:${seq}`, '--to', target, '--api', daemon.apiUrl, '--json', '--no-progress',
  ], { timeoutMs: 900_000 });
  return { wallMs: elapsedMs, result: JSON.parse(stdout) as { sha256: string; seconds: number; dataBytes: number } };
}

async function sha256OfExport(uri: string): Promise<string> {
  const { stdout } = await runCommand('sh', ['-c', `nbdcopy '${uri}' - | sha256sum`], { timeoutMs: 600_000 });
  return stdout.split(' ')[0];
}

async function partBC(config: Config, snapshot: HindsightSnapshot, modules: HindsightModules, tmpRoot: string) {
  const dataDir = path.join(tmpRoot, 'data-b');
  log(`(b/c) creating a ${config.seqSizeBytes / GIB} GiB volume through the API`);
  const created = await createVolume(snapshot.root, dataDir, 'seq', config.seqSizeBytes);
  const phaseBigWrites = Math.max(1, Math.round(config.seqSizeBytes / 16 / MIB));
  const phaseSmallWrites = Math.max(1, Math.round(config.seqSizeBytes / 64 / KIB4));
  log(`(b/c) fill with 1 MiB writes, then two overwrite phases of ${phaseBigWrites} x 1 MiB + ${phaseSmallWrites} x 4 KiB at random places`);
  const volume: SeqVolume = await buildSeqVolume(modules, {
    volumeDir: created.volumeDir, volumeName: 'seq', volumeIdHex: created.id, sizeBytes: config.seqSizeBytes,
    phaseBigWrites, phaseSmallWrites, seed: config.seed + 1, log,
  });
  await sync();
  log(`(b/c) built in ${(volume.buildMs / 1000).toFixed(1)} s: old point seq ${volume.pointSeq}, latest seq ${volume.seqLast}`);
  const daemon = await startHindsightDaemon({ root: snapshot.root, dataDir, nodeArgs: profileArgs(config, 'pit-bc.cpuprofile') });
  const rawFile = path.join(tmpRoot, 'old-point.raw');
  const outFile = path.join(tmpRoot, 'restore-out.img');
  const readSamples: ReadSample[] = [];
  const restoreSamples: RestoreSample[] = [];
  const checks: Record<string, unknown> = {};
  const readLines = ['seq-read-1m', 'nbdcopy-out'].map((id) => LINES.find((line) => line.id === id) as LineSpec);
  try {
    const quiet = await waitForQuiet(daemon.pid, { maxMs: 600_000 });
    log(`(b/c) daemon ready in ${daemon.readyMs.toFixed(0)} ms, quiet ${quiet.ms} ms later`);
    await sync();
    const first = await restoreCli(daemon, snapshot.root, volume.pointSeq, rawFile);
    checks.restoreSha256 = { got: first.result.sha256, expected: volume.sha256Point, ok: first.result.sha256 === volume.sha256Point };
    log(`(b/c) restored the old point to the peers' raw file in ${(first.wallMs / 1000).toFixed(2)} s; sha256 ${first.result.sha256 === volume.sha256Point ? 'matches the model' : 'DIFFERS from the model'}`);
    // The bytes each Hindsight export serves, checked once against the model (not timed).
    const mount = await daemon.api.request<MountView>('POST', '/mounts', { volume: 'seq', at: `seq:${volume.pointSeq}`, name: 'seq-old' });
    const pointSha = await sha256OfExport(mount.body.uri);
    await daemon.api.request('DELETE', '/mounts/seq-old?force=true');
    const liveSha = await sha256OfExport(`nbd://127.0.0.1:${daemon.nbdPort}/seq`);
    checks.mountSha256 = { got: pointSha, expected: volume.sha256Point, ok: pointSha === volume.sha256Point };
    checks.liveSha256 = { got: liveSha, expected: volume.sha256Latest, ok: liveSha === volume.sha256Latest };
    checks.pointDiffersFromLive = volume.sha256Point !== volume.sha256Latest;
    log(`(b/c) served bytes: old point ${pointSha === volume.sha256Point ? 'ok' : 'WRONG'}, live ${liveSha === volume.sha256Latest ? 'ok' : 'WRONG'}`);

    if (config.parts.includes('b')) {
      for (let repetition = 0; repetition < config.runs; repetition += 1) {
        for (const server of rotate(READ_SERVERS, repetition)) {
          const workDir = path.join(tmpRoot, `turn-${repetition}-${server}`);
          fs.mkdirSync(workDir);
          let uri: string;
          let stop: () => Promise<unknown>;
          if (server === 'hs-point') {
            const mounted = await daemon.api.request<MountView>('POST', '/mounts', { volume: 'seq', at: `seq:${volume.pointSeq}`, name: 'seq-old' });
            uri = mounted.body.uri;
            stop = () => daemon.api.request('DELETE', '/mounts/seq-old?force=true');
          } else if (server === 'hs-live') {
            uri = `nbd://127.0.0.1:${daemon.nbdPort}/seq`;
            stop = async () => undefined;
          } else {
            const peer = await startPeerOn(server, rawFile, 'bench');
            uri = peer.uri;
            stop = () => peer.stop();
          }
          try {
            const context: TurnContext = {
              uri, workDir, sizeBytes: config.seqSizeBytes, workingSetBytes: config.seqSizeBytes, seconds: config.seconds,
              rampSeconds: config.rampSeconds, copySourceFile: '', copyBytes: 0,
            };
            for (const line of readLines) {
              const result = await line.run(context);
              readSamples.push({ server, line: line.id, repetition, value: result.value, detail: result.detail });
              log(`  run ${repetition + 1} ${server.padEnd(9)} ${line.id.padEnd(12)} ${result.value.toFixed(0).padStart(7)} MiB/s`);
            }
          } finally {
            await stop();
            fs.rmSync(workDir, { recursive: true, force: true });
          }
        }
      }
    }

    if (config.parts.includes('c')) {
      // Untimed warm-up: on this VM the first multi-GiB write into memory the guest has not
      // touched lately costs several times the system time of later ones (measured: 10 s of
      // sys CPU for the first 4 GiB restore after a daemon start, 3.5 s for the next ones),
      // which would land on whichever line runs first.
      const warmup = await runCommand('qemu-img', ['convert', '-t', 'writeback', '-f', 'raw', '-O', 'raw', rawFile, outFile], { timeoutMs: 900_000 });
      fs.rmSync(outFile, { force: true });
      await sync();
      checks.restoreWarmupSeconds = Math.round(warmup.elapsedMs / 10) / 100;
      log(`(c) warm-up copy (untimed): ${(warmup.elapsedMs / 1000).toFixed(2)} s`);
      for (let repetition = 0; repetition < config.runs; repetition += 1) {
        for (const line of rotate(RESTORE_LINES, repetition)) {
          let source = '';
          let teardown: () => Promise<unknown> = async () => undefined;
          if (line === 'qemu-img<-qemu-nbd' || line === 'qemu-img<-nbdkit' || line === 'qemu-img<-qemu-nbd -t unsafe') {
            const peer = await startPeerOn(line === 'qemu-img<-nbdkit' ? 'nbdkit' : 'qemu-nbd', rawFile, 'bench');
            source = peer.uri;
            teardown = () => peer.stop();
          } else if (line === 'qemu-img<-hindsight-mount') {
            const mounted = await daemon.api.request<MountView>('POST', '/mounts', { volume: 'seq', at: `seq:${volume.pointSeq}`, name: 'seq-old' });
            source = mounted.body.uri;
            teardown = () => daemon.api.request('DELETE', '/mounts/seq-old?force=true');
          } else if (line === 'qemu-img-local') {
            source = rawFile;
          }
          try {
            await sync();
            let sample: RestoreSample;
            if (line === 'hindsight-restore') {
              const restored = await restoreCli(daemon, snapshot.root, volume.pointSeq, outFile);
              sample = { line, repetition, seconds: restored.wallMs / 1000, mibPerSec: config.seqSizeBytes / MIB / (restored.wallMs / 1000), jobSeconds: restored.result.seconds, sha256Ok: restored.result.sha256 === volume.sha256Point };
            } else {
              const cache = line === 'qemu-img<-qemu-nbd -t unsafe' ? 'unsafe' : 'writeback';
              const { elapsedMs } = await runCommand('qemu-img', ['convert', '-t', cache, '-f', 'raw', '-O', 'raw', source, outFile], { timeoutMs: 900_000 });
              sample = { line, repetition, seconds: elapsedMs / 1000, mibPerSec: config.seqSizeBytes / MIB / (elapsedMs / 1000) };
            }
            restoreSamples.push(sample);
            log(`  run ${repetition + 1} ${line.padEnd(30)} ${sample.seconds.toFixed(2).padStart(6)} s ${sample.mibPerSec.toFixed(0).padStart(6)} MiB/s${sample.jobSeconds === undefined ? '' : ` (job ${sample.jobSeconds.toFixed(2)} s)`}`);
          } finally {
            await teardown();
            fs.rmSync(outFile, { force: true });
            await sync();
          }
        }
      }
    }
    checks.memoryAtEnd = procMemory(daemon.pid);
  } finally {
    await daemon.stop();
  }
  const profile = summariseProfileFile(config, 'pit-bc.cpuprofile');
  fs.rmSync(dataDir, { recursive: true, force: true });
  fs.rmSync(rawFile, { force: true });

  const read: Record<string, unknown> = {};
  for (const line of readLines) {
    const servers: Record<string, { median: number; runs: number[] }> = {};
    for (const server of READ_SERVERS) {
      const runs = readSamples.filter((s) => s.server === server && s.line === line.id).map((s) => round1(s.value));
      if (runs.length > 0) servers[server] = { median: round1(median(runs)), runs };
    }
    const ratio = (a: ReadServer, b: ReadServer) => (servers[a] && servers[b] ? Math.round((servers[a].median / servers[b].median) * 1000) / 1000 : null);
    const fasterPeer: ReadServer = (servers.nbdkit?.median ?? 0) > (servers['qemu-nbd']?.median ?? 0) ? 'nbdkit' : 'qemu-nbd';
    const pointToQemu = ratio('hs-point', 'qemu-nbd');
    read[line.id] = {
      unit: 'MiB/s', servers,
      ratios: {
        'hs-point/qemu-nbd': pointToQemu, 'hs-point/nbdkit': ratio('hs-point', 'nbdkit'), 'hs-point/fasterPeer': ratio('hs-point', fasterPeer),
        'hs-live/qemu-nbd': ratio('hs-live', 'qemu-nbd'), 'hs-live/nbdkit': ratio('hs-live', 'nbdkit'), 'hs-point/hs-live': ratio('hs-point', 'hs-live'),
        fasterPeer,
      },
      meetsTarget: pointToQemu === null ? null : pointToQemu >= READ_TARGET_RATIO,
    };
  }
  const restore: Record<string, unknown> = {};
  for (const line of RESTORE_LINES) {
    const runs = restoreSamples.filter((s) => s.line === line);
    if (runs.length === 0) continue;
    restore[line] = {
      medianSeconds: Math.round(median(runs.map((s) => s.seconds)) * 100) / 100,
      medianMiBps: round1(median(runs.map((s) => s.mibPerSec))),
      runsSeconds: runs.map((s) => Math.round(s.seconds * 100) / 100),
      ...(line === 'hindsight-restore' ? { jobSeconds: runs.map((s) => Math.round((s.jobSeconds ?? NaN) * 100) / 100), sha256Ok: runs.every((s) => s.sha256Ok) } : {}),
      informational: RESTORE_INFO_ONLY.includes(line),
    };
  }
  const restoreMedian = (line: RestoreLine) => (restore[line] as { medianSeconds: number } | undefined)?.medianSeconds;
  const hs = restoreMedian('hindsight-restore');
  const peers = (['qemu-img<-qemu-nbd', 'qemu-img<-nbdkit'] as const).filter((line) => restoreMedian(line) !== undefined);
  const fastest = peers.reduce<RestoreLine | null>((best, line) => (best === null || (restoreMedian(line) as number) < (restoreMedian(best) as number) ? line : best), null);
  const restoreRatios = hs === undefined ? {} : {
    'speed hs/qemu-img<-qemu-nbd': restoreMedian('qemu-img<-qemu-nbd') ? Math.round(((restoreMedian('qemu-img<-qemu-nbd') as number) / hs) * 1000) / 1000 : null,
    'speed hs/qemu-img<-nbdkit': restoreMedian('qemu-img<-nbdkit') ? Math.round(((restoreMedian('qemu-img<-nbdkit') as number) / hs) * 1000) / 1000 : null,
    fasterPeer: fastest,
    'speed hs/fasterPeer': fastest ? Math.round(((restoreMedian(fastest) as number) / hs) * 1000) / 1000 : null,
  };
  return {
    volume: {
      sizeBytes: config.seqSizeBytes, pointSeq: volume.pointSeq, seqLast: volume.seqLast, phaseBigWrites, phaseSmallWrites,
      buildSeconds: round1(volume.buildMs / 1000), deviceStats: volume.deviceStats,
    },
    checks,
    read,
    restore,
    restoreRatios,
    profile,
    readSamples,
    restoreSamples,
  };
}

// ---- report ----

function fmt(value: number | null | undefined, digits = 0): string {
  if (value === null || value === undefined || Number.isNaN(value)) return '-';
  return digits === 0 ? Math.round(value).toLocaleString('en-US') : value.toFixed(digits);
}

type PartAReport = Awaited<ReturnType<typeof partA>>;
type PartBCReport = Awaited<ReturnType<typeof partBC>>;

function tablesA(a: PartAReport): string {
  const rows: string[][] = [];
  const row = (name: string, s: Stat, target = '') => rows.push([name, fmt(s.median, 1), fmt(s.p99, 1), fmt(s.max, 1), target]);
  const p = a.points;
  const t = MOUNT_TARGET_MS;
  row('mount: POST /mounts, client wall (ms)', p.mountMs, `median ${p.mountMs.median <= t ? 'yes' : 'NO'}, p99 ${p.mountMs.p99 <= t ? 'yes' : 'NO'} (<= ${t} ms)`);
  row('mount: server mountMs (ms)', p.serverMountMs);
  row('connect + handshake, libnbd (ms)', p.connectMs);
  row('first 4 KiB read (ms)', p.firstReadMs);
  row('time to first byte = connect + 4 KiB (ms)', p.ttfbMs);
  row('mount + first byte (ms)', p.mountToFirstByteMs);
  const seqMiB = `${a.volume.seqReadMiB} MiB`;
  row(`${seqMiB} sequential read, hot zone (ms)`, p.seqReadHotMs);
  row(`${seqMiB} sequential read, random place (ms)`, p.seqReadColdMs);
  row(`${seqMiB} sequential read, all (MiB/s)`, p.seqReadMiBps);
  row('unmount: DELETE /mounts (ms)', p.unmountMs);
  const d = a.pointsDuringScrub;
  if (d.mountMs.n > 0) {
    row(`during the start-up scrub (n=${d.mountMs.n}): mount (ms)`, d.mountMs);
    row('during the scrub: time to first byte (ms)', d.ttfbMs);
    row(`during the scrub: ${seqMiB} read (ms)`, d.seqReadMs);
  }
  const header = ['metric (100 points unless noted)', 'median', 'p99', 'max', 'target'];
  const table = [header, header.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n');
  const startRows = a.startup.map((s) => [s.kind, fmt(s.readyMs), fmt(s.busyAfterReadyMs), fmt(s.busyCpuSeconds, 1), fmt(s.rssAtReady?.vmRssMiB), fmt(s.rssAfterScrub?.vmRssMiB), fmt(s.stopMs)]);
  const startHeader = ['start-up', 'ready (ms)', 'then busy (scrub, ms)', 'scrub CPU (s)', 'RSS at ready (MiB)', 'RSS after scrub (MiB)', 'stop (ms)'];
  const startTable = [startHeader, startHeader.map(() => '---'), ...startRows].map((r) => `| ${r.join(' | ')} |`).join('\n');
  const m = a.memory;
  const memLine = `RSS of the measured daemon: ${fmt(m.atReady?.vmRssMiB)} MiB at ready, ${fmt(m.afterScrub?.vmRssMiB)} MiB after the scrub, ${fmt(m.afterMounts?.vmRssMiB)} MiB after the mounts (peak ${fmt(m.afterMounts?.vmHwmMiB)} MiB)`;
  const su = a.startupSummary;
  const startLine = `start-up to ready: empty data dir ${fmt(su.emptyDataDirReadyMs)} ms; this volume, warm page cache median ${fmt(su.warmReadyMs.median)} ms (n=${su.warmReadyMs.n}, max ${fmt(su.warmReadyMs.max)}), cold ${fmt(su.coldReadyMs)} ms`;
  return `${table}\n\n${startTable}\n\n${startLine}\n${memLine}`;
}

function tablesBC(bc: PartBCReport): string {
  const out: string[] = [];
  const readEntries = Object.entries(bc.read) as Array<[string, { servers: Record<string, { median: number }>; ratios: Record<string, number | string | null>; meetsTarget: boolean | null }]>;
  if (readEntries.length > 0 && readEntries.some(([, line]) => Object.keys(line.servers).length > 0)) {
    const header = ['line', 'unit', ...READ_SERVERS, 'point/qemu-nbd', 'point/nbdkit', 'live/qemu-nbd', `point >= ${READ_TARGET_RATIO}x qemu-nbd`];
    const rows = readEntries.map(([id, line]) => [
      id, 'MiB/s', ...READ_SERVERS.map((s) => fmt(line.servers[s]?.median)),
      fmt(line.ratios['hs-point/qemu-nbd'] as number, 2), fmt(line.ratios['hs-point/nbdkit'] as number, 2), fmt(line.ratios['hs-live/qemu-nbd'] as number, 2),
      line.meetsTarget === null ? '-' : line.meetsTarget ? 'yes' : 'NO',
    ]);
    out.push([header, header.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n'));
  }
  const restoreEntries = Object.entries(bc.restore) as Array<[string, { medianSeconds: number; medianMiBps: number; runsSeconds: number[]; informational: boolean }]>;
  if (restoreEntries.length > 0) {
    const hs = restoreEntries.find(([id]) => id === 'hindsight-restore')?.[1];
    const header = ['restore of the old point to a file', 'median (s)', 'MiB/s', 'runs (s)', 'HS speed / this'];
    const rows = restoreEntries.map(([id, line]) => [
      `${id}${line.informational ? ' (info)' : ''}`, fmt(line.medianSeconds, 2), fmt(line.medianMiBps), line.runsSeconds.map((s) => s.toFixed(2)).join(' / '),
      hs && id !== 'hindsight-restore' ? fmt(line.medianSeconds / hs.medianSeconds, 2) : '-',
    ]);
    out.push([header, header.map(() => '---'), ...rows].map((r) => `| ${r.join(' | ')} |`).join('\n'));
  }
  return out.join('\n\n');
}

function estimateMinutes(config: Config): number {
  // Calibrated on the 2-vCPU VM of docs/BENCHMARKS.md (a full default run: about 6.5 min).
  let seconds = 20;
  if (config.parts.includes('a')) seconds += 30 + 60 * (config.writes / 1e6) + 0.1 * (config.points + config.scrubPoints);
  if (config.parts.some((p) => p !== 'a')) {
    const gib = config.seqSizeBytes / GIB;
    seconds += 20 + 8 * gib;
    if (config.parts.includes('b')) seconds += config.runs * READ_SERVERS.length * (config.seconds + config.rampSeconds + 2 + 0.5 * gib);
    if (config.parts.includes('c')) seconds += 3 * gib + config.runs * RESTORE_LINES.length * 1.5 * gib;
  }
  return seconds / 60;
}

async function main(): Promise<number> {
  const config = parseConfig(process.argv.slice(2));
  return withBenchRun(config, 'hindsight-pit-', async ({ tmpRoot, facts }) => {
    const started = Date.now();
    let probe: NbdProbe | null = null;
    try {
      log(`temp dir ${tmpRoot}; parts ${config.parts.join(',')}; about ${estimateMinutes(config).toFixed(0)} min`);
      const snapshot = await prepareBuild(tmpRoot, config.build);
      const modules = await loadHindsightModules(snapshot.root);
      probe = await NbdProbe.start(config.python);
      const qemuImg = (await runCommand('qemu-img', ['--version'], { timeoutMs: 10_000 })).stdout.split('\n')[0];
      const loadAverages: Record<string, number[]> = { start: os.loadavg() };
      const a = config.parts.includes('a') ? await partA(config, snapshot, modules, probe, tmpRoot) : null;
      loadAverages.afterA = os.loadavg();
      const bc = config.parts.some((p) => p !== 'a') ? await partBC(config, snapshot, modules, tmpRoot) : null;
      loadAverages.end = os.loadavg();
      const wrongData = (a?.wrongData.length ?? 0) > 0
        || (bc !== null && Object.entries(bc.checks).some(([key, value]) => key.endsWith('Sha256') && !(value as { ok: boolean }).ok))
        || (bc !== null && (bc.restore['hindsight-restore'] as { sha256Ok?: boolean } | undefined)?.sha256Ok === false);
      const targets = {
        mountP99Within100ms: a ? a.target.p99Met : null,
        mountMedianWithin100ms: a ? a.target.medianMet : null,
        oldPointSeqReadAtLeast08xQemuNbd: bc ? (bc.read['seq-read-1m'] as { meetsTarget: boolean | null } | undefined)?.meetsTarget ?? null : null,
        oldPointNbdcopyAtLeast08xQemuNbd: bc ? (bc.read['nbdcopy-out'] as { meetsTarget: boolean | null } | undefined)?.meetsTarget ?? null : null,
        restoreAtLeast08xFasterPeer: bc && (bc.restoreRatios as Record<string, number | null>)['speed hs/fasterPeer'] != null
          ? ((bc.restoreRatios as Record<string, number>)['speed hs/fasterPeer'] >= READ_TARGET_RATIO) : null,
      };
      const report = {
        benchmark: 'pit-bench',
        config: { ...config, out: undefined },
        hindsightBuild: buildRecord(snapshot),
        machine: { ...facts, qemuImg, libnbdPython: probe.version, loadAverages },
        minutes: round1((Date.now() - started) / 60_000),
        targets,
        wrongData,
        mountLatency: a,
        readAndRestore: bc,
      };
      if (a) process.stderr.write(`\n(a) mount latency, ${a.volume.sizeBytes / GIB} GiB volume, ${fmt(a.volume.records)} records\n\n${tablesA(a)}\n`);
      if (bc) process.stderr.write(`\n(b/c) ${bc.volume.sizeBytes / GIB} GiB volume, old point seq ${bc.volume.pointSeq} of ${bc.volume.seqLast}, medians of ${config.runs}\n\n${tablesBC(bc)}\n`);
      if (wrongData) process.stderr.write('\nWARNING: some read returned data that differs from the model (see wrongData / checks in the JSON)\n');
      process.stderr.write(`\ntargets: ${JSON.stringify(targets)}; took ${report.minutes} min\n\n`);
      writeReport(report, config.out);
      const missed = Object.values(targets).some((met) => met === false);
      return missed || wrongData ? 1 : 0;
    } finally {
      await probe?.stop().catch(() => undefined);
    }
  });
}

runMain('pit-bench', main, { stack: true });
