/**
 * Daemon configuration: embedded defaults, then the config file (YAML or JSON), then the
 * environment (HINDSIGHT_DATA), then command-line flags; later wins. Unknown keys in the
 * file are an error, not a silent typo.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import type { TlsConfig } from './tls.js';
import { HindsightError, parseSize } from '../core/index.js';
import { validateVolumeName, validateVolumeSize } from '../volume/index.js';
import { parseListenAddress } from './address.js';
import type { ListenAddress } from './address.js';

export interface InitialVolume {
  name: string;
  sizeBytes: number;
}

export interface DaemonConfig {
  dataDir: string;
  nbd: ListenAddress;
  api: ListenAddress;
  replication: ListenAddress;
  /** Replication keys (identity:hexkey lines; the first is this site's); default DATA/replication.psk, made at first start. */
  replicationPskFile?: string;
  /** Replication over X.509 instead (QEMU layout: ca-cert, server-cert/key, client-cert/key). */
  replicationCertificates?: string;
  syncEveryWrite: boolean;
  insecure: boolean;
  /** API tokens required even on loopback (they always are beyond it). */
  requireToken: boolean;
  /** NBD TLS (STARTTLS): off, on (offered) or require; credentials. */
  tls: TlsConfig;
  /** Export access rules, IDENTITY=PATTERN[,PATTERN] (none: anyone may open anything). */
  nbdAllow: string[];
  /** HTTPS for the API: certificate and key files (PEM). */
  apiTls: { cert: string; key: string } | null;
  logLevel: string;
  /** Volumes created at start when missing (the README's "first volume ready to use"). */
  initialVolumes: InitialVolume[];
  /** How often retention policies are applied (config `retentionIntervalSeconds`, default 60; 0: only on demand). */
  retentionIntervalMs: number;
}

/** What the command line (or a test) may set; every field optional. */
export interface ConfigOverrides {
  config?: string;
  data?: string;
  nbd?: string;
  api?: string;
  replication?: string;
  replicationPskFile?: string;
  replicationCertificates?: string;
  syncEveryWrite?: boolean;
  insecure?: boolean;
  requireToken?: boolean;
  tls?: string;
  tlsCertificates?: string;
  tlsPskFile?: string;
  tlsVerifyPeer?: boolean;
  nbdAllow?: string[];
  apiTlsCert?: string;
  apiTlsKey?: string;
  logLevel?: string;
  createVolume?: string[];
}

export const DEFAULTS = {
  data: './hindsight-data',
  nbd: '127.0.0.1:10809',
  api: '127.0.0.1:8640',
  replication: '127.0.0.1:10810',
  logLevel: 'info',
} as const;

const FILE_KEYS = new Set(['data', 'nbd', 'api', 'replication', 'replicationPskFile', 'replicationCertificates', 'syncEveryWrite', 'insecure', 'logLevel', 'volumes', 'retentionIntervalSeconds', 'requireToken', 'tls', 'tlsCertificates', 'tlsPskFile', 'tlsVerifyPeer', 'nbdAllow', 'apiTlsCert', 'apiTlsKey']);
const LOG_LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

export function resolveConfig(overrides: ConfigOverrides, env: NodeJS.ProcessEnv = process.env): DaemonConfig {
  const config = resolveAll(overrides, env);
  if (config.replicationPskFile && config.replicationCertificates) throw new HindsightError('CONFIG_INVALID', 'replication uses --replication-psk-file or --replication-certificates, not both');
  return config;
}

function resolveAll(overrides: ConfigOverrides, env: NodeJS.ProcessEnv): DaemonConfig {
  const file = overrides.config ? readConfigFile(overrides.config) : {};
  const pick = <T>(flag: T | undefined, fromFile: unknown, fallback: T): T => (flag !== undefined ? flag : (fromFile as T | undefined) ?? fallback);
  const logLevel = pick(overrides.logLevel, file.logLevel, DEFAULTS.logLevel);
  if (!LOG_LEVELS.has(logLevel)) throw new HindsightError('CONFIG_INVALID', `unknown log level "${logLevel}"`);
  const fileVolumes = Array.isArray(file.volumes) ? file.volumes.map((entry) => volumeFromFile(entry)) : [];
  if (file.volumes !== undefined && !Array.isArray(file.volumes)) throw new HindsightError('CONFIG_INVALID', 'config "volumes" must be a list');
  return {
    dataDir: path.resolve(overrides.data ?? env.HINDSIGHT_DATA ?? stringKey(file, 'data') ?? DEFAULTS.data),
    nbd: parseListenAddress(pick(overrides.nbd, stringKey(file, 'nbd'), DEFAULTS.nbd), 'nbd'),
    api: parseListenAddress(pick(overrides.api, stringKey(file, 'api'), DEFAULTS.api), 'api'),
    replication: parseListenAddress(pick(overrides.replication, stringKey(file, 'replication'), DEFAULTS.replication), 'replication'),
    replicationPskFile: optionalPath(overrides.replicationPskFile ?? stringKey(file, 'replicationPskFile')),
    replicationCertificates: optionalPath(overrides.replicationCertificates ?? stringKey(file, 'replicationCertificates')),
    syncEveryWrite: pick(overrides.syncEveryWrite, booleanKey(file, 'syncEveryWrite'), false),
    insecure: pick(overrides.insecure, booleanKey(file, 'insecure'), false),
    requireToken: pick(overrides.requireToken, booleanKey(file, 'requireToken'), false),
    tls: tlsConfig(overrides, file),
    nbdAllow: [...accessFromFile(file.nbdAllow), ...(overrides.nbdAllow ?? [])],
    apiTls: apiTls(overrides.apiTlsCert ?? stringKey(file, 'apiTlsCert'), overrides.apiTlsKey ?? stringKey(file, 'apiTlsKey')),
    logLevel,
    initialVolumes: [...fileVolumes, ...(overrides.createVolume ?? []).map(parseVolumeSpec)],
    retentionIntervalMs: retentionInterval(file.retentionIntervalSeconds) * 1000,
  };
}

