/**
 * One error type for the whole daemon: a stable string `code` (listed in docs/ERRORS.md,
 * never reused), a message a user can act on, and an optional `cause`. Mapping to wire
 * errors happens only at the edges (nbd/errno.ts, api/http-status.ts).
 */
export const ERROR_CODES = [
  'INVALID_ARGUMENT',
  'INVALID_NAME',
  'INVALID_SIZE',
  'CONFIG_INVALID',
  'VOLUME_NOT_FOUND',
  'VOLUME_EXISTS',
  'VOLUME_BUSY',
  'VOLUME_CORRUPT',
  'JOURNAL_CORRUPT',
  'RANGE_OUT_OF_BOUNDS',
  'READ_ONLY',
  'NOT_SUPPORTED',
  'NO_SPACE',
  'IO_ERROR',
  'DATA_DIR_LOCKED',
  'ADDRESS_IN_USE',
  'INSECURE_BIND',
  'DAEMON_UNREACHABLE',
  'SHUTTING_DOWN',
  'ROUTE_NOT_FOUND',
  'POINT_INVALID',
  'POINT_BEFORE_HISTORY',
  'POINT_EXPIRED',
  'RETENTION_INVALID',
  'POINT_NOT_FOUND',
  'BOOKMARK_NOT_FOUND',
  'BOOKMARK_EXISTS',
  'MOUNT_NOT_FOUND',
  'MOUNT_EXISTS',
  'TARGET_EXISTS',
  'JOB_NOT_FOUND',
  'LIMIT_REACHED',
  'UNAUTHORIZED',
  'TOKEN_NOT_FOUND',
  'RECORD_INVALID',
  'PROTOCOL_ERROR',
  'REPLICATION_REFUSED',
  'REPLICATION_NOT_FOUND',
  'REPLICATION_EXISTS',
  'IS_REPLICA',
  'POINT_NOT_REPLICATED',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class HindsightError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HindsightError';
    this.code = code;
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function isHindsightError(err: unknown, code?: ErrorCode): err is HindsightError {
  return err instanceof HindsightError && (code === undefined || err.code === code);
}

/** Wraps an operating-system error (errno) in the matching HindsightError. */
export function fromSystemError(err: unknown, what: string): HindsightError {
  if (err instanceof HindsightError) return err;
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  if (errno === 'ENOSPC' || errno === 'EDQUOT' || errno === 'EFBIG') {
    return new HindsightError('NO_SPACE', `${what}: no space left on device`, { cause: err });
  }
  if (errno === 'EADDRINUSE') {
    return new HindsightError('ADDRESS_IN_USE', `${what}: address already in use`, { cause: err });
  }
  const detail = err instanceof Error ? err.message : String(err);
  return new HindsightError('IO_ERROR', `${what}: ${detail}`, { cause: err });
}
