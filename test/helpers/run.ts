/** Runs an external program (a real client) and returns its output; rejects on non-zero exit. */
import { execFile } from 'node:child_process';

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

export function run(command: string, args: string[], options: { allowFailure?: boolean; timeoutMs?: number; input?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, {
      timeout: options.timeoutMs ?? 120_000,
      maxBuffer: 64 * 1024 * 1024,
      env: options.env ?? process.env,
    }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      if (error && !options.allowFailure) {
        // (Some clients, qemu-io among them, say what failed on stdout.)
        const said = [stderr, stdout.split('\n').filter((line) => /fail|error|denied|refused/i.test(line)).join('\n')].filter(Boolean).join('\n');
        reject(new Error(`${command} ${args.slice(0, 8).join(' ')}${args.length > 8 ? ' …' : ''} failed (${code}): ${said || error.message}`));
        return;
      }
      resolve({ stdout, stderr, code });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}
