/**
 * The benchmark lines: fio's nbd engine (one connection, libnbd async I/O at the given
 * queue depth) and nbdcopy (its defaults: multi-conn when advertised, 4 connections).
 * A turn runs them in a fixed order on one freshly started server:
 *
 *   fill (sequential first write of the whole export, not time-based)
 *   -> seq read -> random read (both hit written data)
 *   -> seq write -> random write (overwrites, time-based)
 *   -> nbdcopy in (local file -> export, with --flush) -> nbdcopy out (whole export -> null:)
 *
 * `sync` runs before every line so no line pays for the previous line's dirty pages.
 */
import path from 'node:path';
import fs from 'node:fs';
import { runCommand } from './proc.js';

export type Unit = 'MiB/s' | 'IOPS';

export interface LineResult {
  /** The headline number in the line's unit (bigger is better). */
  value: number;
  detail: Record<string, number>;
}

export interface TurnContext {
  uri: string;
  workDir: string;
  sizeBytes: number;
  workingSetBytes: number;
  seconds: number;
  rampSeconds: number;
  copySourceFile: string;
  copyBytes: number;
}

export interface LineSpec {
  id: string;
  title: string;
  unit: Unit;
  /** Lines the target (>= 0.8x the faster peer) applies to; the fill is informational. */
  target: boolean;
  run(context: TurnContext): Promise<LineResult>;
}

const MIB = 1024 * 1024;
const IODEPTH = 16;

interface FioJob {
  rw: 'read' | 'write' | 'randread' | 'randwrite';
  blockBytes: number;
  timeBased: boolean;
  unit: Unit;
}

function fioLine(id: string, title: string, job: FioJob, target = true): LineSpec {
  return { id, title, unit: job.unit, target, run: (context) => runFio(id, job, context) };
}

export const LINES: LineSpec[] = [
  fioLine('fill-seq-write-1m', 'fill: 1 MiB sequential first write of the whole export, QD16', { rw: 'write', blockBytes: MIB, timeBased: false, unit: 'MiB/s' }, false),
  fioLine('seq-read-1m', '1 MiB sequential read, QD16', { rw: 'read', blockBytes: MIB, timeBased: true, unit: 'MiB/s' }),
  fioLine('rand-read-4k', '4 KiB random read, QD16', { rw: 'randread', blockBytes: 4096, timeBased: true, unit: 'IOPS' }),
  fioLine('seq-write-1m', '1 MiB sequential write, QD16', { rw: 'write', blockBytes: MIB, timeBased: true, unit: 'MiB/s' }),
  fioLine('rand-write-4k', '4 KiB random write, QD16', { rw: 'randwrite', blockBytes: 4096, timeBased: true, unit: 'IOPS' }),
  { id: 'nbdcopy-in', title: 'nbdcopy local file -> export (--flush)', unit: 'MiB/s', target: true, run: runCopyIn },
  { id: 'nbdcopy-out', title: 'nbdcopy whole export -> null:', unit: 'MiB/s', target: true, run: runCopyOut },
];

async function runFio(id: string, job: FioJob, context: TurnContext): Promise<LineResult> {
  await runCommand('sync', [], { timeoutMs: 120_000 });
  const output = path.join(context.workDir, `${id}.fio.json`);
  const args = [
    `--name=${id}`, '--ioengine=nbd', `--uri=${context.uri}`,
    `--rw=${job.rw}`, `--bs=${job.blockBytes}`, `--iodepth=${IODEPTH}`,
    `--size=${job.timeBased ? context.workingSetBytes : context.sizeBytes}`,
    '--output-format=json', `--output=${output}`,
  ];
  if (job.timeBased) args.push('--time_based=1', `--runtime=${context.seconds}`, `--ramp_time=${context.rampSeconds}`);
  const timeoutMs = (job.timeBased ? context.seconds + context.rampSeconds : 0) * 1000 + 300_000;
  await runCommand('fio', args, { timeoutMs });
  const report = JSON.parse(fs.readFileSync(output, 'utf8')) as { jobs: Array<Record<string, FioDirection>> };
  const direction = report.jobs[0][job.rw.endsWith('read') ? 'read' : 'write'];
  const p99Ns = direction.clat_ns?.percentile?.['99.000000'] ?? 0;
  const detail = { mibPerSec: direction.bw_bytes / MIB, iops: direction.iops, clatP99Us: p99Ns / 1000, runtimeMs: direction.runtime };
  return { value: job.unit === 'IOPS' ? detail.iops : detail.mibPerSec, detail };
}

interface FioDirection {
  bw_bytes: number;
  iops: number;
  runtime: number;
  clat_ns?: { percentile?: Record<string, number> };
}

async function runCopyIn(context: TurnContext): Promise<LineResult> {
  await runCommand('sync', [], { timeoutMs: 120_000 });
  const { elapsedMs } = await runCommand('nbdcopy', ['--flush', context.copySourceFile, context.uri], { timeoutMs: 300_000 });
  return copyResult(context.copyBytes, elapsedMs);
}

async function runCopyOut(context: TurnContext): Promise<LineResult> {
  await runCommand('sync', [], { timeoutMs: 120_000 });
  const { elapsedMs } = await runCommand('nbdcopy', [context.uri, 'null:'], { timeoutMs: 300_000 });
  return copyResult(context.sizeBytes, elapsedMs);
}

function copyResult(bytes: number, elapsedMs: number): LineResult {
  const mibPerSec = bytes / MIB / (elapsedMs / 1000);
  return { value: mibPerSec, detail: { mibPerSec, elapsedMs, bytes } };
}

/** The nbdcopy source: incompressible bytes, no zero blocks for nbdcopy to skip. */
export async function createCopySource(file: string, bytes: number): Promise<void> {
  const { randomFillSync } = await import('node:crypto');
  const piece = Buffer.alloc(16 * MIB);
  const fd = fs.openSync(file, 'wx');
  try {
    for (let written = 0; written < bytes; written += piece.length) {
      const length = Math.min(piece.length, bytes - written);
      randomFillSync(piece, 0, length);
      fs.writeSync(fd, piece, 0, length, written);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
