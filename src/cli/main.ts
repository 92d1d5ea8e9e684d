/**
 * `hindsight <noun> <verb>`: every command takes --json, exits 0 on success and non-zero
 * with a one-line reason on failure.
 */
import { Command, CommanderError } from 'commander';
import { isHindsightError } from '../core/index.js';
import { DEFAULTS, VERSION } from '../daemon/index.js';
import { ApiClient, apiUrl } from './client.js';
import { printFields, printJson } from './output.js';
import { serve } from './serve.js';
import { registerHistoryCommands } from './history.js';
import { registerVolumeCommands } from './volume.js';
import { registerTokenCommands } from './tokens.js';
import { registerReplicationCommands } from './replication.js';

export async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  const json = argv.includes('--json');
  const run = async (work: () => Promise<number>): Promise<void> => {
    exitCode = await work();
  };
  const program = new Command('hindsight')
    .description('Continuous data protection for virtual-machine disks')
    .version(VERSION)
    .exitOverride()
    .configureOutput({ writeErr: (text) => process.stderr.write(text) });

  program.option('--token <token>', 'API token (default $HINDSIGHT_TOKEN, or the file $HINDSIGHT_TOKEN_FILE names, which keeps it out of ps); needed when the API listens beyond loopback');
  program.hook('preAction', (command) => {
    const token = command.opts().token as string | undefined;
    if (token) process.env.HINDSIGHT_TOKEN = token;
  });

  program.command('serve')
    .description('run the daemon: volumes over NBD, HTTP API')
    .option('--data <dir>', `data directory (default $HINDSIGHT_DATA or ${DEFAULTS.data})`)
    .option('--nbd <host:port>', `NBD listen address (default ${DEFAULTS.nbd})`)
    .option('--api <host:port>', `HTTP API listen address (default ${DEFAULTS.api})`)
    .option('--replication <host:port>', `replication listen address (default ${DEFAULTS.replication}; TLS only: PSK or X.509)`)
    .option('--replication-certificates <dir>', 'replication over X.509 instead of PSK: ca-cert.pem, server-cert.pem/server-key.pem (the listener), client-cert.pem/client-key.pem (this site as a sender, its CN the identity)')
    .option('--replication-psk-file <file>', 'replication keys, identity:hexkey lines; the first is this site\'s (default DATA/replication.psk, made at first start)')
    .option('--config <file>', 'YAML or JSON config file')
    .option('--sync-every-write', 'fdatasync after every write (slow, paranoid)')
    .option('--create-volume <name:size>', 'create this volume at start if missing (repeatable)', (value: string, previous: string[] = []) => [...previous, value])
    .option('--insecure', 'allow NBD to listen beyond loopback without --tls require (the API is always token-protected there)')
    .option('--require-token', 'require API tokens on loopback too')
    .option('--api-tls-cert <file>', 'serve the API over HTTPS with this certificate (PEM); clients trust it via NODE_EXTRA_CA_CERTS')
    .option('--api-tls-key <file>', 'the key of --api-tls-cert (PEM)')
    .option('--tls <mode>', 'NBD TLS: off (default), on (offered), require (plaintext refused)')
    .option('--tls-certificates <dir>', 'X.509 credentials: ca-cert.pem, server-cert.pem, server-key.pem (the QEMU layout)')
    .option('--tls-psk-file <file>', 'TLS-PSK keys, identity:hexkey lines (as psktool makes)')
    .option('--tls-verify-peer', 'require client certificates signed by the CA')
    .option('--nbd-allow <rule>', 'IDENTITY=EXPORT[,EXPORT] (EXPORT may end in *, identity * is anyone): only these clients may open these exports (repeatable)', (value: string, previous: string[] = []) => [...previous, value])
    .option('--log-level <level>', 'fatal, error, warn, info, debug, trace or silent')
    .option('--json', 'print the bound addresses as JSON')
    .action((options: Record<string, unknown>) => run(() => serve(options, Boolean(options.json))));

  registerVolumeCommands(program, run);
  registerTokenCommands(program, run);
  registerHistoryCommands(program, run);
  registerReplicationCommands(program, run);

  program.command('fsck [name]')
    .description('check every journal record (checksums, seq order) and the index of one volume or all; exit 2 when a problem is found')
    .option('--rebuild-index', 'replace the index by one rebuilt from the journal (when the journal is sound)')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((name: string | undefined, options: { api?: string; json?: boolean; rebuildIndex?: boolean }) => run(async () => {
      const body = { ...(name === undefined ? {} : { volume: name }), rebuildIndex: Boolean(options.rebuildIndex) };
      const result = await new ApiClient(apiUrl(options.api)).request<FsckResult>('POST', '/fsck', body);
      if (options.json) printJson(result);
      else printFsck(result);
      return result.ok ? 0 : 2;
    }));

  program.command('status')
    .description('show the daemon status')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((options: { api?: string; json?: boolean }) => run(async () => {
      const status = await new ApiClient(apiUrl(options.api)).request<Record<string, unknown>>('GET', '/status');
      if (options.json) printJson(status);
      else printFields(Object.entries(status).map(([key, value]) => [key, typeof value === 'object' ? JSON.stringify(value) : value]));
      return 0;
    }));

  try {
    await program.parseAsync(argv);
    return exitCode;
  } catch (err) {
    return reportError(err, json);
  }
}

interface FsckResult {
  ok: boolean;
  volumes: Array<{ name: string; state: string; records: number; indexRebuilt: boolean; indexCompared: boolean; problems: Array<{ kind: string; segment: string | null; offsetBytes: number | null; message: string }> }>;
}

function printFsck(result: FsckResult): void {
  for (const volume of result.volumes) {
    const verdict = volume.problems.length === 0 ? 'clean' : `${volume.problems.length} problem(s)`;
    const index = volume.indexRebuilt ? ', index rebuilt' : volume.indexCompared ? '' : ', index not compared (written to during the check; run again when quieter)';
    process.stdout.write(`${volume.name}: ${verdict}, ${volume.records} record(s) checked${index}\n`);
    for (const problem of volume.problems) {
      const where = problem.segment ? ` segment ${problem.segment} offset ${problem.offsetBytes}:` : '';
      process.stdout.write(`  ${problem.kind}:${where} ${problem.message}\n`);
    }
  }
}

function reportError(err: unknown, json: boolean): number {
  if (err instanceof CommanderError) {
    // Commander already printed its own one-line message (or help/version, exit 0).
    return err.exitCode;
  }
  const code = isHindsightError(err) ? err.code : 'INTERNAL';
  const message = err instanceof Error ? err.message : String(err);
  if (json) process.stdout.write(`${JSON.stringify({ error: { code, message } })}\n`);
  process.stderr.write(`hindsight: ${message} (${code})\n`);
  if (!isHindsightError(err) && process.env.HINDSIGHT_DEBUG) process.stderr.write(`${(err as Error).stack}\n`);
  return 1;
}
