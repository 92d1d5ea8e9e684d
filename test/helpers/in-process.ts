/** An NBD server over real file-backed volumes, in this process, for raw-protocol tests. */
import fs from 'node:fs';
import { pino } from 'pino';
import { catalogOf } from '../../src/daemon/index.js';
import { NbdServer } from '../../src/nbd/index.js';
import { VolumeManager } from '../../src/volume/index.js';
import { makeTempDir } from './daemon.js';

export interface InProcessServer {
  port: number;
  nbd: NbdServer;
  volumes: VolumeManager;
  dataDir: string;
  close(): Promise<void>;
}

export async function startInProcess(volumes: Array<{ name: string; sizeBytes: number; readOnly?: boolean }>, options: { handshakeTimeoutMs?: number; segmentBytesMax?: number; dataDir?: string } = {}): Promise<InProcessServer> {
  const dataDir = options.dataDir ?? makeTempDir();
  const manager = new VolumeManager({ dataDir, syncEveryWrite: false, retentionIntervalMs: 0, segmentBytesMax: options.segmentBytesMax });
  await manager.open();
  for (const volume of volumes) {
    await manager.create(volume.name, volume.sizeBytes);
    if (volume.readOnly) await manager.setReadOnly(volume.name, true);
  }
  const nbd = new NbdServer({
    host: '127.0.0.1', port: 0, catalog: catalogOf(manager), log: pino({ level: 'silent' }), handshakeTimeoutMs: options.handshakeTimeoutMs,
  });
  const { port } = await nbd.listen();
  return {
    port, nbd, volumes: manager, dataDir,
    close: async () => {
      await nbd.close(1000);
      await manager.close();
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
