/**
 * The HTTP API (`/api/v1`, JSON). Bodies are validated by JSON schema at the edge; every
 * error leaves as `{code, message}` with a proper status and never a stack trace.
 */
import Fastify, { LogController } from 'fastify';
import { Ajv } from 'ajv';
import type { FastifyInstance, FastifyBaseLogger } from 'fastify';
import { HindsightError, LIMITS, cacheBytes, isHindsightError, parseSize } from '../core/index.js';
import type { NbdServer } from '../nbd/index.js';
import type { JobRegistry, VolumeManager } from '../volume/index.js';
import type { ReplicationService } from '../replication/index.js';
import { attachedClients } from './clients.js';
import { registerHistoryRoutes } from './history-routes.js';
import { registerReplicationRoutes } from './replication-routes.js';
import { httpStatus } from './http-status.js';
import { TokenStore } from './tokens.js';

export interface ApiContext {
  volumes: VolumeManager;
  nbd: NbdServer;
  jobs: JobRegistry;
  version: string;
  startedAt: Date;
  dataDir: string;
  ports: () => Record<string, { host: string; port: number }>;
  log: FastifyBaseLogger;
  /** API tokens; `required`: every request but the health check needs one (off: loopback, trusted). */
  auth?: { required: boolean; tokens: TokenStore };
  /** HTTPS: the server certificate and key (PEM); plain HTTP without. */
  https?: { cert: Buffer; key: Buffer } | null;
  /** Replication links and the listener (absent in some tests). */
  replication?: ReplicationService;
}

const NAME_PARAM = {
  type: 'object',
  // Length and characters are checked by validateVolumeName, which answers INVALID_NAME.
  properties: { name: { type: 'string' } },
  required: ['name'],
} as const;

const SIZE = { anyOf: [{ type: 'string', maxLength: 32 }, { type: 'integer', minimum: 1 }] };
const KEEP = { type: 'string', minLength: 1, maxLength: 256 };
/** A size, or null (or "none") for no cap. */
const MAX_SIZE = { anyOf: [{ type: 'string', maxLength: 32 }, { type: 'integer', minimum: 1 }, { type: 'null' }] };

function maxSizeOf(value: string | number | null | undefined): number | null | undefined {
  if (value === undefined || value === null) return value;
  if (typeof value === 'number') return value;
  return value === 'none' ? null : parseSize(value);
}

