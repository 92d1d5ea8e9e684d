export { NbdServer } from './server.js';
export type { NbdServerOptions, ConnectionInfo } from './server.js';
export type { ExportAccess, ExportCatalog, NbdExport } from './negotiation.js';
export type { SessionLogger, SessionTls } from './session.js';
