export { VolumeManager } from './volume-manager.js';
export type { VolumeInfo, VolumeManagerOptions } from './volume-manager.js';
export { validateVolumeName, validateVolumeSize } from './names.js';
export type { FsckReport, FsckProblem } from './journaled-device.js';
