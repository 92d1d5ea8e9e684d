/**
 * Hindsight against qemu-nbd and nbdkit (both serving a raw file on the same disk), same
 * machine, same run. Servers take turns within each repetition (the order rotates every
 * repetition), each turn on fresh storage, so slow drifts in the machine (page cache, other
 * load, thermal) spread over all servers instead of landing on one.
 *
 *   node --import tsx bench/nbd-compare.ts [--runs 3] [--seconds 10] [--build dist|worktree|head]
 *        [--servers hindsight,qemu-nbd,nbdkit] [--lines ...] [--size-gib 4] [--out FILE]
 *
 * Prints progress and a Markdown table on stderr and the JSON summary on stdout; exits 0
 * when every target line is >= 0.8x the faster peer, 1 when one is not, 3 on failure.
 * Hindsight runs from a frozen snapshot of its build (lib/snapshot.ts; default: the
 * working tree compiled into the temp dir; `--build head` for the committed code). Only loopback; temp files under --tmp-dir (default /var/tmp, must not
 * be tmpfs), removed at the end; every server is stopped even on failure or Ctrl-C.
 */
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { buildRecord, log, prepareBuild, runMain, withBenchRun, writeReport } from './lib/run.js';
import { DEFAULT_SERVERS, SERVER_NAMES, startServer } from './lib/servers.js';
import { BUILD_MODES } from './lib/snapshot.js';
import type { BuildMode } from './lib/snapshot.js';
import type { ServerName } from './lib/servers.js';
import { TARGET_RATIO, formatTable, summarise } from './lib/summary.js';
import type { Sample } from './lib/summary.js';
import { LINES, createCopySource } from './lib/workloads.js';
import type { LineSpec, TurnContext } from './lib/workloads.js';

const GIB = 2 ** 30;

interface Config {
  runs: number;
  seconds: number;
  rampSeconds: number;
  sizeBytes: number;
  workingSetBytes: number;
  copyBytes: number;
  servers: ServerName[];
  lines: LineSpec[];
  tmpBase: string;
  out: string | null;
  deadlineMinutes: number;
  build: BuildMode;
}

function parseConfig(argv: string[]): Config {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '10' },
      ramp: { type: 'string', default: '2' },
      'size-gib': { type: 'string', default: '4' },
      'working-set-gib': { type: 'string' },
      'copy-gib': { type: 'string', default: '1' },
      servers: { type: 'string', default: DEFAULT_SERVERS.join(',') },
      lines: { type: 'string', default: LINES.map((l) => l.id).join(',') },
      'tmp-dir': { type: 'string', default: '/var/tmp' },
      out: { type: 'string' },
      'deadline-minutes': { type: 'string', default: '20' },
      build: { type: 'string', default: 'worktree' },
    },
  });
  const servers = values.servers.split(',').map((name) => {
    if (!(SERVER_NAMES as readonly string[]).includes(name)) throw new Error(`unknown server ${name}; pick from ${SERVER_NAMES.join(',')}`);
    return name as ServerName;
  });
  const lines = values.lines.split(',').map((id) => {
    const line = LINES.find((candidate) => candidate.id === id);
    if (!line) throw new Error(`unknown line ${id}; pick from ${LINES.map((l) => l.id).join(',')}`);
    return line;
  });
  if (!(BUILD_MODES as readonly string[]).includes(values.build)) throw new Error(`--build takes ${BUILD_MODES.join('|')}`);
  const sizeBytes = Number(values['size-gib']) * GIB;
  const config: Config = {
    runs: Number(values.runs), seconds: Number(values.seconds), rampSeconds: Number(values.ramp),
    sizeBytes, workingSetBytes: values['working-set-gib'] ? Number(values['working-set-gib']) * GIB : sizeBytes,
    copyBytes: Number(values['copy-gib']) * GIB, servers, lines, tmpBase: values['tmp-dir'],
    out: values.out ?? null, deadlineMinutes: Number(values['deadline-minutes']), build: values.build as BuildMode,
  };
  if (!(config.runs >= 1 && config.seconds >= 1 && config.rampSeconds >= 0)) throw new Error('--runs and --seconds must be >= 1');
  if (!(config.workingSetBytes <= sizeBytes && config.copyBytes <= sizeBytes)) throw new Error('working set and copy must fit the export');
  return config;
}

