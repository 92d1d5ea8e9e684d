/** nbdsh keeping one NBD connection open for tests of what a connected client blocks. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import readline from 'node:readline';
import { nbdshEnv } from './interop.js';

/**
 * nbdsh holding one connection open, driven line by line over stdin: "read" answers
 * "read-ok" or "read-failed ERRNO". Prints "connected" once the handshake is done.
 */
export class NbdHolder {
  private readonly lines: string[] = [];
  private readonly waiters: Array<(line: string) => void> = [];
  readonly exited: Promise<number | null>;

  private constructor(readonly child: ChildProcessWithoutNullStreams) {
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const waiter = this.waiters.shift();
      if (waiter) waiter(line);
      else this.lines.push(line);
    });
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
  }

  static async open(uri: string): Promise<NbdHolder> {
    const script = [
      'import sys',
      'print("connected", flush=True)',
      'for line in sys.stdin:',
      '    try:',
      '        h.pread(512, 0)',
      '        print("read-ok", flush=True)',
      '    except nbd.Error as err:',
      '        print("read-failed", err.errno, flush=True)',
    ].join('\n');
    const child = spawn('nbdsh', ['-u', uri, '-c', script], { env: await nbdshEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
    const holder = new NbdHolder(child);
    assert.equal(await holder.nextLine(), 'connected');
    return holder;
  }

  nextLine(): Promise<string> {
    const ready = this.lines.shift();
    if (ready !== undefined) return Promise.resolve(ready);
    return Promise.race([
      new Promise<string>((resolve) => this.waiters.push(resolve)),
      this.exited.then((code) => { throw new Error(`nbdsh exited (${code}) while a line was expected`); }),
    ]);
  }

  async read(): Promise<string> {
    this.child.stdin.write('read\n');
    return this.nextLine();
  }

  async close(): Promise<void> {
    this.child.stdin.end();
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = this.exited;
      setTimeout(() => this.child.kill('SIGKILL'), 5_000).unref();
      await exited;
    }
  }
}
