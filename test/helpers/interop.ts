/**
 * Helpers for the interop suite (test/interop/): they drive a running daemon with real
 * clients (qemu-img, qemu-io, libnbd's tools, nbdfuse, the kernel's loop + ext4) and need a
 * few shared chores: patterned images with holes, checksums, allocation maps, a Python that
 * has libnbd's bindings for nbdsh, and starting `serve` with arguments of the test's choosing.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { CLI } from './daemon.js';
import { run } from './run.js';

/** One extent of `nbdinfo --map --json`: type bit 0 = hole, bit 1 = zero (base:allocation). */
export interface MapExtent {
  offset: number;
  length: number;
  type: number;
  description: string;
}

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** Deterministic, non-repeating bytes (xorshift32): a short pattern would hide offset bugs. */
export function patternBytes(lengthBytes: number, seed: number): Buffer {
  const out = Buffer.allocUnsafe(lengthBytes);
  let state = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < lengthBytes; i += 1) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    out[i] = state & 0xff;
  }
  return out;
}

export interface ImageRegion {
  offsetBytes: number;
  data: Buffer;
}

/** A sparse raw image of sizeBytes with data only where regions say; the rest are holes. */
export function writeSparseImage(file: string, sizeBytes: number, regions: ImageRegion[]): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, sizeBytes);
    for (const region of regions) {
      if (region.offsetBytes + region.data.length > sizeBytes) throw new Error('region beyond the image');
      fs.writeSync(fd, region.data, 0, region.data.length, region.offsetBytes);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The allocation map the server reports, through nbdinfo (base:allocation). */
export async function nbdMap(uri: string): Promise<MapExtent[]> {
  const { stdout } = await run('nbdinfo', ['--map', '--json', uri]);
  return JSON.parse(stdout) as MapExtent[];
}

/** Total bytes of extents whose type says "data" (neither hole nor zero). */
export function dataBytes(map: MapExtent[]): number {
  return map.filter((extent) => extent.type === 0).reduce((sum, extent) => sum + extent.length, 0);
}

/** The type reported for one byte offset, or undefined when the map does not cover it. */
export function typeAt(map: MapExtent[], offsetBytes: number): number | undefined {
  return map.find((extent) => offsetBytes >= extent.offset && offsetBytes < extent.offset + extent.length)?.type;
}

let nbdshEnvironment: Promise<NodeJS.ProcessEnv> | null = null;

/**
 * nbdsh runs `python3 -mnbd` from PATH. A development PATH (pyenv and friends) can put a
 * python3 without the python3-libnbd bindings first; fall back to the system interpreter.
 */
export function nbdshEnv(): Promise<NodeJS.ProcessEnv> {
  nbdshEnvironment ??= (async () => {
    const probe = await run('python3', ['-c', 'import nbd'], { allowFailure: true });
    if (probe.code === 0) return process.env;
    for (const dir of ['/usr/bin', '/usr/local/bin']) {
      const python = path.join(dir, 'python3');
      if (!fs.existsSync(python)) continue;
      const candidate = await run(python, ['-c', 'import nbd'], { allowFailure: true });
      if (candidate.code === 0) return { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}` };
    }
    throw new Error('no python3 with the libnbd bindings (python3-libnbd) found for nbdsh');
  })();
  return nbdshEnvironment;
}

/**
 * Polls until check() holds. Only for outside state nothing notifies us of (a FUSE file
 * appearing, a kernel mount going idle); never to wait for our own work.
 */
export async function waitFor(check: () => boolean | Promise<boolean>, options: { what: string | (() => string); timeoutMs?: number; intervalMs?: number }): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${typeof options.what === 'function' ? options.what() : options.what}`);
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 25));
  }
}

/** A port that was free a moment ago (for config files that must name a port). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export interface ServeReady {
  nbd: string;
  api: string;
  nbdPort: number;
  apiPort: number;
  dataDir: string;
  pid: number;
}

export interface ServeHandle {
  process: ChildProcess;
  ready: ServeReady;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr(): string;
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * `hindsight serve --json ARGS` exactly as given (startDaemon always adds its own --nbd and
 * --api, which would mask a config file). Resolves once the ready line is printed; rejects
 * with the daemon's stderr if it exits first.
 */
export async function startServe(args: string[]): Promise<ServeHandle> {
  const child = spawn(process.execPath, [CLI, 'serve', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const lines = readline.createInterface({ input: child.stdout! });
  const first = await Promise.race([
    new Promise<string>((resolve) => lines.once('line', resolve)),
    exited.then(({ code }) => { throw new Error(`serve exited with ${code} before it was ready: ${stderr}`); }),
  ]);
  return {
    process: child,
    ready: JSON.parse(first) as ServeReady,
    exited,
    stderr: () => stderr,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** Runs the CLI (`node bin/hindsight.js ARGS`) and never rejects on a non-zero exit. */
export function hindsight(args: string[], options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
  return run(process.execPath, [CLI, ...args], { allowFailure: true, timeoutMs: options.timeoutMs ?? 30_000, env: options.env });
}

/**
 * Teardown in reverse order of setup, in one t.after so it runs however the test ended:
 * `const defer = deferrals(t); defer(() => stop()); defer(() => unmount());` unmounts first.
 * Every step runs even if an earlier one throws; the first error is rethrown at the end.
 */
export function deferrals(t: { after(fn: () => Promise<void> | void): void }): (step: () => unknown) => void {
  const steps: Array<() => unknown> = [];
  t.after(async () => {
    let firstError: unknown = null;
    while (steps.length > 0) {
      const step = steps.pop()!;
      try {
        await step();
      } catch (err) {
        firstError ??= err;
      }
    }
    if (firstError !== null) throw firstError;
  });
  return (step) => { steps.push(step); };
}
