/**
 * The point-in-time part of the API: mounts, bookmarks, rollback, restore (a job), timeline,
 * flush points and point resolution. Points are taken in the grammar of src/core/point.ts;
 * every answer shows the resolved seq and time.
 */
import type { FastifyInstance } from 'fastify';
import { HindsightError, formatTimeUs, parsePoint } from '../core/index.js';
import { claimRestoreTarget, restoreImage } from '../volume/index.js';
import type { MountInfo } from '../volume/index.js';
import { attachedClients } from './clients.js';
import type { ApiContext } from './server.js';

const NAME_PARAM = {
  type: 'object',
  properties: { name: { type: 'string' } },
  required: ['name'],
} as const;
const POINT = { type: 'string', minLength: 1, maxLength: 256 } as const;

export function registerHistoryRoutes(app: FastifyInstance, context: ApiContext): void {
  const mountView = (info: MountInfo) => ({ ...info, export: info.name, uri: nbdUri(context, info.name), connections: context.nbd.connectionCount(info.name) });
  const detach = (exportName: string) => context.nbd.disconnectExport(exportName);

  app.get('/api/v1/volumes/:name/resolve', {
    schema: { params: NAME_PARAM, querystring: { type: 'object', additionalProperties: false, required: ['at'], properties: { at: POINT } } },
  }, async (request) => {
    const { name } = request.params as { name: string };
    const { at } = request.query as { at: string };
    const point = context.volumes.resolve(name, at);
    return { volume: name, at: point.asked, seq: point.seq, time: formatTimeUs(point.timeUs) };
  });

  app.post('/api/v1/mounts', {
    schema: {
      body: {
        type: 'object', additionalProperties: false, required: ['volume', 'at'],
        properties: { volume: { type: 'string' }, at: POINT, name: { type: 'string' }, writable: { type: 'boolean' } },
      },
    },
  }, async (request, reply) => {
    const body = request.body as { volume: string; at: string; name?: string; writable?: boolean };
    const started = process.hrtime.bigint();
    const info = await context.volumes.mount(body.volume, body.at, { name: body.name, writable: body.writable });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    request.log.info({ volume: body.volume, mount: info.name, seq: info.seq, writable: info.writable, ms }, 'point mounted');
    return reply.status(201).send({ ...mountView(info), mountMs: ms });
  });

  app.get('/api/v1/mounts', {
    schema: { querystring: { type: 'object', additionalProperties: false, properties: { volume: { type: 'string' } } } },
  }, async (request) => {
    const { volume } = request.query as { volume?: string };
    if (volume !== undefined) context.volumes.get(volume);
    return { mounts: context.volumes.mountList(volume).map(mountView) };
  });

  app.get('/api/v1/mounts/:name', { schema: { params: NAME_PARAM } }, async (request) => {
    const { name } = request.params as { name: string };
    return mountView(context.volumes.mountGet(name));
  });

  app.delete('/api/v1/mounts/:name', {
    schema: { params: NAME_PARAM, querystring: { type: 'object', additionalProperties: false, properties: { force: { type: 'boolean' } } } },
  }, async (request) => {
    const { name } = request.params as { name: string };
    const { force = false } = request.query as { force?: boolean };
    context.volumes.mountGet(name);
    const connected = await attachedClients(context.nbd, name, force, `mount "${name}"`);
    const info = await context.volumes.unmount(name, detach);
    request.log.info({ mount: name, disconnected: connected }, 'point unmounted');
    return { ...info, unmounted: true, disconnectedClients: connected };
  });

  app.get('/api/v1/volumes/:name/bookmarks', { schema: { params: NAME_PARAM } }, async (request) => {
    const { name } = request.params as { name: string };
    return { volume: name, bookmarks: context.volumes.bookmarkList(name) };
  });

  app.post('/api/v1/volumes/:name/bookmarks', {
    schema: {
      params: NAME_PARAM,
      body: { type: 'object', additionalProperties: false, required: ['name'], properties: { name: { type: 'string' }, at: POINT } },
    },
  }, async (request, reply) => {
    const { name } = request.params as { name: string };
    const body = request.body as { name: string; at?: string };
    const bookmark = await context.volumes.bookmarkCreate(name, body.name, body.at);
    request.log.info({ volume: name, bookmark: bookmark.name, seq: bookmark.seq }, 'bookmark created');
    return reply.status(201).send({ volume: name, ...bookmark });
  });

  app.delete('/api/v1/volumes/:name/bookmarks/:bookmark', {
    schema: { params: { type: 'object', required: ['name', 'bookmark'], properties: { name: { type: 'string' }, bookmark: { type: 'string' } } } },
  }, async (request) => {
    const { name, bookmark } = request.params as { name: string; bookmark: string };
    const deleted = await context.volumes.bookmarkDelete(name, bookmark);
    request.log.info({ volume: name, bookmark }, 'bookmark deleted');
    return { volume: name, ...deleted, deleted: true };
  });

  app.post('/api/v1/volumes/:name/rollback', {
    schema: {
      params: NAME_PARAM,
      body: { type: 'object', additionalProperties: false, required: ['at'], properties: { at: POINT, force: { type: 'boolean' } } },
    },
  }, async (request) => {
    const { name } = request.params as { name: string };
    const { at, force = false } = request.body as { at: string; force?: boolean };
    const connected = force ? context.nbd.connectionCount(name) : await context.nbd.settledConnectionCount(name);
    const result = await context.volumes.rollback(name, at, force, () => context.nbd.connectionCount(name), detach);
    request.log.warn({ volume: name, seq: result.seq, revertSeq: result.revertSeq, abandoned: result.abandoned, disconnected: connected }, 'volume rolled back');
    return { ...result, disconnectedClients: force ? connected : 0 };
  });

  app.post('/api/v1/volumes/:name/restore', {
    schema: {
      params: NAME_PARAM,
      body: { type: 'object', additionalProperties: false, required: ['at', 'to'], properties: { at: POINT, to: { type: 'string', minLength: 1, maxLength: 4096 }, force: { type: 'boolean' } } },
    },
  }, async (request, reply) => {
    const { name } = request.params as { name: string };
    const { at, to, force = false } = request.body as { at: string; to: string; force?: boolean };
    const point = context.volumes.resolve(name, at);
    const view = context.volumes.view(name, point.seq);
    // Retention keeps the point while the restore reads it (pinned in the turn it resolved).
    const unpin = context.volumes.pin(name, point.seq);
    let job;
    try {
      // The target is checked (and claimed) before the job starts: a bad one is a 4xx now.
      const claimed = await claimRestoreTarget(to, view.sizeBytes, force, context.dataDir);
      try {
        job = context.jobs.start('restore', name, async (control) => {
          try {
            const result = await restoreImage(view, to, { force, claimed, onProgress: (p) => control.progress(p.bytesDone, p.bytesTotal), cancelled: control.cancelled });
            request.log.info({ volume: name, seq: point.seq, to, sha256: result.sha256, seconds: result.seconds }, 'restore finished');
            return { volume: name, seq: point.seq, time: formatTimeUs(point.timeUs), ...result };
          } finally {
            view.close();
            unpin();
          }
        });
      } catch (err) {
        claimed.release();
        throw err;
      }
    } catch (err) {
      view.close();
      unpin();
      throw err;
    }
    return reply.status(202).send({ ...job, volume: name, seq: point.seq, time: formatTimeUs(point.timeUs) });
  });

  app.get('/api/v1/jobs', async () => ({ jobs: context.jobs.list() }));

  app.get('/api/v1/jobs/:id', {
    schema: { params: { type: 'object', required: ['id'], properties: { id: { type: 'string', maxLength: 64 } } } },
  }, async (request) => {
    const { id } = request.params as { id: string };
    return context.jobs.get(id);
  });

  app.get('/api/v1/volumes/:name/timeline', {
    schema: {
      params: NAME_PARAM,
      querystring: { type: 'object', additionalProperties: false, properties: { from: POINT, to: POINT, step: { type: 'string', maxLength: 32 } } },
    },
  }, async (request) => {
    const { name } = request.params as { name: string };
    const { from, to, step } = request.query as { from?: string; to?: string; step?: string };
    return context.volumes.timeline(name, { from, to, stepMs: step === undefined ? undefined : durationMs(step) });
  });

  app.get('/api/v1/volumes/:name/points', {
    schema: {
      params: NAME_PARAM,
      querystring: { type: 'object', additionalProperties: false, properties: { from: POINT, to: POINT, limit: { type: 'integer', minimum: 1, maximum: 10000 } } },
    },
  }, async (request) => {
    const { name } = request.params as { name: string };
    const { from, to, limit } = request.query as { from?: string; to?: string; limit?: number };
    return {
      volume: name,
      flushPoints: context.volumes.flushPoints(name, { from, to, limit }),
      bookmarks: context.volumes.bookmarkList(name),
    };
  });
}

/** `5m`, `90s`, `1h30m`, `250ms` as milliseconds (the relative-time grammar without the '-'). */
export function durationMs(text: string): number {
  const nowMs = 4_000_000_000_000;
  let spec;
  try {
    spec = parsePoint(`-${text.trim()}`, nowMs);
  } catch {
    throw new HindsightError('INVALID_ARGUMENT', `invalid duration "${text}": use e.g. 250ms, 90s, 5m, 1h30m, 1d`);
  }
  if (spec.kind !== 'time') throw new HindsightError('INVALID_ARGUMENT', `invalid duration "${text}"`);
  const ms = nowMs - spec.timeUs / 1000;
  if (ms <= 0) throw new HindsightError('INVALID_ARGUMENT', `duration "${text}" must be more than zero`);
  return ms;
}

function nbdUri(context: ApiContext, exportName: string): string {
  const { host, port } = context.ports().nbd ?? { host: '127.0.0.1', port: 10809 };
  const shown = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `nbd://${shown.includes(':') ? `[${shown}]` : shown}:${port}/${encodeURIComponent(exportName)}`;
}
