/**
 * The frame of one benchmark run, shared by nbd-compare.ts and pit-bench.ts: a temp dir on
 * the real disk (never tmpfs), removed at the end; every child process (lib/proc.ts) stopped
 * at the end, on Ctrl-C or SIGTERM (exit 130) and when the deadline passes (exit 2); the
 * frozen Hindsight build (lib/snapshot.ts); the JSON report on stdout and in --out.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { machineFacts } from './machine.js';
import type { MachineFacts } from './machine.js';
import { killAllProcesses, liveProcessCount } from './proc.js';
import { prepareHindsight } from './snapshot.js';
import type { BuildMode, HindsightSnapshot } from './snapshot.js';

export const REPO_DIR = fileURLToPath(new URL('../..', import.meta.url));
const TMPFS_MAGIC = 0x01021994;

export function log(message: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

export interface BenchRunConfig {
  /** Where the temp dir goes (--tmp-dir); must not be tmpfs. */
  tmpBase: string;
  /** The watchdog stops everything after this long (--deadline-minutes). */
  deadlineMinutes: number;
}

export interface BenchRun {
  /** This run's temp dir, removed at the end. */
  tmpRoot: string;
  /** Machine and tool facts, taken before the temp dir was made. */
  facts: MachineFacts;
}

/**
 * Runs `body` in a fresh temp dir `tmpBase/PREFIXXXXXXX` with the signal handlers and the
 * watchdog in place; afterwards (also on failure) kills every child process still running,
 * removes the temp dir and warns about children that were still alive.
 */
export async function withBenchRun<T>(config: BenchRunConfig, prefix: string, body: (run: BenchRun) => Promise<T>): Promise<T> {
  if (fs.statfsSync(config.tmpBase).type === TMPFS_MAGIC) throw new Error(`${config.tmpBase} is tmpfs; pick a directory on the real disk`);
  const facts = machineFacts(REPO_DIR);
  const tmpRoot = fs.mkdtempSync(path.join(config.tmpBase, prefix));
  const cleanup = () => {
    killAllProcesses();
    fs.rmSync(tmpRoot, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals) => {
    log(`${signal}: stopping servers, removing ${tmpRoot}`);
    cleanup();
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const watchdog = setTimeout(() => {
    log(`deadline of ${config.deadlineMinutes} min passed: stopping everything`);
    cleanup();
    process.exit(2);
  }, config.deadlineMinutes * 60_000);
  watchdog.unref();
  try {
    return await body({ tmpRoot, facts });
  } finally {
    clearTimeout(watchdog);
    cleanup();
    if (liveProcessCount() > 0) log(`warning: ${liveProcessCount()} child processes were still running and got SIGKILL`);
  }
}

/** The frozen build of this repository for the run, logged (what ran must be on record). */
export async function prepareBuild(tmpRoot: string, mode: BuildMode): Promise<HindsightSnapshot> {
  const snapshot = await prepareHindsight(REPO_DIR, tmpRoot, mode);
  log(`hindsight build: ${snapshot.mode} of ${snapshot.gitHead}${snapshot.dirtySrcFiles.length ? ` + ${snapshot.dirtySrcFiles.length} uncommitted src files` : ''} (dist sha256 ${snapshot.distSha256})`);
  return snapshot;
}

/** The part of a snapshot that goes into a report. */
export function buildRecord(snapshot: HindsightSnapshot): Omit<HindsightSnapshot, 'root'> {
  return { mode: snapshot.mode, gitHead: snapshot.gitHead, dirtySrcFiles: snapshot.dirtySrcFiles, distSha256: snapshot.distSha256 };
}

/** The JSON report: to `out` (directories made as needed) if given, and always to stdout. */
export function writeReport(report: unknown, out: string | null): void {
  const json = `${JSON.stringify(report, null, 2)}\n`;
  if (out) {
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, json);
  }
  process.stdout.write(json);
}

/** Runs a benchmark's main: its number is the exit code; a failure kills every child and exits 3. */
export function runMain(name: string, main: () => Promise<number>, options: { stack?: boolean } = {}): void {
  main().then(
    (code) => { process.exitCode = code; },
    (err) => {
      killAllProcesses();
      const error = err as Error;
      process.stderr.write(`${name}: ${options.stack ? error.stack ?? error.message : error.message}\n`);
      process.exitCode = 3;
    },
  );
}
