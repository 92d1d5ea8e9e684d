/** The one place where daemon errors become HTTP statuses. */
import type { ErrorCode } from '../core/index.js';

const STATUS: Partial<Record<ErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  INVALID_NAME: 400,
  INVALID_SIZE: 400,
  CONFIG_INVALID: 400,
  VOLUME_NOT_FOUND: 404,
  ROUTE_NOT_FOUND: 404,
  VOLUME_EXISTS: 409,
  VOLUME_BUSY: 409,
  VOLUME_CORRUPT: 409,
  JOURNAL_CORRUPT: 409,
  READ_ONLY: 409,
  POINT_INVALID: 400,
  POINT_BEFORE_HISTORY: 422,
  POINT_EXPIRED: 410,
  POINT_NOT_FOUND: 404,
  BOOKMARK_NOT_FOUND: 404,
  BOOKMARK_EXISTS: 409,
  MOUNT_NOT_FOUND: 404,
  MOUNT_EXISTS: 409,
  TARGET_EXISTS: 409,
  JOB_NOT_FOUND: 404,
  NO_SPACE: 507,
  NOT_SUPPORTED: 501,
  SHUTTING_DOWN: 503,
};

export function httpStatus(code: ErrorCode): number {
  return STATUS[code] ?? 500;
}
