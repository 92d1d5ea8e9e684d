export { Daemon, catalogOf } from './daemon.js';
export type { BoundPorts } from './daemon.js';
export { resolveConfig, parseVolumeSpec, DEFAULTS } from './config.js';
export type { DaemonConfig, ConfigOverrides } from './config.js';
export { formatAddress, parseListenAddress } from './address.js';
export { VERSION } from './version.js';
