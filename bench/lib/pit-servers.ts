/**
 * Servers for the point-in-time benchmark (pit-bench.ts), on storage that already exists:
 * the Hindsight daemon on a given data directory (start-up timed to its ready line). (The
 * peers on a given raw file: startPeerOn in lib/servers.ts.) Also a small keep-alive HTTP
 * client for the daemon's API, and /proc readers for a process's memory and CPU time. Every
 * process goes through lib/proc.ts, so a failure or the watchdog stops it.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { sleep, startProcess, stopProcess } from './proc.js';

const READY_TIMEOUT_MS = 600_000;

export interface ApiAnswer<T> {
  status: number;
  body: T;
  /** Client-side wall time: request written to response fully read. */
  ms: number;
}

/** JSON over one keep-alive connection, timed on the client side. */
export class ApiClient {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  private readonly url: URL;

  constructor(base: string) {
    this.url = new URL(base);
  }

  request<T>(method: string, route: string, body?: unknown): Promise<ApiAnswer<T>> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const started = process.hrtime.bigint();
      const req = http.request({
        host: this.url.hostname, port: this.url.port, method, path: `/api/v1${route}`, agent: this.agent,
        headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {},
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const ms = Number(process.hrtime.bigint() - started) / 1e6;
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = text ? JSON.parse(text) : null;
          } catch {
            // keep the text
          }
          const status = res.statusCode ?? 0;
          if (status >= 400) reject(new Error(`${method} ${route} -> ${status}: ${text.slice(0, 500)}`));
          else resolve({ status, body: parsed as T, ms });
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

export interface HindsightDaemon {
  pid: number;
  apiUrl: string;
  nbdPort: number;
  replicationPort: number;
  /** Spawn to the ready line on stdout (node start, module load, volumes opened, ports bound). */
  readyMs: number;
  api: ApiClient;
  child: ChildProcess;
  stderrTail(): string;
  /** SIGINT (graceful: volumes checkpointed and closed); resolves to the time it took. */
  stop(): Promise<number>;
}

export interface DaemonStartOptions {
  /** Directory holding bin/hindsight.js and dist/ (the frozen snapshot). */
  root: string;
  dataDir: string;
  nodeArgs?: string[];
  logLevel?: string;
  /** More `serve` arguments (they may repeat one above: later wins). */
  extraArgs?: string[];
}

export async function startHindsightDaemon(options: DaemonStartOptions): Promise<HindsightDaemon> {
  const started = process.hrtime.bigint();
  const child = startProcess(process.execPath, [
    ...(options.nodeArgs ?? []),
    path.join(options.root, 'bin', 'hindsight.js'), 'serve',
    '--data', options.dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--log-level', options.logLevel ?? 'warn', '--json',
    ...(options.extraArgs ?? []),
  ], { cwd: options.root });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (text: string) => {
    stderr = (stderr + text).slice(-20_000);
  });
  const ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => fail(new Error(`daemon gave no ready line within ${READY_TIMEOUT_MS} ms: ${stderr.slice(-500)}`)), READY_TIMEOUT_MS);
    const onExit = (code: number | null, signal: string | null) => fail(new Error(`daemon exited (${code ?? signal}) before ready: ${stderr.slice(-800)}`));
    const fail = (err: Error) => {
      clearTimeout(timer);
      child.off('exit', onExit);
      reject(err);
    };
    const onData = (text: string) => {
      stdout += text;
      const newline = stdout.indexOf('\n');
      if (newline === -1) return;
      clearTimeout(timer);
      child.off('exit', onExit);
      child.stdout?.off('data', onData);
      child.stdout?.resume();
      try {
        resolve(JSON.parse(stdout.slice(0, newline)) as Record<string, unknown>);
      } catch (err) {
        reject(new Error(`daemon's ready line is not JSON: ${stdout.slice(0, 200)} (${(err as Error).message})`));
      }
    };
    child.stdout?.setEncoding('utf8').on('data', onData);
    child.once('exit', onExit);
  });
  const readyMs = Number(process.hrtime.bigint() - started) / 1e6;
  const apiPort = Number(ready.apiPort);
  const nbdPort = Number(ready.nbdPort);
  if (!(apiPort > 0 && nbdPort > 0)) throw new Error(`daemon's ready line has no ports: ${JSON.stringify(ready)}`);
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const api = new ApiClient(apiUrl);
  return {
    pid: child.pid ?? -1, apiUrl, nbdPort, replicationPort: Number(ready.replicationPort), readyMs, api, child,
    stderrTail: () => stderr,
    stop: async () => {
      api.close();
      const stopping = process.hrtime.bigint();
      await stopProcess(child, 'SIGINT', 120_000);
      return Number(process.hrtime.bigint() - stopping) / 1e6;
    },
  };
}

export interface ProcMemory {
  vmRssMiB: number;
  vmHwmMiB: number;
}

/** Resident and peak resident memory of a live process (/proc/PID/status). */
export function procMemory(pid: number): ProcMemory {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { vmRssMiB: round(kib('VmRSS') / 1024), vmHwmMiB: round(kib('VmHWM') / 1024) };
}

/** User + system CPU seconds a process has used (/proc/PID/stat, clock ticks of 1/100 s). */
export function procCpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * Waits until a process has used less than `busyFraction` of one CPU over `windowMs`,
 * checked every `windowMs`; resolves to the milliseconds waited (capped at `maxMs`).
 */
export async function waitForQuiet(pid: number, options: { windowMs?: number; busyFraction?: number; maxMs: number }): Promise<{ ms: number; quiet: boolean; cpuSeconds: number }> {
  const windowMs = options.windowMs ?? 500;
  const busy = options.busyFraction ?? 0.05;
  const started = Date.now();
  const cpuStart = procCpuSeconds(pid);
  let previous = cpuStart;
  for (;;) {
    await sleep(windowMs);
    const now = procCpuSeconds(pid);
    const used = now - previous;
    previous = now;
    const waited = Date.now() - started;
    if (used < (busy * windowMs) / 1000) return { ms: Math.max(0, waited - windowMs), quiet: true, cpuSeconds: round(now - cpuStart) };
    if (waited >= options.maxMs) return { ms: waited, quiet: false, cpuSeconds: round(now - cpuStart) };
  }
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}
