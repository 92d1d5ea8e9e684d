/** Facts about the machine and tools, recorded with every result so numbers can be read later. */
import { execFileSync } from 'node:child_process';
import os from 'node:os';

export interface MachineFacts {
  date: string;
  cpus: number;
  cpuModel: string;
  memTotalGiB: number;
  kernel: string;
  node: string;
  fio: string;
  qemuNbd: string;
  nbdkit: string;
  nbdcopy: string;
  gitHead: string;
  gitDirtyFiles: number;
  loadAverage1m: number;
}

function firstLine(command: string, args: string[], cwd?: string): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8', cwd, stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0].trim();
  } catch {
    return 'unknown';
  }
}

export function machineFacts(repoDir: string): MachineFacts {
  const dirty = firstLine('sh', ['-c', 'git status --porcelain | wc -l'], repoDir);
  return {
    date: new Date().toISOString(),
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memTotalGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: os.release(),
    node: process.version,
    fio: firstLine('fio', ['--version']),
    qemuNbd: firstLine('qemu-nbd', ['--version']),
    nbdkit: firstLine('nbdkit', ['--version']),
    nbdcopy: firstLine('nbdcopy', ['--version']),
    gitHead: firstLine('git', ['rev-parse', '--short', 'HEAD'], repoDir),
    gitDirtyFiles: Number(dirty) || 0,
    loadAverage1m: os.loadavg()[0],
  };
}
