/**
 * Medians per line and server, and Hindsight's ratio to each peer and to the faster peer.
 * Ratios, not absolute numbers, are what carry across machines.
 */
import type { ServerName } from './servers.js';
import type { LineSpec, Unit } from './workloads.js';

export const TARGET_RATIO = 0.8;
const SUBJECT: ServerName = 'hindsight';

export interface Sample {
  lineId: string;
  server: ServerName;
  repetition: number;
  value: number;
  detail: Record<string, number>;
}

export interface ServerSummary {
  median: number;
  min: number;
  max: number;
  runs: number[];
}

export interface LineSummary {
  title: string;
  unit: Unit;
  target: boolean;
  servers: Partial<Record<ServerName, ServerSummary>>;
  ratios: Record<string, number | string | boolean | null>;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

export function summarise(lines: LineSpec[], servers: ServerName[], samples: Sample[]): Record<string, LineSummary> {
  const result: Record<string, LineSummary> = {};
  for (const line of lines) {
    const perServer: Partial<Record<ServerName, ServerSummary>> = {};
    for (const server of servers) {
      const runs = samples.filter((s) => s.lineId === line.id && s.server === server).map((s) => s.value);
      if (runs.length === 0) continue;
      perServer[server] = { median: round(median(runs)), min: round(Math.min(...runs)), max: round(Math.max(...runs)), runs: runs.map(round) };
    }
    result[line.id] = { title: line.title, unit: line.unit, target: line.target, servers: perServer, ratios: ratiosFor(line, perServer) };
  }
  return result;
}

function ratiosFor(line: LineSpec, perServer: Partial<Record<ServerName, ServerSummary>>): LineSummary['ratios'] {
  const subject = perServer[SUBJECT];
  // Peers are the other programs; Hindsight's own variants (hindsight-plain) are shown, not compared.
  const peers = (Object.keys(perServer) as ServerName[]).filter((name) => !name.startsWith('hindsight'));
  if (!subject || peers.length === 0) return {};
  const ratios: LineSummary['ratios'] = {};
  for (const peer of peers) ratios[`${SUBJECT}/${peer}`] = round(subject.median / (perServer[peer] as ServerSummary).median, 3);
  const fastest = peers.reduce((a, b) => ((perServer[a] as ServerSummary).median >= (perServer[b] as ServerSummary).median ? a : b));
  const toFastest = round(subject.median / (perServer[fastest] as ServerSummary).median, 3);
  ratios.fasterPeer = fastest;
  ratios[`${SUBJECT}/fasterPeer`] = toFastest;
  ratios.meetsTarget = line.target ? toFastest >= TARGET_RATIO : null;
  return ratios;
}

function round(value: number, digits = 1): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** A Markdown table of the medians and ratios, for the terminal and docs/BENCHMARKS.md. */
export function formatTable(summary: Record<string, LineSummary>, servers: ServerName[]): string {
  const peers = servers.filter((name) => !name.startsWith('hindsight'));
  const header = ['line', 'unit', ...servers.map((s) => `${s} (median)`), ...peers.map((p) => `HS/${p}`), 'HS/faster peer', `>= ${TARGET_RATIO}x`];
  const rows = Object.entries(summary).map(([id, line]) => [
    id, line.unit,
    ...servers.map((s) => formatNumber(line.servers[s]?.median)),
    ...peers.map((p) => formatNumber(line.ratios[`${SUBJECT}/${p}`] as number | undefined, 2)),
    formatNumber(line.ratios[`${SUBJECT}/fasterPeer`] as number | undefined, 2),
    line.ratios.meetsTarget === null ? '(info)' : line.ratios.meetsTarget ? 'yes' : 'NO',
  ]);
  return [header, header.map(() => '---'), ...rows].map((row) => `| ${row.join(' | ')} |`).join('\n');
}

function formatNumber(value: number | undefined, digits = 0): string {
  if (value === undefined || Number.isNaN(value)) return '-';
  return digits === 0 ? Math.round(value).toLocaleString('en-US') : value.toFixed(digits);
}
