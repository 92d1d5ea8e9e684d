/** Human and JSON output. Human output is a small aligned table; JSON is exactly the API's. */
import { formatSize } from '../core/index.js';

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => row[column].length)));
  const line = (cells: string[]) => cells.map((cell, column) => cell.padEnd(widths[column])).join('  ').trimEnd();
  process.stdout.write(`${[line(headers), ...rows.map(line)].join('\n')}\n`);
}

export function printFields(fields: Array<[string, unknown]>): void {
  const width = Math.max(...fields.map(([key]) => key.length));
  for (const [key, value] of fields) process.stdout.write(`${key.padEnd(width)}  ${value === null || value === undefined ? '-' : String(value)}\n`);
}

export function size(bytes: number): string {
  return formatSize(bytes);
}
