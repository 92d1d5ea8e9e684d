/**
 * An NBD export as a kernel block device, for filesystem tests: nbdfuse presents the export
 * as a file, a loop device (direct I/O) goes on top. Teardown in order: losetup -d, then
 * fusermount3 -u (retried while the loop device lets go), then nbdfuse exits.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { waitFor } from './interop.js';
import { run } from './run.js';

export type Defer = (step: () => unknown) => void;

export interface AttachedExport {
  loop: string;
  /** Detaches now (also registered with `defer`; runs once). */
  detach(): Promise<void>;
}

/** fusermount3 -u fails with EBUSY until the loop device has really let go of the file. */
export async function fuseUnmount(mountpoint: string): Promise<void> {
  let last = '';
  await waitFor(async () => {
    const result = await run('fusermount3', ['-u', mountpoint], { allowFailure: true });
    last = result.stderr;
    return result.code === 0;
  }, { what: () => `fusermount3 -u ${mountpoint} (${last.trim()})`, timeoutMs: 15_000, intervalMs: 100 });
}

export async function losetup(file: string, readOnly: boolean): Promise<string> {
  const args = [...(readOnly ? ['--read-only'] : []), '--direct-io=on', '--find', '--show', file];
  const loop = (await run('losetup', args)).stdout.trim();
  assert.match(loop, /^\/dev\/loop\d+$/);
  return loop;
}

export async function attachExport(defer: Defer, dir: string, uri: string, sizeBytes: number, readOnly: boolean): Promise<AttachedExport> {
  const fuseDir = fs.mkdtempSync(path.join(dir, 'fuse-'));
  const diskFile = path.join(fuseDir, 'disk');
  const fuse = spawn('nbdfuse', [...(readOnly ? ['--readonly'] : []), diskFile, uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  let fuseStderr = '';
  fuse.stderr.on('data', (chunk: Buffer) => { fuseStderr += chunk.toString(); });
  const fuseExited = new Promise<number | null>((resolve) => fuse.once('exit', (code) => resolve(code)));
  let loop: string | null = null;
  let detached: Promise<void> | null = null;
  const detach = () => (detached ??= (async () => {
    if (loop !== null) await run('losetup', ['-d', loop]);
    if (fuse.exitCode !== null || fuse.signalCode !== null) return;
    await fuseUnmount(fuseDir);
    assert.equal(await fuseExited, 0, `nbdfuse ${uri} exit: ${fuseStderr}`);
  })());
  defer(detach);
  await waitFor(() => fuse.exitCode === null && fs.existsSync(diskFile) && fs.statSync(diskFile).size === sizeBytes, {
    what: () => `nbdfuse to present ${uri} as ${diskFile} (${fuseStderr.trim()})`,
  });
  loop = await losetup(diskFile, readOnly);
  return { loop, detach };
}
