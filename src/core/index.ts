export { HindsightError, isHindsightError, fromSystemError, ERROR_CODES } from './errors.js';
export type { ErrorCode } from './errors.js';
export { assert, unreachable, AssertionFailure } from './assert.js';
export { LIMITS, checkLimits } from './limits.js';
export { parseSize, formatSize } from './size.js';
export { GroupCommit } from './group-commit.js';
export type { BlockDevice, BlockDeviceCapabilities, WriteOptions, ZeroOptions, Extent } from './block-device.js';
export { parsePoint, formatTimeUs, describePoint } from './point.js';
export type { PointSpec } from './point.js';
