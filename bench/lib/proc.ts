/**
 * Child processes for the benchmarks. Every process started here is tracked so that a
 * failure, a deadline or Ctrl-C can stop all of them (by pid, never by name) before exit.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import net from 'node:net';

const live = new Set<ChildProcess>();

export interface RunResult {
  stdout: string;
  stderr: string;
  elapsedMs: number;
}

export interface RunOptions {
  timeoutMs: number;
  cwd?: string;
}

/** Starts a long-running process (a server); its output is kept for error messages. */
export function startProcess(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  live.add(child);
  child.once('exit', () => live.delete(child));
  child.once('error', () => live.delete(child));
  return child;
}

/** Runs a command to completion; rejects on a non-zero exit or when it overruns its time. */
export function runCommand(command: string, args: string[], options: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const startedNs = process.hrtime.bigint();
    const child = startProcess(command, args, { cwd: options.cwd });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (text: string) => { stdout += text; });
    child.stderr?.setEncoding('utf8').on('data', (text: string) => { stderr += text; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${command} ran longer than ${options.timeoutMs} ms: ${stderr.trim().slice(-500)}`));
    }, options.timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const elapsedMs = Number(process.hrtime.bigint() - startedNs) / 1e6;
      if (code === 0) resolve({ stdout, stderr, elapsedMs });
      else reject(new Error(`${command} ${args.join(' ')} failed (${signal ?? code}): ${(stderr.trim() || stdout.trim()).slice(-800)}`));
    });
  });
}

/** Signals a process and waits for it to exit, escalating to SIGKILL after the grace time. */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals, graceMs = 15_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Last resort on failure or interruption: every tracked process gets SIGKILL. */
export function killAllProcesses(): void {
  for (const child of live) child.kill('SIGKILL');
}

export function liveProcessCount(): number {
  return live.size;
}

/** A loopback port that was free a moment ago (servers that cannot bind port 0 need one). */
export function pickFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
