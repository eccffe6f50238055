import fs from 'node:fs';

/** After the disk was full, the agent tries again this long later (the dialer adds its jitter). */
export const DISK_FULL_RETRY_MS = 5_000;
/** While the disk stays full, DW_DISK_FULL is logged at most this often. */
export const DISK_FULL_LOG_INTERVAL_MS = 60_000;

/** The SQLite result code SQLITE_FULL ("database or disk is full"); extended codes keep it in the low byte. */
const SQLITE_FULL = 13;

/**
 * True for a write that failed because the file system is full or over quota: ENOSPC/EDQUOT from `fs`, or
 * SQLITE_FULL from node:sqlite (the journal). Such a failure is waited out, never treated as bad data.
 */
export function isDiskFull(err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as { code?: unknown; errcode?: unknown; errstr?: unknown; message?: unknown; cause?: unknown };
  if (e.code === 'ENOSPC' || e.code === 'EDQUOT') return true;
  if (e.code === 'ERR_SQLITE_ERROR') {
    if (typeof e.errcode === 'number' && (e.errcode & 0xff) === SQLITE_FULL) return true;
    if (/database or disk is full/u.test(String(e.errstr ?? e.message))) return true;
  }
  return e.cause !== undefined && e.cause !== err && isDiskFull(e.cause);
}

/** True when the file system holding `dir` has no block left for this user (statfs), e.g. to explain an
 * SQLite "disk I/O error" while the journal opens its shared-memory file on a full disk. */
export function noSpaceLeft(dir: string): boolean {
  try {
    return fs.statfsSync(dir).bavail === 0;
  } catch {
    return false;
  }
}
