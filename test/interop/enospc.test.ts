/**
 * Disk full, for real: the data directory on a small tmpfs. A client (nbdsh, libnbd) writes
 * and flushes until the journal cannot take another write: that write fails with ENOSPC,
 * every write acknowledged before reads back, and once space is freed the same daemon goes
 * on taking writes without a restart. A restart afterwards finds everything flushed, and the
 * volume is not refused as corrupt.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { makeTempDir, startDaemon } from '../helpers/daemon.js';
import { deferrals, nbdshEnv } from '../helpers/interop.js';
import { run } from '../helpers/run.js';

const MiB = 1024 * 1024;
const TMPFS_BYTES = 48 * MiB;
const BALLAST_BYTES = 12 * MiB;

function skipReason(): string | null {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root to mount a small tmpfs';
  return null;
}

/**
 * Writes 1 MiB blocks (block i filled with byte i % 251 + 1) from block `first` until one
 * fails with ENOSPC or `count` are done, flushing after each; prints the blocks written
 * and the error. Then reads back `verify` blocks from 0 and checks them.
 */
const SCRIPT = `
import errno, os, sys
first, count, verify = int(os.environ["FIRST"]), int(os.environ["COUNT"]), int(os.environ["VERIFY"])
MiB = 1 << 20
for i in range(verify):
    got = h.pread(MiB, i * MiB)
    if got != bytes([i % 251 + 1]) * MiB:
        print("mismatch", i, flush=True)
        sys.exit(3)
written = 0
error = "none"
for i in range(first, first + count):
    try:
        h.pwrite(bytes([i % 251 + 1]) * MiB, i * MiB)
        h.flush()
        written += 1
    except nbd.Error as err:
        code = errno.errorcode.get(err.errno, err.errno) if isinstance(err.errno, int) else err.errno
        error = "ENOSPC" if code == "ENOSPC" else "errno %s: %s" % (code, err)
        break
print("written", written, error, flush=True)
`;

async function nbdsh(uri: string, first: number, count: number, verify: number): Promise<{ written: number; error: string }> {
  const env = { ...(await nbdshEnv()), FIRST: String(first), COUNT: String(count), VERIFY: String(verify) };
  const { stdout, code, stderr } = await run('nbdsh', ['-u', uri, '-c', SCRIPT], { env, allowFailure: true, timeoutMs: 120_000 });
  assert.equal(code, 0, `nbdsh failed (${code}): ${stdout} ${stderr}`);
  const match = /written (\d+) (.+)/.exec(stdout);
  assert.ok(match, stdout);
  return { written: Number(match[1]), error: match[2].trim() };
}

test('disk full: ENOSPC to the client, nothing acknowledged lost, writes resume once space is freed, no restart needed', { skip: skipReason() ?? false }, async (t) => {
  const defer = deferrals(t);
  const mountPoint = makeTempDir('hindsight-enospc-');
  defer(() => fs.rmSync(mountPoint, { recursive: true, force: true }));
  await run('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_BYTES}`, 'tmpfs', mountPoint]);
  defer(() => run('umount', ['-l', mountPoint], { allowFailure: true }));
  const ballast = path.join(mountPoint, 'ballast');
  fs.writeFileSync(ballast, Buffer.alloc(BALLAST_BYTES, 1));
  const dataDir = path.join(mountPoint, 'data');
  let daemon = await startDaemon({ dataDir, volumes: ['v:256M'] });
  defer(() => daemon.stop());

  // Fill: about 48 - 12 MiB of room, so the journal runs out well before 64 blocks.
  const fill = await nbdsh(daemon.uri('v'), 0, 64, 0);
  assert.equal(fill.error, 'ENOSPC', `the write that did not fit failed with ENOSPC (${fill.error})`);
  assert.ok(fill.written >= 16 && fill.written < 48, `wrote ${fill.written} MiB before the disk was full`);

  // Every acknowledged write reads back; and still ENOSPC while the disk stays full.
  const stillFull = await nbdsh(daemon.uri('v'), fill.written, 1, fill.written);
  assert.equal(stillFull.error, 'ENOSPC');
  const info = await (await fetch(`${daemon.apiUrl}/api/v1/volumes/v`)).json() as { state: string };
  assert.equal(info.state, 'online', 'a full disk does not refuse the volume');

  // Space freed: the same daemon takes writes again.
  fs.rmSync(ballast);
  const resumed = await nbdsh(daemon.uri('v'), fill.written, 4, fill.written);
  assert.equal(resumed.error, 'none', `writes resume after space is freed (${resumed.error})`);
  assert.equal(resumed.written, 4);
  const total = fill.written + 4;

  // A restart finds every flushed block, and the volume online.
  assert.equal(await daemon.stop(), 0);
  daemon = await startDaemon({ dataDir });
  const after = await nbdsh(daemon.uri('v'), total, 0, total);
  assert.equal(after.error, 'none');
  const reopened = await (await fetch(`${daemon.apiUrl}/api/v1/volumes/v`)).json() as { state: string; seqLast: number };
  assert.equal(reopened.state, 'online');
});
