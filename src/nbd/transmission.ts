/**
 * The transmission phase without the socket: validate a request against the agreement made
 * in the handshake, run it on the export's BlockDevice, and build the reply frames.
 * Validation happens here, once; BlockDevice implementations assert the same facts.
 */
import { AssertionFailure, LIMITS } from '../core/index.js';
import {
  BASE_ALLOCATION_ID, Cmd, CmdFlag, Errno, ReplyFlag, SIMPLE_REPLY_HEADER_BYTES, STATE_HOLE, STATE_ZERO, TFlag,
} from './constants.js';
import type { RequestMessage } from './decoder.js';
import {
  DATA_CHUNK_PREFIX_BYTES, encodeBlockStatusChunk, encodeErrorChunk, encodeSimpleReply, writeDataChunkHeader,
  writeSimpleReplyHeader,
} from './encoder.js';
import type { StatusDescriptor } from './encoder.js';
import { nbdErrno } from './errno.js';
import type { Agreement } from './negotiation.js';
import type { BufferPool } from './buffer-pool.js';

export interface RequestError {
  errno: number;
  message: string;
}

/** Flags each command accepts besides FUA (which the spec makes valid on every command). */
const ALLOWED_FLAGS: Record<number, number> = {
  [Cmd.READ]: CmdFlag.DF,
  [Cmd.WRITE]: 0,
  [Cmd.DISC]: 0,
  [Cmd.FLUSH]: 0,
  [Cmd.TRIM]: 0,
  [Cmd.CACHE]: 0,
  [Cmd.WRITE_ZEROES]: CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
  [Cmd.BLOCK_STATUS]: CmdFlag.REQ_ONE,
};

/** The transmission flag that must have been advertised before a command may be sent. */
const REQUIRED_TFLAG: Record<number, number> = {
  [Cmd.FLUSH]: TFlag.SEND_FLUSH,
  [Cmd.TRIM]: TFlag.SEND_TRIM,
  [Cmd.CACHE]: TFlag.SEND_CACHE,
  [Cmd.WRITE_ZEROES]: TFlag.SEND_WRITE_ZEROES,
};

/** Flags that are only valid once their transmission flag was advertised. */
const FLAG_NEEDS: Array<[number, number]> = [
  [CmdFlag.FUA, TFlag.SEND_FUA],
  [CmdFlag.DF, TFlag.SEND_DF],
  [CmdFlag.FAST_ZERO, TFlag.SEND_FAST_ZERO],
];

const MODIFIES = new Set<number>([Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES]);
const RANGED = new Set<number>([Cmd.READ, Cmd.WRITE, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS]);
const LENGTH_CAPPED = new Set<number>([Cmd.READ, Cmd.WRITE]);

/** Checks a request against the agreement. Returns null when it may run. */
export function validateRequest(request: RequestMessage, agreement: Agreement): RequestError | null {
  const { type, flags, offsetBytes, lengthBytes } = request;
  const allowed = ALLOWED_FLAGS[type];
  if (allowed === undefined) return { errno: Errno.EINVAL, message: `unknown command ${type}` };
  let allowedHere = allowed | CmdFlag.FUA;
  for (const [flag, needs] of FLAG_NEEDS) if ((agreement.transmissionFlags & needs) === 0) allowedHere &= ~flag;
  if ((flags & ~allowedHere) !== 0) return { errno: Errno.EINVAL, message: `flags 0x${flags.toString(16)} not valid for command ${type}` };
  const device = agreement.export.device;
  if (MODIFIES.has(type) && device.capabilities.readOnly) return { errno: Errno.EPERM, message: 'export is read-only' };
  const required = REQUIRED_TFLAG[type];
  if (required !== undefined && (agreement.transmissionFlags & required) === 0) return { errno: Errno.EINVAL, message: `command ${type} was not advertised` };
  if (request.payloadSkipped) return { errno: Errno.EINVAL, message: `write of ${lengthBytes} bytes exceeds the maximum ${LIMITS.nbdRequestBytesMax}` };
  if (type === Cmd.FLUSH && (offsetBytes !== 0 || lengthBytes !== 0)) return { errno: Errno.EINVAL, message: 'flush offset and length must be zero' };
  if (type === Cmd.BLOCK_STATUS && !agreement.baseAllocation) return { errno: Errno.EINVAL, message: 'no meta context negotiated' };
  if (!RANGED.has(type)) return null;
  if (lengthBytes === 0) return { errno: Errno.EINVAL, message: 'zero-length request' };
  if (LENGTH_CAPPED.has(type) && lengthBytes > LIMITS.nbdRequestBytesMax) {
    return { errno: Errno.EINVAL, message: `request of ${lengthBytes} bytes exceeds the maximum ${LIMITS.nbdRequestBytesMax}` };
  }
  if (offsetBytes + lengthBytes > device.sizeBytes) {
    const writes = type === Cmd.WRITE || type === Cmd.WRITE_ZEROES;
    return { errno: writes ? Errno.ENOSPC : Errno.EINVAL, message: 'request beyond the end of the export' };
  }
  return null;
}

