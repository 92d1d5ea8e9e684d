/**
 * CPU profile of Hindsight under one benchmark line at a time. The volume is first filled
 * by an unprofiled daemon (as in nbd-compare, so writes are overwrites and reads hit data);
 * then a daemon with `node --cpu-prof` is started on the same data directory, the line runs,
 * and SIGINT stops it so node writes the profile, which is summarised (cpuprofile-top.ts).
 *
 *   node --import tsx bench/nbd-profile.ts [--lines rand-write-4k,seq-write-1m] [--seconds 10]
 *        [--prof-dir /var/tmp/hs-prof] [--no-fill] [--top 25]
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
import { LINES } from './lib/workloads.js';
import type { LineSpec, TurnContext } from './lib/workloads.js';

const REPO_DIR = fileURLToPath(new URL('..', import.meta.url));
const GIB = 2 ** 30;

async function profileLine(line: LineSpec, options: { seconds: number; sizeBytes: number; profDir: string; fill: boolean; top: number }): Promise<void> {
  const workDir = fs.mkdtempSync('/var/tmp/hindsight-prof-');
  try {
    const context = (uri: string): TurnContext => ({
      uri, workDir, sizeBytes: options.sizeBytes, workingSetBytes: options.sizeBytes, seconds: options.seconds,
      rampSeconds: 2, copySourceFile: path.join(workDir, 'copy-source.bin'), copyBytes: GIB,
    });
    if (options.fill) {
      const plain = await startServer('hindsight', { workDir, sizeBytes: options.sizeBytes, repoDir: REPO_DIR });
      try {
        await (LINES.find((l) => l.id === 'fill-seq-write-1m') as LineSpec).run(context(plain.uri));
      } finally {
        await plain.stop();
      }
    }
    const profileName = `${line.id}-${Date.now()}.cpuprofile`;
    const profiled = await startServer('hindsight', {
      workDir, sizeBytes: options.sizeBytes, repoDir: REPO_DIR,
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
    },
  });
  fs.mkdirSync(values['prof-dir'], { recursive: true });
  const stop = () => {
    killAllProcesses();
    process.exit(130);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  for (const id of values.lines.split(',')) {
    const line = LINES.find((candidate) => candidate.id === id);
    if (!line) throw new Error(`unknown line ${id}; pick from ${LINES.map((l) => l.id).join(',')}`);
    await profileLine(line, {
      seconds: Number(values.seconds), sizeBytes: Number(values['size-gib']) * GIB, profDir: values['prof-dir'],
      fill: !values['no-fill'], top: Number(values.top),
    });
  }
}

main().catch((err) => {
  killAllProcesses();
  process.stderr.write(`nbd-profile: ${(err as Error).message}\n`);
  process.exitCode = 3;
});
