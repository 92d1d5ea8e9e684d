/**
 * Helpers for the crash suite (test/crash/): the CLI's JSON views of a volume and of fsck,
 * reading a whole volume back with nbdcopy, and reading journal segments as raw bytes
 * (docs/FORMAT.md: a 64-byte segment header, then records of a 56-byte header + payload
 * padded to 8 bytes) so a test can damage exactly one record.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { hindsight, sha256File } from './interop.js';
import { run } from './run.js';

export const SEGMENT_HEADER_BYTES = 64;
export const RECORD_HEADER_BYTES = 56;
export const RECORD_MAGIC = 0x4a524853;
export const RECORD_TYPE = { WRITE: 1, ZERO: 2, TRIM: 3, FLUSH: 4, BOOKMARK: 5 } as const;

export interface VolumeInfoJson {
  name: string;
  state: 'online' | 'failed';
  error: { code: string; message: string } | null;
  sizeBytes: number;
  records: number;
  seqLast: number | null;
  seqDurable: number | null;
  journalBytes: number;
  journalSegments: number;
  clientBytesWritten: number;
  [key: string]: unknown;
}

export interface FsckProblemJson {
  kind: string;
  segment: string | null;
  offsetBytes: number | null;
  message: string;
}

export interface FsckJson {
  ok: boolean;
  volumes: Array<{ name: string; state: string; records: number; indexRebuilt?: boolean; problems: FsckProblemJson[] }>;
}

/** `hindsight volume info NAME --json`; throws (with the CLI's output) on a non-zero exit. */
export async function volumeInfo(apiUrl: string, name: string): Promise<VolumeInfoJson> {
  const result = await hindsight(['volume', 'info', name, '--json', '--api', apiUrl]);
  if (result.code !== 0) throw new Error(`volume info ${name} exited ${result.code}: ${result.stderr || result.stdout}`);
  return JSON.parse(result.stdout) as VolumeInfoJson;
}

/** `hindsight fsck [NAME] --json [--rebuild-index]`: the exit code and the parsed report. */
export async function fsckJson(apiUrl: string, name?: string, options: { rebuildIndex?: boolean } = {}):
  Promise<{ code: number; report: FsckJson; stdout: string; stderr: string }> {
  const args = ['fsck', ...(name === undefined ? [] : [name]), '--json', '--api', apiUrl, ...(options.rebuildIndex ? ['--rebuild-index'] : [])];
  const result = await hindsight(args, { timeoutMs: 60_000 });
  let report: FsckJson;
  try {
    report = JSON.parse(result.stdout) as FsckJson;
  } catch {
    throw new Error(`fsck printed no JSON (exit ${result.code}): ${result.stdout}${result.stderr}`);
  }
  return { code: result.code, report, stdout: result.stdout, stderr: result.stderr };
}

/** The whole volume through nbdcopy into `file`; returns the bytes. */
export async function readVolume(uri: string, file: string): Promise<Buffer> {
  fs.rmSync(file, { force: true });
  await run('nbdcopy', [uri, file], { timeoutMs: 60_000 });
  return fs.readFileSync(file);
}

/** sha256 of the whole volume as nbdcopy reads it. */
export async function volumeSha256(uri: string, file: string): Promise<string> {
  fs.rmSync(file, { force: true });
  await run('nbdcopy', [uri, file], { timeoutMs: 60_000 });
  const digest = await sha256File(file);
  fs.rmSync(file, { force: true });
  return digest;
}

/** 4096 bytes of SHAKE256(key): the data test/crash/writer.py writes for one block. */
export function shakeBlock(key: string, lengthBytes = 4096): Buffer {
  return createHash('shake256', { outputLength: lengthBytes }).update(key).digest();
}

export interface SegmentRecord {
  /** Where the record starts in the segment file. */
  position: number;
  /** Header + chunk table + payload + padding. */
  span: number;
  /** Where the payload starts in the segment file (after the header and the chunk table). */
  payloadPosition: number;
  type: number;
  flags: number;
  seq: number;
  offsetBytes: number;
  lengthBytes: number;
  payloadBytes: number;
  seqDurable: number;
}

function u64(bytes: Buffer, at: number): number {
  return bytes.readUInt32LE(at + 4) * 0x100000000 + bytes.readUInt32LE(at);
}

/**
 * Walks a segment file record by record (by magic and payload length only: no CRC check, so
 * it can be used to pick a victim before damaging it). Stops at the first position that does
 * not hold a record header.
 */
export function parseSegment(file: string): { sizeBytes: number; records: SegmentRecord[]; endPosition: number } {
  const bytes = fs.readFileSync(file);
  const records: SegmentRecord[] = [];
  let position = SEGMENT_HEADER_BYTES;
  while (position + RECORD_HEADER_BYTES <= bytes.length && bytes.readUInt32LE(position) === RECORD_MAGIC) {
    const payloadBytes = bytes.readUInt32LE(position + 36);
    const tableBytes = Math.ceil(payloadBytes / 4096) * 4;
    const span = Math.ceil((RECORD_HEADER_BYTES + tableBytes + payloadBytes) / 8) * 8;
    if (position + span > bytes.length) break;
    records.push({
      position,
      span,
      payloadPosition: position + RECORD_HEADER_BYTES + tableBytes,
      type: bytes.readUInt8(position + 4),
      flags: bytes.readUInt8(position + 5),
      seq: u64(bytes, position + 8),
      offsetBytes: u64(bytes, position + 24),
      lengthBytes: bytes.readUInt32LE(position + 32),
      payloadBytes,
      seqDurable: u64(bytes, position + 40),
    });
    position += span;
  }
  return { sizeBytes: bytes.length, records, endPosition: position };
}

export function journalDir(dataDir: string, volume: string): string {
  return path.join(dataDir, 'volumes', volume, 'journal');
}

export function segmentFiles(dataDir: string, volume: string): string[] {
  const dir = journalDir(dataDir, volume);
  return fs.readdirSync(dir).filter((name) => /^\d{8}\.seg$/.test(name)).sort().map((name) => path.join(dir, name));
}

export function checkpointFile(dataDir: string, volume: string): string {
  return path.join(dataDir, 'volumes', volume, 'index.ckpt');
}

/** XORs the byte at each position with a non-zero mask (in place, fsynced). */
export function flipBytes(file: string, positions: number[], masks: number[]): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const one = Buffer.alloc(1);
    positions.forEach((position, i) => {
      fs.readSync(fd, one, 0, 1, position);
      one[0] ^= (masks[i] & 0xff) || 0x01;
      fs.writeSync(fd, one, 0, 1, position);
    });
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
