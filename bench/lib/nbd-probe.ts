/**
 * A long-lived libnbd client (lib/nbd-probe.py, run by the system python3 with libnbd's
 * bindings) that connects to an export, reads one 4 KiB block and optionally a sequential
 * range, and says how long each step took. One process for a whole run, so no probe pays
 * for a process start.
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startProcess, stopProcess } from './proc.js';

const SCRIPT = fileURLToPath(new URL('./nbd-probe.py', import.meta.url));

export interface ProbeRequest {
  uri: string;
  /** Offset of the single 4 KiB read done right after the handshake. */
  offset: number;
  seqOffset?: number;
  seqBytes?: number;
  chunkBytes?: number;
  depth?: number;
  /** Return the stamp seq of every 4 KiB block of the sequential read. */
  stamps?: boolean;
}

export interface ProbeAnswer {
  connectMs: number;
  firstReadMs: number;
  /** Hex of the first 32 bytes of the 4 KiB block. */
  head: string;
  sizeBytes: number;
  seqMs?: number;
  /** Base64 of one u32 LE per 4 KiB block. */
  stamps?: string;
}

export class NbdProbe {
  private buffered = '';
  private waiting: Array<{ resolve: (line: string) => void; reject: (err: Error) => void }> = [];
  private stderr = '';
  version = '';

  private constructor(private readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (text: string) => {
      this.buffered += text;
      for (let newline = this.buffered.indexOf('\n'); newline !== -1; newline = this.buffered.indexOf('\n')) {
        const line = this.buffered.slice(0, newline);
        this.buffered = this.buffered.slice(newline + 1);
        this.waiting.shift()?.resolve(line);
      }
    });
    child.stderr?.setEncoding('utf8').on('data', (text: string) => { this.stderr = (this.stderr + text).slice(-4000); });
    child.once('exit', (code, signal) => {
      for (const waiter of this.waiting.splice(0)) waiter.reject(new Error(`nbd probe exited (${code ?? signal}): ${this.stderr.slice(-500)}`));
    });
  }

  static async start(python: string): Promise<NbdProbe> {
    const probe = new NbdProbe(startProcess(python, [SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] }));
    const hello = JSON.parse(await probe.nextLine(30_000)) as { ok: boolean; libnbd?: string };
    if (!hello.ok) throw new Error('nbd probe did not start');
    probe.version = hello.libnbd ?? '';
    return probe;
  }

  async probe(request: ProbeRequest, timeoutMs = 120_000): Promise<ProbeAnswer> {
    this.child.stdin?.write(`${JSON.stringify(request)}\n`);
    const answer = JSON.parse(await this.nextLine(timeoutMs)) as ProbeAnswer & { ok: boolean; error?: string };
    if (!answer.ok) throw new Error(`nbd probe of ${request.uri}: ${answer.error}`);
    return answer;
  }

  async stop(): Promise<void> {
    this.child.stdin?.end();
    await stopProcess(this.child, 'SIGTERM', 5_000);
  }

  private nextLine(timeoutMs: number): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nbd probe gave no answer within ${timeoutMs} ms: ${this.stderr.slice(-500)}`)), timeoutMs);
      this.waiting.push({
        resolve: (line) => { clearTimeout(timer); resolve(line); },
        reject: (err) => { clearTimeout(timer); reject(err); },
      });
    });
  }
}

/** The u32 stamps of a probe answer. */
export function decodeStamps(stamps: string): Uint32Array {
  const bytes = Buffer.from(stamps, 'base64');
  const out = new Uint32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i += 1) out[i] = bytes.readUInt32LE(i * 4);
  return out;
}
