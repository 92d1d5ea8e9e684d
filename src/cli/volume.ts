/** `hindsight volume create|list|info|delete`. */
import type { Command } from 'commander';
import { DEFAULT_RETENTION, HindsightError } from '../core/index.js';
import type { RetentionRun, VolumeInfo } from '../volume/index.js';
import { ApiClient, apiUrl } from './client.js';
import { printFields, printJson, printTable, size } from './output.js';

type VolumeView = VolumeInfo & { connections: number };

interface ClientOptions {
  api?: string;
  json?: boolean;
}

export function registerVolumeCommands(program: Command, run: (work: () => Promise<number>) => Promise<void>): void {
  const volume = program.command('volume').description('create, list, inspect and delete volumes');

  volume.command('create <name>')
    .description('create a volume (sparse: takes no space until written)')
    .requiredOption('--size <size>', 'size, e.g. 20G, 512M, 1T')
    .option('--keep <policy>', `retention policy (default ${DEFAULT_RETENTION}: every write 24 h, one point a minute 7 days, an hour 30 days, a day a year)`)
    .option('--max-size <size>', 'cap on the journal: past it the oldest points go ahead of the policy, with a warning (default: none)')
    .option('--api <url>', 'daemon API URL (default $HINDSIGHT_API or http://127.0.0.1:8640)')
    .option('--json', 'print JSON')
    .action((name: string, options: ClientOptions & { size: string; keep?: string; maxSize?: string }) => run(async () => {
      const created = await client(options).request<VolumeView>('POST', '/volumes', { name, size: options.size, ...retentionBody(options) });
      if (options.json) printJson(created);
      else process.stdout.write(`created volume ${created.name} (${size(created.sizeBytes)}): nbd export "${created.name}"\n`);
      return 0;
    }));

  volume.command('list')
    .description('list volumes')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((options: ClientOptions) => run(async () => {
      const { volumes } = await client(options).request<{ volumes: VolumeView[] }>('GET', '/volumes');
      if (options.json) printJson({ volumes });
      else printTable(['NAME', 'SIZE', 'STORED', 'LAST SEQ', 'LAST WRITE', 'STATE', 'CLIENTS'], volumes.map((v) => [
        v.name, size(v.sizeBytes), size(v.storedBytes), String(v.seqLast ?? '-'), v.timeLast ?? '-', v.state, String(v.connections),
      ]));
      return 0;
    }));

  volume.command('info <name>')
    .description('show one volume')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((name: string, options: ClientOptions) => run(async () => {
      const v = await client(options).request<VolumeView>('GET', `/volumes/${encodeURIComponent(name)}`);
      if (options.json) printJson(v);
      else printFields([
        ['name', v.name], ['state', v.error ? `${v.state} (${v.error.code}: ${v.error.message})` : v.state],
        ['size', `${size(v.sizeBytes)} (${v.sizeBytes} bytes)`], ['read-only', v.readOnly], ['reduce', v.reduce],
        ['stored on disk', size(v.storedBytes)], ['client bytes written', size(v.clientBytesWritten)],
        ['journal per byte written', v.storedPerWritten === null ? '-' : `${v.storedPerWritten} (zero writes and unchanged sectors are not stored)`],
        ['journal', `${size(v.journalBytes)} in ${v.journalSegments} segment(s), ${v.records} record(s)`],
        ['seq', v.seqLast === null ? '-' : `${v.seqFirst}..${v.seqLast} (durable to ${v.seqDurable})`],
        ['time', v.timeLast === null ? '-' : `${v.timeFirst} .. ${v.timeLast}`],
        ['oldest point', v.oldestPoint === null ? '-' : `${v.oldestPoint} (seq ${v.oldestPointSeq})`],
        ['retention', `--keep ${v.retention.keep}, --max-size ${v.retention.maxSizeBytes === null ? 'none' : size(v.retention.maxSizeBytes)}: ${v.retention.state}`],
        ...v.retention.warnings.map((warning): [string, string] => ['  warning', warning]),
        ['  removed', `${v.retention.pointsExpired} point(s); ${v.retention.recordsThinned} payload(s), ${size(v.retention.bytesReclaimed)} reclaimed`],
        ['  forecast', v.retention.forecast],
        ['index', `${v.indexExtents} extent(s), ${size(v.indexBytes)}; history ${size(v.historyBytes)} in memory`],
        ['bookmarks, mounts', `${v.bookmarks}, ${v.mounts}`],
        ['replica', v.replica ? `of ${v.replica.from}'s volume since ${v.replica.since} (read-only; hindsight failover ${v.name} promotes it)` : v.promoted ? `no (promoted from ${v.promoted.from}'s at seq ${v.promoted.seq}, ${v.promoted.at})` : 'no'],
        ['connected clients', v.connections], ['created', v.createdAt], ['id', v.id],
      ]);
      return 0;
    }));

  volume.command('set <name>')
    .description('change a volume: --read-only refuses writes from every client, --writable allows them again; --no-reduce stores every write whole, --reduce only what changed (the default)')
    .option('--read-only', 'make the volume read-only')
    .option('--writable', 'make the volume writable')
    .option('--reduce', 'store only what changed (zero writes as zeroes, changed sectors only)')
    .option('--no-reduce', 'store every write whole')
    .option('--keep <policy>', 'retention policy, e.g. all:24h,1m:7d,1h:30d,1d:1y (all:forever keeps everything)')
    .option('--max-size <size>', 'cap on the journal, e.g. 50G ("none" removes it)')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((name: string, options: ClientOptions & { readOnly?: boolean; writable?: boolean; reduce?: boolean; keep?: string; maxSize?: string }) => run(async () => {
      if (options.readOnly && options.writable) throw new HindsightError('INVALID_ARGUMENT', 'give one of --read-only or --writable, not both');
      const changes = {
        ...(options.readOnly || options.writable ? { readOnly: Boolean(options.readOnly) } : {}),
        ...(options.reduce === undefined ? {} : { reduce: options.reduce }),
        ...retentionBody(options),
      };
      if (Object.keys(changes).length === 0) throw new HindsightError('INVALID_ARGUMENT', 'give --read-only, --writable, --reduce, --no-reduce, --keep or --max-size');
      const v = await client(options).request<VolumeView>('PATCH', `/volumes/${encodeURIComponent(name)}`, changes);
      if (options.json) printJson(v);
      else {
        const cap = v.retention.maxSizeBytes === null ? 'no size cap' : `at most ${size(v.retention.maxSizeBytes)}`;
        process.stdout.write(`volume ${v.name}: ${v.readOnly ? 'read-only' : 'writable'}, ${v.reduce ? 'storing only what changed' : 'storing every write whole'}, keeping ${v.retention.keep} (${cap})\n`);
      }
      return 0;
    }));

  volume.command('thin <name>')
    .description('apply the volume\'s retention policy now (the daemon does it every minute): expire the points it drops, reclaim their space')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((name: string, options: ClientOptions) => run(async () => {
      const result = await client(options).request<RetentionRun>('POST', `/volumes/${encodeURIComponent(name)}/thin`, {});
      if (options.json) printJson(result);
      else {
        const forced = result.pointsForced > 0 ? `, ${result.pointsForced} more ahead of the policy to meet --max-size (see volume info)` : '';
        process.stdout.write(`volume ${result.volume}: ${result.pointsExpired} point(s) expired${forced}; ${result.recordsThinned} payload(s) dropped in ${result.segmentsCompacted} segment(s), ${size(result.bytesReclaimed)} reclaimed; journal now ${size(result.journalBytes)}\n`);
      }
      return 0;
    }));

  volume.command('delete <name>')
    .description('delete a volume and its data (refused while clients are connected)')
    .option('--force', 'disconnect connected clients first')
    .option('--api <url>', 'daemon API URL')
    .option('--json', 'print JSON')
    .action((name: string, options: ClientOptions & { force?: boolean }) => run(async () => {
      const query = options.force ? '?force=true' : '';
      const result = await client(options).request<{ name: string; disconnectedClients: number }>('DELETE', `/volumes/${encodeURIComponent(name)}${query}`);
      if (options.json) printJson(result);
      else process.stdout.write(`deleted volume ${result.name}${result.disconnectedClients ? ` (disconnected ${result.disconnectedClients} client(s))` : ''}\n`);
      return 0;
    }));
}

function retentionBody(options: { keep?: string; maxSize?: string }): { keep?: string; maxSize?: string | null } {
  return {
    ...(options.keep === undefined ? {} : { keep: options.keep }),
    ...(options.maxSize === undefined ? {} : { maxSize: options.maxSize === 'none' ? null : options.maxSize }),
  };
}

function client(options: ClientOptions): ApiClient {
  return new ApiClient(apiUrl(options.api));
}
