import { HindsightError, LIMITS } from '../core/index.js';

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Volume names become directory names and NBD export names: keep them boring. */
export function validateVolumeName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.length > LIMITS.volumeNameLengthMax || !NAME_PATTERN.test(name)) {
    throw new HindsightError(
      'INVALID_NAME',
      `invalid volume name ${JSON.stringify(name)}: use 1-${LIMITS.volumeNameLengthMax} letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  return name;
}

export function validateVolumeSize(sizeBytes: unknown): number {
  if (typeof sizeBytes !== 'number' || !Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw new HindsightError('INVALID_SIZE', `volume size must be a positive whole number of bytes, got ${String(sizeBytes)}`);
  }
  if (sizeBytes % 512 !== 0) throw new HindsightError('INVALID_SIZE', `volume size ${sizeBytes} is not a multiple of 512 bytes`);
  if (sizeBytes > LIMITS.volumeSizeBytesMax) {
    throw new HindsightError('INVALID_SIZE', `volume size ${sizeBytes} exceeds the maximum of ${LIMITS.volumeSizeBytesMax} bytes`);
  }
  return sizeBytes;
}

const EXPORT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]*$/;
/** Longest mount name: a volume name plus room for "@<seq>-rw". */
export const MOUNT_NAME_LENGTH_MAX = LIMITS.volumeNameLengthMax + 32;

/** Mount names are NBD export names and directory names too: a volume name may add '@'. */
export function validateMountName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.length > MOUNT_NAME_LENGTH_MAX || !EXPORT_PATTERN.test(name)) {
    throw new HindsightError(
      'INVALID_NAME',
      `invalid mount name ${JSON.stringify(name)}: use 1-${MOUNT_NAME_LENGTH_MAX} letters, digits, '.', '_', '-' or '@', starting with a letter or digit`,
    );
  }
  return name;
}
