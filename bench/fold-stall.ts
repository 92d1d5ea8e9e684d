/**
 * How long folding history (History.fold) holds the event loop: a synthetic history of
 * `--records` 4 KiB writes spread over `--regions` 4 MiB regions (500 records a segment),
 * three quarters of it folded — at once (`fold`, what a start does as it loads) and as the
 * retention runs do it (`foldAsync`, yielding every 5 ms), with the event loop's delay
 * sampled meanwhile (perf_hooks.monitorEventLoopDelay). Medians of `--runs` runs.
 *
 *   node --import tsx bench/fold-stall.ts [--records 2000000] [--regions 4096] [--runs 3]
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { History } from '../src/index/index.js';
import { RecordType } from '../src/journal/index.js';

function option(name: string, fallback: number): number {
  const at = process.argv.indexOf(`--${name}`);
  return at === -1 ? fallback : Number(process.argv[at + 1]);
}

const records = option('records', 2_000_000);
const regions = option('regions', 4096);
const runs = option('runs', 3);

function build(): History {
  let state = 12345;
  const random = () => (state = (state * 1103515245 + 12345) >>> 0) / 2 ** 32;
  const history = new History(regions * 4 * 1024 * 1024);
  for (let seq = 1; seq <= records; seq += 1) {
    history.append({
      seq, type: RecordType.WRITE, flags: 0, offsetBytes: Math.floor(random() * regions * 1024) * 4096, lengthBytes: 4096, timeUs: 1.7e15 + seq,
      segment: Math.floor((seq - 1) / 500) + 1, payloadPosition: 64 + ((seq - 1) % 500) * 4160 + 60, payloadBytes: 4096, payloadSkip: 0,
    });
  }
  return history;
}

function median(values: number[]): number {
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[Math.floor(sorted.length / 2)];
}

async function main(): Promise<void> {
  const seqNew = Math.floor(records * 0.75 / 500) * 500 + 1;
  const syncMs: number[] = [];
  const asyncMs: number[] = [];
  const asyncMaxDelayMs: number[] = [];
  for (let run = 0; run < runs; run += 1) {
    const a = build();
    let started = performance.now();
    a.fold(seqNew);
    syncMs.push(performance.now() - started);
    const b = build();
    const delay = monitorEventLoopDelay({ resolution: 1 });
    delay.enable();
    started = performance.now();
    await b.foldAsync(seqNew);
    asyncMs.push(performance.now() - started);
    delay.disable();
    asyncMaxDelayMs.push(delay.max / 1e6);
  }
  const result = { records, regions, folded: seqNew - 1, runs, foldMs: median(syncMs), foldAsyncMs: median(asyncMs), foldAsyncMaxLoopDelayMs: median(asyncMaxDelayMs), all: { syncMs, asyncMs, asyncMaxDelayMs } };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  process.stderr.write(`fold of ${seqNew - 1} of ${records} records over ${regions} regions: at once ${result.foldMs.toFixed(0)} ms (the event loop held throughout); yielding ${result.foldAsyncMs.toFixed(0)} ms, longest event-loop delay ${result.foldAsyncMaxLoopDelayMs.toFixed(1)} ms\n`);
}

await main();
