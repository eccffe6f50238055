/** The SQLite store lives in ./sqlite/ (one file per concern); this path stays for its importers. */
export * from './sqlite/index.js';
