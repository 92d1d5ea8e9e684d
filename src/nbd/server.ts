/**
 * The NBD listener: accepts connections up to a limit, tracks which sessions use which
 * export (so a volume can refuse deletion while in use), and shuts down gracefully.
 */
import net from 'node:net';
import { LIMITS, fromSystemError } from '../core/index.js';
import type { ExportAccess, ExportCatalog } from './negotiation.js';
import { NbdSession } from './session.js';
import type { SessionLogger, SessionTls } from './session.js';

export interface NbdServerOptions {
  host: string;
  port: number;
  catalog: ExportCatalog;
  log: SessionLogger;
  /** Defaults to LIMITS.nbdHandshakeTimeoutMs. */
  handshakeTimeoutMs?: number;
  /** NBD_OPT_STARTTLS (null: not offered). */
  tls?: SessionTls | null;
  /** Which client identity may open which export (null: anyone, any export). */
  access?: ExportAccess | null;
}

export interface ConnectionInfo {
  id: number;
  exportName: string | null;
  remoteAddress: string;
  requestsInflight: number;
}

export class NbdServer {
  private readonly server: net.Server;
  private readonly sessions = new Set<NbdSession>();
  private readonly byExport = new Map<string, Set<NbdSession>>();
  private nextId = 1;

  constructor(private readonly options: NbdServerOptions) {
    this.server = net.createServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.accept(socket));
    this.server.maxConnections = LIMITS.nbdConnectionsMax;
  }

  async listen(): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(fromSystemError(err, `NBD listener on ${this.options.host}:${this.options.port}`));
      this.server.once('error', onError);
      this.server.listen(this.options.port, this.options.host, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    const address = this.server.address() as net.AddressInfo;
    return { host: address.address, port: address.port };
  }

  connections(exportName?: string): ConnectionInfo[] {
    const sessions = exportName === undefined ? [...this.sessions] : [...(this.byExport.get(exportName) ?? [])];
    return sessions.map((session) => ({
      id: session.id,
      exportName: session.exportName,
      remoteAddress: session.remoteAddress,
      requestsInflight: session.requestsInflight,
    }));
  }

  connectionCount(exportName: string): number {
    return this.byExport.get(exportName)?.size ?? 0;
  }

  /**
   * The clients of an export once those that are leaving have left: a client that just
   * exited (its FIN on the way) must not make a delete or rollback right after it fail.
   * Waits up to `settleMs` for the count to reach 0.
   */
  async settledConnectionCount(exportName: string, settleMs = 1000): Promise<number> {
    const deadline = Date.now() + settleMs;
    while (this.connectionCount(exportName) > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    return this.connectionCount(exportName);
  }

  /** Gracefully disconnects every client of one export (volume delete --force). */
  async disconnectExport(exportName: string, graceMs = 5000): Promise<void> {
    await shutdownAll([...(this.byExport.get(exportName) ?? [])], graceMs, 'export removed');
  }

  /** Stops listening, lets in-flight requests finish (bounded by graceMs), then hangs up. */
  async close(graceMs = 5000): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await shutdownAll([...this.sessions], graceMs, 'server shutting down');
    await closed;
  }

  private accept(socket: net.Socket): void {
    const session = new NbdSession(this.nextId++, socket, this.options.catalog, {
      onAttach: (attached, exportName) => {
        let set = this.byExport.get(exportName);
        if (!set) this.byExport.set(exportName, (set = new Set()));
        set.add(attached);
        this.options.log.info({ session: attached.id, export: exportName, remote: attached.remoteAddress, tls: attached.secure, identity: attached.identity }, 'nbd client attached');
      },
      onClose: (gone) => {
        this.sessions.delete(gone);
        const name = gone.exportName;
        if (name === null) return;
        const set = this.byExport.get(name);
        set?.delete(gone);
        if (set && set.size === 0) this.byExport.delete(name);
      },
    }, this.options.log, this.options.handshakeTimeoutMs ?? LIMITS.nbdHandshakeTimeoutMs, this.options.tls ?? null, this.options.access ?? null);
    this.sessions.add(session);
  }
}

/** Graceful shutdown of the sessions; whoever is still connected after graceMs is cut off. */
async function shutdownAll(sessions: NbdSession[], graceMs: number, reason: string): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const grace = new Promise<void>((resolve) => { timer = setTimeout(resolve, graceMs); });
  await Promise.race([Promise.all(sessions.map((session) => session.shutdown())), grace]);
  clearTimeout(timer);
  for (const session of sessions) session.abort(reason);
}
