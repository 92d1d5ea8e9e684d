/**
 * The option-haggling phase of the fixed newstyle handshake, as a pure state machine: each
 * option in, the replies to send and what happens next out. No sockets, no timers.
 */
import { LIMITS } from '../core/index.js';
import type { BlockDevice } from '../core/index.js';
import {
  BASE_ALLOCATION, BASE_ALLOCATION_ID, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, Info, Opt, Rep, TFlag,
} from './constants.js';
import {
  encodeExportNameReply, encodeInfoBlockSize, encodeInfoExport, encodeInfoString, encodeMetaContext,
  encodeOptionError, encodeOptionReply, encodeServerEntry,
} from './encoder.js';
import type { OptionMessage } from './decoder.js';

export interface NbdExport {
  name: string;
  description: string;
  device: BlockDevice;
}

export interface ExportCatalog {
  list(): NbdExport[];
  find(name: string): NbdExport | undefined;
}

/**
 * Which client identity may open which export. The identity is what TLS proved (a client
 * certificate's CN, a PSK identity), or null without it.
 */
export interface ExportAccess {
  allows(identity: string | null, exportName: string): boolean;
}

export interface Agreement {
  export: NbdExport;
  structuredReplies: boolean;
  /** base:allocation was selected for this export with SET_META_CONTEXT. */
  baseAllocation: boolean;
  transmissionFlags: number;
}

export type NegotiationStep =
  /** `refused`: a policy refusal worth a warning in the log (an access attempt denied). */
  | { kind: 'continue'; replies: Buffer[]; refused?: string }
  /** STARTTLS accepted: send the replies, then the TLS handshake starts on the socket. */
  | { kind: 'starttls'; replies: Buffer[] }
  | { kind: 'transmission'; replies: Buffer[]; agreement: Agreement }
  | { kind: 'close'; replies: Buffer[]; reason: string };

const KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

export function transmissionFlagsFor(device: BlockDevice, structuredReplies: boolean): number {
  const caps = device.capabilities;
  let flags = TFlag.HAS_FLAGS;
  if (caps.readOnly) flags |= TFlag.READ_ONLY;
  if (caps.flush) flags |= TFlag.SEND_FLUSH;
  if (caps.fua && !caps.readOnly) flags |= TFlag.SEND_FUA;
  if (caps.trim && !caps.readOnly) flags |= TFlag.SEND_TRIM;
  if (caps.writeZeroes && !caps.readOnly) {
    flags |= TFlag.SEND_WRITE_ZEROES;
    if (caps.fastZero) flags |= TFlag.SEND_FAST_ZERO;
  }
  if (caps.cache) flags |= TFlag.SEND_CACHE;
  if (caps.multiConn) flags |= TFlag.CAN_MULTI_CONN;
  if (structuredReplies) flags |= TFlag.SEND_DF;
  return flags;
}

export class Negotiation {
  private noZeroes = false;
  private structuredReplies = false;
  private metaContextExport: string | null = null;
  private optionCount = 0;
  /** TLS was negotiated (STARTTLS done): the session's socket is a TLS socket now. */
  private tlsActive = false;

  /**
   * `tls`: 'off' (STARTTLS unsupported), 'on' (offered) or 'require' (every option but
   * STARTTLS and ABORT is refused with ERR_TLS_REQD until TLS is on; NBD_OPT_EXPORT_NAME,
   * which cannot be refused, closes the connection).
   */
  private identity: string | null = null;

  constructor(private readonly catalog: ExportCatalog, private readonly tls: 'off' | 'on' | 'require' = 'off', private readonly access: ExportAccess | null = null) {}

  /** The session completed the TLS handshake; `identity` is who the client proved to be. */
  tlsStarted(identity: string | null = null): void {
    this.tlsActive = true;
    this.identity = identity;
  }

  /** An export this client may open, 'denied' if it exists but is not for this client, or undefined. */
  private find(name: string): NbdExport | 'denied' | undefined {
    const found = this.catalog.find(name);
    if (found && this.access && !this.access.allows(this.identity, found.name)) return 'denied';
    return found;
  }

  private denied(name: string): string {
    return `${this.identity === null ? 'an unauthenticated client' : `client "${this.identity}"`} may not open export "${shortName(name)}"`;
  }

