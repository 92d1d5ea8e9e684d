/** `hindsight serve`: runs the daemon in the foreground until SIGINT or SIGTERM. */
import { Daemon, formatAddress, resolveConfig } from '../daemon/index.js';
import type { ConfigOverrides } from '../daemon/index.js';

export async function serve(overrides: ConfigOverrides, json: boolean): Promise<number> {
  const config = resolveConfig(overrides);
  const daemon = await Daemon.start(config);
  const summary = {
    nbd: formatAddress(daemon.ports.nbd),
    api: `${config.apiTls ? 'https' : 'http'}://${formatAddress(daemon.ports.api)}`,
    nbdPort: daemon.ports.nbd.port,
    apiPort: daemon.ports.api.port,
    replication: formatAddress(daemon.ports.replication),
    replicationPort: daemon.ports.replication.port,
    dataDir: config.dataDir,
    pid: process.pid,
  };
  process.stdout.write(json ? `${JSON.stringify(summary)}\n` : `hindsight serving NBD on ${summary.nbd}, API on ${summary.api}, replication on ${summary.replication}, data in ${summary.dataDir}\n`);
  await new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      daemon.log.info({ signal }, 'signal received');
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  await daemon.stop();
  return 0;
}
