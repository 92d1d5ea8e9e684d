/**
 * Client-side frame builders and server-frame parsers for tests that speak raw NBD
 * (hand-built and deliberately malformed frames). Independent of src/nbd's encoder so the
 * tests check the server against the spec, not against itself.
 */
export const IHAVEOPT = 0x49484156454f5054n;
export const REQUEST_MAGIC = 0x25609513;

export function clientFlags(flags = 3): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(flags, 0);
  return out;
}

export function option(code: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): Buffer {
  const out = Buffer.alloc(16 + data.length);
  out.writeBigUInt64BE(IHAVEOPT, 0);
  out.writeUInt32BE(code, 8);
  out.writeUInt32BE(lengthOverride ?? data.length, 12);
  data.copy(out, 16);
  return out;
}

export function goData(name: string, infos: number[] = []): Buffer {
  const nameBytes = Buffer.from(name);
  const out = Buffer.alloc(4 + nameBytes.length + 2 + infos.length * 2);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  out.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => out.writeUInt16BE(info, 6 + nameBytes.length + i * 2));
  return out;
}

export function metaContextData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const nameBytes = Buffer.from(name);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(nameBytes.length, 0);
  parts.push(head, nameBytes);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) {
    const bytes = Buffer.from(query);
    const length = Buffer.alloc(4);
    length.writeUInt32BE(bytes.length, 0);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

export interface RequestFields {
  flags?: number;
  type: number;
  cookie?: bigint;
  offset?: bigint | number;
  length?: number;
  magic?: number;
}

export function request(fields: RequestFields, payload?: Buffer): Buffer {
  const out = Buffer.alloc(28 + (payload?.length ?? 0));
  out.writeUInt32BE(fields.magic ?? REQUEST_MAGIC, 0);
  out.writeUInt16BE(fields.flags ?? 0, 4);
  out.writeUInt16BE(fields.type, 6);
  out.writeBigUInt64BE(fields.cookie ?? 1n, 8);
  out.writeBigUInt64BE(BigInt(fields.offset ?? 0), 16);
  out.writeUInt32BE(fields.length ?? payload?.length ?? 0, 24);
  payload?.copy(out, 28);
  return out;
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface SimpleReply {
  kind: 'simple';
  error: number;
  cookie: bigint;
}

export interface Chunk {
  kind: 'chunk';
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}
