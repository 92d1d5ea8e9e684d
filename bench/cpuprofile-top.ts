/**
 * Reads a V8 .cpuprofile (node --cpu-prof) and prints where the time went: self and
 * inclusive time per function (name + file:line), and self time per category
 * (Hindsight code, node internals, dependencies, native/V8, GC, idle).
 *
 *   node --import tsx bench/cpuprofile-top.ts FILE.cpuprofile [--top 25] [--json]
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionTime {
  key: string;
  category: string;
  selfMs: number;
  totalMs: number;
}

export interface ProfileSummary {
  file: string;
  wallMs: number;
  sampledMs: number;
  categories: Record<string, number>;
  functions: FunctionTime[];
}

function categoryOf(frame: ProfileNode['callFrame']): string {
  const { functionName, url } = frame;
  if (functionName === '(idle)') return 'idle';
  if (functionName === '(garbage collector)') return 'gc';
  if (functionName === '(program)' || functionName === '(root)') return 'program (V8/native, unattributed)';
  if (url === '') return 'native/builtin';
  if (url.startsWith('node:')) return 'node internals';
  if (url.includes('/node_modules/')) return 'dependencies';
  if (url.includes('/dist/') || url.includes('/src/')) return 'hindsight';
  return 'other';
}

function keyOf(frame: ProfileNode['callFrame']): string {
  const name = frame.functionName || '(anonymous)';
  if (frame.url === '') return name;
  const file = frame.url.startsWith('file://') ? shortPath(fileURLToPath(frame.url)) : frame.url;
  return `${name} ${file}:${frame.lineNumber + 1}`;
}

function shortPath(file: string): string {
  const marker = file.lastIndexOf('/dist/');
  if (marker >= 0) return file.slice(marker + 1);
  const modules = file.lastIndexOf('/node_modules/');
  return modules >= 0 ? file.slice(modules + 1) : path.basename(file);
}

/** Each sample lasts until the next one (as Chrome DevTools counts it). */
function sampleDurationsUs(profile: CpuProfile): number[] {
  const stamps: number[] = [];
  let at = profile.startTime;
  for (const delta of profile.timeDeltas) {
    at += delta;
    stamps.push(at);
  }
  return stamps.map((stamp, i) => Math.max(0, (i + 1 < stamps.length ? stamps[i + 1] : profile.endTime) - stamp));
}

export function summariseProfile(file: string): ProfileSummary {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parentOf = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id);
  const durations = sampleDurationsUs(profile);
  const functions = new Map<string, FunctionTime>();
  const categories: Record<string, number> = {};
  const entry = (node: ProfileNode): FunctionTime => {
    const key = keyOf(node.callFrame);
    let found = functions.get(key);
    if (!found) {
      found = { key, category: categoryOf(node.callFrame), selfMs: 0, totalMs: 0 };
      functions.set(key, found);
    }
    return found;
  };
  profile.samples.forEach((id, i) => {
    const ms = durations[i] / 1000;
    const leaf = byId.get(id) as ProfileNode;
    const self = entry(leaf);
    self.selfMs += ms;
    categories[self.category] = (categories[self.category] ?? 0) + ms;
    const seen = new Set<string>();
    for (let node: ProfileNode | undefined = leaf; node; node = byId.get(parentOf.get(node.id) ?? -1)) {
      const fn = entry(node);
      if (seen.has(fn.key)) continue;
      seen.add(fn.key);
      fn.totalMs += ms;
    }
  });
  const sampledMs = durations.reduce((a, b) => a + b, 0) / 1000;
  return {
    file, wallMs: (profile.endTime - profile.startTime) / 1000, sampledMs, categories,
    functions: [...functions.values()].sort((a, b) => b.selfMs - a.selfMs),
  };
}

export function formatSummary(summary: ProfileSummary, top: number): string {
  const pct = (ms: number) => `${((100 * ms) / summary.sampledMs).toFixed(1).padStart(5)}%`;
  const row = (f: FunctionTime, ms: number) => `  ${ms.toFixed(0).padStart(7)} ms ${pct(ms)}  ${f.key}  [${f.category}]`;
  const busy = summary.sampledMs - (summary.categories.idle ?? 0);
  const lines = [
    `${summary.file}: ${summary.wallMs.toFixed(0)} ms wall, ${summary.sampledMs.toFixed(0)} ms sampled, main thread busy ${pct(busy)}`,
    'self time by category:',
    ...Object.entries(summary.categories).sort((a, b) => b[1] - a[1]).map(([name, ms]) => `  ${ms.toFixed(0).padStart(7)} ms ${pct(ms)}  ${name}`),
    `top ${top} by self time:`,
    ...summary.functions.slice(0, top).map((f) => row(f, f.selfMs)),
    `top ${top} by inclusive time (excluding roots):`,
    ...[...summary.functions].filter((f) => !f.key.startsWith('(')).sort((a, b) => b.totalMs - a.totalMs).slice(0, top).map((f) => row(f, f.totalMs)),
  ];
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { top: { type: 'string', default: '25' }, json: { type: 'boolean', default: false } },
  });
  for (const file of positionals) {
    const summary = summariseProfile(file);
    if (values.json) process.stdout.write(`${JSON.stringify({ ...summary, functions: summary.functions.slice(0, Number(values.top)) }, null, 2)}\n`);
    else process.stdout.write(`${formatSummary(summary, Number(values.top))}\n\n`);
  }
}
