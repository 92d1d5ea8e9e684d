export { buildApi } from './server.js';
export type { ApiContext } from './server.js';
export { httpStatus } from './http-status.js';
