export { Journal, CheckpointMismatch } from './journal.js';
export type { JournalOptions, RecoveryStart, RecoveryReport, AppendedRecord, JournalStats, PayloadPiece } from './journal.js';
export { RecordType, RecordFlag, RECORD_HEADER_BYTES, crcSeedFor } from './record.js';
export type { RecordHeader, RecordTypeValue } from './record.js';
export { nodeFileLayer } from './file-layer.js';
export type { FileLayer, StorageFile } from './file-layer.js';
export { scanJournal, scanJournalAsync, scanHeaders, scrubJournal, listSegments, segmentPath } from './scanner.js';
export type { JournalPosition, ScannedRecord, BadRecord } from './scanner.js';
export { SEGMENT_HEADER_BYTES } from './segment.js';