/** The reply for a failed request: an error chunk where a structured reply is due. */
export function encodeErrorReply(request: RequestMessage, agreement: Agreement, error: RequestError): Buffer {
  const structured = agreement.structuredReplies && (request.type === Cmd.READ || request.type === Cmd.BLOCK_STATUS);
  if (structured) return encodeErrorChunk(request.cookie, ReplyFlag.DONE, error.errno, truncateUtf8(error.message, 1024));
  return encodeSimpleReply(request.cookie, error.errno);
}

/** Error strings are bounded in bytes on the wire (the spec caps strings at 4096 bytes). */
export function truncateUtf8(text: string, bytesMax: number): string {
  if (Buffer.byteLength(text, 'utf8') <= bytesMax) return text;
  const bytes = Buffer.from(text, 'utf8').subarray(0, bytesMax);
  return bytes.toString('utf8').replace(/\uFFFD+$/, '');
}

function errorFrom(err: unknown): RequestError {
  return { errno: nbdErrno(err), message: err instanceof Error ? err.message : String(err) };
}

/** Runs a validated request and returns the reply bytes. Never throws for device errors. */
export async function executeRequest(request: RequestMessage, agreement: Agreement, pool: BufferPool): Promise<Buffer> {
  try {
    return await run(request, agreement, pool);
  } catch (err) {
    // A broken invariant is a bug: stop the daemon rather than serve from doubtful state.
    if (err instanceof AssertionFailure) throw err;
    return encodeErrorReply(request, agreement, errorFrom(err));
  }
}

async function run(request: RequestMessage, agreement: Agreement, pool: BufferPool): Promise<Buffer> {
  const device = agreement.export.device;
  const { type, flags, offsetBytes, lengthBytes, cookie } = request;
  // FUA is accepted on every command; it matters only where something is written.
  const fua = (flags & CmdFlag.FUA) !== 0;
  switch (type) {
    case Cmd.READ:
      return readReply(request, agreement, pool);
    case Cmd.WRITE:
      await device.write(offsetBytes, request.payload as Buffer, { fua });
      break;
    case Cmd.FLUSH:
      await device.flush();
      break;
    case Cmd.TRIM:
      await device.trim(offsetBytes, lengthBytes, { fua });
      break;
    case Cmd.WRITE_ZEROES:
      await device.writeZeroes(offsetBytes, lengthBytes, {
        fua,
        mayTrim: (flags & CmdFlag.NO_HOLE) === 0,
        fastOnly: (flags & CmdFlag.FAST_ZERO) !== 0,
      });
      break;
    case Cmd.CACHE:
      await device.cache(offsetBytes, lengthBytes);
      break;
    case Cmd.BLOCK_STATUS:
      return blockStatusReply(request, agreement);
    default:
      return encodeErrorReply(request, agreement, { errno: Errno.EINVAL, message: `unknown command ${type}` });
  }
  return encodeSimpleReply(cookie, Errno.OK);
}

/** One buffer holds the reply header and the data, so the device reads straight into it. */
async function readReply(request: RequestMessage, agreement: Agreement, pool: BufferPool): Promise<Buffer> {
  const prefixBytes = agreement.structuredReplies ? DATA_CHUNK_PREFIX_BYTES : SIMPLE_REPLY_HEADER_BYTES;
  const out = pool.acquire(prefixBytes + request.lengthBytes);
  try {
    await agreement.export.device.read(request.offsetBytes, out.subarray(prefixBytes));
  } catch (err) {
    pool.release(out);
    throw err;
  }
  if (agreement.structuredReplies) {
    writeDataChunkHeader(out, 0, request.cookie, ReplyFlag.DONE, request.offsetBytes, request.lengthBytes);
  } else {
    writeSimpleReplyHeader(out, 0, request.cookie, Errno.OK);
  }
  return out;
}

