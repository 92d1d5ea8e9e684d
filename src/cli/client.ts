/** The CLI's HTTP client for the daemon's API. Every failure becomes a HindsightError. */
import { HindsightError } from '../core/index.js';
import type { ErrorCode } from '../core/index.js';

export const DEFAULT_API_URL = 'http://127.0.0.1:8640';

export function apiUrl(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  return (flag ?? env.HINDSIGHT_API ?? DEFAULT_API_URL).replace(/\/+$/, '');
}

/** The API token to present: --token (main.ts puts it here) or HINDSIGHT_TOKEN. */
export function apiToken(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const token = env.HINDSIGHT_TOKEN?.trim();
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
