/**
 * The NBD servers under comparison. Each start gets fresh storage of the same size in its
 * own directory on the real disk: a new sparse raw file for the peers, a new data directory
 * (and so a new sparse volume) for Hindsight. All listen on loopback only.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pickFreePort, runCommand, sleep, startProcess, stopProcess } from './proc.js';

/** `hindsight-plain`: Hindsight with "only what changed is stored" off (volume set --no-reduce). */
export const SERVER_NAMES = ['hindsight', 'qemu-nbd', 'nbdkit', 'hindsight-plain'] as const;
export type ServerName = (typeof SERVER_NAMES)[number];
/** What a run compares unless told otherwise. */
export const DEFAULT_SERVERS: ServerName[] = ['hindsight', 'qemu-nbd', 'nbdkit'];
export const EXPORT_NAME = 'bench';

export interface ServerStartOptions {
  /** An empty directory for this server's storage; removed by the caller afterwards. */
  workDir: string;
  sizeBytes: number;
  /** Repository root, where bin/hindsight.js lives. */
  repoDir: string;
  /** Extra node flags for Hindsight (e.g. --cpu-prof). */
  nodeArgs?: string[];
}

export interface RunningServer {
  name: ServerName;
  uri: string;
  pid: number;
  stop(): Promise<void>;
}

const READY_TIMEOUT_MS = 30_000;

export function startServer(name: ServerName, options: ServerStartOptions): Promise<RunningServer> {
  switch (name) {
    case 'hindsight': return startHindsight(options, true);
    case 'hindsight-plain': return startHindsight(options, false);
    case 'qemu-nbd': return startQemuNbd(options);
    case 'nbdkit': return startNbdkit(options);
  }
}

async function startHindsight(options: ServerStartOptions, reduce: boolean): Promise<RunningServer> {
  const dataDir = path.join(options.workDir, 'hindsight-data');
  const child = startProcess(process.execPath, [
    ...(options.nodeArgs ?? []),
    path.join(options.repoDir, 'bin', 'hindsight.js'), 'serve',
    '--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--replication', '127.0.0.1:0',
    '--create-volume', `${EXPORT_NAME}:${options.sizeBytes}`, '--log-level', 'warn', '--json',
  ], { cwd: options.repoDir });
  const ready = await waitForJsonLine(child, READY_TIMEOUT_MS);
  const nbdPort = Number(ready.nbdPort);
  if (!Number.isInteger(nbdPort) || nbdPort <= 0) throw new Error(`hindsight printed no nbdPort: ${JSON.stringify(ready)}`);
  const uri = `nbd://127.0.0.1:${nbdPort}/${EXPORT_NAME}`;
  await waitForExport(uri, child);
  if (!reduce) {
    const response = await fetch(`${String(ready.api)}/api/v1/volumes/${EXPORT_NAME}`, {
      method: 'PATCH', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ reduce: false }),
    });
    if (!response.ok) throw new Error(`hindsight: cannot turn reduction off: ${await response.text()}`);
  }
  // SIGINT is the graceful stop: the daemon flushes, and node writes a --cpu-prof profile.
  return { name: reduce ? 'hindsight' : 'hindsight-plain', uri, pid: child.pid ?? -1, stop: () => stopProcess(child, 'SIGINT') };
}

function startQemuNbd(options: ServerStartOptions): Promise<RunningServer> {
  return startPeerOn('qemu-nbd', createRawFile(options), EXPORT_NAME);
}

function startNbdkit(options: ServerStartOptions): Promise<RunningServer> {
  return startPeerOn('nbdkit', createRawFile(options), EXPORT_NAME);
}

export type PeerName = 'qemu-nbd' | 'nbdkit';

export interface PeerServer extends RunningServer {
  name: PeerName;
}

/**
 * qemu-nbd or nbdkit exporting an existing raw file as `exportName` on a free loopback port.
 * qemu-nbd: persistent, 16 clients at once; nbdkit: file plugin, default thread count (16),
 * as shipped.
 */
export async function startPeerOn(name: PeerName, file: string, exportName: string): Promise<PeerServer> {
  const port = await pickFreePort();
  const child = name === 'qemu-nbd'
    ? startProcess('qemu-nbd', ['--persistent', '--shared=16', '-f', 'raw', '-x', exportName, '-p', String(port), '-b', '127.0.0.1', file])
    : startProcess('nbdkit', ['-f', '-p', String(port), '-i', '127.0.0.1', '--exportname', exportName, 'file', file]);
  const uri = `nbd://127.0.0.1:${port}/${exportName}`;
  await waitForExport(uri, child);
  return { name, uri, pid: child.pid ?? -1, stop: () => stopProcess(child, 'SIGTERM') };
}

/** A new sparse raw file of the volume size, as Hindsight's own volume starts. */
function createRawFile(options: ServerStartOptions): string {
  const file = path.join(options.workDir, 'disk.raw');
  const fd = fs.openSync(file, 'wx');
  try {
    fs.ftruncateSync(fd, options.sizeBytes);
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

function waitForJsonLine(child: ChildProcess, timeoutMs: number): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => fail(new Error(`no ready line within ${timeoutMs} ms: ${stderr.slice(-500)}`)), timeoutMs);
    const onExit = (code: number | null) => fail(new Error(`server exited (${code}) before ready: ${stderr.slice(-500)}`));
    const fail = (err: Error) => {
      clearTimeout(timer);
      child.off('exit', onExit);
      reject(err);
    };
    child.stderr?.setEncoding('utf8').on('data', (text: string) => { stderr += text; });
    child.stdout?.setEncoding('utf8').on('data', (text: string) => {
      stdout += text;
      const line = stdout.split('\n').find((candidate) => candidate.trim().startsWith('{'));
      if (line === undefined || !stdout.includes('\n')) return;
      clearTimeout(timer);
      child.off('exit', onExit);
      try {
        resolve(JSON.parse(line) as Record<string, unknown>);
      } catch (err) {
        reject(err as Error);
      }
    });
    child.once('exit', onExit);
  });
}

/**
 * Polls with nbdinfo until the export answers (checks the export name too), for up to 30 s;
 * fails at once if the server's process (when given) has exited.
 */
export async function waitForExport(uri: string, child?: ChildProcess): Promise<void> {
  child?.stdout?.resume();
  let stderr = '';
  child?.stderr?.setEncoding('utf8').on('data', (text: string) => { stderr = (stderr + text).slice(-4000); });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (child && (child.exitCode !== null || child.signalCode !== null)) {
      throw new Error(`server for ${uri} exited early (${child.exitCode ?? child.signalCode}): ${stderr.slice(-500)}`);
    }
    try {
      await runCommand('nbdinfo', ['--size', uri], { timeoutMs: 5_000 });
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`export ${uri} not ready: ${(err as Error).message}`);
      await sleep(100);
    }
  }
}
