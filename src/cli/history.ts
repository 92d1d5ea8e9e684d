/**
 * Point-in-time commands: mount, unmount, mounts, bookmark create|list|delete, restore,
 * rollback, timeline, points. Every one prints the resolved seq and time of the point it
 * used; `--json` prints the API's answer as is.
 */
import type { Command } from 'commander';
import cliProgress from 'cli-progress';
import { HindsightError } from '../core/index.js';
import type { JobInfo, MountInfo, RestoreResult, RollbackResult, Timeline } from '../volume/index.js';
import { ApiClient, apiUrl } from './client.js';
import { printFields, printJson, printTable, size } from './output.js';

interface ClientOptions {
  api?: string;
  json?: boolean;
}

type MountView = MountInfo & { export: string; uri: string; connections: number; mountMs?: number };
type BookmarkView = { volume?: string; name: string; seq: number; time: string; createdAt: string };

const API_OPTION = ['--api <url>', 'daemon API URL (default $HINDSIGHT_API or http://127.0.0.1:8640)'] as const;
const AT_HELP = 'the point: RFC 3339 time (2026-11-25T10:15:03.250Z), relative (-5m, -90s, -2h), seq:N, bookmark:NAME or latest';

export function registerHistoryCommands(program: Command, run: (work: () => Promise<number>) => Promise<void>): void {
  program.command('mount <volume>')
    .description('present a point in a volume\'s history as a new NBD export (read-only unless --writable); copies nothing')
    .requiredOption('--at <point>', AT_HELP)
    .option('--name <export>', 'export name (default VOLUME@SEQ, or VOLUME@SEQ-rw with --writable)')
    .option('--writable', 'a scratch clone: its writes go to its own branch, the volume\'s history is never touched')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { at: string; name?: string; writable?: boolean }) => run(async () => {
      const body = { volume, at: options.at, ...(options.name === undefined ? {} : { name: options.name }), writable: Boolean(options.writable) };
      const mount = await client(options).request<MountView>('POST', '/mounts', body);
      if (options.json) printJson(mount);
      else {
        process.stdout.write(`mounted ${mount.volume} at seq ${mount.seq} (${mount.time}) ${mount.writable ? 'as a writable clone' : 'read-only'}\n`);
        process.stdout.write(`export ${mount.export}\nuri    ${mount.uri}\n`);
      }
      return 0;
    }));

  program.command('unmount <export>')
    .description('remove a mount (a writable clone\'s own writes are discarded); refused while clients are connected')
    .option('--force', 'disconnect connected clients first')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((name: string, options: ClientOptions & { force?: boolean }) => run(async () => {
      const query = options.force ? '?force=true' : '';
      const result = await client(options).request<MountView & { disconnectedClients: number }>('DELETE', `/mounts/${encodeURIComponent(name)}${query}`);
      if (options.json) printJson(result);
      else process.stdout.write(`unmounted ${result.name}${result.disconnectedClients ? ` (disconnected ${result.disconnectedClients} client(s))` : ''}\n`);
      return 0;
    }));

  program.command('mounts [volume]')
    .description('list mounts (of one volume, or all)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string | undefined, options: ClientOptions) => run(async () => {
      const query = volume === undefined ? '' : `?volume=${encodeURIComponent(volume)}`;
      const { mounts } = await client(options).request<{ mounts: MountView[] }>('GET', `/mounts${query}`);
      if (options.json) printJson({ mounts });
      else printTable(['EXPORT', 'VOLUME', 'SEQ', 'TIME', 'MODE', 'STATE', 'CLIENTS', 'URI'], mounts.map((m) => [
        m.export, m.volume, String(m.seq), m.time, m.writable ? 'writable' : 'read-only', m.error ? `${m.state} (${m.error.code})` : m.state, String(m.connections), m.uri,
      ]));
      return 0;
    }));

  const bookmark = program.command('bookmark').description('name points in a volume\'s history (kept regardless of retention)');
  bookmark.command('create <volume> <name>')
    .description('bookmark a point (default: the latest write)')
    .option('--at <point>', AT_HELP)
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, name: string, options: ClientOptions & { at?: string }) => run(async () => {
      const created = await client(options).request<BookmarkView>('POST', `/volumes/${encodeURIComponent(volume)}/bookmarks`, { name, ...(options.at === undefined ? {} : { at: options.at }) });
      if (options.json) printJson(created);
      else process.stdout.write(`bookmark ${created.name} on ${volume} at seq ${created.seq} (${created.time})\n`);
      return 0;
    }));
  bookmark.command('list <volume>')
    .description('list a volume\'s bookmarks')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions) => run(async () => {
      const result = await client(options).request<{ bookmarks: BookmarkView[] }>('GET', `/volumes/${encodeURIComponent(volume)}/bookmarks`);
      if (options.json) printJson(result);
      else printTable(['NAME', 'SEQ', 'TIME', 'CREATED'], result.bookmarks.map((b) => [b.name, String(b.seq), b.time, b.createdAt]));
      return 0;
    }));
  bookmark.command('delete <volume> <name>')
    .description('forget a bookmark (the data stays until retention removes it)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, name: string, options: ClientOptions) => run(async () => {
      const deleted = await client(options).request<BookmarkView>('DELETE', `/volumes/${encodeURIComponent(volume)}/bookmarks/${encodeURIComponent(name)}`);
      if (options.json) printJson(deleted);
      else process.stdout.write(`deleted bookmark ${deleted.name} (was seq ${deleted.seq})\n`);
      return 0;
    }));

  program.command('restore <volume>')
    .description('write a point of a volume to an image file (sparse) or block device, with a SHA-256 of the image')
    .requiredOption('--at <point>', AT_HELP)
    .requiredOption('--to <path>', 'target file or block device (absolute, or relative to this directory); the daemon writes it')
    .option('--force', 'overwrite an existing file or block device')
    .option('--no-progress', 'no progress bar')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { at: string; to: string; force?: boolean; progress: boolean }) => run(async () => {
      const api = client(options);
      const target = options.to.startsWith('/') ? options.to : `${process.cwd()}/${options.to}`;
      const started = await api.request<JobInfo & { seq: number; time: string }>('POST', `/volumes/${encodeURIComponent(volume)}/restore`, { at: options.at, to: target, force: Boolean(options.force) });
      const showBar = options.progress && !options.json && process.stderr.isTTY;
      if (!options.json) process.stderr.write(`restoring ${volume} at seq ${started.seq} (${started.time}) to ${target}\n`);
      const bar = showBar ? new cliProgress.SingleBar({ format: '{bar} {percentage}% | {done}/{total} | {eta_formatted} left', stream: process.stderr }, cliProgress.Presets.shades_classic) : null;
      let job = started;
      bar?.start(1, 0, { done: '0', total: '?' });
      for (;;) {
        job = { ...job, ...(await api.request<JobInfo>('GET', `/jobs/${started.id}`)) };
        if (job.bytesTotal > 0) {
          bar?.setTotal(job.bytesTotal);
          bar?.update(job.bytesDone, { done: size(job.bytesDone), total: size(job.bytesTotal) });
        }
        if (job.state !== 'running') break;
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      bar?.stop();
      if (job.state === 'failed') throw new HindsightError((job.error?.code ?? 'INTERNAL') as never, job.error?.message ?? 'restore failed');
      const result = job.result as RestoreResult & { seq: number; time: string };
      if (options.json) printJson(result);
      else printFields([
        ['restored', `${volume} at seq ${result.seq} (${result.time})`], ['to', `${result.path} (${result.kind})`],
        ['size', `${size(result.sizeBytes)} (${result.sizeBytes} bytes)`], ['data written', size(result.dataBytes)],
        ['zeroes', `${size(result.zeroBytes)}${result.kind === 'file' ? ' (left as holes)' : ''}`],
        ['sha256', result.sha256], ['took', `${result.seconds.toFixed(2)} s (${size(Math.round(result.sizeBytes / Math.max(result.seconds, 1e-3)))}/s)`],
      ]);
      return 0;
    }));

  program.command('rollback <volume>')
    .description('make the live volume continue from a point, as a new branch (the writes after it stay mountable by seq)')
    .requiredOption('--at <point>', AT_HELP)
    .option('--force', 'disconnect connected clients first (they would see the disk change under them)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { at: string; force?: boolean }) => run(async () => {
      const result = await client(options).request<RollbackResult & { disconnectedClients: number }>('POST', `/volumes/${encodeURIComponent(volume)}/rollback`, { at: options.at, force: Boolean(options.force) });
      if (options.json) printJson(result);
      else {
        process.stdout.write(`rolled ${volume} back to seq ${result.seq} (${result.time}); recorded as seq ${result.revertSeq}\n`);
        if (result.abandoned) process.stdout.write(`the writes seq ${result.abandoned.seqFirst}..${result.abandoned.seqLast} stay mountable with --at seq:N\n`);
        if (result.disconnectedClients) process.stdout.write(`disconnected ${result.disconnectedClients} client(s)\n`);
      }
      return 0;
    }));

  program.command('timeline <volume>')
    .description('writes, bytes, flush points and bookmarks per interval')
    .option('--from <point>', 'start (default: the first record)')
    .option('--to <point>', 'end (default: the last record)')
    .option('--step <duration>', 'interval, e.g. 1m, 1h (default: about 60 intervals)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { from?: string; to?: string; step?: string }) => run(async () => {
      const query = new URLSearchParams();
      for (const key of ['from', 'to', 'step'] as const) if (options[key] !== undefined) query.set(key, options[key]!);
      const timeline = await client(options).request<Timeline>('GET', `/volumes/${encodeURIComponent(volume)}/timeline${query.size ? `?${query}` : ''}`);
      if (options.json) printJson(timeline);
      else {
        printTable(['FROM', 'WRITES', 'WRITTEN', 'ZEROES', 'ZEROED', 'FLUSHES', 'ROLLBACKS'], timeline.buckets.map((b) => [
          b.from, String(b.writes), size(b.bytesWritten), String(b.zeroes), size(b.bytesZeroed), String(b.flushes), String(b.reverts),
        ]));
        for (const b of timeline.bookmarks) process.stdout.write(`bookmark ${b.name}: seq ${b.seq} at ${b.time}\n`);
      }
      return 0;
    }));

  program.command('points <volume>')
    .description('list flush points (where the client flushed: crash-consistent) and bookmarks')
    .option('--from <time>', 'oldest time to list')
    .option('--to <time>', 'newest time to list')
    .option('--limit <n>', 'at most this many flush points, the newest (default 100)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { from?: string; to?: string; limit?: string }) => run(async () => {
      const query = new URLSearchParams();
      for (const key of ['from', 'to', 'limit'] as const) if (options[key] !== undefined) query.set(key, options[key]!);
      const result = await client(options).request<{ flushPoints: Array<{ seq: number; time: string }>; bookmarks: BookmarkView[] }>('GET', `/volumes/${encodeURIComponent(volume)}/points${query.size ? `?${query}` : ''}`);
      if (options.json) printJson(result);
      else {
        const rows = [
          ...result.flushPoints.map((p) => ({ seq: p.seq, row: [String(p.seq), p.time, 'flush', ''] })),
          ...result.bookmarks.map((b) => ({ seq: b.seq, row: [String(b.seq), b.time, 'bookmark', b.name] })),
        ].sort((a, b) => a.seq - b.seq);
        printTable(['SEQ', 'TIME', 'KIND', 'NAME'], rows.map((r) => r.row));
      }
      return 0;
    }));
}

function client(options: ClientOptions): ApiClient {
  return new ApiClient(apiUrl(options.api));
}
