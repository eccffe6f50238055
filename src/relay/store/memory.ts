/**
 * A throwaway store for tests and `--ephemeral` runs: the SQLite store on an in-memory database. Same
 * code, same contract, nothing on disk; everything is gone after `close()`.
 */
import { openSqliteStore, type SqliteStore } from './sqlite.js';

export function openMemoryStore(options: { now?: () => number } = {}): Promise<SqliteStore> {
  return openSqliteStore({ path: ':memory:', now: options.now });
}