/** "NAME:SIZE", e.g. "disk0:20G". */
export function parseVolumeSpec(spec: string): InitialVolume {
  const at = spec.lastIndexOf(':');
  if (at <= 0) throw new HindsightError('CONFIG_INVALID', `cannot read volume "${spec}": use NAME:SIZE, e.g. disk0:20G`);
  return { name: validateVolumeName(spec.slice(0, at)), sizeBytes: validateVolumeSize(parseSize(spec.slice(at + 1))) };
}

function volumeFromFile(entry: unknown): InitialVolume {
  const record = entry as { name?: unknown; size?: unknown };
  if (typeof record !== 'object' || record === null || typeof record.name !== 'string') {
    throw new HindsightError('CONFIG_INVALID', 'each config volume needs a name and a size');
  }
  const sizeBytes = typeof record.size === 'number' ? record.size : parseSize(String(record.size));
  return { name: validateVolumeName(record.name), sizeBytes: validateVolumeSize(sizeBytes) };
}

function readConfigFile(file: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = YAML.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new HindsightError('CONFIG_INVALID', `cannot read config file ${file}: ${(err as Error).message}`, { cause: err });
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new HindsightError('CONFIG_INVALID', `config file ${file} must be a mapping`);
  for (const key of Object.keys(parsed)) {
    if (!FILE_KEYS.has(key)) throw new HindsightError('CONFIG_INVALID', `config file ${file}: unknown key "${key}"`);
  }
  return parsed as Record<string, unknown>;
}

function stringKey(file: Record<string, unknown>, key: string): string | undefined {
  const value = file[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw new HindsightError('CONFIG_INVALID', `config "${key}" must be a string`);
  return value;
}

function booleanKey(file: Record<string, unknown>, key: string): boolean | undefined {
  const value = file[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'boolean') throw new HindsightError('CONFIG_INVALID', `config "${key}" must be true or false`);
  return value;
}

function retentionInterval(value: unknown): number {
  if (value === undefined) return 60;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 86_400) {
    throw new HindsightError('CONFIG_INVALID', 'config "retentionIntervalSeconds" must be a whole number of seconds from 0 (only on demand) to 86400');
  }
  return value;
}

function tlsConfig(overrides: ConfigOverrides, file: Record<string, unknown>): TlsConfig {
  const mode = overrides.tls ?? stringKey(file, 'tls') ?? 'off';
  if (mode !== 'off' && mode !== 'on' && mode !== 'require') throw new HindsightError('CONFIG_INVALID', `--tls takes off, on or require (got "${mode}")`);
  const x509Dir = overrides.tlsCertificates ?? stringKey(file, 'tlsCertificates');
  const pskFile = overrides.tlsPskFile ?? stringKey(file, 'tlsPskFile');
  return {
    mode,
    x509Dir: x509Dir === undefined ? undefined : path.resolve(x509Dir),
    pskFile: pskFile === undefined ? undefined : path.resolve(pskFile),
    verifyPeer: overrides.tlsVerifyPeer ?? booleanKey(file, 'tlsVerifyPeer') ?? false,
  };
}

/** Config `nbdAllow: {IDENTITY: [EXPORT, ...]}` as IDENTITY=EXPORT,... rules. */
function accessFromFile(value: unknown): string[] {
  if (value === undefined) return [];
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new HindsightError('CONFIG_INVALID', 'config "nbdAllow" maps identities to lists of exports');
  return Object.entries(value as Record<string, unknown>).map(([identity, exports]) => {
    if (!Array.isArray(exports) || !exports.every((entry) => typeof entry === 'string')) throw new HindsightError('CONFIG_INVALID', `config "nbdAllow.${identity}" must be a list of export names`);
    return `${identity}=${exports.join(',')}`;
  });
}

function optionalPath(value: string | undefined): string | undefined {
  return value === undefined ? undefined : path.resolve(value);
}

function apiTls(cert: string | undefined, key: string | undefined): DaemonConfig['apiTls'] {
  if (cert === undefined && key === undefined) return null;
  if (cert === undefined || key === undefined) throw new HindsightError('CONFIG_INVALID', 'HTTPS for the API needs both --api-tls-cert and --api-tls-key');
  return { cert: path.resolve(cert), key: path.resolve(key) };
}
