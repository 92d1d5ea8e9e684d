export { ExtentIndex, EXTENT_STRIDE, PAYLOAD_COMPRESSED, REGION_BYTES, SEGMENT_DROPPED, SEGMENT_ZERO, SEGMENT_ZERO_ALLOCATED, isZero } from './extent-index.js';
export type { ExtentVisit } from './extent-index.js';
export { encodeCheckpoint, decodeCheckpoint } from './checkpoint.js';
export type { CheckpointInfo, CheckpointLoad, CheckpointPosition } from './checkpoint.js';
export { History, PointIndex, changesContent, runnableRecords } from './history.js';
export type { FoldedSegment, HistoryEntry, TimelineBucket } from './history.js';
export { Region, lookupRegions } from './extent-index.js';
