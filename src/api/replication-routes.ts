/**
 * Replication in the API: links out (`replicate`), volumes accepted in, pause/resume/remove,
 * failover; and `/metrics` (Prometheus text), where replication lag is the RPO a DR plan
 * watches.
 */
import type { FastifyInstance } from 'fastify';
import { Gauge, Registry } from 'prom-client';
import type { ApiContext } from './server.js';

const NAME_PARAM = {
  type: 'object',
  properties: { name: { type: 'string' } },
  required: ['name'],
} as const;
const TEXT = { type: 'string', minLength: 1, maxLength: 256 } as const;

export function registerReplicationRoutes(app: FastifyInstance, context: ApiContext): void {
  const replication = () => {
    if (!context.replication) throw new Error('replication is not running');
    return context.replication;
  };

  app.get('/api/v1/replication', async () => replication().list());

  app.post('/api/v1/replication', {
    schema: {
      body: {
        type: 'object', additionalProperties: false, required: ['volume', 'to'],
        properties: {
          volume: TEXT, to: TEXT, as: TEXT, identity: TEXT,
          bandwidth: { anyOf: [{ type: 'string', maxLength: 32 }, { type: 'integer', minimum: 0 }, { type: 'null' }] },
          rpoSeconds: { type: 'number', exclusiveMinimum: 0 },
          initial: { type: 'string', enum: ['image', 'history'] },
        },
      },
    },
  }, async (request, reply) => {
    const body = request.body as { volume: string; to: string; as?: string; identity?: string; bandwidth?: string | number | null; rpoSeconds?: number; initial?: 'image' | 'history' };
    const status = await replication().replicate(body);
    request.log.info({ volume: body.volume, to: body.to, as: status.as }, 'replication started');
    return reply.status(201).send(status);
  });

  for (const [verb, paused] of [['pause', true], ['resume', false]] as const) {
    app.post(`/api/v1/replication/:name/${verb}`, { schema: { params: NAME_PARAM } }, async (request) => {
      const { name } = request.params as { name: string };
      const status = await replication().setPaused(name, paused);
      request.log.info({ volume: name }, `replication ${verb}d`);
      return status;
    });
  }

  app.patch('/api/v1/replication/:name', {
    schema: {
      params: NAME_PARAM,
      body: {
        type: 'object', additionalProperties: false, minProperties: 1,
        properties: { bandwidth: { anyOf: [{ type: 'string', maxLength: 32 }, { type: 'integer', minimum: 0 }, { type: 'null' }] }, rpoSeconds: { type: 'number', exclusiveMinimum: 0 } },
      },
    },
  }, async (request) => {
    const { name } = request.params as { name: string };
    const body = request.body as { bandwidth?: string | number | null; rpoSeconds?: number };
    const status = await replication().update(name, body);
    request.log.info({ volume: name, bandwidthBytesPerSecond: status.bandwidthBytesPerSecond, rpoSeconds: status.rpoSeconds }, 'replication link changed');
    return status;
  });

  app.delete('/api/v1/replication/:name', { schema: { params: NAME_PARAM } }, async (request) => {
    const { name } = request.params as { name: string };
    const status = await replication().remove(name);
    request.log.info({ volume: name }, 'replication removed');
    return { ...status, removed: true };
  });

  app.post('/api/v1/replication/incoming', {
    schema: { body: { type: 'object', additionalProperties: false, required: ['volume', 'from'], properties: { volume: TEXT, from: TEXT, failback: { type: 'boolean' } } } },
  }, async (request, reply) => {
    const { volume, from, failback = false } = request.body as { volume: string; from: string; failback?: boolean };
    const status = await replication().accept(volume, from, failback);
    request.log.info({ volume, from, failback }, 'replication accepted');
    return reply.status(201).send(status);
  });

  app.delete('/api/v1/replication/incoming/:name', { schema: { params: NAME_PARAM } }, async (request) => {
    const { name } = request.params as { name: string };
    const status = await replication().refuse(name);
    request.log.info({ volume: name }, 'replication no longer accepted');
    return { ...status, removed: true };
  });

  app.post('/api/v1/volumes/:name/failover', {
    schema: { params: NAME_PARAM, body: { type: 'object', additionalProperties: false, properties: { at: TEXT } } },
  }, async (request) => {
    const { name } = request.params as { name: string };
    const { at } = (request.body ?? {}) as { at?: string };
    const info = await replication().failover(name, at, () => context.nbd.connectionCount(name), (exportName) => context.nbd.disconnectExport(exportName));
    request.log.warn({ volume: name, at, seq: info.seqLast }, 'failover: the replica is now a live volume');
    return info;
  });

  app.get('/metrics', async (_request, reply) => {
    const registry = new Registry();
    const gauge = (name: string, help: string, labelNames: string[]) => new Gauge({ name, help, labelNames, registers: [registry] });
    const lagSeconds = gauge('hindsight_replication_lag_seconds', 'Age of the oldest write the receiver does not hold durably (0 when caught up)', ['volume', 'to']);
    const lagRecords = gauge('hindsight_replication_lag_records', 'Records written here and not yet durable at the receiver', ['volume', 'to']);
    const lagBytes = gauge('hindsight_replication_lag_bytes', 'Journal bytes written here and not yet durable at the receiver', ['volume', 'to']);
    const wire = gauge('hindsight_replication_sent_bytes', 'Bytes sent on the replication link (compressed, framed) since start', ['volume', 'to']);
    const up = gauge('hindsight_replication_link_up', '1 while the link streams', ['volume', 'to']);
    const rpo = gauge('hindsight_replication_rpo_exceeded', '1 while the lag exceeds the RPO target, or the link is down with writes waiting', ['volume', 'to']);
    const received = gauge('hindsight_replication_received_seq', 'Last seq received (incoming replicas)', ['volume', 'from']);
    const receivedLag = gauge('hindsight_replication_received_lag_seconds', 'Lag of an incoming replica as its sender last reported it (every 2 s)', ['volume', 'from']);
    const receivedWarning = gauge('hindsight_replication_received_warning', '1 while an incoming replica lags past its RPO target or its sender has been silent 30 s', ['volume', 'from']);
    const journal = gauge('hindsight_volume_journal_bytes', 'Journal bytes of a volume', ['volume']);
    const seq = gauge('hindsight_volume_seq_last', 'Last seq of a volume', ['volume']);
    for (const name of context.volumes.names()) {
      try {
        const info = await context.volumes.info(name);
        journal.set({ volume: name }, info.journalBytes);
        seq.set({ volume: name }, info.seqLast ?? 0);
      } catch {
        // a volume deleted meanwhile
      }
    }
    if (context.replication) {
      const { outgoing, incoming } = context.replication.list();
      for (const link of outgoing) {
        const labels = { volume: link.volume, to: link.to };
        lagSeconds.set(labels, link.lag.seconds);
        lagRecords.set(labels, link.lag.records);
        lagBytes.set(labels, link.lag.bytes);
        wire.set(labels, link.bytesOnWire);
        up.set(labels, link.state === 'streaming' ? 1 : 0);
        rpo.set(labels, link.health === 'warning' ? 1 : 0);
      }
      for (const entry of incoming) {
        const labels = { volume: entry.volume, from: entry.from };
        received.set(labels, entry.seqLast ?? 0);
        if (entry.lag) receivedLag.set(labels, entry.lag.seconds);
        receivedWarning.set(labels, entry.health === 'warning' ? 1 : 0);
      }
    }
    return reply.type(registry.contentType).send(await registry.metrics());
  });
}
