export { buildApi } from './server.js';
export type { ApiContext } from './server.js';
export { httpStatus } from './http-status.js';
export { TokenStore } from './tokens.js';
export type { TokenInfo } from './tokens.js';