async function blockStatusReply(request: RequestMessage, agreement: Agreement): Promise<Buffer> {
  const reqOne = (request.flags & CmdFlag.REQ_ONE) !== 0;
  // Ask for more than one extent even under REQ_ONE: aligning needs the neighbours.
  const extents = await agreement.export.device.blockStatus(request.offsetBytes, request.lengthBytes, reqOne ? 64 : LIMITS.nbdBlockStatusExtentsMax);
  const exact: StatusDescriptor[] = [];
  let remaining = request.lengthBytes;
  for (const extent of extents) {
    if (remaining === 0) break;
    const lengthBytes = Math.min(extent.lengthBytes, remaining);
    exact.push({ lengthBytes, flags: (extent.hole ? STATE_HOLE : 0) | (extent.zero ? STATE_ZERO : 0) });
    remaining -= lengthBytes;
  }
  let descriptors = alignDescriptors(request.offsetBytes, exact, request.lengthBytes, LIMITS.nbdPreferredBlockBytes);
  if (descriptors.length === 0) descriptors = [{ lengthBytes: request.lengthBytes, flags: 0 }];
  if (reqOne) descriptors = descriptors.slice(0, 1);
  else if (descriptors.length > LIMITS.nbdBlockStatusExtentsMax) descriptors = descriptors.slice(0, LIMITS.nbdBlockStatusExtentsMax);
  return encodeBlockStatusChunk(request.cookie, ReplyFlag.DONE, BASE_ALLOCATION_ID, descriptors);
}

/**
 * Rounds descriptor boundaries to `blockBytes` (the spec asks for multiples of 512 where
 * possible; we use the preferred block). A block that mixes states claims only what all its
 * parts share (flags ANDed), which is always safe: "data" is never reported as a hole. If the
 * device's list stopped short of the request, the trailing partial block is left out.
 */
export function alignDescriptors(offsetBytes: number, exact: StatusDescriptor[], requestBytes: number, blockBytes: number): StatusDescriptor[] {
  const out: StatusDescriptor[] = [];
  const push = (lengthBytes: number, flags: number) => {
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.lengthBytes += lengthBytes;
    else if (lengthBytes > 0) out.push({ lengthBytes, flags });
  };
  const covered = exact.reduce((sum, d) => sum + d.lengthBytes, 0);
  const end = offsetBytes + covered;
  const complete = covered >= requestBytes;
  let cursor = offsetBytes;
  let index = 0;
  let extentEnd = offsetBytes + (exact[0]?.lengthBytes ?? 0);
  while (cursor < end && index < exact.length) {
    const flags = exact[index].flags;
    if (extentEnd === end || extentEnd % blockBytes === 0) {
      if (extentEnd === end && !complete && extentEnd % blockBytes !== 0) {
        push(Math.max(0, Math.floor(extentEnd / blockBytes) * blockBytes - cursor), flags);
        break;
      }
      push(extentEnd - cursor, flags);
      cursor = extentEnd;
      index += 1;
      extentEnd += exact[index]?.lengthBytes ?? 0;
      continue;
    }
    const cut = Math.floor(extentEnd / blockBytes) * blockBytes;
    if (cut > cursor) {
      push(cut - cursor, flags);
      cursor = cut;
    }
    // [cursor, blockEnd) mixes this extent's tail with what follows: AND their flags.
    const blockEnd = Math.min(Math.floor(cursor / blockBytes) * blockBytes + blockBytes, end);
    if (blockEnd === end && !complete) break;
    let mixed = flags;
    while (extentEnd < blockEnd) {
      index += 1;
      mixed &= exact[index].flags;
      extentEnd += exact[index].lengthBytes;
    }
    push(blockEnd - cursor, mixed);
    cursor = blockEnd;
    if (extentEnd === blockEnd) {
      index += 1;
      extentEnd += exact[index]?.lengthBytes ?? 0;
    }
  }
  if (out.length === 0 && exact.length > 0) return [exact[0]];
  return out;
}
