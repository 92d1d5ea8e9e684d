export { ReplicationService } from './service.js';
export type { ReplicateRequest } from './service.js';
export type { OutgoingStatus } from './sender.js';
export type { IncomingStatus } from './receiver.js';
export { FrameDecoder, FrameType, encodeFrame, jsonFrame, recordsBody } from './frames.js';
