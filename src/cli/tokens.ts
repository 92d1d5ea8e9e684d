/**
 * `hindsight token create|list|revoke`: API tokens. With `--data DIR` the daemon's data
 * directory is changed directly (the way to make the first token for an API that listens
 * beyond loopback, where every request needs one); without it, through the API.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { TokenStore } from '../api/index.js';
import type { TokenInfo } from '../api/index.js';
import { ApiClient, apiUrl } from './client.js';
import { printJson, printTable } from './output.js';

interface TokenOptions {
  api?: string;
  data?: string;
  json?: boolean;
}

export function registerTokenCommands(program: Command, run: (work: () => Promise<number>) => Promise<void>): void {
  const token = program.command('token').description('API tokens: create (shown once), list, revoke');
  const local = (options: TokenOptions) => (options.data ? new TokenStore(path.resolve(options.data)) : null);
  const api = (options: TokenOptions) => new ApiClient(apiUrl(options.api));

  token.command('create <name>')
    .description('create a token; it is printed once and stored only as a hash')
    .option('--data <dir>', 'change the data directory directly instead of asking the daemon')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((name: string, options: TokenOptions) => run(async () => {
      const store = local(options);
      const created = store ? store.create(name) : await api(options).request<TokenInfo & { token: string }>('POST', '/tokens', { name });
      if (options.json) printJson(created);
      else process.stdout.write(`${created.token}\n(token "${created.name}", id ${created.id}: shown once; clients pass it with --token or HINDSIGHT_TOKEN)\n`);
      return 0;
    }));

  token.command('list')
    .description('list tokens (names and ids, never secrets)')
    .option('--data <dir>', 'read the data directory directly')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((options: TokenOptions) => run(async () => {
      const store = local(options);
      const tokens = store ? store.list() : (await api(options).request<{ tokens: TokenInfo[] }>('GET', '/tokens')).tokens;
      if (options.json) printJson({ tokens });
      else printTable(['ID', 'NAME', 'CREATED'], tokens.map((t) => [t.id, t.name, t.createdAt]));
      return 0;
    }));

  token.command('revoke <id-or-name>')
    .description('revoke a token: requests presenting it are refused from now on')
    .option('--data <dir>', 'change the data directory directly')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((idOrName: string, options: TokenOptions) => run(async () => {
      const store = local(options);
      const revoked = store ? store.revoke(idOrName) : await api(options).request<TokenInfo>('DELETE', `/tokens/${encodeURIComponent(idOrName)}`);
      if (options.json) printJson(revoked);
      else process.stdout.write(`revoked token "${revoked.name}" (id ${revoked.id})\n`);
      return 0;
    }));
}
