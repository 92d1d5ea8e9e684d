/** The CLI's HTTP client for the daemon's API. Every failure becomes a HindsightError. */
import fs from 'node:fs';
import { HindsightError } from '../core/index.js';
import type { ErrorCode } from '../core/index.js';

export const DEFAULT_API_URL = 'http://127.0.0.1:8640';

export function apiUrl(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return (flag ?? env.HINDSIGHT_API ?? DEFAULT_API_URL).replace(/\/+$/, '');
}

/**
 * The API token to present: --token (main.ts puts it here), HINDSIGHT_TOKEN, or the file
 * HINDSIGHT_TOKEN_FILE names (keeps it out of `ps` and shell history).
 */
export function apiToken(env: NodeJS.ProcessEnv = process.env): string | undefined {
  let token = env.HINDSIGHT_TOKEN?.trim();
  if (!token && env.HINDSIGHT_TOKEN_FILE) {
    try {
      token = fs.readFileSync(env.HINDSIGHT_TOKEN_FILE, 'utf8').trim();
    } catch (err) {
      throw new HindsightError('INVALID_ARGUMENT', `cannot read HINDSIGHT_TOKEN_FILE ${env.HINDSIGHT_TOKEN_FILE}: ${(err as Error).message}`);
    }
  }
  return token ? token : undefined;
}

export class ApiClient {
  constructor(private readonly baseUrl: string, private readonly token = apiToken()) {}

  async request<T>(method: string, route: string, body?: unknown): Promise<T> {
    let response: Response;
    try {
      response = await fetch(`${this.baseUrl}/api/v1${route}`, {
        method,
        headers: {
          ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(60_000),
      });
    } catch (err) {
      throw new HindsightError('DAEMON_UNREACHABLE', `cannot reach the hindsight daemon at ${this.baseUrl} (is \`hindsight serve\` running? set --api or HINDSIGHT_API)`, { cause: err });
    }
    const text = await response.text();
    let payload: unknown = null;
    try {
      payload = text === '' ? null : JSON.parse(text);
    } catch {
      payload = null;
    }
    if (!response.ok) {
      const error = payload as { code?: string; message?: string } | null;
      const code = (error?.code ?? 'INTERNAL') as ErrorCode;
      throw new HindsightError(code, error?.message ?? `daemon answered HTTP ${response.status}`);
    }
    return payload as T;
  }
}