/** Turn order for one repetition: rotated so no server is always first or last. */
function turnOrder(servers: ServerName[], repetition: number): ServerName[] {
  const shift = repetition % servers.length;
  return [...servers.slice(shift), ...servers.slice(0, shift)];
}

interface TurnPaths {
  tmpRoot: string;
  copySourceFile: string;
  hindsightRoot: string;
}

async function runTurn(config: Config, server: ServerName, repetition: number, paths: TurnPaths): Promise<Sample[]> {
  const { tmpRoot, copySourceFile } = paths;
  const workDir = path.join(tmpRoot, `turn-${repetition}-${server}`);
  fs.mkdirSync(workDir);
  const samples: Sample[] = [];
  try {
    const running = await startServer(server, { workDir, sizeBytes: config.sizeBytes, repoDir: paths.hindsightRoot });
    try {
      const context: TurnContext = {
        uri: running.uri, workDir, sizeBytes: config.sizeBytes, workingSetBytes: config.workingSetBytes,
        seconds: config.seconds, rampSeconds: config.rampSeconds, copySourceFile, copyBytes: config.copyBytes,
      };
      for (const line of config.lines) {
        const result = await line.run(context);
        samples.push({ lineId: line.id, server, repetition, value: result.value, detail: result.detail });
        log(`  ${server.padEnd(9)} ${line.id.padEnd(18)} ${result.value.toFixed(0).padStart(9)} ${line.unit}`);
      }
    } finally {
      await running.stop();
    }
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
  return samples;
}

function estimateMinutes(config: Config): number {
  const fioTimed = config.lines.filter((l) => l.id !== 'fill-seq-write-1m' && !l.id.startsWith('nbdcopy')).length;
  // Fill and copies at a few hundred MiB/s at worst, plus start, stop and syncs.
  const perTurnSeconds = fioTimed * (config.seconds + config.rampSeconds + 1) + (3 * config.sizeBytes) / GIB + 15;
  return (config.runs * config.servers.length * perTurnSeconds) / 60;
}

async function main(): Promise<number> {
  const config = parseConfig(process.argv.slice(2));
  return withBenchRun(config, 'hindsight-bench-', async ({ tmpRoot, facts }) => {
    log(`temp dir ${tmpRoot}; ${config.runs} runs x ${config.servers.join(', ')}; about ${estimateMinutes(config).toFixed(1)} min`);
    const hindsight = await prepareBuild(tmpRoot, config.build);
    const copySourceFile = path.join(tmpRoot, 'copy-source.bin');
    await createCopySource(copySourceFile, config.copyBytes);
    const samples: Sample[] = [];
    for (let repetition = 0; repetition < config.runs; repetition += 1) {
      for (const server of turnOrder(config.servers, repetition)) {
        log(`run ${repetition + 1}/${config.runs}: ${server}`);
        samples.push(...await runTurn(config, server, repetition, { tmpRoot, copySourceFile, hindsightRoot: hindsight.root }));
      }
    }
    const summary = summarise(config.lines, config.servers, samples);
    const targetLines = Object.values(summary).filter((line) => line.target);
    const report = {
      benchmark: 'nbd-compare',
      config: {
        runs: config.runs, seconds: config.seconds, rampSeconds: config.rampSeconds, iodepth: 16,
        sizeBytes: config.sizeBytes, workingSetBytes: config.workingSetBytes, copyBytes: config.copyBytes,
        servers: config.servers, targetRatio: TARGET_RATIO,
      },
      hindsightBuild: buildRecord(hindsight),
      machine: { ...facts, loadAverage1mAtEnd: (await import('node:os')).loadavg()[0] },
      lines: summary,
      allTargetLinesMet: targetLines.every((line) => line.ratios.meetsTarget === true),
      samples,
    };
    process.stderr.write(`\n${formatTable(summary, config.servers)}\n\n`);
    writeReport(report, config.out);
    return report.allTargetLinesMet ? 0 : 1;
  });
}

runMain('nbd-compare', main);
