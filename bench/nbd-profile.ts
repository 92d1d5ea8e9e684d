/**
 * CPU profile of Hindsight under one benchmark line at a time. The volume is first filled
 * by an unprofiled daemon (as in nbd-compare, so writes are overwrites and reads hit data);
 * then a daemon with `node --cpu-prof` is started on the same data directory, the line runs,
 * and SIGINT stops it so node writes the profile, which is summarised (cpuprofile-top.ts).
 *
 *   node --import tsx bench/nbd-profile.ts [--lines rand-write-4k,seq-write-1m] [--seconds 10]
 *        [--prof-dir /var/tmp/hs-prof] [--no-fill] [--top 25] [--build dist|worktree|head]
 *
 * Profiles stay in --prof-dir (never commit them); the volume's temp dir is removed.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { formatSummary, summariseProfile } from './cpuprofile-top.js';
import { killAllProcesses } from './lib/proc.js';
import { startServer } from './lib/servers.js';
import { BUILD_MODES, prepareHindsight } from './lib/snapshot.js';
import { LINES } from './lib/workloads.js';
import type { LineSpec, TurnContext } from './lib/workloads.js';
import type { BuildMode } from './lib/snapshot.js';

const REPO_DIR = fileURLToPath(new URL('..', import.meta.url));
const GIB = 2 ** 30;

interface ProfileOptions {
  seconds: number;
  sizeBytes: number;
  profDir: string;
  fill: boolean;
  top: number;
  /** Snapshot of the build (lib/snapshot.ts) to start the daemon from. */
  hindsightRoot: string;
}

async function profileLine(line: LineSpec, options: ProfileOptions): Promise<void> {
  const workDir = fs.mkdtempSync('/var/tmp/hindsight-prof-');
  try {
    const context = (uri: string): TurnContext => ({
      uri, workDir, sizeBytes: options.sizeBytes, workingSetBytes: options.sizeBytes, seconds: options.seconds,
      rampSeconds: 2, copySourceFile: path.join(workDir, 'copy-source.bin'), copyBytes: GIB,
    });
    if (options.fill) {
      const plain = await startServer('hindsight', { workDir, sizeBytes: options.sizeBytes, repoDir: options.hindsightRoot });
      try {
        await (LINES.find((l) => l.id === 'fill-seq-write-1m') as LineSpec).run(context(plain.uri));
      } finally {
        await plain.stop();
      }
    }
    const profileName = `${line.id}-${Date.now()}.cpuprofile`;
    const profiled = await startServer('hindsight', {
      workDir, sizeBytes: options.sizeBytes, repoDir: options.hindsightRoot,
      nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${options.profDir}`, `--cpu-prof-name=${profileName}`],
    });
    let result;
    try {
      result = await line.run(context(profiled.uri));
    } finally {
      await profiled.stop();
    }
    process.stdout.write(`== ${line.id}: ${result.value.toFixed(0)} ${line.unit} while profiled\n`);
    process.stdout.write(`${formatSummary(summariseProfile(path.join(options.profDir, profileName)), options.top)}\n\n`);
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      lines: { type: 'string', default: 'rand-write-4k,seq-write-1m' },
      seconds: { type: 'string', default: '10' },
      'size-gib': { type: 'string', default: '4' },
      'prof-dir': { type: 'string', default: '/var/tmp/hs-prof' },
      'no-fill': { type: 'boolean', default: false },
      top: { type: 'string', default: '25' },
      build: { type: 'string', default: 'worktree' },
    },
  });
  if (!(BUILD_MODES as readonly string[]).includes(values.build)) throw new Error(`--build takes ${BUILD_MODES.join('|')}`);
  const buildDir = fs.mkdtempSync('/var/tmp/hindsight-prof-build-');
  fs.mkdirSync(values['prof-dir'], { recursive: true });
  const stop = () => {
    killAllProcesses();
    fs.rmSync(buildDir, { recursive: true, force: true });
    process.exit(130);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    const snapshot = await prepareHindsight(REPO_DIR, buildDir, values.build as BuildMode);
    process.stdout.write(`hindsight build: ${snapshot.mode} of ${snapshot.gitHead} (dist sha256 ${snapshot.distSha256})\n`);
    for (const id of values.lines.split(',')) {
      const line = LINES.find((candidate) => candidate.id === id);
      if (!line) throw new Error(`unknown line ${id}; pick from ${LINES.map((l) => l.id).join(',')}`);
      await profileLine(line, {
        seconds: Number(values.seconds), sizeBytes: Number(values['size-gib']) * GIB, profDir: values['prof-dir'],
        fill: !values['no-fill'], top: Number(values.top), hindsightRoot: snapshot.root,
      });
    }
  } finally {
    fs.rmSync(buildDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  killAllProcesses();
  process.stderr.write(`nbd-profile: ${(err as Error).message}\n`);
  process.exitCode = 3;
});
