/**
 * Replication commands: `replicate NAME --to HOST:PORT`, `replication list|pause|resume|
 * remove|accept|refuse`, `failover NAME [--at POINT]`. `--json` prints the API's answer.
 */
import type { Command } from 'commander';
import { HindsightError } from '../core/index.js';
import type { IncomingStatus, OutgoingStatus } from '../replication/index.js';
import type { RollbackResult, VolumeInfo } from '../volume/index.js';
import { ApiClient, apiUrl } from './client.js';
import { printJson, printTable, size } from './output.js';

interface ClientOptions {
  api?: string;
  json?: boolean;
}

const API_OPTION = ['--api <url>', 'daemon API URL (default $HINDSIGHT_API or http://127.0.0.1:8640)'] as const;

export function registerReplicationCommands(program: Command, run: (work: () => Promise<number>) => Promise<void>): void {
  program.command('replicate <volume>')
    .description('send a volume\'s journal continuously to another site\'s replication listener (TLS-PSK); resumes by itself after any failure')
    .requiredOption('--to <host:port>', 'the receiving daemon\'s replication address (e.g. dr-site:10810)')
    .option('--as <name>', 'the volume\'s name at the receiver (default: the same)')
    .option('--bandwidth <rate>', 'at most this many bytes per second on the link, e.g. 50M (default: unlimited)')
    .option('--rpo <seconds>', 'warn when the receiver lags more than this (default 60)')
    .option('--identity <id>', 'the PSK identity to present (default: the first in the PSK file)')
    .option('--initial <mode>', 'first sync: image (default: the data the volume and its bookmarks show now; earlier points stay here) or history (every record since the first)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { to: string; as?: string; bandwidth?: string; rpo?: string; identity?: string; initial?: string }) => run(async () => {
      const rpoSeconds = options.rpo === undefined ? undefined : Number(options.rpo.replace(/s$/, ''));
      if (rpoSeconds !== undefined && !(rpoSeconds > 0)) throw new HindsightError('INVALID_ARGUMENT', '--rpo takes seconds, e.g. 30');
      const body = { volume, to: options.to, ...(options.as ? { as: options.as } : {}), ...(options.bandwidth ? { bandwidth: options.bandwidth } : {}), ...(rpoSeconds ? { rpoSeconds } : {}), ...(options.identity ? { identity: options.identity } : {}), ...(options.initial ? { initial: options.initial } : {}) };
      const status = await client(options).request<OutgoingStatus>('POST', '/replication', body);
      if (options.json) printJson(status);
      else process.stdout.write(`replicating ${status.volume} to ${status.to} as ${status.as} (${status.state})\n`);
      return 0;
    }));

  const replication = program.command('replication').description('replication links: list, pause, resume, set, remove; accept or refuse incoming volumes');

  replication.command('list')
    .description('outgoing links (lag, state) and incoming replicas')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((options: ClientOptions) => run(async () => {
      const list = await client(options).request<{ identity: string; listen: { host: string; port: number } | null; outgoing: OutgoingStatus[]; incoming: IncomingStatus[] }>('GET', '/replication');
      if (options.json) {
        printJson(list);
        return 0;
      }
      process.stdout.write(`identity ${list.identity}; listening on ${list.listen ? `${list.listen.host}:${list.listen.port}` : '-'}\n`);
      if (list.outgoing.length > 0) {
        printTable(['VOLUME', 'TO', 'AS', 'STATE', 'HEALTH', 'ACKED SEQ', 'LAG', 'LAG BYTES', 'SENT', 'ERROR'], list.outgoing.map((link) => [
          link.volume, link.to, link.as, link.state, link.health, String(link.seqAcknowledged), `${link.lag.records} rec, ${link.lag.seconds.toFixed(1)} s`,
          size(link.lag.bytes), size(link.bytesOnWire), link.lastError ?? '',
        ]));
      }
      if (list.incoming.length > 0) {
        printTable(['VOLUME', 'FROM', 'STATE', 'HEALTH', 'PEER', 'SEQ', 'DURABLE', 'SOURCE SEQ', 'LAG (SENDER)', 'LAST CONTACT'], list.incoming.map((entry) => [
          entry.volume, entry.from, entry.state, entry.health, entry.peer ?? '-', String(entry.seqLast ?? '-'), String(entry.seqDurable ?? '-'), String(entry.seqSource ?? '-'),
          entry.lag ? `${entry.lag.records} rec, ${entry.lag.seconds.toFixed(1)} s` : '-', entry.lastContact ?? '-',
        ]));
      }
      if (list.outgoing.length === 0 && list.incoming.length === 0) process.stdout.write('no replication links\n');
      return 0;
    }));

  for (const verb of ['pause', 'resume'] as const) {
    replication.command(`${verb} <volume>`)
      .description(verb === 'pause' ? 'stop sending (the link is kept; the lag grows)' : 'send again, from where the receiver is')
      .option(...API_OPTION)
      .option('--json', 'print JSON')
      .action((volume: string, options: ClientOptions) => run(async () => {
        const status = await client(options).request<OutgoingStatus>('POST', `/replication/${encodeURIComponent(volume)}/${verb}`);
        if (options.json) printJson(status);
        else process.stdout.write(`replication of ${volume} ${verb}d\n`);
        return 0;
      }));
  }

  replication.command('set <volume>')
    .description('change a link: its bandwidth limit (0: none) or RPO target; at once')
    .option('--bandwidth <rate>', 'bytes per second, e.g. 50M; 0 for no limit')
    .option('--rpo <seconds>', 'warn when the receiver lags more than this')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { bandwidth?: string; rpo?: string }) => run(async () => {
      const body = { ...(options.bandwidth !== undefined ? { bandwidth: options.bandwidth } : {}), ...(options.rpo !== undefined ? { rpoSeconds: Number(options.rpo.replace(/s$/, '')) } : {}) };
      if (Object.keys(body).length === 0) throw new HindsightError('INVALID_ARGUMENT', 'nothing to change: --bandwidth or --rpo');
      const status = await client(options).request<OutgoingStatus>('PATCH', `/replication/${encodeURIComponent(volume)}`, body);
      if (options.json) printJson(status);
      else process.stdout.write(`replication of ${volume}: bandwidth ${status.bandwidthBytesPerSecond === null ? 'unlimited' : `${size(status.bandwidthBytesPerSecond)}/s`}, RPO ${status.rpoSeconds} s\n`);
      return 0;
    }));

  replication.command('remove <volume>')
    .description('stop replicating a volume (the replica at the other site stays as it is)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions) => run(async () => {
      const status = await client(options).request<OutgoingStatus>('DELETE', `/replication/${encodeURIComponent(volume)}`);
      if (options.json) printJson(status);
      else process.stdout.write(`replication of ${volume} removed\n`);
      return 0;
    }));

  replication.command('accept <volume>')
    .description('receive this volume from a peer (the only way a sender is accepted); the replica is made on first contact')
    .requiredOption('--from <identity>', 'the peer\'s PSK identity (its line must be in this site\'s PSK file)')
    .option('--failback', 'the volume exists here (live): let the peer\'s link make it its replica, keeping what diverged as NAME.diverged-TIME')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { from: string; failback?: boolean }) => run(async () => {
      const status = await client(options).request<IncomingStatus>('POST', '/replication/incoming', { volume, from: options.from, failback: Boolean(options.failback) });
      if (options.json) printJson(status);
      else process.stdout.write(`accepting ${volume} from ${status.from}\n`);
      return 0;
    }));

  replication.command('refuse <volume>')
    .description('stop receiving a volume (the replica stays, read-only)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions) => run(async () => {
      const status = await client(options).request<IncomingStatus>('DELETE', `/replication/incoming/${encodeURIComponent(volume)}`);
      if (options.json) printJson(status);
      else process.stdout.write(`no longer receiving ${volume}\n`);
      return 0;
    }));

  program.command('failback <volume>')
    .description('after a failover, send this volume back to the original site: only what diverged since the last common seq travels (the original site must accept it with --failback)')
    .requiredOption('--to <host:port>', 'the original site\'s replication address')
    .option('--as <name>', 'the volume\'s name there (default: the same)')
    .option('--bandwidth <rate>', 'at most this many bytes per second, e.g. 50M')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { to: string; as?: string; bandwidth?: string }) => run(async () => {
      const body = { volume, to: options.to, ...(options.as ? { as: options.as } : {}), ...(options.bandwidth ? { bandwidth: options.bandwidth } : {}) };
      const status = await client(options).request<OutgoingStatus>('POST', '/replication', body);
      if (options.json) printJson(status);
      else process.stdout.write(`failing back ${status.volume} to ${status.to} as ${status.as}: \`hindsight replication list\` shows when it has caught up\n`);
      return 0;
    }));

  program.command('failover <volume>')
    .description('promote a replica to a live, writable volume (its sender is refused from now on); --at rolls it back to a point first')
    .option('--at <point>', 'continue from this point (a new branch; later records stay readable by seq)')
    .option(...API_OPTION)
    .option('--json', 'print JSON')
    .action((volume: string, options: ClientOptions & { at?: string }) => run(async () => {
      const info = await client(options).request<VolumeInfo & { rollback: RollbackResult | null }>('POST', `/volumes/${encodeURIComponent(volume)}/failover`, options.at ? { at: options.at } : {});
      if (options.json) printJson(info);
      else {
        process.stdout.write(`${volume} is now a live volume (seq ${info.seqLast ?? 0})`);
        process.stdout.write(info.rollback ? `, continuing from seq ${info.rollback.seq} (${info.rollback.time})\n` : '\n');
      }
      return 0;
    }));
}

function client(options: ClientOptions): ApiClient {
  return new ApiClient(apiUrl(options.api));
}
