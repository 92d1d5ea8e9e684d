/**
 * Starts a real `hindsight serve` process (from dist/, built by `npm test`) on free ports in
 * a temporary data directory, and stops it when the test ends.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLI = path.join(REPO_ROOT, 'bin', 'hindsight.js');

export interface DaemonHandle {
  dataDir: string;
  nbdPort: number;
  apiUrl: string;
  /** The replication listener's port. */
  replicationPort: number;
  process: ChildProcess;
  /** nbd://127.0.0.1:PORT/NAME */
  uri(exportName: string): string;
  stop(): Promise<number | null>;
  kill(): Promise<void>;
  stderr(): string;
}

export interface DaemonOptions {
  /** NAME:SIZE specs created at start. */
  volumes?: string[];
  dataDir?: string;
  extraArgs?: string[];
}

/** Temporary directories made here: removed when the test file's process ends, whatever happened. */
const tempDirs: string[] = [];

export function makeTempDir(prefix = 'hindsight-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  if (tempDirs.length === 0 && !process.env.HINDSIGHT_TEST_KEEP_DIRS) {
    process.once('exit', () => {
      for (const made of tempDirs) {
        try {
          fs.rmSync(made, { recursive: true, force: true });
        } catch {
          // (Still mounted, say: left for the machine's tmp cleaning.)
        }
      }
    });
  }
  tempDirs.push(dir);
  return dir;
}

export async function startDaemon(options: DaemonOptions = {}): Promise<DaemonHandle> {
  const dataDir = options.dataDir ?? makeTempDir();
  const args = [CLI, 'serve', '--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--json', '--log-level', 'warn'];
  for (const volume of options.volumes ?? []) args.push('--create-volume', volume);
  args.push(...(options.extraArgs ?? []));
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const lines = readline.createInterface({ input: child.stdout! });
  const first = await Promise.race([
    new Promise<string>((resolve) => lines.once('line', resolve)),
    exited.then((code) => { throw new Error(`daemon exited with ${code} before it was ready: ${stderr}`); }),
  ]);
  const ready = JSON.parse(first) as { nbdPort: number; api: string; replicationPort: number };
  return {
    dataDir,
    nbdPort: ready.nbdPort,
    apiUrl: ready.api,
    replicationPort: ready.replicationPort,
    process: child,
    uri: (name) => `nbd://127.0.0.1:${ready.nbdPort}/${name}`,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    stderr: () => stderr,
  };
}
