/** The one place where daemon errors become NBD error numbers (cf. nbdkit's nbd_errno). */
import { isHindsightError } from '../core/index.js';
import { Errno } from './constants.js';

export function nbdErrno(err: unknown): number {
  if (!isHindsightError(err)) return Errno.EIO;
  switch (err.code) {
    case 'READ_ONLY':
      return Errno.EPERM;
    case 'NO_SPACE':
      return Errno.ENOSPC;
    case 'RANGE_OUT_OF_BOUNDS':
    case 'INVALID_ARGUMENT':
      return Errno.EINVAL;
    case 'NOT_SUPPORTED':
      return Errno.ENOTSUP;
    case 'SHUTTING_DOWN':
      return Errno.ESHUTDOWN;
    default:
      return Errno.EIO;
  }
}