  /** Returns an error reason when the client's flags oblige us to hang up. */
  acceptClientFlags(flags: number): string | null {
    if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) return `client sent unknown flags 0x${flags.toString(16)}`;
    if ((flags & FLAG_C_FIXED_NEWSTYLE) === 0) return 'client does not speak fixed newstyle';
    this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
    return null;
  }

  handle(message: OptionMessage): NegotiationStep {
    this.optionCount += 1;
    const { option, data } = message;
    if (this.optionCount > LIMITS.nbdOptionsPerHandshakeMax) {
      return { kind: 'close', replies: [], reason: 'too many options in one handshake' };
    }
    if (option === Opt.ABORT) {
      // ACK whatever data came with it (the spec says to ignore it).
      return { kind: 'close', replies: [encodeOptionReply(option, Rep.ACK)], reason: 'client aborted' };
    }
    // A SET_META_CONTEXT replaces the previous selection even when it fails.
    if (option === Opt.SET_META_CONTEXT) this.metaContextExport = null;
    if (this.tls === 'require' && !this.tlsActive && option !== Opt.STARTTLS) {
      if (option === Opt.EXPORT_NAME) return { kind: 'close', replies: [], reason: 'plaintext NBD_OPT_EXPORT_NAME while TLS is required' };
      return this.reply(encodeOptionError(option, Rep.ERR_TLS_REQD, 'this server requires TLS: use NBD_OPT_STARTTLS first'));
    }
    if (data === null) {
      if (option === Opt.EXPORT_NAME) return { kind: 'close', replies: [], reason: 'export name too long' };
      return this.reply(encodeOptionError(option, Rep.ERR_TOO_BIG, `option data of ${message.lengthBytes} bytes is too large`));
    }
    switch (option) {
      case Opt.EXPORT_NAME:
        return this.exportName(data);
      case Opt.LIST:
        return this.list(data);
      case Opt.INFO:
      case Opt.GO:
        return this.infoOrGo(option, data);
      case Opt.STRUCTURED_REPLY:
        return this.structuredReply(data);
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.metaContext(option, data);
      case Opt.STARTTLS:
        if (this.tls === 'off') return this.reply(encodeOptionError(option, Rep.ERR_UNSUP, 'TLS is not enabled on this server'));
        if (this.tlsActive) return this.reply(encodeOptionError(option, Rep.ERR_INVALID, 'TLS is already on'));
        if (data.length !== 0) return this.reply(encodeOptionError(option, Rep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data'));
        return { kind: 'starttls', replies: [encodeOptionReply(option, Rep.ACK)] };
      default:
        return this.reply(encodeOptionError(option, Rep.ERR_UNSUP, `option ${option} is not supported`));
    }
  }

  private reply(...replies: Buffer[]): NegotiationStep {
    return { kind: 'continue', replies };
  }

  private exportName(data: Buffer): NegotiationStep {
    const name = decodeString(data);
    const found = name === null ? undefined : this.find(name);
    if (found === 'denied') return { kind: 'close', replies: [], reason: this.denied(name!) };
    if (!found) return { kind: 'close', replies: [], reason: `unknown export "${shortName(name ?? '(invalid)')}"` };
    const agreement = this.agree(found);
    const reply = encodeExportNameReply(found.device.sizeBytes, agreement.transmissionFlags, this.noZeroes);
    return { kind: 'transmission', replies: [reply], agreement };
  }

  private list(data: Buffer): NegotiationStep {
    if (data.length !== 0) return this.reply(encodeOptionError(Opt.LIST, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data'));
    const visible = this.catalog.list().filter((entry) => !this.access || this.access.allows(this.identity, entry.name));
    const replies = visible.map((entry) => encodeOptionReply(Opt.LIST, Rep.SERVER, encodeServerEntry(entry.name, entry.description)));
    replies.push(encodeOptionReply(Opt.LIST, Rep.ACK));
    return { kind: 'continue', replies };
  }

  private infoOrGo(option: number, data: Buffer): NegotiationStep {
    const request = parseInfoRequest(data);
    if (typeof request === 'string') return this.reply(encodeOptionError(option, Rep.ERR_INVALID, request));
    const found = this.find(request.name);
    if (found === 'denied') return { kind: 'continue', replies: [encodeOptionError(option, Rep.ERR_POLICY, this.denied(request.name))], refused: this.denied(request.name) };
    if (!found) return this.reply(encodeOptionError(option, Rep.ERR_UNKNOWN, `no export named "${shortName(request.name)}"`));
    const agreement = this.agree(found);
    const replies = [encodeOptionReply(option, Rep.INFO, encodeInfoExport(found.device.sizeBytes, agreement.transmissionFlags))];
    if (request.infos.includes(Info.NAME)) replies.push(encodeOptionReply(option, Rep.INFO, encodeInfoString(Info.NAME, found.name)));
    if (request.infos.includes(Info.DESCRIPTION) && found.description !== '') {
      replies.push(encodeOptionReply(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, found.description)));
    }
    replies.push(encodeOptionReply(option, Rep.INFO, encodeInfoBlockSize({
      minimumBytes: 1,
      preferredBytes: LIMITS.nbdPreferredBlockBytes,
      maximumBytes: LIMITS.nbdRequestBytesMax,
    })));
    replies.push(encodeOptionReply(option, Rep.ACK));
    if (option === Opt.INFO) return { kind: 'continue', replies };
    return { kind: 'transmission', replies, agreement };
  }

  private structuredReply(data: Buffer): NegotiationStep {
    if (data.length !== 0) {
      return this.reply(encodeOptionError(Opt.STRUCTURED_REPLY, Rep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data'));
    }
    if (this.structuredReplies) {
      return this.reply(encodeOptionError(Opt.STRUCTURED_REPLY, Rep.ERR_INVALID, 'structured replies already negotiated'));
    }
    this.structuredReplies = true;
    return this.reply(encodeOptionReply(Opt.STRUCTURED_REPLY, Rep.ACK));
  }

  private metaContext(option: number, data: Buffer): NegotiationStep {
    const isSet = option === Opt.SET_META_CONTEXT;
    if (!this.structuredReplies) {
      return this.reply(encodeOptionError(option, Rep.ERR_INVALID, 'meta contexts need structured replies first'));
    }
    const request = parseMetaContextRequest(data);
    if (request === TOO_MANY_QUERIES) {
      return this.reply(encodeOptionError(option, Rep.ERR_TOO_BIG, `too many meta context queries (at most ${LIMITS.nbdMetaContextQueriesMax})`));
    }
    if (typeof request === 'string') return this.reply(encodeOptionError(option, Rep.ERR_INVALID, request));
    const target = this.find(request.exportName);
    if (target === 'denied') return this.reply(encodeOptionError(option, Rep.ERR_POLICY, this.denied(request.exportName)));
    if (!target) {
      return this.reply(encodeOptionError(option, Rep.ERR_UNKNOWN, `no export named "${shortName(request.exportName)}"`));
    }
    const matches = isSet ? request.queries.includes(BASE_ALLOCATION) : listMatches(request.queries);
    if (isSet) this.metaContextExport = matches ? request.exportName : null;
    const replies = matches ? [encodeOptionReply(option, Rep.META_CONTEXT, encodeMetaContext(isSet ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION))] : [];
    replies.push(encodeOptionReply(option, Rep.ACK));
    return { kind: 'continue', replies };
  }

  private agree(found: NbdExport): Agreement {
    return {
      export: found,
      structuredReplies: this.structuredReplies,
      baseAllocation: this.structuredReplies && this.metaContextExport === found.name,
      transmissionFlags: transmissionFlagsFor(found.device, this.structuredReplies),
    };
  }
}

function listMatches(queries: string[]): boolean {
  if (queries.length === 0) return true;
  return queries.some((query) => query === BASE_ALLOCATION || query === 'base:');
}

function decodeString(bytes: Buffer): string | null {
  if (bytes.length > LIMITS.nbdStringBytesMax || bytes.includes(0)) return null;
  const text = bytes.toString('utf8');
  return Buffer.byteLength(text, 'utf8') === bytes.length ? text : null;
}

export interface InfoRequest {
  name: string;
  infos: number[];
}

/** NBD_OPT_INFO/GO data: u32 name length, name, u16 count, count x u16 info types. */
export function parseInfoRequest(data: Buffer): InfoRequest | string {
  if (data.length < 6) return 'option data too short';
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 6) return 'name length exceeds option data';
  const name = decodeString(data.subarray(4, 4 + nameBytes));
  if (name === null) return 'export name is not a valid string';
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 6 + nameBytes + count * 2) return 'information request count does not match option length';
  const infos: number[] = [];
  for (let i = 0; i < count; i += 1) infos.push(data.readUInt16BE(6 + nameBytes + i * 2));
  return { name, infos };
}

export const TOO_MANY_QUERIES = 'too many meta context queries';

/** Names echoed in messages are shortened so error strings stay far below 4096 bytes. */
function shortName(name: string): string {
  return name.length > 80 ? `${name.slice(0, 80)}...` : name;
}

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 query count, queries (u32 length, string). */
export function parseMetaContextRequest(data: Buffer): MetaContextRequest | string {
  if (data.length < 8) return 'option data too short';
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > data.length - 8) return 'name length exceeds option data';
  const exportName = decodeString(data.subarray(4, 4 + nameBytes));
  if (exportName === null) return 'export name is not a valid string';
  const count = data.readUInt32BE(4 + nameBytes);
  if (count > LIMITS.nbdMetaContextQueriesMax) return TOO_MANY_QUERIES;
  const queries: string[] = [];
  let at = 8 + nameBytes;
  for (let i = 0; i < count; i += 1) {
    if (at + 4 > data.length) return 'meta context query truncated';
    const length = data.readUInt32BE(at);
    if (length > data.length - at - 4) return 'meta context query length exceeds option data';
    const query = decodeString(data.subarray(at + 4, at + 4 + length));
    if (query === null) return 'meta context query is not a valid string';
    queries.push(query);
    at += 4 + length;
  }
  if (at !== data.length) return 'trailing bytes after meta context queries';
  return { exportName, queries };
}
