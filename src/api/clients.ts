/** The one check before removing or changing what NBD clients are attached to. */
import { HindsightError } from '../core/index.js';
import type { NbdServer } from '../nbd/index.js';

/**
 * The clients attached to `exportName`. Without `force`, clients that are leaving are given
 * a moment to go, and any that stay make the operation VOLUME_BUSY (`what` names it).
 */
export async function attachedClients(nbd: NbdServer, exportName: string, force: boolean, what: string): Promise<number> {
  if (force) return nbd.connectionCount(exportName);
  const connected = await nbd.settledConnectionCount(exportName);
  if (connected > 0) throw new HindsightError('VOLUME_BUSY', `${what} has ${connected} connected NBD client(s); disconnect them or use --force`);
  return 0;
}