export function buildApi(context: ApiContext): FastifyInstance {
  const app = Fastify({
    loggerInstance: context.log,
    bodyLimit: LIMITS.apiBodyBytesMax,
    logController: new LogController({ disableRequestLogging: true }),
    ...(context.https ? { https: { ...context.https, minVersion: 'TLSv1.2' as const } } : {}),
  }) as unknown as FastifyInstance;

  // Unknown fields are an error, not silently dropped: a typo must not look like success.
  // Bodies are JSON and must have the right types (a string "true" is not a boolean, an
  // array is not a point); query strings are text, so there types are converted.
  const bodies = new Ajv({ coerceTypes: false, removeAdditional: false, useDefaults: true, allErrors: false });
  const queries = new Ajv({ coerceTypes: 'array', removeAdditional: false, useDefaults: true, allErrors: false });
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? bodies : queries).compile(schema));

  app.setErrorHandler((err, request, reply) => {
    if (isHindsightError(err)) return reply.status(httpStatus(err.code)).send(err.toJSON());
    const fastifyErr = err as { validation?: unknown; statusCode?: number; message: string };
    if (fastifyErr.validation || (fastifyErr.statusCode && fastifyErr.statusCode < 500)) {
      return reply.status(fastifyErr.statusCode ?? 400).send({ code: 'INVALID_ARGUMENT', message: fastifyErr.message });
    }
    request.log.error({ err }, 'internal error in API request');
    return reply.status(500).send({ code: 'INTERNAL', message: 'internal error; see the daemon log' });
  });
  app.setNotFoundHandler((request, reply) => {
    reply.status(404).send({ code: 'ROUTE_NOT_FOUND', message: `no route ${request.method} ${request.url}` });
  });

  const auth = context.auth ?? { required: false, tokens: new TokenStore(context.dataDir) };
  auth.tokens.onDamage = (message) => context.log.error(message);
  app.addHook('onRequest', async (request) => {
    if (!auth.required || request.url === '/api/v1/health') return;
    const header = request.headers.authorization;
    // The token is never logged; only whose it was.
    const presented = typeof header === 'string' && /^bearer /i.test(header) ? header.slice(7).trim() : null;
    if (!presented) throw new HindsightError('UNAUTHORIZED', 'this API needs a token: pass --token or set HINDSIGHT_TOKEN (hindsight token create NAME --data DIR makes one)');
    const token = auth.tokens.verify(presented);
    if (!token) {
      request.log.warn({ ip: request.ip, url: request.url }, 'API request with an unknown or revoked token refused');
      throw new HindsightError('UNAUTHORIZED', 'the token is not valid (unknown or revoked)');
    }
  });

  app.get('/api/v1/health', async () => ({ status: 'ok', version: context.version }));

  app.get('/api/v1/tokens', async () => ({ tokens: auth.tokens.list() }));

  app.post('/api/v1/tokens', {
    schema: { body: { type: 'object', additionalProperties: false, required: ['name'], properties: { name: { type: 'string', maxLength: 64 } } } },
  }, async (request, reply) => {
    const { name } = request.body as { name: string };
    const created = auth.tokens.create(name);
    request.log.info({ token: created.id, name }, 'API token created');
    return reply.status(201).send(created);
  });

  app.delete('/api/v1/tokens/:id', {
    schema: { params: { type: 'object', required: ['id'], properties: { id: { type: 'string', maxLength: 64 } } } },
  }, async (request) => {
    const { id } = request.params as { id: string };
    const revoked = auth.tokens.revoke(id);
    request.log.info({ token: revoked.id, name: revoked.name }, 'API token revoked');
    return { ...revoked, revoked: true };
  });

  app.get('/api/v1/status', async () => ({
    version: context.version,
    pid: process.pid,
    startedAt: context.startedAt.toISOString(),
    uptimeSeconds: Math.round((Date.now() - context.startedAt.getTime()) / 1000),
    dataDir: context.dataDir,
    ports: context.ports(),
    volumes: context.volumes.names().length,
    replication: replicationSummary(context),
    connections: context.nbd.connections().length,
    memory: memoryView(),
    /** Disk space held back for compaction on a full disk (DATA/reserve). */
    reserveBytes: context.volumes.reserveBytes,
  }));

  app.get('/api/v1/volumes', async () => {
    const volumes = [];
    for (const name of context.volumes.names()) volumes.push(await volumeView(context, name));
    return { volumes };
  });

  app.post('/api/v1/volumes', {
    schema: {
      body: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'size'],
        properties: {
          name: { type: 'string' },
          size: SIZE,
          keep: KEEP,
          maxSize: MAX_SIZE,
        },
      },
    },
  }, async (request, reply) => {
    const body = request.body as { name: string; size: string | number; keep?: string; maxSize?: string | number | null };
    const sizeBytes = typeof body.size === 'number' ? body.size : parseSize(body.size);
    await context.volumes.create(body.name, sizeBytes, { keep: body.keep, maxSizeBytes: maxSizeOf(body.maxSize) });
    request.log.info({ volume: body.name, sizeBytes }, 'volume created');
    return reply.status(201).send(await volumeView(context, body.name));
  });

  app.get('/api/v1/volumes/:name', { schema: { params: NAME_PARAM } }, async (request) => {
    const { name } = request.params as { name: string };
    return volumeView(context, name);
  });

  app.patch('/api/v1/volumes/:name', {
    schema: {
      params: NAME_PARAM,
      body: { type: 'object', additionalProperties: false, minProperties: 1, properties: { readOnly: { type: 'boolean' }, reduce: { type: 'boolean' }, keep: KEEP, maxSize: MAX_SIZE } },
    },
  }, async (request) => {
    const { name } = request.params as { name: string };
    const { maxSize, ...changes } = request.body as { readOnly?: boolean; reduce?: boolean; keep?: string; maxSize?: string | number | null };
    await context.volumes.update(name, { ...changes, maxSizeBytes: maxSizeOf(maxSize) });
    request.log.info({ volume: name, ...changes, maxSize }, 'volume updated');
    return volumeView(context, name);
  });

  /** Applies the volume's retention policy now (it also runs every minute by itself). */
  app.post('/api/v1/volumes/:name/thin', { schema: { params: NAME_PARAM } }, async (request) => {
    const { name } = request.params as { name: string };
    return context.volumes.thin(name);
  });

  app.delete('/api/v1/volumes/:name', {
    schema: {
      params: NAME_PARAM,
      querystring: { type: 'object', properties: { force: { type: 'boolean' } }, additionalProperties: false },
    },
  }, async (request, reply) => {
    const { name } = request.params as { name: string };
    const { force = false } = request.query as { force?: boolean };
    context.volumes.get(name);
    const connected = await attachedClients(context.nbd, name, force, `volume "${name}"`);
    const jobs = context.jobs.runningFor(name);
    if (jobs.length > 0 && !force) {
      throw new HindsightError('VOLUME_BUSY', `volume "${name}" has ${jobs.length} running job(s) (${jobs.map((job) => job.kind).join(', ')}); wait for them or use --force to cancel them`);
    }
    await context.jobs.cancel(name);
    await context.volumes.delete(name, (exportName) => context.nbd.disconnectExport(exportName), force);
    request.log.info({ volume: name, force, disconnected: connected }, 'volume deleted');
    return reply.status(200).send({ name, deleted: true, disconnectedClients: connected });
  });

  app.post('/api/v1/fsck', {
    schema: {
      body: {
        type: 'object', additionalProperties: false,
        properties: { volume: { type: 'string' }, rebuildIndex: { type: 'boolean' } },
      },
    },
  }, async (request) => {
    const { volume, rebuildIndex = false } = (request.body ?? {}) as { volume?: string; rebuildIndex?: boolean };
    const names = volume === undefined ? context.volumes.names() : [volume];
    const reports = [];
    for (const name of names) reports.push(await context.volumes.fsck(name, rebuildIndex));
    const problems = reports.reduce((sum, report) => sum + report.problems.length, 0);
    request.log.info({ volumes: names, problems, rebuildIndex }, 'fsck finished');
    return { ok: problems === 0, volumes: reports };
  });

  app.get('/api/v1/connections', async () => ({ connections: context.nbd.connections() }));

  registerHistoryRoutes(app, context);
  registerReplicationRoutes(app, context);
  return app;
}

/** Links out and in, and how many need attention (lag past the RPO target, failing, silent). */
function replicationSummary(context: ApiContext) {
  if (!context.replication) return null;
  const { identity, outgoing, incoming } = context.replication.list();
  return {
    identity, outgoing: outgoing.length, incoming: incoming.length,
    warnings: [...outgoing, ...incoming].filter((entry) => entry.health === 'warning').map((entry) => `${entry.direction} ${entry.volume}`),
    worstLagSeconds: Math.max(0, ...outgoing.map((link) => link.lag.seconds)),
  };
}

async function volumeView(context: ApiContext, name: string) {
  const info = await context.volumes.info(name);
  return { ...info, connections: context.nbd.connectionCount(name) };
}

/** The process's memory and what the daemon-wide caches hold (bytes). */
function memoryView(): Record<string, number> {
  const usage = process.memoryUsage();
  const caches = cacheBytes();
  return {
    rssBytes: usage.rss,
    heapUsedBytes: usage.heapUsed,
    heapTotalBytes: usage.heapTotal,
    externalBytes: usage.external,
    arrayBuffersBytes: usage.arrayBuffers,
    frameCacheBytes: caches.frames,
    regionCacheBytes: caches.regions,
  };
}
